"""Backfills end to end on SQLite and on PostgreSQL (``store_url`` runs every test on both).

A two-asset daily chain ``events -> report`` is backfilled over 30 partitions: the persisted
record, skipping what is already materialized (unless forced), recomputing exactly what is stale,
a failing partition that fails only itself and its downstream partition, resume after the fix,
cancel from another ``FlowStone`` while a step is blocked, a downstream partition starting before
the upstream backfill is done, and the input errors.

Nothing here sleeps: blocked steps wait on ``threading.Event`` objects, and the test waits for
them with a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone._events import STEP_STARTED, STEP_SUCCEEDED, Event
from flowstone.engine import _runner
from flowstone.store import _tables as t

TENANT = "default"
DEADLINE = 30.0  # seconds any wait in these tests may take before it counts as a hang
DAYS = fs.DailyPartitions(start="2025-01-01", end="2025-03-01")  # 59 keys
KEYS = [f"2025-01-{day:02d}" for day in range(1, 31)]
ASSETS = ["events", "report"]
Pair = tuple[str, str | None]


@dataclass
class Hooks:
    """What the chain's assets do besides computing: record calls, fail or wait on some keys."""

    fail: set[str] = field(default_factory=set)
    # key -> called at the start of ``events`` for that key (e.g. waits on an event)
    gates: dict[str, Callable[[], None]] = field(default_factory=dict)
    calls: list[Pair] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def called(self, asset: str, key: str | None) -> None:
        with self.lock:
            self.calls.append((asset, key))


def chain(hooks: Hooks | None = None, *, report_version: str = "1") -> fs.Pipeline:
    """``events`` (daily) -> ``report`` (daily), plus an unpartitioned ``settings`` on its own."""
    hooks = hooks or Hooks()
    pipeline = fs.Pipeline("chain")

    @pipeline.asset(partitioned_by=DAYS, code_version="1")
    def events(context: fs.Context) -> dict[str, Any]:
        key = context.partition_key
        assert key is not None
        hooks.called("events", key)
        if key in hooks.fail:
            raise RuntimeError(f"no data for {key}")
        gate = hooks.gates.get(key)
        if gate is not None:
            gate()
        return {"day": key, "n": int(key[-2:])}

    @pipeline.asset(partitioned_by=DAYS, code_version=report_version)
    def report(context: fs.Context, events: dict[str, Any]) -> int:
        hooks.called("report", context.partition_key)
        return int(events["n"]) * 10

    @pipeline.asset()
    def settings(context: fs.Context) -> dict[str, str]:
        return {"currency": "NOK"}

    return pipeline


def wait_for(event: threading.Event, what: str) -> None:
    if not event.wait(DEADLINE):
        raise AssertionError(f"gave up after {DEADLINE}s waiting for {what}")


AppFactory = Callable[[fs.Pipeline], fs.FlowStone]


@pytest.fixture
def make_app(store_url: str, tmp_path: Path) -> Iterator[AppFactory]:
    """FlowStones on this test's store; values in files under tmp_path, shared by all of them."""
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline) -> fs.FlowStone:
        app = fs.FlowStone(
            pipeline,
            store=store_url,
            io_managers={"filesystem": fs.FilesystemIOManager(tmp_path / "values", fsync=False)},
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def pairs(keys: list[str], assets: list[str] = ASSETS) -> set[Pair]:
    return {(asset, key) for asset in assets for key in keys}


def materialized(app: fs.FlowStone, keys: list[str] = KEYS) -> set[Pair]:
    """The (asset, key) pairs that have a successful materialization."""
    return set(app.store.latest_success(tenant=TENANT, pairs=sorted(pairs(keys))))


def steps_by_status(result: fs.BackfillResult) -> dict[str, set[Pair]]:
    assert result.run is not None
    found: dict[str, set[Pair]] = {}
    for step in result.run.steps.values():
        found.setdefault(step.status.value, set()).add((step.asset, step.partition_key))
    return found


def audit(app: fs.FlowStone, action: str, backfill_id: str) -> list[dict[str, Any]]:
    return [
        row
        for row in app.store.list_audit(tenant=TENANT)
        if row["action"] == action and row["resource_id"] == backfill_id
    ]


# ---------------------------------------------------------------------- the record
@pytest.mark.parametrize("parallel", [1, 4])
def test_backfill_runs_every_partition_and_persists_its_record(make_app: AppFactory, parallel: int) -> None:
    hooks = Hooks()
    app = make_app(chain(hooks))
    result = app.backfill(ASSETS, start=KEYS[0], end=KEYS[-1], parallel=parallel, actor="user:tester")

    assert result.status is fs.BackfillStatus.SUCCEEDED
    assert result.run is not None and result.run.success
    assert Counter(hooks.calls) == Counter(pairs(KEYS))  # each partition computed exactly once
    assert steps_by_status(result) == {"succeeded": pairs(KEYS)}

    # What the store keeps, read back through another FlowStone (not the result object).
    other = make_app(chain())
    record = other.get_backfill(result.id)
    assert record.id == result.id and record.pipeline == "chain"
    assert record.assets == ASSETS
    assert record.partition_keys == KEYS
    assert record.spec == {"from": KEYS[0], "to": KEYS[-1]}
    assert (record.parallel, record.force, record.actor) == (parallel, False, "user:tester")
    assert record.status is fs.BackfillStatus.SUCCEEDED
    assert record.counts == {
        "total": 60,
        "queued": 0,
        "running": 0,
        "succeeded": 60,
        "failed": 0,
        "skipped": 0,
        "up_to_date": 0,
    }
    assert (record.total, record.done) == (60, 60)
    assert record.started_at is not None and record.finished_at is not None
    assert record.created_at <= record.started_at <= record.finished_at
    assert (record.cancel_requested, record.error) == (False, None)
    assert other.get_backfill(result.id[:8]).id == result.id  # a short prefix finds it
    assert [b.id for b in other.store.list_backfills(tenant=TENANT)] == [result.id]
    [created] = audit(other, "backfill", result.id)
    assert created["actor"] == "user:tester" and created["details"]["partitions"] == 30

    # One run, pointing back at the backfill; every partition is its own materialization.
    [run] = other.store.list_runs(tenant=TENANT, backfill_id=result.id)
    assert (run.id, run.status, run.step_count) == (result.run.run_id, fs.RunStatus.SUCCEEDED, 60)
    assert materialized(other) == pairs(KEYS)
    assert [other.load("report", partition=k) for k in KEYS] == [day * 10 for day in range(1, 31)]
    for asset in ASSETS:
        status = other.status(asset)
        assert (status.total, status.fresh, status.stale, status.missing, status.failed) == (59, 30, 0, 29, 0)


def test_overlapping_backfill_skips_what_is_materialized_unless_forced(make_app: AppFactory) -> None:
    hooks = Hooks()
    app = make_app(chain(hooks))
    first = app.backfill(ASSETS, start=KEYS[0], end=KEYS[9])
    assert first.status is fs.BackfillStatus.SUCCEEDED and first.counts["succeeded"] == 20

    hooks.calls.clear()
    second = app.backfill(ASSETS, start=KEYS[5], end=KEYS[14], parallel=2)
    assert second.status is fs.BackfillStatus.SUCCEEDED
    assert second.counts == {
        "total": 20,
        "queued": 0,
        "running": 0,
        "succeeded": 10,
        "failed": 0,
        "skipped": 10,
        "up_to_date": 10,
    }
    assert Counter(hooks.calls) == Counter(pairs(KEYS[10:15]))  # only the new days ran
    assert second.run is not None and set(second.run.up_to_date) == pairs(KEYS[5:10])

    # Everything up to date: nothing runs, the backfill still succeeds and says why.
    hooks.calls.clear()
    again = app.backfill(ASSETS, partitions=[KEYS[3], KEYS[12]])
    assert again.status is fs.BackfillStatus.SUCCEEDED
    assert (again.counts["succeeded"], again.counts["skipped"], again.counts["up_to_date"]) == (0, 4, 4)
    assert hooks.calls == [] and again.run is not None and len(again.run.steps) == 0
    assert again.backfill.spec == {"partitions": 2}

    # force: every requested partition runs again.
    forced = app.backfill(ASSETS, start=KEYS[5], end=KEYS[14], force=True)
    assert forced.status is fs.BackfillStatus.SUCCEEDED and forced.backfill.force
    assert (forced.counts["succeeded"], forced.counts["up_to_date"], forced.counts["skipped"]) == (20, 0, 0)
    assert Counter(hooks.calls) == Counter(pairs(KEYS[5:15]))


def test_backfill_without_force_recomputes_exactly_the_stale_partitions(make_app: AppFactory) -> None:
    hooks = Hooks()
    app = make_app(chain(hooks))
    app.backfill(ASSETS, start=KEYS[0], end=KEYS[9])

    # Invalidated on purpose (with what was built from it).
    assert app.invalidate("events", partition=KEYS[4], downstream=True) == 2
    hooks.calls.clear()
    result = app.backfill(ASSETS, start=KEYS[0], end=KEYS[9])
    assert sorted(hooks.calls) == sorted(pairs([KEYS[4]]))
    assert (result.counts["succeeded"], result.counts["up_to_date"]) == (2, 18)

    # A new code version of ``report``: every report partition is stale, no events partition.
    changed = Hooks()
    app2 = make_app(chain(changed, report_version="2"))
    assert app2.status("report").stale == 10
    result = app2.backfill(["report"], start=KEYS[0], end=KEYS[9])
    assert result.status is fs.BackfillStatus.SUCCEEDED
    assert sorted(changed.calls) == sorted(pairs(KEYS[:10], ["report"]))
    assert (result.counts["total"], result.counts["succeeded"]) == (10, 10)
    assert app2.status("report").stale == 0


# ---------------------------------------------------------------------- failure and resume
@pytest.mark.parametrize("parallel", [1, 4])
def test_one_failing_partition_fails_only_itself_and_its_downstream(
    make_app: AppFactory, parallel: int
) -> None:
    bad = KEYS[6]
    broken = Hooks(fail={bad})
    app = make_app(chain(broken))
    result = app.backfill(ASSETS, start=KEYS[0], end=KEYS[-1], parallel=parallel)

    assert result.status is fs.BackfillStatus.FAILED
    assert result.counts == {
        "total": 60,
        "queued": 0,
        "running": 0,
        "succeeded": 58,
        "failed": 1,
        "skipped": 1,
        "up_to_date": 0,
    }
    good = [k for k in KEYS if k != bad]
    assert steps_by_status(result) == {
        "succeeded": pairs(good),
        "failed": {("events", bad)},
        "skipped": {("report", bad)},
    }
    assert result.run is not None
    assert "no data for 2025-01-07" in str(result.run.steps[("events", bad)].error)
    # Every other partition stays materialized, with its value.
    assert materialized(app) == pairs(good)
    assert [app.load("report", partition=k) for k in good] == [int(k[-2:]) * 10 for k in good]
    events, report = app.status("events"), app.status("report")
    assert (events.fresh, events.failed, events.missing) == (29, 1, 29)
    assert (report.fresh, report.failed, report.missing) == (29, 0, 30)
    first = app.get_backfill(result.id)
    assert first.status is fs.BackfillStatus.FAILED and first.finished_at is not None

    # The code is fixed (a new FlowStone with the new code): resume runs only what did not succeed.
    fixed = Hooks()
    app2 = make_app(chain(fixed))
    resumed = app2.resume_backfill(result.id[:10], actor="user:fixer")
    assert resumed.id == result.id
    assert resumed.status is fs.BackfillStatus.SUCCEEDED
    assert sorted(fixed.calls) == sorted(pairs([bad]))
    assert steps_by_status(resumed) == {"succeeded": pairs([bad])}
    assert resumed.counts == {
        "total": 60,
        "queued": 0,
        "running": 0,
        "succeeded": 2,
        "failed": 0,
        "skipped": 58,
        "up_to_date": 58,
    }
    assert materialized(app2) == pairs(KEYS)
    record = app2.get_backfill(result.id)
    assert record.error is None and record.started_at == first.started_at
    assert record.finished_at is not None and first.finished_at is not None
    assert record.finished_at >= first.finished_at
    assert record.parallel == parallel  # the resume kept the backfill's parallelism
    runs = app2.store.list_runs(tenant=TENANT, backfill_id=result.id)
    assert {r.status for r in runs} == {fs.RunStatus.FAILED, fs.RunStatus.SUCCEEDED} and len(runs) == 2
    [resume_row] = audit(app2, "resume", result.id)
    assert resume_row["actor"] == "user:fixer"

    # Resuming a finished, successful backfill runs nothing.
    fixed.calls.clear()
    again = app2.resume_backfill(result.id)
    assert again.status is fs.BackfillStatus.SUCCEEDED and fixed.calls == []
    assert (again.counts["succeeded"], again.counts["up_to_date"]) == (0, 60)


def test_failed_upstream_outside_the_selection_fails_the_backfill(make_app: AppFactory) -> None:
    """Only ``report`` is backfilled; its missing upstream runs too, and its failure counts."""
    app = make_app(chain(Hooks(fail={KEYS[1]})))
    result = app.backfill(["report"], start=KEYS[0], end=KEYS[2])
    assert result.status is fs.BackfillStatus.FAILED
    assert result.backfill.assets == ["report"]
    # The counts are the requested report partitions; the failure itself was upstream.
    assert (result.counts["total"], result.counts["succeeded"], result.counts["skipped"]) == (3, 2, 1)
    assert materialized(app, KEYS[:3]) == pairs([KEYS[0], KEYS[2]])


def test_interrupted_backfill_is_abandoned_and_resumable(make_app: AppFactory) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    app = make_app(chain(Hooks(gates={KEYS[2]: interrupt})))
    with pytest.raises(KeyboardInterrupt):
        app.backfill(ASSETS, start=KEYS[0], end=KEYS[4])
    [record] = app.store.list_backfills(tenant=TENANT)
    assert record.status is fs.BackfillStatus.ABANDONED
    assert record.error == "interrupted: KeyboardInterrupt" and record.finished_at is not None
    # The steps before the interrupted one stored their values; their records may or may not
    # have been committed yet (group commit), so they are done or will simply run again.
    before = materialized(app, KEYS[:5])
    assert before <= pairs(KEYS[:2], ["events"])

    resumed = make_app(chain()).resume_backfill(record.id)
    assert resumed.status is fs.BackfillStatus.SUCCEEDED
    assert (resumed.counts["succeeded"], resumed.counts["up_to_date"]) == (10 - len(before), len(before))
    assert materialized(app, KEYS[:5]) == pairs(KEYS[:5])


def test_backfill_whose_process_died_is_abandoned_by_recovery(make_app: AppFactory) -> None:
    """A killed backfill process leaves its run and its backfill ``running``; the next FlowStone
    marks both abandoned, and the backfill can be resumed."""
    app = make_app(chain())
    record = app.store.create_backfill(
        tenant=TENANT, pipeline="chain", assets=ASSETS, spec={"partitions": 2}, partition_keys=KEYS[:2]
    )
    assert app.store.start_backfill(tenant=TENANT, backfill_id=record.id, counts={"queued": 4})
    run_id = "d" * 32
    app.store.create_run(
        tenant=TENANT,
        run_id=run_id,
        pipeline="chain",
        selection=ASSETS,
        partition_key=None,
        force=False,
        actor="api",
        executor="serial",
        steps=[],
        backfill_id=record.id,
    )
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    with app.store.engine.begin() as conn:
        conn.execute(t.runs.update().where(t.runs.c.id == run_id).values(pid=int(dead.stdout)))
    # Still running: it cannot be resumed (that would run it twice).
    with pytest.raises(fs.ValidationError, match="is running"):
        app.resume_backfill(record.id)

    make_app(chain())  # binding a pipeline recovers the runs whose process is gone
    run = app.store.get_run(tenant=TENANT, run_id=run_id)
    assert run is not None and run.status is fs.RunStatus.ABANDONED
    abandoned = app.get_backfill(record.id)
    assert abandoned.status is fs.BackfillStatus.ABANDONED and abandoned.finished_at is not None
    assert abandoned.error is not None and "is gone" in abandoned.error
    resumed = app.resume_backfill(record.id)
    assert resumed.status is fs.BackfillStatus.SUCCEEDED and resumed.counts["succeeded"] == 4


def test_only_one_process_claims_a_requested_backfill(make_app: AppFactory) -> None:
    app = make_app(chain())
    record = app.store.create_backfill(
        tenant=TENANT, pipeline="chain", assets=ASSETS, spec={"partitions": 1}, partition_keys=KEYS[:1]
    )
    assert app.store.start_backfill(tenant=TENANT, backfill_id=record.id, counts={"queued": 2})
    assert not app.store.start_backfill(tenant=TENANT, backfill_id=record.id, counts={"queued": 2})
    assert not app.store.start_backfill(tenant=TENANT, backfill_id="0" * 32, counts={})
    started = app.get_backfill(record.id)
    assert started.status is fs.BackfillStatus.RUNNING and started.started_at is not None

    # A backfill still ``requested`` (say its process died while planning) can be resumed.
    waiting = app.store.create_backfill(
        tenant=TENANT, pipeline="chain", assets=ASSETS, spec={"partitions": 1}, partition_keys=KEYS[:1]
    )
    resumed = app.resume_backfill(waiting.id)
    assert resumed.status is fs.BackfillStatus.SUCCEEDED and resumed.counts["succeeded"] == 2


def test_resume_drops_removed_dynamic_keys_and_fails_only_when_none_are_left(make_app: AppFactory) -> None:
    """Keys removed from dynamic partitions after the backfill are left out of a resume (and
    counted as dropped); a backfill with no key left fails at planning, is recorded as failed
    with the reason (not left ``running``), and can be resumed once keys exist again."""
    broken = {"globex", "initech"}
    pipeline = fs.Pipeline("customers")

    @pipeline.asset(partitioned_by=fs.DynamicPartitions("customers"))
    def invoices(context: fs.Context) -> str:
        if context.partition_key in broken:
            raise RuntimeError("no invoices")
        return str(context.partition_key)

    app = make_app(pipeline)
    app.add_partitions("customers", ["acme", "globex", "initech"])
    first = app.backfill(["invoices"], all_partitions=True)
    assert first.status is fs.BackfillStatus.FAILED
    assert first.backfill.partition_keys == ["acme", "globex", "initech"]

    app.remove_partitions("customers", ["globex"])
    broken.discard("initech")
    resumed = app.resume_backfill(first.id)
    assert resumed.status is fs.BackfillStatus.SUCCEEDED
    assert (resumed.counts["succeeded"], resumed.counts["up_to_date"], resumed.counts["dropped"]) == (1, 1, 1)

    only = app.backfill(["invoices"], partitions=["acme"], force=True)
    app.remove_partitions("customers", ["acme", "initech"])
    with pytest.raises(fs.ValidationError, match="none of the 1 partitions of the backfill exist"):
        app.resume_backfill(only.id)
    record = app.get_backfill(only.id)
    assert record.status is fs.BackfillStatus.FAILED
    assert record.error is not None and record.error.startswith("planning failed: ValidationError: ")

    app.add_partitions("customers", ["acme"])
    again = app.resume_backfill(only.id)
    assert again.status is fs.BackfillStatus.SUCCEEDED and again.backfill.error is None


# ---------------------------------------------------------------------- cancel
@pytest.mark.parametrize("parallel", [1, 2])
def test_cancel_lets_the_running_step_finish_and_skips_the_queued_ones(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, parallel: int
) -> None:
    # Look for the cancel request before every step (not every 0.5 s): what runs after it is exact.
    monkeypatch.setattr(_runner, "CANCEL_CHECK_EVERY_S", 0.0)
    blocked_key = KEYS[2]
    entered, release = threading.Event(), threading.Event()

    def block() -> None:
        entered.set()
        wait_for(release, "the test to release the blocked step")

    app = make_app(chain(Hooks(gates={blocked_key: block})))
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = app.backfill(ASSETS, start=KEYS[0], end=KEYS[-1], parallel=parallel)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="backfill", daemon=True)
    thread.start()
    try:
        wait_for(entered, "the blocked step to start")
        other = make_app(chain())  # another FlowStone on the same store, as another process would be
        [running] = other.store.list_backfills(tenant=TENANT, status="running")
        with pytest.raises(fs.ValidationError, match="is running"):
            other.resume_backfill(running.id)  # never run twice at once
        assert other.cancel_backfill(running.id[:8], actor="user:ops", reason="wrong range")
        asked = other.get_backfill(running.id)
        assert asked.cancel_requested and asked.status is fs.BackfillStatus.RUNNING
    finally:
        release.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    result: fs.BackfillResult = outcome["result"]

    assert result.status is fs.BackfillStatus.CANCELLED
    assert result.run is not None and result.run.status is fs.RunStatus.CANCELLED
    done = steps_by_status(result)
    assert set(done) <= {"succeeded", "skipped"}
    assert ("events", blocked_key) in done["succeeded"]  # the running step finished
    assert ("report", blocked_key) in done["skipped"]  # it was queued behind it
    if parallel == 1:  # serial, partition by partition: the steps before the blocked one, and it
        assert done["succeeded"] == pairs(KEYS[:3], ["events"]) | pairs(KEYS[:2], ["report"])
    assert all(result.run.steps[p].reason == "cancelled before it started" for p in done["skipped"]), done[
        "skipped"
    ]
    assert result.counts["succeeded"] == len(done["succeeded"])
    assert result.counts["skipped"] == len(done["skipped"]) == 60 - len(done["succeeded"])
    assert (result.counts["queued"], result.counts["running"], result.counts["failed"]) == (0, 0, 0)
    assert materialized(other) == done["succeeded"]
    record = other.get_backfill(result.id)
    assert record.status is fs.BackfillStatus.CANCELLED and record.cancel_requested
    [cancel] = audit(other, "cancel", result.id)
    assert (cancel["actor"], cancel["reason"]) == ("user:ops", "wrong range")
    # A finished backfill cannot be cancelled again.
    assert not other.cancel_backfill(result.id)

    # Resume finishes the rest, and only the rest.
    finisher = Hooks()
    resumed = make_app(chain(finisher)).resume_backfill(result.id)
    assert resumed.status is fs.BackfillStatus.SUCCEEDED
    assert set(finisher.calls) == done["skipped"] and len(finisher.calls) == len(done["skipped"])
    assert resumed.counts["succeeded"] == len(done["skipped"])
    assert resumed.counts["up_to_date"] == len(done["succeeded"])
    assert materialized(other) == pairs(KEYS)
    assert not other.get_backfill(result.id).cancel_requested


# ---------------------------------------------------------------------- scheduling
def test_downstream_partition_starts_before_the_upstream_backfill_is_done(make_app: AppFactory) -> None:
    """The first ``events`` partition blocks until some ``report`` partition has started: the
    backfill can only finish if downstream partitions start while upstream ones still run."""
    report_started = threading.Event()
    hooks = Hooks(gates={KEYS[0]: lambda: wait_for(report_started, "a report partition to start")})
    app = make_app(chain(hooks))
    order: list[tuple[str, str | None, str | None]] = []

    def listen(event: Event) -> None:
        if event.type in (STEP_STARTED, STEP_SUCCEEDED):
            order.append((event.type, event.asset, event.partition_key))
        if event.type == STEP_STARTED and event.asset == "report":
            report_started.set()

    unsubscribe = app.events.subscribe(listen)
    try:
        result = app.backfill(ASSETS, start=KEYS[0], end=KEYS[-1], parallel=2)
    finally:
        unsubscribe()
    assert result.status is fs.BackfillStatus.SUCCEEDED, result.counts

    first_report = next(
        i for i, (kind, asset, _) in enumerate(order) if (kind, asset) == (STEP_STARTED, "report")
    )
    last_events = max(
        i for i, (kind, asset, _) in enumerate(order) if (kind, asset) == (STEP_SUCCEEDED, "events")
    )
    assert first_report < last_events, order
    # Each report partition starts only after its own events partition succeeded.
    for key in KEYS:
        assert order.index((STEP_STARTED, "report", key)) > order.index((STEP_SUCCEEDED, "events", key))


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": KEYS[9], "end": KEYS[0]}, "'2025-01-10' comes after --to '2025-01-01'"),
        ({"start": "2024-12-31", "end": KEYS[0]}, "--from '2024-12-31' is not a partition of asset 'events'"),
        ({"start": KEYS[0], "end": "next week"}, "--to 'next week' is not a partition"),
        ({"partitions": [KEYS[0], "2025-02-30"]}, "partition '2025-02-30' is not valid"),
        ({"partitions": []}, "no partitions given"),
        ({"start": KEYS[0], "end": KEYS[1], "partitions": [KEYS[0]]}, "choose the partitions one way"),
        ({"all_partitions": True, "end": KEYS[1]}, "choose the partitions one way"),
        ({}, "choose the partitions one way"),
    ],
)
def test_bad_backfill_input_is_a_validation_error(
    make_app: AppFactory, kwargs: dict[str, Any], message: str
) -> None:
    app = make_app(chain())
    with pytest.raises(fs.ValidationError, match=message.replace("(", r"\(")):
        app.backfill(ASSETS, **kwargs)
    assert app.store.list_backfills(tenant=TENANT) == []  # nothing recorded, nothing ran


def test_other_bad_backfill_requests(make_app: AppFactory) -> None:
    app = make_app(chain())
    with pytest.raises(fs.ValidationError, match="none of \\['settings'\\] is partitioned"):
        app.backfill(["settings"], all_partitions=True)
    with pytest.raises(fs.AssetNotFound):
        app.backfill(["nope"], all_partitions=True)
    with pytest.raises(ValueError, match="parallel must be at least 1"):
        app.backfill(ASSETS, partitions=[KEYS[0]], parallel=0)
    assert app.store.list_backfills(tenant=TENANT) == []
    for missing in ("0123456789abcdef", "zz"):
        with pytest.raises(fs.ValidationError, match="no backfill"):
            app.get_backfill(missing)
        with pytest.raises(fs.ValidationError, match="no backfill"):
            app.cancel_backfill(missing)
        with pytest.raises(fs.ValidationError, match="no backfill"):
            app.resume_backfill(missing)


def test_all_partitions_of_a_small_definition(make_app: AppFactory) -> None:
    app = make_app(chain())
    result = app.backfill(["events"], all_partitions=True, parallel=3)
    assert result.status is fs.BackfillStatus.SUCCEEDED
    assert result.backfill.spec == {"all": True}
    assert len(result.backfill.partition_keys) == 59 and result.counts["succeeded"] == 59
    with app.store.engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(t.materializations)
            .where(t.materializations.c.asset == "events")
        ).scalar()
    assert count == 59
