"""Checkpoints (asset-level approval gates) end to end, through ``FlowStone`` on a real store.

``store_url`` runs a test once on SQLite and once on PostgreSQL. The gated pipeline is

    orders ──> orders_review (checkpoint) ──> invoices [──> ledger]
       └─────> stock                       (independent of the gate)

A gate whose condition holds pauses the run (``waiting_approval``) with a persisted request;
approve / modify resume the run's downstream steps (also from a new process), reject fails the gate
with ``checkpoint_rejected`` and skips exactly its downstream. Decisions follow the state machine
(a property test drives random action sequences against the store), two reviewers racing on
PostgreSQL leave exactly one decision, and timeouts run on a ``FakeClock``.

Nothing here sleeps: racing threads meet at a ``threading.Barrier``; timeouts advance a fake clock.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowstone as fs
from flowstone._errors import AssetNotFound, ValidationError
from flowstone._events import Event
from flowstone._pipeline import load_pipeline
from flowstone._records import RunStatus, StepRecord, StepStatus
from flowstone.checkpoints import (
    Action,
    ApprovalRecord,
    ApprovalStatus,
    IllegalTransition,
    _state,
    approve,
    extend,
    modify,
    reject,
)
from flowstone.checkpoints import _store as approval_store
from flowstone.checkpoints._store import ApprovalStore
from flowstone.store import _tables as t
from flowstone.testing import FakeClock

TENANT = "default"
DEADLINE = 30.0  # seconds a barrier may wait before the test counts it as a hang
START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
ORDERS = {"rows": 3, "change": 0.4}
DAYS = fs.DailyPartitions(start="2025-01-01", end="2025-02-01")
KEYS = ["2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04"]
Pair = tuple[str, str | None]


# ---------------------------------------------------------------------- the gated pipeline
@dataclass
class Knobs:
    """What the pipeline's functions do, and what they were called with."""

    ask: bool = True
    calls: list[tuple[str, str | None, Any]] = field(default_factory=list)
    hooks: list[tuple[str, str, ApprovalStatus, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def called(self, asset: str, key: str | None, value: Any) -> None:
        with self.lock:
            self.calls.append((asset, key, value))

    def inputs_of(self, asset: str) -> list[Any]:
        return [value for name, _key, value in self.calls if name == asset]

    def hook(self, name: str, record: ApprovalRecord, value: Any = None) -> None:
        with self.lock:
            self.hooks.append((name, record.id, record.status, value))


def gated(knobs: Knobs, *, deep: bool = False, **gate_options: Any) -> fs.Pipeline:
    """orders -> orders_review (gate) -> invoices [-> ledger]; orders -> stock."""
    pipeline = fs.Pipeline("gated")
    options: dict[str, Any] = {
        "message": lambda ctx, orders: f"orders moved {orders['change']:.0%}",
        "on_approve": lambda record: knobs.hook("on_approve", record),
        "on_modify": lambda record, value: knobs.hook("on_modify", record, value),
        "on_reject": lambda record: knobs.hook("on_reject", record),
        **gate_options,
    }

    @pipeline.asset()
    def orders(context: fs.Context) -> dict[str, Any]:
        knobs.called("orders", None, None)
        return dict(ORDERS)

    @pipeline.checkpoint(**options)
    def orders_review(context: fs.Context, orders: dict[str, Any]) -> bool:
        return knobs.ask

    @pipeline.asset()
    def invoices(context: fs.Context, orders_review: dict[str, Any]) -> dict[str, Any]:
        knobs.called("invoices", None, orders_review)
        return {"invoiced": orders_review["rows"] * 10}

    @pipeline.asset()
    def stock(context: fs.Context, orders: dict[str, Any]) -> int:
        knobs.called("stock", None, orders)
        return int(orders["rows"])

    if deep:

        @pipeline.asset()
        def ledger(context: fs.Context, invoices: dict[str, Any]) -> int:
            knobs.called("ledger", None, invoices)
            return int(invoices["invoiced"])

    return pipeline


def daily_gated(knobs: Knobs) -> fs.Pipeline:
    """orders (daily) -> orders_review (gate, daily through its upstream) -> invoices (daily)."""
    pipeline = fs.Pipeline("daily_gated")

    @pipeline.asset(partitioned_by=DAYS)
    def orders(context: fs.Context) -> dict[str, Any]:
        key = context.partition_key
        assert key is not None
        return {"day": key, "rows": int(key[-2:])}

    @pipeline.checkpoint()
    def orders_review(context: fs.Context, orders: dict[str, Any]) -> bool:
        return knobs.ask

    @pipeline.asset(partitioned_by=DAYS)
    def invoices(context: fs.Context, orders_review: dict[str, Any]) -> int:
        knobs.called("invoices", context.partition_key, orders_review)
        return int(orders_review["rows"]) * 10

    return pipeline


@dataclass
class Recorder:
    """A Notifier that keeps what it was told."""

    seen: list[tuple[str, str, ApprovalStatus, tuple[str, ...]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def notify(self, event: str, approval: ApprovalRecord, *, targets: Any = ()) -> None:
        with self.lock:
            self.seen.append((event, approval.id, approval.status, tuple(targets)))

    def told(self, approval_id: str) -> list[tuple[str, ApprovalStatus, tuple[str, ...]]]:
        return [(e, s, tg) for e, a, s, tg in self.seen if a == approval_id]


AppFactory = Callable[..., fs.FlowStone]


def _factory(url: str, storage: Path) -> tuple[AppFactory, list[fs.FlowStone]]:
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline, **options: Any) -> fs.FlowStone:
        options.setdefault("storage_dir", storage)
        app = fs.FlowStone(pipeline, store=url, **options)
        apps.append(app)
        return app

    return make, apps


@pytest.fixture
def make_app(store_url: str, tmp_path: Path) -> Iterator[AppFactory]:
    """FlowStone apps on this test's store (SQLite or PostgreSQL), filesystem I/O in tmp_path."""
    make, apps = _factory(store_url, tmp_path / "storage")
    yield make
    for app in apps:
        app.close()


@pytest.fixture
def make_sqlite_app(sqlite_url: str, tmp_path: Path) -> Iterator[AppFactory]:
    """The same on SQLite only, for behaviour that does not depend on the database."""
    make, apps = _factory(sqlite_url, tmp_path / "storage")
    yield make
    for app in apps:
        app.close()


@pytest.fixture
def make_pg_app(pg_url: str, tmp_path: Path) -> Iterator[AppFactory]:
    make, apps = _factory(pg_url, tmp_path / "storage")
    yield make
    for app in apps:
        app.close()


# ---------------------------------------------------------------------- reading the store
def steps_of(app: fs.FlowStone, run_id: str) -> dict[Pair, StepRecord]:
    found = app.run(run_id)
    assert found is not None
    return {(s.asset, s.partition_key): s for s in found[1]}


def statuses(app: fs.FlowStone, run_id: str) -> dict[Pair, str]:
    return {key: step.status.value for key, step in steps_of(app, run_id).items()}


def run_status(app: fs.FlowStone, run_id: str) -> RunStatus:
    found = app.run(run_id)
    assert found is not None
    return found[0].status


def stored_events(app: fs.FlowStone, run_id: str, prefix: str = "checkpoint.") -> list[dict[str, Any]]:
    return [e for e in app.store.list_events(tenant=TENANT, run_id=run_id) if e["type"].startswith(prefix)]


def audit_of(app: fs.FlowStone, approval_id: str) -> list[dict[str, Any]]:
    return [
        row
        for row in app.store.list_audit(tenant=TENANT, limit=100_000)
        if row["resource_type"] == "checkpoint" and row["resource_id"] == approval_id
    ]


def latest(app: fs.FlowStone, asset: str, partition: str | None = None) -> fs.Materialization:
    [mat] = app.store.materializations(tenant=TENANT, asset=asset, partition_key=partition, limit=1)
    return mat


def only_request(app: fs.FlowStone) -> ApprovalRecord:
    [request] = app.approvals.pending()
    return request


def collect(app: fs.FlowStone) -> list[Event]:
    seen: list[Event] = []
    app.events.subscribe(seen.append)
    return seen


# ---------------------------------------------------------------------- asking
def test_a_gate_whose_condition_is_false_passes_on_its_own(make_app: AppFactory) -> None:
    knobs = Knobs(ask=False)
    app = make_app(gated(knobs))
    run = app.materialize(["invoices", "stock"])

    assert run.status is RunStatus.SUCCEEDED
    assert app.approvals.find() == []
    assert latest(app, "orders_review").metadata["checkpoint"] == "auto-passed"
    assert knobs.inputs_of("invoices") == [ORDERS]  # the upstream value passed on as it is
    assert app.load("invoices") == {"invoiced": 30}


def test_a_gate_whose_condition_holds_pauses_the_run_with_a_persisted_request(
    make_app: AppFactory,
) -> None:
    knobs = Knobs()
    notifier = Recorder()
    clock = FakeClock(START)
    app = make_app(gated(knobs, timeout="4h"), clock=clock, notifier=notifier)
    seen = collect(app)

    run = app.materialize(["invoices", "stock"])

    # The run returns (no thread waits for the person): paused, downstream pending, the
    # independent branch done.
    assert run.status is RunStatus.WAITING_APPROVAL
    assert run_status(app, run.run_id) is RunStatus.WAITING_APPROVAL
    assert statuses(app, run.run_id) == {
        ("orders", None): "succeeded",
        ("orders_review", None): "waiting_approval",
        ("invoices", None): "pending",
        ("stock", None): "succeeded",
    }
    assert [name for name, _k, _v in knobs.calls] == ["orders", "stock"]

    request = only_request(app)
    assert request.status is ApprovalStatus.PENDING
    assert request.checkpoint == "orders_review" and request.partition_key is None
    assert request.run_id == run.run_id
    assert request.step_id == steps_of(app, run.run_id)[("orders_review", None)].id
    assert request.message == "orders moved 40%"
    assert request.approval_type == "manual"
    assert request.context["run_id"] == run.run_id
    assert request.context["partition"] is None
    assert request.context["summary"]["type"] == "dict"
    assert request.context["summary"]["length"] == len(ORDERS)
    assert request.context["summary"]["preview"] == repr(ORDERS)
    assert request.created_at == START
    assert request.timeout_at == START + timedelta(hours=4)
    assert request.decided_by is None and request.escalation_count == 0
    # Nothing is recorded as materialized until someone decides.
    assert app.store.materializations(tenant=TENANT, asset="orders_review") == []

    assert notifier.told(request.id) == [("requested", ApprovalStatus.PENDING, ())]
    bus = [e for e in seen if e.type == "checkpoint.requested"]
    assert [(e.asset, e.data["approval_id"]) for e in bus] == [("orders_review", request.id)]
    [stored] = stored_events(app, run.run_id)
    assert stored["type"] == "checkpoint.requested" and stored["data"]["approval_id"] == request.id
    [row] = audit_of(app, request.id)
    assert row["action"] == "checkpoint.requested" and row["details"]["run_id"] == run.run_id


def test_the_built_in_log_notifier_logs_requests(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(gated(Knobs()))
    with caplog.at_level(logging.INFO, logger="flowstone.checkpoints"):
        app.materialize(["invoices"])
    request = only_request(app)
    lines = [r.getMessage() for r in caplog.records if r.name == "flowstone.checkpoints"]
    assert any(
        request.id[:12] in line and "requested" in line and "orders moved 40%" in line for line in lines
    )


def test_a_failing_notifier_never_blocks_a_decision(make_sqlite_app: AppFactory) -> None:
    class Broken:
        def notify(self, event: str, approval: ApprovalRecord, *, targets: Any = ()) -> None:
            raise RuntimeError("mail server down")

    app = make_sqlite_app(gated(Knobs()), notifier=Broken())
    run = app.materialize(["invoices"])
    app.approvals.approve(only_request(app).id, by="ana")
    assert run_status(app, run.run_id) is RunStatus.SUCCEEDED


# ---------------------------------------------------------------------- approve / modify
def test_approve_passes_the_value_on_and_resumes_the_run(make_app: AppFactory) -> None:
    knobs = Knobs()
    notifier = Recorder()
    app = make_app(gated(knobs, deep=True), notifier=notifier)
    seen = collect(app)
    run = app.materialize(["ledger", "stock"])
    request = only_request(app)

    decided = app.approvals.approve(request.id[:8], by="ana", reason="numbers checked")

    assert decided.id == request.id
    assert decided.status is ApprovalStatus.APPROVED
    assert (decided.decided_by, decided.reason) == ("ana", "numbers checked")
    assert run_status(app, run.run_id) is RunStatus.SUCCEEDED
    assert set(statuses(app, run.run_id).values()) == {"succeeded"}
    assert knobs.inputs_of("invoices") == [ORDERS]
    assert app.load("ledger") == 30

    gate = latest(app, "orders_review")
    assert gate.run_id == run.run_id
    assert gate.metadata["checkpoint"] == "approved"
    assert gate.metadata["approval_id"] == request.id and gate.metadata["decided_by"] == "ana"
    assert gate.id == request.materialization_id
    # Lineage runs through the gate: invoices consumed the approved gate, which consumed orders.
    upstream = app.store.lineage_upstream(tenant=TENANT, materialization_id=latest(app, "invoices").id)
    assert {(e.asset, e.materialization_id) for e in upstream} == {
        ("orders_review", gate.id),
        ("orders", latest(app, "orders").id),
    }

    assert [(name, status) for name, _id, status, _v in knobs.hooks] == [
        ("on_approve", ApprovalStatus.APPROVED)
    ]
    assert notifier.told(request.id)[-1] == ("decided", ApprovalStatus.APPROVED, ())
    assert [e.type for e in seen if e.type.startswith("checkpoint.")] == [
        "checkpoint.requested",
        "checkpoint.approved",
    ]
    assert [e["type"] for e in stored_events(app, run.run_id)] == [
        "checkpoint.requested",
        "checkpoint.approved",
    ]


def test_modify_passes_the_reviewers_value_on(make_app: AppFactory) -> None:
    knobs = Knobs()
    app = make_app(gated(knobs))
    run = app.materialize(["invoices"])
    request = only_request(app)
    corrected = {"rows": 7, "change": 0.1}

    decided = app.approvals.modify(request.id, corrected, by="ana", reason="one batch was doubled")

    assert decided.status is ApprovalStatus.MODIFIED
    assert decided.modifications == corrected
    assert run_status(app, run.run_id) is RunStatus.SUCCEEDED
    assert knobs.inputs_of("invoices") == [corrected]
    assert app.load("orders_review") == corrected
    assert app.load("invoices") == {"invoiced": 70}
    assert latest(app, "orders_review").metadata["checkpoint"] == "modified"
    assert [(name, value) for name, _id, _s, value in knobs.hooks] == [("on_modify", corrected)]
    decision = audit_of(app, request.id)[-1]
    assert decision["action"] == "checkpoint.modify" and decision["actor"] == "ana"
    assert decision["details"]["modifications"] == corrected
    assert [e["type"] for e in stored_events(app, run.run_id)][-1] == "checkpoint.approved"


def test_a_modification_must_be_json_of_the_type_the_gate_passes_on(make_sqlite_app: AppFactory) -> None:
    knobs = Knobs()
    app = make_sqlite_app(gated(knobs))
    run = app.materialize(["invoices"])
    request = only_request(app)
    refused = [
        ([1, 2, 3], "passes on a dict; the modified value is a list"),
        ("rows=7", "passes on a dict; the modified value is a str"),
        (None, "passes on a dict; the modified value is a NoneType"),
        ({"when": datetime(2025, 1, 1, tzinfo=UTC)}, "must be JSON"),
        ({1, 2}, "must be JSON"),
    ]
    for value, words in refused:
        with pytest.raises(ValidationError) as caught:
            app.approvals.modify(request.id, value, by="ana")
        assert words in caught.value.message

    assert app.approvals.get(request.id) == request
    assert app.load("orders_review") == ORDERS  # nothing was stored
    assert len(audit_of(app, request.id)) == 1
    assert run_status(app, run.run_id) is RunStatus.WAITING_APPROVAL
    assert knobs.inputs_of("invoices") == []


@pytest.mark.parametrize(
    ("annotation", "good", "bad"),
    [("int", 5, True), ("float", 2, "2.5"), ("list[int]", [1], {"a": 1}), ("bool", False, 0)],
)
def test_the_expected_type_is_the_annotation_of_the_single_upstream(
    make_sqlite_app: AppFactory, annotation: str, good: Any, bad: Any
) -> None:
    pipeline = fs.Pipeline("typed")
    values = {"int": 1, "float": 1.5, "list[int]": [1, 2], "bool": True}

    @pipeline.asset()
    def source(context: fs.Context) -> Any:
        return values[annotation]

    namespace: dict[str, Any] = {"fs": fs}
    exec(f"def review(context: fs.Context, source: {annotation}) -> bool:\n    return True\n", namespace)
    pipeline.checkpoint(namespace["review"])
    app = make_sqlite_app(pipeline)
    app.materialize(["review"])
    request = only_request(app)

    with pytest.raises(ValidationError, match="modified value is a"):
        app.approvals.modify(request.id, bad, by="ana")
    assert app.approvals.modify(request.id, good, by="ana").status is ApprovalStatus.MODIFIED
    assert app.load("review") == good


# ---------------------------------------------------------------------- reject
def test_rejecting_fails_the_gate_and_skips_exactly_its_downstream(make_app: AppFactory) -> None:
    knobs = Knobs()
    notifier = Recorder()
    app = make_app(gated(knobs, deep=True), notifier=notifier)
    seen = collect(app)
    run = app.materialize(["ledger", "stock"])
    request = only_request(app)

    decided = app.approvals.reject(request.id, by="bob", reason="wrong source file")

    assert decided.status is ApprovalStatus.REJECTED
    assert (decided.decided_by, decided.reason) == ("bob", "wrong source file")
    steps = steps_of(app, run.run_id)
    assert {key: s.status.value for key, s in steps.items()} == {
        ("orders", None): "succeeded",
        ("stock", None): "succeeded",
        ("orders_review", None): "failed",
        ("invoices", None): "skipped",
        ("ledger", None): "skipped",
    }
    assert steps[("orders_review", None)].error_type == "checkpoint_rejected"
    assert "wrong source file" in (steps[("orders_review", None)].error_message or "")
    assert steps[("invoices", None)].error_type == "dependency_failed"
    assert steps[("ledger", None)].error_type == "dependency_failed"
    assert run_status(app, run.run_id) is RunStatus.FAILED
    assert knobs.inputs_of("invoices") == [] and knobs.inputs_of("ledger") == []

    failed = latest(app, "orders_review")
    assert failed.status == "failed" and failed.error_type == "checkpoint_rejected"
    assert [(name, status) for name, _id, status, _v in knobs.hooks] == [
        ("on_reject", ApprovalStatus.REJECTED)
    ]
    assert notifier.told(request.id)[-1] == ("decided", ApprovalStatus.REJECTED, ())
    assert [e.type for e in seen if e.type.startswith("checkpoint.")][-1] == "checkpoint.rejected"
    assert [e["type"] for e in stored_events(app, run.run_id)] == [
        "checkpoint.requested",
        "checkpoint.rejected",
    ]
    skipped = {e["asset"] for e in stored_events(app, run.run_id, prefix="step.skipped")}
    assert skipped == {"invoices", "ledger"}


def test_a_three_asset_pipeline_where_a_rejected_gate_skips_exactly_its_downstream(
    make_app: AppFactory,
) -> None:
    """orders -> orders_review -> invoices, orders -> stock: only invoices is skipped."""
    knobs = Knobs()
    app = make_app(gated(knobs))
    run = app.materialize(["invoices", "stock"])
    app.approvals.reject(only_request(app).id, by="bob", reason="double counted")

    assert statuses(app, run.run_id) == {
        ("orders", None): "succeeded",
        ("orders_review", None): "failed",
        ("invoices", None): "skipped",
        ("stock", None): "succeeded",
    }
    assert [name for name, _k, _v in knobs.calls] == ["orders", "stock"]


@pytest.mark.parametrize("reason", ["", "   "])
def test_a_rejection_needs_a_reason(make_sqlite_app: AppFactory, reason: str) -> None:
    app = make_sqlite_app(gated(Knobs()))
    app.materialize(["invoices"])
    request = only_request(app)
    with pytest.raises(ValidationError, match="needs a reason"):
        app.approvals.reject(request.id, by="bob", reason=reason)
    assert app.approvals.get(request.id).status is ApprovalStatus.PENDING


# ---------------------------------------------------------------------- the state machine
def test_deciding_a_decided_request_is_refused_and_changes_nothing(make_app: AppFactory) -> None:
    app = make_app(gated(Knobs()))
    cases = [
        ("approve", "approve", "already approved by ana"),
        ("approve", "reject", "already approved by ana"),
        ("reject", "approve", "already rejected by ana"),
        ("modify", "modify", "already modified by ana"),
        ("reject", "modify", "already rejected by ana"),
    ]
    for first, then, words in cases:
        run = app.materialize(["orders_review"], force=True)
        request = only_request(app)

        def decide(action: str, by: str, approval_id: str = request.id) -> ApprovalRecord:
            if action == "approve":
                return app.approvals.approve(approval_id, by=by)
            if action == "reject":
                return app.approvals.reject(approval_id, by=by, reason="no")
            return app.approvals.modify(approval_id, {"rows": 1, "change": 0.0}, by=by)

        decided = decide(first, "ana")
        steps_before = statuses(app, run.run_id)
        audit_before = audit_of(app, request.id)

        with pytest.raises(IllegalTransition) as caught:
            decide(then, "bob")

        assert isinstance(caught.value, ValidationError)
        assert words in caught.value.message, (first, then)
        assert app.approvals.get(request.id) == decided
        assert statuses(app, run.run_id) == steps_before
        assert audit_of(app, request.id) == audit_before


def test_unknown_or_ambiguous_ids_are_refused(make_sqlite_app: AppFactory) -> None:
    app = make_sqlite_app(gated(Knobs()))
    app.materialize(["invoices"])
    request = only_request(app)
    assert app.approvals.get(request.id[:4]) == request
    for wrong in ("nope", request.id[:3], "____", "%%%%", "f" * 32):
        with pytest.raises(ValidationError, match="no approval"):
            app.approvals.approve(wrong, by="ana")
    assert app.approvals.get(request.id).status is ApprovalStatus.PENDING


# Accepted transitions, written out from the issue (not from the module's table).
S = ApprovalStatus
ALLOWED: dict[tuple[ApprovalStatus, Action], ApprovalStatus] = {
    **{(S.PENDING, a): s for a, s in [(Action.APPROVE, S.APPROVED), (Action.MODIFY, S.MODIFIED)]},
    **{(S.PENDING, a): s for a, s in [(Action.REJECT, S.REJECTED), (Action.ESCALATE, S.ESCALATED)]},
    **{(S.PENDING, a): s for a, s in [(Action.EXPIRE, S.EXPIRED), (Action.EXTEND, S.PENDING)]},
    **{(S.ESCALATED, a): s for a, s in [(Action.APPROVE, S.APPROVED), (Action.MODIFY, S.MODIFIED)]},
    **{(S.ESCALATED, a): s for a, s in [(Action.REJECT, S.REJECTED), (Action.EXPIRE, S.EXPIRED)]},
    (S.ESCALATED, Action.ESCALATE): S.ESCALATED,
}
FINAL = {S.APPROVED, S.MODIFIED, S.REJECTED, S.EXPIRED}
GATE_STEP = {S.APPROVED: "succeeded", S.MODIFIED: "succeeded", S.REJECTED: "failed"}


@pytest.fixture
def property_app(sqlite_url: str, tmp_path: Path) -> Iterator[fs.FlowStone]:
    make, apps = _factory(sqlite_url, tmp_path / "storage")
    logging.getLogger("flowstone.checkpoints").disabled = True  # thousands of log lines otherwise
    try:
        yield make(gated(Knobs()))
    finally:
        logging.getLogger("flowstone.checkpoints").disabled = False
        for app in apps:
            app.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(list(Action)), st.sampled_from(["ana", "bob"])), min_size=1, max_size=8
    )
)
def test_random_action_sequences_on_real_requests_reach_no_illegal_state(
    property_app: fs.FlowStone, steps: list[tuple[Action, str]]
) -> None:
    """Each example opens a request with a real run, then tries the actions in order: decisions
    through ``app.approvals``, escalate/extend/expire through ``ApprovalStore.transition``. The
    store follows the model, a refused action changes nothing, a final state is never left."""
    app = property_app
    run = app.materialize(["orders_review"], force=True)
    [request] = app.approvals.find(run_id=run.run_id)
    store = ApprovalStore(app.store)
    model = S.PENDING
    decided_by: str | None = None
    escalations = 0
    accepted = 0
    through_api: ApprovalStatus | None = None

    def act(action: Action, actor: str) -> None:
        if action is Action.APPROVE:
            app.approvals.approve(request.id, by=actor, reason="looks right")
        elif action is Action.MODIFY:
            app.approvals.modify(request.id, {"rows": 1, "change": 0.0}, by=actor)
        elif action is Action.REJECT:
            app.approvals.reject(request.id, by=actor, reason="looks wrong")
        else:
            with app.store.engine.begin() as conn:
                store.transition(
                    conn,
                    tenant=TENANT,
                    approval_id=request.id,
                    action=action,
                    actor=actor,
                    timeout_at=START,
                    escalated_to=["leads"],
                )

    for action, actor in steps:
        before = app.approvals.get(request.id)
        expected = ALLOWED.get((model, action))
        try:
            act(action, actor)
        except IllegalTransition as exc:
            assert expected is None, f"{action} from {model} refused: {exc.message}"
            if model in FINAL:
                assert f"already {model.value} by {decided_by}" in exc.message
            assert app.approvals.get(request.id) == before
            continue
        assert expected is not None, f"{action} from {model} was accepted"
        accepted += 1
        model = expected
        if action is Action.ESCALATE:
            escalations += 1
        if model in FINAL:
            decided_by = actor
            if action in (Action.APPROVE, Action.MODIFY, Action.REJECT):
                through_api = model
        after = app.approvals.get(request.id)
        assert after.status is model
        assert after.decided_by == decided_by
        assert after.escalation_count == escalations

    final = app.approvals.get(request.id)
    assert final.status is model
    assert (final.decided_at is not None) == (model in FINAL)
    assert len(audit_of(app, request.id)) == 1 + accepted  # the request and each accepted action
    gate_step = steps_of(app, run.run_id)[("orders_review", None)]
    assert gate_step.status.value == GATE_STEP.get(through_api or model, "waiting_approval")


# ---------------------------------------------------------------------- restart and races
RESTART_MODULE = """
    from typing import Any

    import flowstone as fs

    pipeline = fs.Pipeline("restartable")


    @pipeline.asset()
    def orders(context: fs.Context) -> dict[str, Any]:
        return {"rows": 3, "change": 0.4}


    @pipeline.checkpoint(message="check the orders")
    def orders_review(context: fs.Context, orders: dict[str, Any]) -> bool:
        return orders["change"] > 0.2


    @pipeline.asset()
    def invoices(context: fs.Context, orders_review: dict[str, Any]) -> dict[str, Any]:
        return {"invoiced": orders_review["rows"] * 10}
"""


def test_a_new_process_decides_and_the_paused_run_completes(store_url: str, tmp_path: Path) -> None:
    """The run pauses in one process, which exits; a new FlowStone in this process (another pid,
    a fresh pipeline import) finds the request, modifies it, and the run's downstream runs to
    completion on the reviewer's value."""
    module = f"restart_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(RESTART_MODULE), encoding="utf-8")
    storage = tmp_path / "storage"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import flowstone as fs
        from {module} import pipeline
        app = fs.FlowStone(pipeline, store={store_url!r}, storage_dir={str(storage)!r})
        run = app.materialize(["invoices"])
        print(run.run_id, run.status.value)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    run_id, status = done.stdout.split()
    assert status == "waiting_approval"

    app = fs.FlowStone(
        load_pipeline(f"{module}:pipeline", search_path=[tmp_path]), store=store_url, storage_dir=storage
    )
    try:
        # Opening the store did not take the paused run for a dead one.
        assert run_status(app, run_id) is RunStatus.WAITING_APPROVAL
        request = only_request(app)
        assert request.run_id == run_id and request.message == "check the orders"
        assert app.load("orders_review") == {"rows": 3, "change": 0.4}  # stored by the first process
        app.approvals.modify(request.id, {"rows": 5, "change": 0.0}, by="ana")
        assert run_status(app, run_id) is RunStatus.SUCCEEDED
        assert statuses(app, run_id) == {
            ("orders", None): "succeeded",
            ("orders_review", None): "succeeded",
            ("invoices", None): "succeeded",
        }
        assert app.load("invoices") == {"invoiced": 50}
    finally:
        app.close()


class RaceAtTheUpdate:
    """Holds the first two transitions after both have read the request as open, so both reach
    the conditional UPDATE. With ``winner``, the other one's UPDATE waits until the winner's has
    run (its row lock then makes the loser wait for the commit); without, the database alone
    decides who wins."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, winner: str | None = None) -> None:
        barrier = threading.Barrier(2, timeout=DEADLINE)
        winner_updated = threading.Event()
        lock = threading.Lock()
        local = threading.local()
        held = [0]
        real_next_status = _state.next_status
        real_transition = ApprovalStore.transition

        def next_status(*args: Any, **kwargs: Any) -> ApprovalStatus:
            target = real_next_status(*args, **kwargs)
            with lock:
                held[0] += 1
                hold = held[0] <= 2
            if hold:
                barrier.wait()
                if winner is not None and local.actor != winner:
                    assert winner_updated.wait(DEADLINE), "the winner never reached its UPDATE"
            return target

        def transition(store: ApprovalStore, conn: Any, **kwargs: Any) -> Any:
            local.actor = kwargs["actor"]
            try:
                return real_transition(store, conn, **kwargs)
            finally:
                if kwargs["actor"] == winner:
                    winner_updated.set()

        monkeypatch.setattr(approval_store, "next_status", next_status)
        monkeypatch.setattr(ApprovalStore, "transition", transition)


CORRECTED = {"rows": 9, "change": 0.0}


def race(app: fs.FlowStone, request: ApprovalRecord, ana: str, bob: str) -> dict[str, Any]:
    """ana and bob decide ``request`` at the same moment, each on a thread; their outcomes."""
    decide: dict[str, Callable[[str], ApprovalRecord]] = {
        "approve": lambda by: app.approvals.approve(request.id, by=by),
        "reject": lambda by: app.approvals.reject(request.id, by=by, reason="no"),
        "modify": lambda by: app.approvals.modify(request.id, CORRECTED, by=by),
    }
    outcomes: dict[str, Any] = {}

    def reviewer(action: str, actor: str) -> None:
        try:
            outcomes[actor] = decide[action](actor)
        except BaseException as exc:
            outcomes[actor] = exc

    threads = [
        threading.Thread(target=reviewer, args=(ana, "ana")),
        threading.Thread(target=reviewer, args=(bob, "bob")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def assert_one_winner(
    app: fs.FlowStone, knobs: Knobs, run_id: str, request: ApprovalRecord, outcomes: dict[str, Any]
) -> str:
    """Exactly one decision stands, the other reviewer is told who made it, and what passed on
    (or not) is the winner's. Returns the winner."""
    won = {actor: r for actor, r in outcomes.items() if isinstance(r, ApprovalRecord)}
    lost = {actor: r for actor, r in outcomes.items() if not isinstance(r, ApprovalRecord)}
    assert len(won) == 1 and len(lost) == 1, outcomes
    [(winner, record)] = won.items()
    [(_loser, error)] = lost.items()
    assert isinstance(error, IllegalTransition), repr(error)
    assert f"already {record.status.value} by {winner}" in error.message

    final = app.approvals.get(request.id)
    assert final.status is record.status and final.decided_by == winner
    decisions = [row for row in audit_of(app, request.id) if row["action"] != "checkpoint.requested"]
    assert [(row["actor"], row["details"]["to"]) for row in decisions] == [(winner, record.status.value)]
    # What passed on is the winner's: a losing modification never reached the stored value.
    if record.status is ApprovalStatus.REJECTED:
        assert run_status(app, run_id) is RunStatus.FAILED
        assert app.load("orders_review") == ORDERS
        assert knobs.inputs_of("invoices") == []
    else:
        passed = CORRECTED if record.status is ApprovalStatus.MODIFIED else ORDERS
        assert run_status(app, run_id) is RunStatus.SUCCEEDED
        assert app.load("orders_review") == passed
        assert knobs.inputs_of("invoices") == [passed]
    return winner


@pytest.mark.postgres
@pytest.mark.parametrize(("ana", "bob"), [("approve", "reject"), ("approve", "approve")])
def test_two_reviewers_deciding_at_once_exactly_one_wins(
    make_pg_app: AppFactory, monkeypatch: pytest.MonkeyPatch, ana: str, bob: str
) -> None:
    knobs = Knobs()
    app = make_pg_app(gated(knobs))
    run = app.materialize(["invoices"])
    request = only_request(app)
    RaceAtTheUpdate(monkeypatch)
    assert_one_winner(app, knobs, run.run_id, request, race(app, request, ana, bob))


@pytest.mark.postgres
@pytest.mark.parametrize(("ana", "bob"), [("approve", "modify"), ("reject", "modify"), ("modify", "reject")])
def test_the_loser_of_a_race_changes_nothing(
    make_pg_app: AppFactory, monkeypatch: pytest.MonkeyPatch, ana: str, bob: str
) -> None:
    """ana's UPDATE goes first: bob's decision, made at the same moment, leaves no trace (a losing
    modify must not overwrite the value ana approved or rejected)."""
    knobs = Knobs()
    app = make_pg_app(gated(knobs))
    run = app.materialize(["invoices"])
    request = only_request(app)
    RaceAtTheUpdate(monkeypatch, winner="ana")
    assert assert_one_winner(app, knobs, run.run_id, request, race(app, request, ana, bob)) == "ana"


# ---------------------------------------------------------------------- timeouts
def test_escalate_on_timeout_then_expire_on_the_second(make_app: AppFactory) -> None:
    knobs = Knobs()
    notifier = Recorder()
    clock = FakeClock(START)
    pipeline = gated(knobs, timeout="1h", on_timeout="escalate", escalate_to=["data-leads", "oncall"])
    app = make_app(pipeline, clock=clock, notifier=notifier)
    seen = collect(app)
    run = app.materialize(["invoices", "stock"])
    request = only_request(app)

    assert app.approvals.process_timeouts(now=START + timedelta(minutes=59)) == []

    clock.advance(3600)
    assert app.approvals.process_timeouts() == [(request.id, "escalated")]
    escalated = app.approvals.get(request.id)
    assert escalated.status is ApprovalStatus.ESCALATED
    assert escalated.escalation_count == 1
    assert escalated.escalated_to == ["data-leads", "oncall"]
    assert escalated.timeout_at == START + timedelta(hours=2)
    assert notifier.told(request.id)[-1] == ("escalated", ApprovalStatus.ESCALATED, ("data-leads", "oncall"))
    assert "checkpoint.escalated" in [e.type for e in seen]
    assert "checkpoint.escalated" in [e["type"] for e in stored_events(app, run.run_id)]
    assert run_status(app, run.run_id) is RunStatus.WAITING_APPROVAL

    assert app.approvals.process_timeouts(now=START + timedelta(minutes=119)) == []
    clock.advance(3600)
    assert app.approvals.process_timeouts() == [(request.id, "expired")]
    expired = app.approvals.get(request.id)
    assert expired.status is ApprovalStatus.EXPIRED and expired.decided_by == "system:timeout"
    steps = steps_of(app, run.run_id)
    assert steps[("orders_review", None)].error_type == "checkpoint_rejected"
    assert steps[("invoices", None)].status is StepStatus.SKIPPED
    assert steps[("stock", None)].status is StepStatus.SUCCEEDED
    assert run_status(app, run.run_id) is RunStatus.FAILED
    assert [e for e, _s, _t in notifier.told(request.id)][-2:] == ["decided", "timed_out"]
    assert "checkpoint.timed_out" in [e["type"] for e in stored_events(app, run.run_id)]

    with pytest.raises(IllegalTransition, match="already expired by system:timeout"):
        app.approvals.approve(request.id, by="ana")
    assert app.approvals.process_timeouts(now=START + timedelta(days=30)) == []


def test_an_escalated_request_can_still_be_approved(make_sqlite_app: AppFactory) -> None:
    knobs = Knobs()
    clock = FakeClock(START)
    app = make_sqlite_app(gated(knobs, timeout="30m", escalate_to="leads"), clock=clock)
    run = app.materialize(["invoices"])
    request = only_request(app)
    clock.advance(1800)
    assert app.approvals.process_timeouts() == [(request.id, "escalated")]
    assert app.approvals.pending() == [app.approvals.get(request.id)]  # escalated is still open

    app.approvals.approve(request.id, by="lead")

    assert run_status(app, run.run_id) is RunStatus.SUCCEEDED
    assert knobs.inputs_of("invoices") == [ORDERS]


@pytest.mark.parametrize("policy", ["auto_approve", "auto_reject"])
def test_auto_decisions_on_timeout(make_sqlite_app: AppFactory, policy: str) -> None:
    knobs = Knobs()
    notifier = Recorder()
    clock = FakeClock(START)
    app = make_sqlite_app(gated(knobs, timeout="2h", on_timeout=policy), clock=clock, notifier=notifier)
    run = app.materialize(["invoices", "stock"])
    request = only_request(app)

    assert app.approvals.process_timeouts(now=START + timedelta(hours=1)) == []
    clock.advance(2 * 3600)
    done = app.approvals.process_timeouts()

    decided = app.approvals.get(request.id)
    assert decided.decided_by == "system:timeout"
    assert "timed_out" in [e for e, _s, _t in notifier.told(request.id)]
    if policy == "auto_approve":
        assert done == [(request.id, "auto_approved")]
        assert decided.status is ApprovalStatus.APPROVED
        assert run_status(app, run.run_id) is RunStatus.SUCCEEDED
        assert knobs.inputs_of("invoices") == [ORDERS]
    else:
        assert done == [(request.id, "auto_rejected")]
        assert decided.status is ApprovalStatus.REJECTED
        assert statuses(app, run.run_id)[("invoices", None)] == "skipped"
        assert run_status(app, run.run_id) is RunStatus.FAILED


def test_extend_on_timeout_once_then_expire(make_app: AppFactory) -> None:
    clock = FakeClock(START)
    notifier = Recorder()
    app = make_app(gated(Knobs(), timeout="1h", on_timeout=extend("12h")), clock=clock, notifier=notifier)
    seen = collect(app)
    run = app.materialize(["invoices"])
    request = only_request(app)

    clock.advance(3600)
    assert app.approvals.process_timeouts() == [(request.id, "extended")]
    extended = app.approvals.get(request.id)
    assert extended.status is ApprovalStatus.PENDING
    assert extended.timeout_at == START + timedelta(hours=13)
    assert notifier.told(request.id)[-1] == ("timed_out", ApprovalStatus.PENDING, ())
    assert [e.type for e in seen][-1] == "checkpoint.timed_out"
    assert audit_of(app, request.id)[-1]["action"] == "checkpoint.extend"

    clock.advance(11 * 3600)
    assert app.approvals.process_timeouts() == []
    clock.advance(3600)
    assert app.approvals.process_timeouts() == [(request.id, "expired")]
    assert app.approvals.get(request.id).status is ApprovalStatus.EXPIRED
    assert run_status(app, run.run_id) is RunStatus.FAILED


def test_requests_without_a_timeout_never_time_out(make_sqlite_app: AppFactory) -> None:
    app = make_sqlite_app(gated(Knobs()), clock=FakeClock(START))
    app.materialize(["invoices"])
    assert app.approvals.process_timeouts(now=START + timedelta(days=365)) == []
    assert only_request(app).timeout_at is None


# ---------------------------------------------------------------------- automated gates
@pytest.mark.parametrize(
    ("decision", "passed", "label"),
    [
        (approve("fine"), ORDERS, "auto-approved"),
        (modify({"rows": 2, "change": 0.0}, "capped"), {"rows": 2, "change": 0.0}, "auto-modified"),
    ],
)
def test_an_automated_gate_decides_without_a_person(
    make_sqlite_app: AppFactory, decision: Any, passed: dict[str, Any], label: str
) -> None:
    knobs = Knobs()
    seen_inputs: list[Any] = []

    def auto_decide(context: fs.Context, orders: dict[str, Any]) -> Any:
        seen_inputs.append(orders)
        return decision

    app = make_sqlite_app(gated(knobs, approval_type="automated", auto_decide=auto_decide))
    run = app.materialize(["invoices"])

    assert run.status is RunStatus.SUCCEEDED
    assert seen_inputs == [ORDERS]
    assert app.approvals.find() == []
    assert knobs.inputs_of("invoices") == [passed]
    assert latest(app, "orders_review").metadata["checkpoint"] == label


def test_an_automated_rejection_fails_the_gate_and_skips_its_downstream(make_sqlite_app: AppFactory) -> None:
    knobs = Knobs()
    app = make_sqlite_app(
        gated(knobs, approval_type="automated", auto_decide=lambda ctx, orders: reject("too many rows"))
    )
    run = app.materialize(["invoices", "stock"])

    assert run.status is RunStatus.FAILED
    gate = run.steps["orders_review"]
    assert gate.error is not None and gate.error.type == "checkpoint_rejected"
    assert "too many rows" in gate.error.message
    assert run.steps["invoices"].status is StepStatus.SKIPPED
    assert run.steps["stock"].status is StepStatus.SUCCEEDED
    assert app.approvals.find() == []


def test_an_automated_gate_must_return_a_decision(make_sqlite_app: AppFactory) -> None:
    app = make_sqlite_app(gated(Knobs(), approval_type="automated", auto_decide=lambda ctx, orders: True))
    run = app.materialize(["invoices"])
    error = run.steps["orders_review"].error
    assert error is not None and error.type == "execution_error"
    assert "auto_decide must return approve(), reject(reason) or modify(value)" in error.message


def test_a_condition_must_return_a_bool(make_sqlite_app: AppFactory) -> None:
    pipeline = fs.Pipeline("bad_condition")

    @pipeline.asset()
    def source(context: fs.Context) -> int:
        return 1

    @pipeline.checkpoint()
    def review(context: fs.Context, source: int) -> Any:
        return "yes"

    run = make_sqlite_app(pipeline).materialize(["review"])
    error = run.steps["review"].error
    assert error is not None and "must return True (ask) or False (pass)" in error.message


def test_a_gate_over_several_upstreams_passes_them_on_by_name(make_sqlite_app: AppFactory) -> None:
    pipeline = fs.Pipeline("two_inputs")
    seen: list[Any] = []

    @pipeline.asset()
    def prices(context: fs.Context) -> list[int]:
        return [1, 2]

    @pipeline.asset()
    def volumes(context: fs.Context) -> list[int]:
        return [10, 20]

    @pipeline.checkpoint()
    def review(context: fs.Context, prices: list[int], volumes: list[int]) -> bool:
        return True

    @pipeline.asset()
    def revenue(context: fs.Context, review: dict[str, list[int]]) -> int:
        seen.append(review)
        return sum(p * v for p, v in zip(review["prices"], review["volumes"], strict=True))

    app = make_sqlite_app(pipeline)
    run = app.materialize(["revenue"])
    request = only_request(app)
    assert review.checkpoint is not None and review.checkpoint.value_type is None  # not checked
    app.approvals.approve(request.id, by="ana")

    assert seen == [{"prices": [1, 2], "volumes": [10, 20]}]
    assert app.load("revenue") == 50
    assert run_status(app, run.run_id) is RunStatus.SUCCEEDED


@pytest.mark.parametrize(("moved", "asks"), [(0.5, True), (0.1, False)])
def test_a_numpy_comparison_is_a_condition(make_sqlite_app: AppFactory, moved: float, asks: bool) -> None:
    """``frame["change"].abs().max() > 0.2`` gives a numpy bool, not a Python one."""
    np = pytest.importorskip("numpy")
    pipeline = fs.Pipeline("numpy_condition")

    @pipeline.asset()
    def changes(context: fs.Context) -> list[float]:
        return [0.05, -moved]

    @pipeline.checkpoint()
    def review(context: fs.Context, changes: list[float]) -> Any:
        return np.abs(np.array(changes)).max() > 0.2

    app = make_sqlite_app(pipeline)
    run = app.materialize(["review"])
    assert run.status is (RunStatus.WAITING_APPROVAL if asks else RunStatus.SUCCEEDED)
    assert len(app.approvals.pending()) == int(asks)


# ---------------------------------------------------------------------- partitions and bulk
def test_a_partitioned_gate_asks_once_per_partition_and_bulk_decides_a_filter(make_app: AppFactory) -> None:
    knobs = Knobs()
    app = make_app(daily_gated(knobs))
    run = app.materialize(["invoices"], partitions=KEYS)

    assert run.status is RunStatus.WAITING_APPROVAL
    requests = app.approvals.pending("orders_review")
    assert sorted(r.partition_key or "" for r in requests) == KEYS
    for r in requests:
        assert r.context["partition"] == r.partition_key
        assert r.message == f"review 'orders_review' [{r.partition_key}]"
        assert r.run_id == run.run_id

    approved = app.approvals.bulk("approve", checkpoint="orders_review", partitions=KEYS[:2], by="ana")
    assert sorted(r.partition_key or "" for r in approved) == KEYS[:2]
    assert {r.status for r in approved} == {ApprovalStatus.APPROVED}
    assert sorted(r.partition_key or "" for r in app.approvals.pending()) == KEYS[2:]
    for key in KEYS[:2]:
        assert app.load("invoices", partition=key) == int(key[-2:]) * 10

    rejected = app.approvals.bulk(
        "reject", checkpoint="orders_review", run_id=run.run_id, by="bob", reason="late data"
    )
    assert sorted(r.partition_key or "" for r in rejected) == KEYS[2:]
    assert {(r.status, r.reason) for r in rejected} == {(ApprovalStatus.REJECTED, "late data")}
    assert app.approvals.pending() == []
    assert app.approvals.bulk("approve", checkpoint="orders_review", by="ana") == []

    history = app.approvals.history("orders_review", partition=KEYS[3])
    assert [(row["action"], row["actor"], row["reason"]) for row in history] == [
        ("checkpoint.requested", "system", None),
        ("checkpoint.reject", "bob", "late data"),
    ]
    assert {row["partition"] for row in history} == {KEYS[3]}


def test_approving_some_partitions_runs_only_their_downstream(make_app: AppFactory) -> None:
    knobs = Knobs()
    app = make_app(daily_gated(knobs))
    run = app.materialize(["invoices"], partitions=KEYS)

    app.approvals.bulk("approve", checkpoint="orders_review", partitions=KEYS[:2], by="ana")

    assert sorted(key or "" for _a, key, _v in knobs.calls) == KEYS[:2]
    steps = statuses(app, run.run_id)
    assert [steps[("invoices", k)] for k in KEYS] == ["succeeded", "succeeded", "pending", "pending"]
    assert run_status(app, run.run_id) is RunStatus.WAITING_APPROVAL

    app.approvals.bulk("reject", checkpoint="orders_review", run_id=run.run_id, by="bob", reason="late")
    steps = statuses(app, run.run_id)
    assert [steps[("invoices", k)] for k in KEYS] == ["succeeded", "succeeded", "skipped", "skipped"]
    assert run_status(app, run.run_id) is RunStatus.FAILED


def test_bulk_input_errors(make_sqlite_app: AppFactory) -> None:
    app = make_sqlite_app(gated(Knobs()))
    app.materialize(["invoices"])
    with pytest.raises(ValidationError, match="approve or reject"):
        app.approvals.bulk("modify", checkpoint="orders_review", by="ana")
    with pytest.raises(ValidationError, match="needs a reason"):
        app.approvals.bulk("reject", checkpoint="orders_review", by="ana")
    with pytest.raises(AssetNotFound):
        app.approvals.bulk("approve", checkpoint="orders_reveiw", by="ana")
    with pytest.raises(ValidationError, match="not a checkpoint"):
        app.approvals.bulk("approve", checkpoint="invoices", by="ana")
    assert len(app.approvals.pending()) == 1


# ---------------------------------------------------------------------- two gates in one run
def two_gates(knobs: Knobs) -> fs.Pipeline:
    """source -> first_review -> first_report; source -> second_review -> second_report."""
    pipeline = fs.Pipeline("two_gates")

    @pipeline.asset()
    def source(context: fs.Context) -> dict[str, int]:
        return {"rows": 4}

    @pipeline.checkpoint()
    def first_review(context: fs.Context, source: dict[str, int]) -> bool:
        return True

    @pipeline.checkpoint()
    def second_review(context: fs.Context, source: dict[str, int]) -> bool:
        return True

    @pipeline.asset()
    def first_report(context: fs.Context, first_review: dict[str, int]) -> int:
        knobs.called("first_report", None, first_review)
        return first_review["rows"]

    @pipeline.asset()
    def second_report(context: fs.Context, second_review: dict[str, int]) -> int:
        knobs.called("second_report", None, second_review)
        return second_review["rows"]

    return pipeline


def test_rejecting_one_of_two_gates_skips_only_its_own_downstream(make_app: AppFactory) -> None:
    knobs = Knobs()
    app = make_app(two_gates(knobs))
    run = app.materialize(["first_report", "second_report"])
    [second] = app.approvals.pending("second_review")

    app.approvals.reject(second.id, by="bob", reason="no")

    steps = statuses(app, run.run_id)
    assert steps[("second_report", None)] == "skipped"
    assert steps[("first_review", None)] == "waiting_approval"
    assert steps[("first_report", None)] == "pending"
    assert run_status(app, run.run_id) is RunStatus.WAITING_APPROVAL  # first_review still waits
    assert knobs.calls == []


def test_approving_one_of_two_gates_leaves_the_others_downstream_waiting(make_app: AppFactory) -> None:
    knobs = Knobs()
    app = make_app(two_gates(knobs))
    run = app.materialize(["first_report", "second_report"])
    [first] = app.approvals.pending("first_review")
    [second] = app.approvals.pending("second_review")

    app.approvals.approve(first.id, by="ana")

    assert [name for name, _k, _v in knobs.calls] == ["first_report"]
    assert statuses(app, run.run_id)[("second_report", None)] == "pending"
    assert run_status(app, run.run_id) is RunStatus.WAITING_APPROVAL

    app.approvals.reject(second.id, by="bob", reason="no")
    assert statuses(app, run.run_id)[("second_report", None)] == "skipped"
    assert run_status(app, run.run_id) is RunStatus.FAILED


def test_a_run_whose_other_branch_failed_ends_failed_once_the_gate_is_approved(
    make_sqlite_app: AppFactory,
) -> None:
    pipeline = gated(Knobs())

    @pipeline.asset()
    def broken(context: fs.Context, orders: dict[str, Any]) -> int:
        raise RuntimeError("no warehouse today")

    app = make_sqlite_app(pipeline)
    run = app.materialize(["invoices", "broken"])
    assert run.status is RunStatus.WAITING_APPROVAL  # the failure does not hide the open gate

    app.approvals.approve(only_request(app).id, by="ana")

    assert statuses(app, run.run_id)[("invoices", None)] == "succeeded"
    assert run_status(app, run.run_id) is RunStatus.FAILED


def test_approve_reruns_a_selected_downstream_an_older_run_materialized(make_app: AppFactory) -> None:
    knobs = Knobs(ask=False)
    app = make_app(gated(knobs))
    app.materialize(["invoices"])  # auto-passed: invoices exists from this run
    knobs.ask = True
    run = app.materialize(["orders_review", "invoices"], force=True)
    assert run.status is RunStatus.WAITING_APPROVAL

    app.approvals.modify(only_request(app).id, {"rows": 8, "change": 0.0}, by="ana")

    assert statuses(app, run.run_id)[("invoices", None)] == "succeeded"
    assert app.load("invoices") == {"invoiced": 80}
    assert run_status(app, run.run_id) is RunStatus.SUCCEEDED


# ---------------------------------------------------------------------- history
def test_history_shows_who_decided_what_when_and_why(make_app: AppFactory) -> None:
    knobs = Knobs()
    clock = FakeClock(START)
    app = make_app(gated(knobs), clock=clock)
    first = app.materialize(["orders_review", "invoices"])
    app.approvals.approve(only_request(app).id, by="ana", reason="numbers checked")
    clock.advance(60)
    second = app.materialize(["orders_review", "invoices"], force=True)
    app.approvals.modify(only_request(app).id, {"rows": 1, "change": 0.0}, by="bob", reason="capped")
    clock.advance(60)
    third = app.materialize(["orders_review", "invoices"], force=True)
    app.approvals.reject(only_request(app).id, by="cy", reason="stale export")

    history = app.approvals.history("orders_review")
    decisions = [row for row in history if row["action"] != "checkpoint.requested"]
    assert [(r["run_id"], r["action"], r["actor"], r["reason"], r["status"]) for r in decisions] == [
        (first.run_id, "checkpoint.approve", "ana", "numbers checked", "approved"),
        (second.run_id, "checkpoint.modify", "bob", "capped", "modified"),
        (third.run_id, "checkpoint.reject", "cy", "stale export", "rejected"),
    ]
    assert [r["at"] for r in decisions] == [
        START,
        START + timedelta(seconds=60),
        START + timedelta(seconds=120),
    ]
    assert decisions[1]["details"]["modifications"] == {"rows": 1, "change": 0.0}
    assert len(history) == 6  # a request row before each decision

    with pytest.raises(AssetNotFound):
        app.approvals.history("orders_reveiw")
    with pytest.raises(ValidationError, match="not a checkpoint"):
        app.approvals.history("invoices")


def test_events_table_holds_every_checkpoint_event(make_sqlite_app: AppFactory) -> None:
    app = make_sqlite_app(gated(Knobs()))
    run = app.materialize(["invoices"])
    app.approvals.approve(only_request(app).id, by="ana")
    with app.store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.events.c.type, t.events.c.asset)
            .where(t.events.c.run_id == run.run_id, t.events.c.type.like("checkpoint.%"))
            .order_by(t.events.c.id)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("checkpoint.requested", "orders_review"),
        ("checkpoint.approved", "orders_review"),
    ]


def test_approving_a_value_another_run_replaced_since_is_refused(make_sqlite_app: AppFactory) -> None:
    """Storage paths are per partition: a second run paused at the same gate overwrote the value
    the first request showed, so approving the first would pass on the second's value."""
    pipeline = fs.Pipeline("replaced")
    counter = {"n": 0}

    @pipeline.asset()
    def numbers(context: fs.Context) -> dict[str, int]:
        counter["n"] += 1
        return {"n": counter["n"]}

    @pipeline.checkpoint()
    def numbers_review(context: fs.Context, numbers: dict[str, int]) -> bool:
        return True

    @pipeline.asset()
    def total(context: fs.Context, numbers_review: dict[str, int]) -> int:
        return numbers_review["n"]

    app = make_sqlite_app(pipeline)
    first = app.materialize(["total"])
    second = app.materialize(["numbers", "total"], force=True)
    [old, new] = sorted(app.approvals.pending(), key=lambda r: r.created_at)
    assert (old.run_id, new.run_id) == (first.run_id, second.run_id)
    with pytest.raises(ValidationError, match="replaced since the request"):
        app.approvals.approve(old.id, by="ana")
    assert app.approvals.get(old.id).status is ApprovalStatus.PENDING
    app.approvals.approve(new.id, by="ana")
    assert app.load("total") == 2
    # The first can still pass on a value a person gives.
    app.approvals.modify(old.id, {"n": 1}, by="ana", reason="the first run's numbers")
    assert app.load("total") == 1
