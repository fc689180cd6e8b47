"""Real pipelines through a real store, on SQLite and on PostgreSQL.

Every test runs twice (``store_url`` is parametrized): what a run records (through the run
writer's group commits), how run details read back, the latest state per asset partition, lineage
by recursive SQL, and recovery of dead runs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone._events import Event
from flowstone._records import Materialization
from flowstone.store import Store
from flowstone.store import _tables as t
from flowstone.store._store import NewStep, utcnow
from flowstone.store._writer import RunWriter, StepOutcome

TENANT = "default"

MakeApp = Callable[..., fs.FlowStone]


@pytest.fixture
def make_app(store_url: str, tmp_path: Path) -> Iterator[MakeApp]:
    """Build ``FlowStone`` apps on this test's store; all are closed afterwards."""
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline, **options: Any) -> fs.FlowStone:
        options.setdefault("storage_dir", tmp_path / "storage")
        app = fs.FlowStone(pipeline, store=store_url, **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store.open(store_url)
    yield store
    store.close()


# ---------------------------------------------------------------------- pipelines
def diamond(*, extra: bool = False) -> fs.Pipeline:
    """top -> (left, right) -> bottom [-> extra, never materialized by the tests]."""
    pipeline = fs.Pipeline("diamond")

    @pipeline.asset(code_version="v1")
    def top(context: fs.Context) -> list[int]:
        return [1, 2, 3]

    @pipeline.asset()
    def left(context: fs.Context, top: list[int]) -> list[int]:
        return [x * 2 for x in top]

    @pipeline.asset(io_manager="memory")
    def right(context: fs.Context, top: list[int]) -> list[int]:
        return [x + 1 for x in top]

    @pipeline.asset()
    def bottom(context: fs.Context, left: list[int], right: list[int]) -> fs.Output:
        total = sum(left) + sum(right)
        return fs.Output(total, metadata={"total": total})

    if extra:

        @pipeline.asset()
        def report(context: fs.Context, bottom: int) -> str:
            return f"total={bottom}"

    return pipeline


def chain(length: int) -> fs.Pipeline:
    """a0 -> a1 -> ... -> a<length>: a<length> is ``length`` hops from a0."""
    pipeline = fs.Pipeline("chain")

    def first(context: fs.Context) -> int:
        return 0

    pipeline.asset(name="a0")(first)
    for i in range(1, length + 1):

        def step(context: fs.Context, **upstream: int) -> int:
            return sum(upstream.values()) + 1

        pipeline.asset(name=f"a{i}", depends_on=[f"a{i - 1}"])(step)
    return pipeline


def failing(state: dict[str, bool]) -> fs.Pipeline:
    """ok -> flaky -> after; ``flaky`` raises while ``state["broken"]`` is true."""
    pipeline = fs.Pipeline("failing")

    @pipeline.asset()
    def ok(context: fs.Context) -> int:
        return 1

    @pipeline.asset()
    def flaky(context: fs.Context, ok: int) -> int:
        if state["broken"]:
            raise ValueError("the source is broken")
        return ok + 1

    @pipeline.asset()
    def after(context: fs.Context, flaky: int) -> int:
        return flaky + 1

    return pipeline


def rows(store: Store, table: sa.Table, **where: Any) -> list[Any]:
    query = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
    with store.engine.connect() as conn:
        return list(conn.execute(query))


def entries(found: list[fs.LineageEntry]) -> list[tuple[str, int]]:
    return [(e.asset, e.depth) for e in found]


# ---------------------------------------------------------------------- what a run records
def test_a_run_records_run_steps_materializations_lineage_events_and_audit(make_app: MakeApp) -> None:
    app = make_app(diamond())
    run = app.materialize(["bottom"])
    assert run.success, run.failures
    store = app.store

    record = store.get_run(tenant=TENANT, run_id=run.run_id)
    assert record is not None
    assert record.status is fs.RunStatus.SUCCEEDED
    assert (record.pipeline, record.selection, record.partition_key, record.force) == (
        "diamond",
        ["bottom"],
        None,
        False,
    )
    assert (record.actor, record.executor, record.host, record.pid) == (
        "api",
        "serial",
        socket.gethostname(),
        os.getpid(),
    )
    assert record.step_count == 4
    assert record.error is None
    assert record.started_at is not None and record.finished_at is not None
    assert record.created_at <= record.started_at <= record.finished_at
    assert record.started_at.tzinfo is not None
    assert record.tenant == TENANT

    steps = store.run_steps(tenant=TENANT, run_id=run.run_id)
    assert [s.position for s in steps] == [0, 1, 2, 3]
    assert steps[0].asset == "top" and steps[-1].asset == "bottom"
    assert {s.asset for s in steps[1:3]} == {"left", "right"}
    assert all(s.status is fs.StepStatus.SUCCEEDED and s.attempt == 1 for s in steps)
    by_asset = {s.asset: s for s in steps}
    assert sorted(map(tuple, by_asset["bottom"].upstream)) == [("left", ""), ("right", "")]
    assert by_asset["top"].upstream == []

    mats = {m.asset: m for m in store.materializations(tenant=TENANT, run_id=run.run_id)}
    assert set(mats) == {"top", "left", "right", "bottom"}
    for step in steps:
        result = run.steps[step.asset].materialization
        assert result is not None
        assert step.materialization_id == mats[step.asset].id == result.id
        assert step.started_at is not None and step.finished_at is not None
        assert step.started_at <= step.finished_at
        assert step.duration_ms is not None and step.duration_ms >= 0

    lineage = rows(store, t.lineage, materialization_id=mats["bottom"].id)
    assert sorted((r.upstream_asset, r.upstream_materialization_id) for r in lineage) == sorted(
        [("left", mats["left"].id), ("right", mats["right"].id)]
    )
    assert all(r.run_id == run.run_id and r.asset == "bottom" for r in lineage)
    assert rows(store, t.lineage, materialization_id=mats["top"].id) == []
    assert len(rows(store, t.lineage)) == 4  # left<-top, right<-top, bottom<-left, bottom<-right

    types = [e["type"] for e in store.list_events(tenant=TENANT, run_id=run.run_id)]
    assert types[0] == "run.started" and types[-1] == "run.finished"
    assert types.count("step.started") == 4 and types.count("step.succeeded") == 4
    finished = store.list_events(tenant=TENANT, run_id=run.run_id)[-1]
    assert finished["data"] == {"status": "succeeded"}

    [audit] = store.list_audit(tenant=TENANT)
    assert (audit["actor"], audit["actor_type"], audit["action"]) == ("api", "api", "materialize")
    assert (audit["resource_type"], audit["resource_id"]) == ("run", run.run_id)
    assert audit["details"] == {"selection": ["bottom"], "partition": None, "force": False}

    # Every row of every table a run writes belongs to the default tenant.
    for table in t.metadata.sorted_tables:
        # A plain local run writes no backfill, dynamic partition or queue rows.
        if table in (
            t.backfills,
            t.dynamic_partitions,
            t.run_step_deps,
            t.run_buckets,
            t.step_claims,
            t.approvals,
            t.automation_state,
            t.ticks,
            t.daemons,
        ):
            continue
        tenants = {r.tenant_id for r in rows(store, table)}
        assert tenants == {TENANT}, table.name


def test_run_show_finds_a_run_by_short_id_prefix(make_app: MakeApp) -> None:
    app = make_app(chain(2))
    run = app.materialize(["a2"])
    store = app.store

    for prefix in (run.run_id[:4], run.run_id[:8], run.run_id):
        record = store.get_run(tenant=TENANT, run_id=prefix)
        assert record is not None and record.id == run.run_id
    shown = app.run(run.run_id[:8])
    assert shown is not None
    record, steps = shown
    assert record.id == run.run_id
    assert [s.asset for s in steps] == ["a0", "a1", "a2"]

    assert store.get_run(tenant=TENANT, run_id=run.run_id[:3]) is None  # too short to be an id
    assert store.get_run(tenant=TENANT, run_id="zzzz") is None
    assert store.get_run(tenant="someone-else", run_id=run.run_id) is None
    assert app.run("0" * 32) is None


def test_an_ambiguous_short_id_finds_no_run(store: Store) -> None:
    for suffix in ("1", "2"):
        store.create_run(
            tenant=TENANT,
            run_id="abcd" + suffix * 28,
            pipeline="p",
            selection=["x"],
            partition_key=None,
            force=False,
            actor="system",
            executor="serial",
            steps=[],
        )
    assert store.get_run(tenant=TENANT, run_id="abcd") is None
    found = store.get_run(tenant=TENANT, run_id="abcd1")
    assert found is not None and found.id == "abcd" + "1" * 28
    assert {r.id for r in store.list_runs(tenant=TENANT)} == {"abcd" + "1" * 28, "abcd" + "2" * 28}


def test_materialization_fields(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(diamond())
    run = app.materialize(["bottom"])
    assert run.success
    mats = {m.asset: m for m in app.store.materializations(tenant=TENANT, run_id=run.run_id)}

    top = mats["top"]
    stored = (tmp_path / "storage" / "top" / "value.pickle").read_bytes()
    assert top.status == "success"
    assert top.value_hash == "sha256:" + hashlib.sha256(stored).hexdigest()
    assert top.value_size == len(stored)
    assert top.io_manager == "filesystem"
    assert top.code_version == "v1"
    assert (top.host, top.pid, top.attempt) == (socket.gethostname(), os.getpid(), 1)
    assert top.started_at <= top.finished_at
    assert top.started_at.tzinfo is not None and top.finished_at.tzinfo is not None
    assert 0 <= top.duration_ms <= (top.finished_at - top.started_at).total_seconds() * 1000 + 1
    assert (top.error_type, top.error_message, top.error_traceback) == (None, None, None)
    assert top.partition_key is None
    assert top.tenant == TENANT

    right = mats["right"]  # the memory I/O manager knows no size or hash
    assert right.io_manager == "memory"
    assert (right.value_hash, right.value_size, right.code_version) == (None, None, None)

    bottom = mats["bottom"]
    # the asset's own metadata, beside where the filesystem manager put the value
    assert bottom.metadata == {
        "total": (2 + 4 + 6) + (2 + 3 + 4),
        "path": str(app.io_managers["filesystem"].path_for(fs.IOContext(asset="bottom", partition_key=None))),
    }
    assert app.load("bottom") == 21

    # What the run wrote reads back exactly as the run saw it (timestamps included).
    assert run.steps["top"].materialization == top
    again = app.store.get_materialization(tenant=TENANT, materialization_id=top.id)
    assert again == top
    assert app.store.get_materialization(tenant="other", materialization_id=top.id) is None


def test_a_failure_records_the_error_and_skips_downstream(make_app: MakeApp) -> None:
    state = {"broken": True}
    app = make_app(failing(state))
    run = app.materialize(["after"])
    store = app.store

    assert run.status is fs.RunStatus.FAILED
    record = store.get_run(tenant=TENANT, run_id=run.run_id)
    assert record is not None and record.status is fs.RunStatus.FAILED
    assert record.finished_at is not None

    steps = {s.asset: s for s in store.run_steps(tenant=TENANT, run_id=run.run_id)}
    assert steps["ok"].status is fs.StepStatus.SUCCEEDED
    assert steps["flaky"].status is fs.StepStatus.FAILED
    assert steps["flaky"].error_type == "execution_error"
    assert "the source is broken" in (steps["flaky"].error_message or "")
    assert steps["after"].status is fs.StepStatus.SKIPPED
    assert steps["after"].reason == "upstream 'flaky' failed"
    assert steps["after"].error_type == "dependency_failed"
    assert steps["after"].materialization_id is None

    mats = {m.asset: m for m in store.materializations(tenant=TENANT, run_id=run.run_id)}
    assert set(mats) == {"ok", "flaky"}  # a skipped step never materializes
    failed = mats["flaky"]
    assert failed.status == "failed"
    assert failed.id == steps["flaky"].materialization_id
    assert failed.error_type == "execution_error"
    assert failed.error_message is not None and "ValueError" in failed.error_message
    assert failed.error_traceback is not None
    assert "ValueError: the source is broken" in failed.error_traceback
    assert "in flaky" in failed.error_traceback
    assert (failed.value_hash, failed.value_size) == (None, None)
    assert failed.retryable is not None
    assert failed.started_at <= failed.finished_at
    assert rows(store, t.lineage, materialization_id=failed.id) == []

    state_flaky = store.partition_state(tenant=TENANT, asset="flaky", partition_key=None)
    assert state_flaky is not None
    assert (state_flaky.last_status, state_flaky.last_materialization_id) == ("failed", failed.id)
    assert state_flaky.success_materialization_id is None and state_flaky.success_at is None
    assert store.partition_state(tenant=TENANT, asset="after", partition_key=None) is None
    assert store.latest_success(tenant=TENANT, pairs=[("ok", None), ("flaky", None), ("after", None)]) == {
        ("ok", None): mats["ok"].id
    }

    events = store.list_events(tenant=TENANT, run_id=run.run_id)
    [step_failed] = [e for e in events if e["type"] == "step.failed"]
    assert step_failed["asset"] == "flaky" and step_failed["data"]["error"]["type"] == "execution_error"
    [skipped] = [e for e in events if e["type"] == "step.skipped"]
    assert skipped["asset"] == "after" and skipped["data"] == {"reason": "upstream 'flaky' failed"}

    # Fixed: the next run recomputes only what did not succeed, on top of the stored 'ok'.
    state["broken"] = False
    rerun = app.materialize(["after"])
    assert rerun.success
    assert [r.id for r in store.list_runs(tenant=TENANT, status="failed")] == [run.run_id]
    assert [r.id for r in store.list_runs(tenant=TENANT)] == [rerun.run_id, run.run_id]  # newest first
    assert [s.asset for s in store.run_steps(tenant=TENANT, run_id=rerun.run_id)] == ["flaky", "after"]
    flaky_mat = rerun.steps["flaky"].materialization
    assert flaky_mat is not None
    [link] = rows(store, t.lineage, materialization_id=flaky_mat.id)
    assert link.upstream_materialization_id == mats["ok"].id
    fixed = store.partition_state(tenant=TENANT, asset="flaky", partition_key=None)
    assert fixed is not None
    assert fixed.last_status == "success"
    assert fixed.last_materialization_id == fixed.success_materialization_id == flaky_mat.id


def test_asset_partition_latest_state(make_app: MakeApp) -> None:
    state = {"broken": False}
    app = make_app(failing(state))
    store = app.store
    first = app.materialize(["flaky"])
    assert first.success
    first_mat = first.steps["flaky"].materialization
    assert first_mat is not None

    state["broken"] = True
    second = app.materialize(["flaky"], force=True)
    assert not second.success
    second_mat = second.steps["flaky"].materialization
    assert second_mat is not None

    latest = store.partition_state(tenant=TENANT, asset="flaky", partition_key=None)
    assert latest is not None
    assert (latest.last_status, latest.last_run_id) == ("failed", second.run_id)
    assert latest.last_materialization_id == second_mat.id
    # The last success survives a later failure.
    assert latest.success_materialization_id == first_mat.id
    assert latest.success_at == first_mat.finished_at
    assert latest.updated_at >= latest.success_at
    assert store.latest_success(tenant=TENANT, pairs=[("flaky", None)]) == {("flaky", None): first_mat.id}

    state["broken"] = False
    third = app.materialize(["flaky"], force=True)
    assert third.success
    third_mat = third.steps["flaky"].materialization
    assert third_mat is not None
    latest = store.partition_state(tenant=TENANT, asset="flaky", partition_key=None)
    assert latest is not None
    assert latest.last_status == "success"
    assert latest.last_materialization_id == latest.success_materialization_id == third_mat.id
    assert store.latest_success(tenant=TENANT, pairs=[("flaky", None)]) == {("flaky", None): third_mat.id}

    states = {s.asset: s for s in store.asset_states(tenant=TENANT)}
    assert set(states) == {"ok", "flaky"}
    assert [s.asset for s in store.asset_states(tenant=TENANT, asset="ok")] == ["ok"]
    assert store.asset_states(tenant="other") == []


def test_latest_success_per_partition(make_app: MakeApp) -> None:
    pipeline = fs.Pipeline("regions")

    @pipeline.asset()
    def config(context: fs.Context) -> dict[str, int]:
        return {"factor": 3}

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["eu", "us", "apac"]))
    def sales(context: fs.Context, config: dict[str, int]) -> str:
        return f"{context.partition_key}x{config['factor']}"

    app = make_app(pipeline)
    eu = app.materialize(["sales"], partition="eu")
    us = app.materialize(["sales"], partition="us")
    assert eu.success and us.success
    assert [s.asset for s in app.store.run_steps(tenant=TENANT, run_id=us.run_id)] == ["sales"]

    found = app.store.latest_success(
        tenant=TENANT, pairs=[("sales", "eu"), ("sales", "us"), ("sales", "apac"), ("config", None)]
    )
    eu_mat, us_mat = eu.steps["sales"].materialization, us.steps["sales"].materialization
    assert eu_mat is not None and us_mat is not None
    assert found[("sales", "eu")] == eu_mat.id
    assert found[("sales", "us")] == us_mat.id
    assert ("sales", "apac") not in found
    assert ("config", None) in found
    assert app.store.latest_success(tenant=TENANT, pairs=[]) == {}
    assert app.store.latest_success(tenant="other", pairs=[("sales", "eu")]) == {}

    assert app.store.materializations(tenant=TENANT, asset="sales", partition_key="eu") == [eu_mat]
    assert [m.partition_key for m in app.store.materializations(tenant=TENANT, asset="sales")] == ["us", "eu"]
    states = app.store.asset_states(tenant=TENANT, asset="sales")
    assert [s.partition_key for s in states] == ["eu", "us"]
    assert eu_mat.partition_key == "eu"
    assert app.load("sales", partition="us") == "usx3"

    # Lineage of a partition points at the unpartitioned upstream it read.
    [up] = app.lineage.upstream("sales", partition="eu")
    assert (up.asset, up.partition_key, up.materialization_id) == ("config", None, found[("config", None)])
    down = app.lineage.downstream("config")
    assert sorted((e.asset, e.partition_key) for e in down) == [("sales", "eu"), ("sales", "us")]
    assert app.lineage.upstream("sales", partition="apac") == []


def test_step_states_stay_right_when_a_step_spans_a_commit(store_url: str, make_app: MakeApp) -> None:
    """A step that is still computing when its start is committed, then a quick step after it:
    the quick step's start and finish land in the same commit and must end 'succeeded'."""
    watcher = Store.open(store_url, migrate=False)
    pipeline = fs.Pipeline("spanning")

    @pipeline.asset()
    def first(context: fs.Context) -> int:
        return 1

    @pipeline.asset()
    def slow(context: fs.Context, first: int) -> int:
        # Wait (bounded) until this step's start is visible from another connection: committed.
        deadline = time.monotonic() + 10
        while True:
            steps = watcher.run_steps(tenant=TENANT, run_id=context.run_id)
            if any(s.asset == "slow" and s.status is fs.StepStatus.RUNNING for s in steps):
                return first + 1
            assert time.monotonic() < deadline, "the step's start was never committed"
            threading.Event().wait(0.002)

    @pipeline.asset()
    def quick(context: fs.Context, slow: int) -> int:
        return slow + 1

    @pipeline.asset()
    def last(context: fs.Context, quick: int) -> int:
        return quick + 1

    app = make_app(pipeline)
    try:
        run = app.materialize(["last"])
    finally:
        watcher.close()
    assert run.success
    steps = app.store.run_steps(tenant=TENANT, run_id=run.run_id)
    assert [(s.asset, s.status) for s in steps] == [
        (name, fs.StepStatus.SUCCEEDED) for name in ("first", "slow", "quick", "last")
    ]
    assert all(s.started_at and s.finished_at and s.started_at <= s.finished_at for s in steps)


def test_a_parallel_run_records_every_step(make_app: MakeApp) -> None:
    pipeline = fs.Pipeline("wide")

    @pipeline.asset()
    def root(context: fs.Context) -> int:
        return 1

    for i in range(8):

        def child(context: fs.Context, root: int, _i: int = i) -> int:
            return root + _i

        pipeline.asset(name=f"c{i}", depends_on=["root"])(child)

    @pipeline.asset(depends_on=[f"c{i}" for i in range(8)])
    def sink(context: fs.Context, **children: int) -> int:
        return sum(children.values())

    app = make_app(pipeline)
    run = app.materialize(["sink"], parallel=4, values=True)
    assert run.success
    assert run.steps["sink"].value == 8 + sum(range(8))
    store = app.store
    record = store.get_run(tenant=TENANT, run_id=run.run_id)
    assert record is not None and record.executor == "threads" and record.step_count == 10
    steps = store.run_steps(tenant=TENANT, run_id=run.run_id)
    assert [s.position for s in steps] == list(range(10))
    assert (steps[0].asset, steps[-1].asset) == ("root", "sink")
    assert all(s.status is fs.StepStatus.SUCCEEDED and s.materialization_id for s in steps)
    assert len(store.materializations(tenant=TENANT, run_id=run.run_id)) == 10
    up = app.lineage.upstream("sink")
    assert entries(up) == [(f"c{i}", 1) for i in range(8)] + [("root", 2)]
    types = [e["type"] for e in store.list_events(tenant=TENANT, run_id=run.run_id)]
    assert types.count("step.started") == types.count("step.succeeded") == 10


def test_an_interrupted_run_is_abandoned_and_records_no_unstored_success(
    make_app: MakeApp, tmp_path: Path
) -> None:
    state = {"interrupt": True}
    pipeline = fs.Pipeline("interrupted")

    @pipeline.asset()
    def ok(context: fs.Context) -> int:
        return 1

    @pipeline.asset()
    def stop(context: fs.Context, ok: int) -> int:
        if state["interrupt"]:
            raise KeyboardInterrupt
        return ok + 1

    @pipeline.asset()
    def after(context: fs.Context, stop: int) -> int:
        return stop + 1

    app = make_app(pipeline)
    with pytest.raises(KeyboardInterrupt):
        app.materialize(["after"])
    store = app.store
    [record] = store.list_runs(tenant=TENANT)
    assert record.status is fs.RunStatus.ABANDONED
    assert record.error == "interrupted: KeyboardInterrupt"
    assert record.finished_at is not None
    steps = {s.asset: s for s in store.run_steps(tenant=TENANT, run_id=record.id)}
    assert steps["stop"].status is fs.StepStatus.ABANDONED
    assert steps["after"].status is fs.StepStatus.ABANDONED
    assert steps["ok"].status in (fs.StepStatus.SUCCEEDED, fs.StepStatus.ABANDONED)
    # Whatever is recorded as a success has its value stored, byte for byte.
    for mat in store.materializations(tenant=TENANT):
        assert mat.asset == "ok" and mat.status == "success"
        stored = (tmp_path / "storage" / "ok" / "value.pickle").read_bytes()
        assert mat.value_hash == "sha256:" + hashlib.sha256(stored).hexdigest()
    assert {s.asset for s in store.asset_states(tenant=TENANT)} <= {"ok"}

    state["interrupt"] = False
    rerun = app.materialize(["after"])
    assert rerun.success
    assert app.load("after") == 3
    ran = [s.asset for s in store.run_steps(tenant=TENANT, run_id=rerun.run_id)]
    assert ran[-2:] == ["stop", "after"]
    assert _status(store, record.id) is fs.RunStatus.ABANDONED  # history is not rewritten


# ---------------------------------------------------------------------- lineage
def test_lineage_of_a_chain_of_depth_five(make_app: MakeApp) -> None:
    app = make_app(chain(5))
    run = app.materialize(["a5"])
    assert run.success
    mat = {name: run.steps[name].materialization for name in (f"a{i}" for i in range(6))}
    ids = {name: m.id for name, m in mat.items() if m is not None}
    assert len(ids) == 6

    up = app.lineage.upstream("a5")
    assert entries(up) == [("a4", 1), ("a3", 2), ("a2", 3), ("a1", 4), ("a0", 5)]
    assert [e.materialization_id for e in up] == [ids[f"a{i}"] for i in (4, 3, 2, 1, 0)]
    assert all(e.run_id == run.run_id and e.status == "success" for e in up)
    assert all(e.finished_at is not None and e.partition_key is None for e in up)
    assert entries(app.lineage.upstream("a5", depth=1)) == [("a4", 1)]
    assert entries(app.lineage.upstream("a5", depth=2)) == [("a4", 1), ("a3", 2)]
    assert entries(app.lineage.upstream("a5", depth=5)) == entries(up)
    assert entries(app.lineage.upstream("a5", depth=50)) == entries(up)
    assert app.lineage.upstream("a0") == []

    down = app.lineage.downstream("a0")
    assert entries(down) == [("a1", 1), ("a2", 2), ("a3", 3), ("a4", 4), ("a5", 5)]
    assert [e.materialization_id for e in down] == [ids[f"a{i}"] for i in range(1, 6)]
    assert entries(app.lineage.downstream("a0", depth=1)) == [("a1", 1)]
    assert entries(app.lineage.downstream("a0", depth=2)) == [("a1", 1), ("a2", 2)]
    assert entries(app.lineage.downstream("a2", depth=2)) == [("a3", 1), ("a4", 2)]
    assert app.lineage.downstream("a5") == []

    store = app.store
    assert entries(store.lineage_upstream(tenant=TENANT, materialization_id=ids["a5"])) == entries(up)
    assert entries(store.lineage_upstream(tenant=TENANT, materialization_id=ids["a5"], depth=1)) == [
        ("a4", 1)
    ]
    assert entries(store.lineage_upstream(tenant=TENANT, materialization_id=ids["a5"], depth=2)) == [
        ("a4", 1),
        ("a3", 2),
    ]
    assert entries(store.lineage_downstream(tenant=TENANT, materialization_ids=[ids["a0"]])) == entries(down)
    assert entries(store.lineage_downstream(tenant=TENANT, materialization_ids=[ids["a0"]], depth=1)) == [
        ("a1", 1)
    ]
    assert entries(store.lineage_downstream(tenant=TENANT, materialization_ids=[ids["a0"]], depth=2)) == [
        ("a1", 1),
        ("a2", 2),
    ]
    assert store.lineage_downstream(tenant=TENANT, materialization_ids=[]) == []
    assert store.lineage_upstream(tenant="other", materialization_id=ids["a5"]) == []
    assert store.lineage_downstream(tenant="other", materialization_ids=[ids["a0"]]) == []

    impact = app.lineage.impact("a0", depth=2)
    assert [(e.asset, e.depth, e.stale) for e in impact] == [("a1", 1, False), ("a2", 2, False)]


def test_lineage_of_a_diamond_reports_each_node_once_at_its_smallest_depth(make_app: MakeApp) -> None:
    app = make_app(diamond())
    run = app.materialize(["bottom"])
    assert run.success
    ids = {s.asset: s.materialization.id for s in run.steps.values() if s.materialization}

    up = app.lineage.upstream("bottom")
    assert entries(up) == [("left", 1), ("right", 1), ("top", 2)]
    assert [e.materialization_id for e in up] == [ids["left"], ids["right"], ids["top"]]
    assert entries(app.lineage.upstream("bottom", depth=1)) == [("left", 1), ("right", 1)]
    assert entries(app.lineage.upstream("bottom", depth=2)) == entries(up)

    down = app.lineage.downstream("top")
    assert entries(down) == [("left", 1), ("right", 1), ("bottom", 2)]
    assert entries(app.lineage.downstream("top", depth=1)) == [("left", 1), ("right", 1)]
    assert entries(app.lineage.downstream("top", depth=None)) == entries(down)

    store = app.store
    assert entries(store.lineage_upstream(tenant=TENANT, materialization_id=ids["bottom"])) == entries(up)
    assert entries(store.lineage_upstream(tenant=TENANT, materialization_id=ids["bottom"], depth=1)) == [
        ("left", 1),
        ("right", 1),
    ]
    assert entries(store.lineage_downstream(tenant=TENANT, materialization_ids=[ids["top"]])) == entries(down)
    assert entries(
        store.lineage_downstream(tenant=TENANT, materialization_ids=[ids["left"], ids["top"]])
    ) == [("bottom", 1), ("left", 1), ("right", 1)]


def test_lineage_points_at_the_exact_upstream_materialization(make_app: MakeApp) -> None:
    app = make_app(diamond(extra=True))
    first = app.materialize(["bottom"])
    assert first.success
    old = {s.asset: s.materialization.id for s in first.steps.values() if s.materialization}

    forced = app.materialize(["top"], force=True)
    assert forced.success
    assert [s.asset for s in app.store.run_steps(tenant=TENANT, run_id=forced.run_id)] == ["top"]
    new_top = forced.steps["top"].materialization
    assert new_top is not None and new_top.id != old["top"]

    # left/right/bottom were built from the old 'top', and the lineage still says so.
    up = app.lineage.upstream("bottom")
    assert [(e.asset, e.materialization_id) for e in up] == [
        ("left", old["left"]),
        ("right", old["right"]),
        ("top", old["top"]),
    ]
    assert app.store.lineage_downstream(tenant=TENANT, materialization_ids=[new_top.id]) == []
    assert app.store.lineage_downstream(tenant=TENANT, materialization_ids=[old["top"]]) != []
    # downstream() of an asset covers what consumed any of its materializations.
    assert entries(app.lineage.downstream("top")) == [("left", 1), ("right", 1), ("bottom", 2)]

    impact = app.lineage.impact("top")
    assert [(e.asset, e.depth, e.stale) for e in impact] == [
        ("left", 1, True),
        ("right", 1, True),
        ("bottom", 2, True),
        ("report", 3, None),  # in the graph, never materialized
    ]
    assert [e.materialization_id for e in impact] == [old["left"], old["right"], old["bottom"], None]
    assert [e.asset for e in app.lineage.impact("top", depth=1)] == ["left", "right"]

    # Re-running 'left' alone: its lineage moves to the new 'top'; 'right' and 'bottom' stay stale.
    rerun = app.materialize(["left"], force=True)
    assert [s.asset for s in app.store.run_steps(tenant=TENANT, run_id=rerun.run_id)] == ["left"]
    new_left = rerun.steps["left"].materialization
    assert new_left is not None
    [link] = app.lineage.upstream("left")
    assert link.materialization_id == new_top.id
    stale = {e.asset: e.stale for e in app.lineage.impact("top")}
    assert stale == {"left": False, "right": True, "bottom": True, "report": None}
    assert [(e.asset, e.materialization_id) for e in app.lineage.upstream("bottom", depth=1)] == [
        ("left", old["left"]),
        ("right", old["right"]),
    ]

    everything = app.materialize(["report", "left", "right", "bottom"], force=True)
    assert everything.success
    assert {e.asset: e.stale for e in app.lineage.impact("top")} == {
        "left": False,
        "right": False,
        "bottom": False,
        "report": False,
    }
    bottom_mat = everything.steps["bottom"].materialization
    assert bottom_mat is not None
    assert {e.asset: e.materialization_id for e in app.lineage.upstream("bottom")} == {
        "left": everything.steps["left"].materialization.id,  # type: ignore[union-attr]
        "right": everything.steps["right"].materialization.id,  # type: ignore[union-attr]
        "top": new_top.id,
    }


def test_lineage_rejects_bad_depths_and_unknown_assets(make_app: MakeApp) -> None:
    app = make_app(chain(2))
    app.materialize(["a2"])
    for depth in (0, -1):
        with pytest.raises(fs.FlowStoneError, match="depth must be an integer from 1 to"):
            app.lineage.upstream("a2", depth=depth)
        with pytest.raises(fs.FlowStoneError, match="depth must be an integer from 1 to"):
            app.lineage.downstream("a0", depth=depth)
    with pytest.raises(fs.AssetNotFound, match="a1"):
        app.lineage.upstream("a11")
    with pytest.raises(fs.AssetNotFound):
        app.lineage.downstream("nope")
    with pytest.raises(fs.AssetNotFound):
        app.lineage.impact("nope")


def test_impact_before_anything_is_materialized_lists_the_graph(make_app: MakeApp) -> None:
    app = make_app(diamond())
    impact = app.lineage.impact("top")
    assert [(e.asset, e.depth, e.materialization_id, e.stale) for e in impact] == [
        ("left", 1, None, None),
        ("right", 1, None, None),
        ("bottom", 2, None, None),
    ]
    assert app.lineage.upstream("bottom") == []
    assert app.lineage.downstream("top") == []


# ---------------------------------------------------------------------- recovery
def _running_run(store: Store, steps: int = 2) -> str:
    run_id = uuid.uuid4().hex
    store.create_run(
        tenant=TENANT,
        run_id=run_id,
        pipeline="p",
        selection=["x"],
        partition_key=None,
        force=False,
        actor="system",
        executor="serial",
        steps=[NewStep(uuid.uuid4().hex, i, f"s{i}", None, []) for i in range(steps)],
    )
    return run_id


def _set(store: Store, run_id: str, **values: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(t.runs.update().where(t.runs.c.id == run_id).values(**values))


def _status(store: Store, run_id: str) -> fs.RunStatus:
    record = store.get_run(tenant=TENANT, run_id=run_id)
    assert record is not None
    return record.status


def test_recover_abandons_runs_with_a_stale_heartbeat(store: Store) -> None:
    now = utcnow()
    stale = _running_run(store)
    _set(store, stale, heartbeat_at=now - timedelta(hours=2), host="elsewhere", pid=1)
    fresh = _running_run(store)
    _set(store, fresh, heartbeat_at=now - timedelta(seconds=10), host="elsewhere", pid=1)
    never = _running_run(store, steps=0)
    _set(store, never, heartbeat_at=None, host="elsewhere", pid=1)

    # Inserted directly, as a worker on another host would have left it.
    inserted = uuid.uuid4().hex
    with store.engine.begin() as conn:
        conn.execute(
            t.runs.insert(),
            {
                "id": inserted,
                "tenant_id": TENANT,
                "pipeline": "p",
                "status": "running",
                "selection": ["x"],
                "executor": "threads",
                "host": "other-host",
                "pid": 4242,
                "created_at": now - timedelta(days=1),
                "started_at": now - timedelta(days=1),
                "heartbeat_at": now - timedelta(minutes=30),
            },
        )

    # Without stale_after, runs of other hosts are left alone: their processes cannot be checked.
    assert store.recover(tenant=TENANT) == []
    assert _status(store, stale) is fs.RunStatus.RUNNING

    dead = store.recover(tenant=TENANT, stale_after=timedelta(minutes=5))
    assert sorted(dead) == sorted([stale, never, inserted])
    assert _status(store, fresh) is fs.RunStatus.RUNNING
    for run_id in dead:
        record = store.get_run(tenant=TENANT, run_id=run_id)
        assert record is not None
        assert record.status is fs.RunStatus.ABANDONED
        assert record.finished_at is not None
        assert record.error is not None and record.error.startswith("abandoned: no heartbeat since")
    steps = store.run_steps(tenant=TENANT, run_id=stale)
    assert [s.status for s in steps] == [fs.StepStatus.ABANDONED] * 2
    assert all(s.reason and "no heartbeat since" in s.reason for s in steps)
    [event] = [e for e in store.list_events(tenant=TENANT, run_id=stale) if e["type"] == "run.abandoned"]
    assert "no heartbeat" in event["data"]["reason"]

    # Already abandoned runs are not found again; `now` moves the horizon.
    assert store.recover(tenant=TENANT, stale_after=timedelta(minutes=5)) == []
    later = now + timedelta(hours=1)
    assert store.recover(tenant=TENANT, stale_after=timedelta(minutes=5), now=later) == [fresh]
    assert store.recover(tenant="other", stale_after=timedelta(seconds=0)) == []


def test_recover_abandons_runs_whose_process_is_gone(store: Store) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    gone_pid = int(finished.stdout)
    dead_run = _running_run(store)
    _set(store, dead_run, pid=gone_pid)  # same host, fresh heartbeat, but its process has exited
    mine = _running_run(store)  # this process: alive

    assert store.recover(tenant=TENANT) == [dead_run]
    record = store.get_run(tenant=TENANT, run_id=dead_run)
    assert record is not None and record.status is fs.RunStatus.ABANDONED
    assert record.error == f"abandoned: process {gone_pid} on {socket.gethostname()} is gone"
    assert _status(store, mine) is fs.RunStatus.RUNNING
    assert store.recover(tenant=TENANT, skip_run_ids=[mine], stale_after=timedelta(0)) == []


def test_the_run_writer_keeps_a_live_runs_heartbeat_fresh(store: Store) -> None:
    run_id = _running_run(store)
    old = utcnow() - timedelta(hours=1)
    _set(store, run_id, heartbeat_at=old, host="elsewhere")
    writer = RunWriter(store.engine, run_id, flush_interval=0.005, heartbeat_every=0.01)
    try:
        deadline = time.monotonic() + 10
        while True:
            record = store.get_run(tenant=TENANT, run_id=run_id)
            assert record is not None and record.heartbeat_at is not None
            if record.heartbeat_at > old + timedelta(minutes=30):
                break
            assert time.monotonic() < deadline, "the writer never refreshed the heartbeat"
            threading.Event().wait(0.01)
        assert store.recover(tenant=TENANT, stale_after=timedelta(minutes=5)) == []
    finally:
        writer.close()
    assert record.heartbeat_at <= utcnow()
    assert _status(store, run_id) is fs.RunStatus.RUNNING


def test_starting_flowstone_recovers_dead_runs(store: Store, make_app: MakeApp) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_run = _running_run(store)
    _set(store, dead_run, pid=int(finished.stdout))

    app = make_app(chain(1))
    assert _status(store, dead_run) is fs.RunStatus.ABANDONED
    run = app.materialize(["a1"])
    assert run.success
    assert _status(store, run.run_id) is fs.RunStatus.SUCCEEDED


# ---------------------------------------------------------------------- PostgreSQL specifics
@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql://", "postgres://"])
def test_bare_postgres_urls_use_psycopg(pg_url: str, scheme: str) -> None:
    bare = scheme + pg_url.split("://", 1)[1]
    store = Store.open(bare)
    try:
        assert store.engine.dialect.name == "postgresql"
        assert store.engine.dialect.driver == "psycopg"
        store.ping()
    finally:
        store.close()


def test_a_late_write_of_an_older_attempt_never_overwrites_a_newer_one(store_url: str) -> None:
    """Retries: one commit may carry attempt 1's finish and attempt 2's start of the same step."""
    store = Store.open(store_url)
    run_id, step_id = uuid.uuid4().hex, uuid.uuid4().hex
    store.create_run(
        tenant=TENANT,
        run_id=run_id,
        pipeline="p",
        selection=["a"],
        partition_key=None,
        force=False,
        actor="api",
        executor="serial",
        steps=[NewStep(step_id, 0, "a", None, [])],
    )
    writer = store.run_writer(run_id)

    def event(type_: str) -> Event:
        return Event(type_, utcnow(), run_id, "a", None, {})

    def failed_attempt(attempt: int) -> Materialization:
        now = utcnow()
        return Materialization(
            id=uuid.uuid4().hex,
            run_id=run_id,
            asset="a",
            partition_key=None,
            status="failed",
            started_at=now,
            finished_at=now,
            duration_ms=1.0,
            attempt=attempt,
            error_type="timeout",
            error_message="slow",
            retryable=True,
        )

    try:
        writer.start_step(tenant=TENANT, step_id=step_id, attempt=1, event=event("step.started"))
        writer.flush()
        writer.finish_step(
            tenant=TENANT, outcome=StepOutcome(step_id, failed_attempt(1), (), event("step.failed"))
        )
        writer.start_step(tenant=TENANT, step_id=step_id, attempt=2, event=event("step.started"))
        writer.flush()
        [step] = store.run_steps(tenant=TENANT, run_id=run_id)
        assert (step.status, step.attempt) == (fs.StepStatus.RUNNING, 2)
        # A stale start of attempt 1 arriving now changes nothing either.
        writer.start_step(tenant=TENANT, step_id=step_id, attempt=1, event=event("step.started"))
        writer.flush()
        [step] = store.run_steps(tenant=TENANT, run_id=run_id)
        assert (step.status, step.attempt) == (fs.StepStatus.RUNNING, 2)
        # Attempt 1's outcome stays on record as its materialization.
        assert len(store.materializations(tenant=TENANT, run_id=run_id)) == 1
    finally:
        writer.close()
        store.close()
