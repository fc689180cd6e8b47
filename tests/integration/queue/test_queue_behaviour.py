"""What the run queue promises, proven against the real PostgreSQL with real worker processes:
one materialization per partition at a time (coalescing, waiting), retries, payloads that are
names only, code-version checks, transactional enqueue, priorities and job pruning."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

import flowstone as fs
from flowstone.queue._config import PRIORITY_BACKFILL, PRIORITY_INTERACTIVE

from .conftest import PIPE_HELPERS, QueueProject, max_overlap, wait_for

PARTS = (
    PIPE_HELPERS
    + """
import flowstone as fs

pipeline = fs.Pipeline("parts")
parts = fs.StaticPartitions(["a", "b", "c", "d", "e"])


@pipeline.asset(partitioned_by=parts)
def part(context):
    record("calls.jsonl", asset="part", key=context.partition_key, run=context.run_id, phase="start")
    hold(context, "go-" + context.partition_key)
    record("calls.jsonl", asset="part", key=context.partition_key, run=context.run_id, phase="end")
    return context.partition_key * 3


@pipeline.asset(partitioned_by=parts)
def down(context, part):
    record("calls.jsonl", asset="down", key=context.partition_key, run=context.run_id, phase="start")
    return part.upper()


@pipeline.asset
def interactive(context):
    record("calls.jsonl", asset="interactive", key=None, run=context.run_id, phase="start")
    return 1
"""
)


def _steps(app: fs.FlowStone, run_id: str) -> dict[tuple[str, str | None], fs.StepRecord]:
    found = app.run(run_id)
    assert found is not None
    return {(s.asset, s.partition_key): s for s in found[1]}


def _successes(app: fs.FlowStone, asset: str, key: str | None) -> list[fs.Materialization]:
    return [
        m
        for m in app.store.materializations(tenant=app.tenant, asset=asset, limit=1000)
        if m.partition_key == key and m.status == "success"
    ]


# ---------------------------------------------------------------------- one at a time
def test_runs_for_a_queued_partition_coalesce_into_one_materialization(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(PARTS)
    project.touch("go-a")
    app = project.app()
    first = app.submit(["part"], partition="a")
    # Submitted while the first run's step is still queued: it joins it, and its downstream
    # step waits for the shared one.
    second = app.submit(["down"], partition="a")
    follower = _steps(app, second)[("part", "a")]
    jobs = project.sql("SELECT count(*) FROM procrastinate_jobs WHERE args->>'asset' = 'part'")
    assert jobs == [(1,)], "the second run's step must not get a job of its own"

    project.start_worker("--concurrency", "4")
    assert app.wait_run(first, timeout=30).status is fs.RunStatus.SUCCEEDED, project.logs()
    assert app.wait_run(second, timeout=30).status is fs.RunStatus.SUCCEEDED, project.logs()

    calls = [c for c in project.records("calls.jsonl") if c["asset"] == "part" and c["phase"] == "start"]
    assert len(calls) == 1, calls
    successes = _successes(app, "part", "a")
    assert len(successes) == 1
    leader = _steps(app, first)[("part", "a")]
    joined = _steps(app, second)[("part", "a")]
    assert leader.status is joined.status is fs.StepStatus.SUCCEEDED
    assert leader.materialization_id == joined.materialization_id == successes[0].id
    (coalesced_into,) = project.sql(
        "SELECT coalesced_into FROM flowstone_run_steps WHERE id = :id", {"id": follower.id}
    )[0]
    assert coalesced_into == leader.id
    # The second run's downstream step ran on the shared value and records it as its input.
    assert app.load("down", partition="a") == "AAA"
    upstream = app.lineage.upstream("down", partition="a")
    assert [(e.asset, e.partition_key) for e in upstream] == [("part", "a")]


def test_steps_released_together_by_a_shared_step_coalesce_too(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(PARTS)
    project.touch("go-a")
    app = project.app()
    # Both runs want part[a] then down[a]: part[a] is shared at once; both down[a] steps wait,
    # and become ready in the same hand-off when the shared part[a] succeeds.
    runs = [app.submit(["down"], partition="a") for _ in range(2)]
    project.start_worker("--concurrency", "4")
    for run_id in runs:
        assert app.wait_run(run_id, timeout=20).status is fs.RunStatus.SUCCEEDED, project.logs()
    calls = [(c["asset"], c["key"]) for c in project.records("calls.jsonl") if c["phase"] == "start"]
    assert sorted(calls) == [("down", "a"), ("part", "a")]
    for asset in ("part", "down"):
        (success,) = _successes(app, asset, "a")
        assert {_steps(app, r)[(asset, "a")].materialization_id for r in runs} == {success.id}


def test_a_run_for_a_partition_that_is_running_waits_for_it(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(PARTS)
    app = project.app()
    first = app.submit(["part"], partition="b", force=True)
    project.start_worker("--concurrency", "4")
    wait_for(lambda: project.records("calls.jsonl"), what="the first step to start")
    # The first run's step runs now: a second run for the same partition may not join it (its
    # value may be built from older inputs) nor run beside it; it waits for it.
    second = app.submit(["part"], partition="b", force=True)
    waiting = _steps(app, second)[("part", "b")]
    assert waiting.status is fs.StepStatus.QUEUED
    first_job = project.sql("SELECT job_id FROM flowstone_run_steps WHERE id = :id", {"id": waiting.id})[0][0]

    def tried_and_put_back() -> bool:
        rows = project.sql(
            "SELECT job_id, status FROM flowstone_run_steps WHERE id = :id", {"id": waiting.id}
        )
        return rows[0][0] != first_job and rows[0][1] == "queued"

    # A free worker took the second step's job, found the partition claimed and put it back.
    wait_for(tried_and_put_back, what="the second step to be tried and deferred")
    claims = project.sql("SELECT run_id FROM flowstone_step_claims WHERE asset = 'part'")
    assert claims == [(first,)]
    assert len(project.records("calls.jsonl")) == 1
    project.touch("go-b")
    assert app.wait_run(first, timeout=20).status is fs.RunStatus.SUCCEEDED, project.logs()
    assert app.wait_run(second, timeout=20).status is fs.RunStatus.SUCCEEDED, project.logs()

    calls = project.records("calls.jsonl")
    by_run: dict[str, list[float]] = {}
    for call in calls:
        by_run.setdefault(call["run"], []).append(call["t"])
    assert sorted(by_run) == sorted([first, second])
    intervals = [(min(ts), max(ts)) for ts in by_run.values()]
    assert max_overlap(intervals) == 1, calls
    assert by_run[first][-1] <= by_run[second][0]
    # Each run built its own value, one after the other: two successes, never at once.
    assert len(_successes(app, "part", "b")) == 2
    steps = [_steps(app, r)[("part", "b")] for r in (first, second)]
    assert steps[0].finished_at is not None and steps[1].started_at is not None
    assert steps[0].finished_at <= steps[1].started_at


# ---------------------------------------------------------------------- retries
RETRIES = (
    PIPE_HELPERS
    + """
import flowstone as fs

pipeline = fs.Pipeline("retries")


class Flaky(Exception):
    pass


def attempt_number(name):
    record(name)
    return len((ROOT / name).read_text().splitlines())


@pipeline.asset
def asks_again(context):
    if attempt_number("asks_again.attempts") <= 2:
        raise fs.Retry("not yet", after=0.2)
    return "done"


@pipeline.asset(retry=fs.RetryPolicy(max_attempts=3, base_delay=0.1, jitter=0.0, retry_on=(Flaky,)))
def flaky(context, asks_again):
    if attempt_number("flaky.attempts") <= 1:
        raise Flaky("the warehouse hiccupped")
    return asks_again + "!"


@pipeline.asset(retry=fs.RetryPolicy(max_attempts=3, base_delay=0.1, retry_on=(Flaky,)))
def broken(context):
    attempt_number("broken.attempts")
    raise ValueError("a bug, not worth retrying")


@pipeline.asset
def exits(context):
    record("exits.attempts")
    raise SystemExit(3)


@pipeline.asset
def after_broken(context, broken):
    record("after_broken.attempts")
    return broken
"""
)


def test_retryable_failures_are_tried_again_until_they_succeed(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(RETRIES)
    app = project.app()
    run_id = app.submit(["flaky"])
    project.start_worker("--concurrency", "2")
    record = app.wait_run(run_id, timeout=20)
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()
    assert app.load("flaky") == "done!"

    for asset, failures, delay in (("asks_again", 2, 0.2), ("flaky", 1, 0.1)):
        mats = sorted(
            app.store.materializations(tenant=app.tenant, asset=asset, run_id=run_id), key=lambda m: m.attempt
        )
        assert [m.attempt for m in mats] == list(range(1, failures + 2))
        assert [m.status for m in mats] == ["failed"] * failures + ["success"]
        for failed in mats[:-1]:
            assert failed.retryable is True
            assert failed.metadata["retry_delay_s"] == pytest.approx(delay)
        assert "retry_delay_s" not in mats[-1].metadata
        step = _steps(app, run_id)[(asset, None)]
        assert step.status is fs.StepStatus.SUCCEEDED
        assert step.attempt == failures + 1
        assert step.materialization_id == mats[-1].id
        assert len((project.root / f"{asset}.attempts").read_text().splitlines()) == failures + 1
    types = [e["type"] for e in app.store.list_events(tenant=app.tenant, run_id=run_id)]
    assert types.count("step.retrying") == 3


def test_a_non_retryable_failure_fails_at_once_and_skips_the_downstream(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(RETRIES)
    app = project.app()
    run_id = app.submit(["after_broken"])
    project.start_worker("--concurrency", "2")
    record = app.wait_run(run_id, timeout=20)
    assert record.status is fs.RunStatus.FAILED, project.logs()

    steps = _steps(app, run_id)
    assert steps[("broken", None)].status is fs.StepStatus.FAILED
    assert steps[("broken", None)].error_type == "execution_error"
    assert steps[("broken", None)].attempt == 1
    assert len((project.root / "broken.attempts").read_text().splitlines()) == 1
    mats = app.store.materializations(tenant=app.tenant, asset="broken", run_id=run_id)
    assert [(m.attempt, m.status, m.retryable) for m in mats] == [(1, "failed", False)]
    assert steps[("after_broken", None)].status is fs.StepStatus.SKIPPED
    assert steps[("after_broken", None)].error_type == "dependency_failed"
    assert not (project.root / "after_broken.attempts").exists()
    wait_for(
        lambda: (
            project.sql("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')") == [(0,)]
        ),
        what="no job left to run",
    )


def test_an_asset_that_raises_system_exit_fails_its_step_and_frees_its_partition(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(RETRIES)
    app = project.app()
    run_id = app.submit(["exits"])
    project.start_worker("--concurrency", "2")
    record = app.wait_run(run_id, timeout=15)
    assert record.status is fs.RunStatus.FAILED, project.logs()
    step = _steps(app, run_id)[("exits", None)]
    assert step.status is fs.StepStatus.FAILED
    assert step.error_type == "execution_error"
    assert step.error_message is not None and "SystemExit" in step.error_message
    assert project.sql("SELECT count(*) FROM flowstone_step_claims") == [(0,)]
    assert len((project.root / "exits.attempts").read_text().splitlines()) == 1


# ---------------------------------------------------------------------- dependency not ready
NOT_READY = """
import flowstone as fs

pipeline = fs.Pipeline("not_ready")
days = fs.DailyPartitions(start="2025-01-01", end="2025-01-10")


@pipeline.asset(partitioned_by=days)
def daily(context):
    return context.partition_key


@pipeline.asset(
    partitioned_by=days,
    ins={"daily": fs.In(mapping=fs.TimeWindowMapping(start_offset=-1, end_offset=-1), missing="wait")},
    retry=fs.RetryPolicy(max_attempts=2, base_delay=0.1, jitter=0.0),
)
def day_before(context, daily):
    return daily
"""

NOT_READY_WORKER = """
import sys

import flowstone as fs
from flowstone.queue import QueueConfig
from flowstone.queue._worker import Worker

sys.path.insert(0, ".")
from pipe import pipeline  # noqa: E402

config = QueueConfig(stalled_after=3.0, reap_every=0.5, not_ready_every={every}, not_ready_for={for_})
app = fs.FlowStone(pipeline, store=sys.argv[1], storage_dir=".flowstone/storage", queue=config)
Worker(app, concurrency=2).run()
"""


def test_waiting_for_a_missing_upstream_partition_uses_no_attempts(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(NOT_READY)
    app = project.app()
    # The first day reads the day before the partitions start: missing, and the input waits.
    run_id = app.submit(["day_before"], partition="2025-01-01")
    _start_not_ready_worker(project, every=0.2, for_=60.0)

    def waits() -> list[dict[str, Any]]:
        events = app.store.list_events(tenant=app.tenant, run_id=run_id)
        return [e for e in events if e["type"] == "step.retrying" and (e["data"] or {}).get("waiting")]

    # As many waits as its RetryPolicy(max_attempts=2) has attempts: had a wait used one up,
    # the second would be attempt 2, the last.
    found = wait_for(lambda: len(waits()) >= 2 and waits(), what="the step to wait twice")
    assert {e["data"]["attempt"] for e in found} == {1}
    assert app.store.materializations(tenant=app.tenant, asset="day_before", run_id=run_id) == []
    step = _steps(app, run_id)[("day_before", "2025-01-01")]
    assert step.status in (fs.StepStatus.QUEUED, fs.StepStatus.RUNNING)
    assert step.attempt == 1
    run = app.store.get_run(tenant=app.tenant, run_id=run_id)
    assert run is not None and run.status is fs.RunStatus.RUNNING
    # A waiting step is cancelled like any step that has not started.
    assert app.cancel_run(run_id) is True
    assert app.wait_run(run_id, timeout=10).status is fs.RunStatus.CANCELLED, project.logs()
    step = _steps(app, run_id)[("day_before", "2025-01-01")]
    assert step.status is fs.StepStatus.SKIPPED and step.error_type == "cancelled"
    wait_for(
        lambda: (
            project.sql("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')") == [(0,)]
        ),
        what="its job to go",
    )


DYNAMIC = """
import flowstone as fs

pipeline = fs.Pipeline("dynamic")
customers = fs.DynamicPartitions("customers")
regions = fs.StaticPartitions(["eu", "us"])


@pipeline.asset(partitioned_by=customers)
def customer(context):
    return context.partition_key.upper()


@pipeline.asset(
    partitioned_by=regions,
    ins={"customer": fs.In(mapping=fs.StaticMapping({"eu": ["acme"], "us": ["zeta"]}), missing="wait")},
)
def region(context, customer):
    return sorted(customer.values())
"""


def _start_not_ready_worker(project: QueueProject, *, every: float, for_: float) -> None:
    import subprocess
    import sys

    script = NOT_READY_WORKER.format(every=every, for_=for_)
    (project.root / "worker.py").write_text(script)
    log = (project.root / f"worker-{len(project.workers)}.log").open("wb")
    project.workers.append(
        subprocess.Popen(
            [sys.executable, "worker.py", project.store_url],
            cwd=project.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )


def test_a_waiting_step_runs_once_its_upstream_partition_exists(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(DYNAMIC)
    app = project.app()
    # Customer "acme" is not a partition yet: region[eu] waits for it (In(missing="wait")).
    run_id = app.submit(["region"], partition="eu")
    _start_not_ready_worker(project, every=0.2, for_=30.0)

    def waits() -> int:
        events = app.store.list_events(tenant=app.tenant, run_id=run_id)
        return sum(1 for e in events if e["type"] == "step.retrying" and (e["data"] or {}).get("waiting"))

    wait_for(lambda: waits() >= 2, what="the step to wait for its upstream")
    app.add_partitions("customers", ["acme"])
    app.materialize(["customer"], partition="acme")
    record = app.wait_run(run_id, timeout=15)
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()
    assert app.load("region", partition="eu") == ["ACME"]
    step = _steps(app, run_id)[("region", "eu")]
    assert step.attempt == 1
    (customer,) = _successes(app, "customer", "acme")
    upstream = app.lineage.upstream("region", partition="eu")
    assert [(e.asset, e.partition_key, e.materialization_id) for e in upstream] == [
        ("customer", "acme", customer.id)
    ]


# ---------------------------------------------------------------------- payloads and code
def test_jobs_carry_only_names_and_keys(queue_project: Callable[..., QueueProject]) -> None:
    project = queue_project(PARTS)
    app = project.app()
    run_id = app.submit(["part"], partition="c")
    rows = project.sql("SELECT args, task_name FROM procrastinate_jobs")
    assert len(rows) == 1
    args, task = rows[0]
    args = args if isinstance(args, dict) else json.loads(args)
    assert task == "flowstone.run_step"
    assert set(args) == {"tenant", "run", "asset", "partition", "attempt", "code"}
    assert all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in args.values())
    assert args["run"] == run_id
    assert (args["tenant"], args["asset"], args["partition"], args["attempt"]) == ("default", "part", "c", 1)
    json.dumps(args)  # and it round-trips as JSON


VERSIONED = (
    PIPE_HELPERS
    + """
import flowstone as fs

pipeline = fs.Pipeline("versioned")


@pipeline.asset(code_version="1")
def report(context):
    record("report.calls")
    return 1


@pipeline.asset(code_version="1")
def summary(context, report):
    record("summary.calls")
    return report
"""
)


def test_a_step_enqueued_with_other_code_is_refused_not_run(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(VERSIONED)
    newer = fs.Pipeline("versioned")

    @newer.asset(code_version="2")
    def report(context: Any) -> int:
        return 2

    app = project.app()
    enqueuer = fs.FlowStone(
        newer, store=project.store_url, storage_dir=project.root / ".flowstone" / "storage"
    )
    try:
        run_id = enqueuer.submit(["report"])
    finally:
        enqueuer.close()
    project.start_worker()
    record = app.wait_run(run_id, timeout=20)
    assert record.status is fs.RunStatus.FAILED, project.logs()
    step = _steps(app, run_id)[("report", None)]
    assert step.status is fs.StepStatus.FAILED
    assert step.error_type == "validation_error"
    assert step.error_message is not None
    assert "v:2" in step.error_message and "v:1" in step.error_message
    assert not (project.root / "report.calls").exists()
    assert _successes(app, "report", None) == []


def test_a_downstream_step_enqueued_with_other_code_is_refused_too(
    queue_project: Callable[..., QueueProject],
) -> None:
    """Only the first step's job is deferred by the enqueuer; the downstream one is deferred by
    the worker that finished its upstream, and must still carry the enqueuer's code version."""
    project = queue_project(VERSIONED)
    newer = fs.Pipeline("versioned")

    @newer.asset(code_version="1")
    def report(context: Any) -> int:
        return 2

    @newer.asset(code_version="2")
    def summary(context: Any, report: int) -> int:
        return report

    app = project.app()
    enqueuer = fs.FlowStone(
        newer, store=project.store_url, storage_dir=project.root / ".flowstone" / "storage"
    )
    try:
        run_id = enqueuer.submit(["summary"])
    finally:
        enqueuer.close()
    project.start_worker()
    record = app.wait_run(run_id, timeout=20)
    assert record.status is fs.RunStatus.FAILED, project.logs()
    steps = _steps(app, run_id)
    assert steps[("report", None)].status is fs.StepStatus.SUCCEEDED
    step = steps[("summary", None)]
    assert step.status is fs.StepStatus.FAILED
    assert step.error_type == "validation_error"
    assert step.error_message is not None
    assert "v:2" in step.error_message and "v:1" in step.error_message
    assert not (project.root / "summary.calls").exists()


# ---------------------------------------------------------------------- transactional enqueue
def test_a_failed_submit_leaves_neither_run_nor_jobs(
    queue_project: Callable[..., QueueProject], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowstone._ids import new_id
    from flowstone.queue._db import QueueDB

    project = queue_project(PARTS)
    app = project.app()
    queue = app.run_queue()
    queue.submit(app.plan(["down"], partition="d"), tenant=app.tenant)  # creates the tables
    before = (
        project.sql("SELECT count(*) FROM flowstone_runs"),
        project.sql("SELECT count(*) FROM procrastinate_jobs"),
    )
    assert before == ([(1,)], [(1,)])
    plan = app.plan(["down"], partition="e")

    def submit(**hooks: Any) -> None:
        queue.db.submit(
            plan,
            run_id=new_id(),
            tenant=app.tenant,
            pipeline="parts",
            actor="api",
            priority=PRIORITY_INTERACTIVE,
            step_ids={s.key: new_id() for s in plan.steps},
            **hooks,
        )

    def crash() -> None:
        raise RuntimeError("the enqueuer died")

    with pytest.raises(RuntimeError, match="enqueuer died"):
        submit(fail_after_run_insert=crash)
    # Even after its jobs were deferred, a failure before the commit takes them back too.
    original = QueueDB._enqueue

    def enqueue_then_crash(self: QueueDB, *args: Any) -> None:
        original(self, *args)
        assert project.sql("SELECT count(*) FROM procrastinate_jobs") == [(1,)]  # not visible yet
        raise RuntimeError("the enqueuer died after deferring")

    monkeypatch.setattr(QueueDB, "_enqueue", enqueue_then_crash)
    with pytest.raises(RuntimeError, match="after deferring"):
        submit()
    assert project.sql("SELECT count(*) FROM flowstone_runs") == [(1,)]
    assert project.sql("SELECT count(*) FROM flowstone_run_steps WHERE partition_key = 'e'") == [(0,)]
    assert project.sql("SELECT count(*) FROM procrastinate_jobs") == [(1,)]
    assert project.sql("SELECT count(*) FROM procrastinate_jobs WHERE args->>'partition' = 'e'") == [(0,)]


# ---------------------------------------------------------------------- priorities
def test_an_interactive_run_goes_before_a_queued_backfill(queue_project: Callable[..., QueueProject]) -> None:
    project = queue_project(PARTS)
    for key in "abcde":
        project.touch(f"go-{key}")
    app = project.app()
    backfill = app.submit_plan(app.plan(["part"], partitions=list("abcde")), priority=PRIORITY_BACKFILL)
    interactive = app.submit(["interactive"])
    project.start_worker("--concurrency", "1")
    assert app.wait_run(backfill, timeout=20).status is fs.RunStatus.SUCCEEDED, project.logs()
    assert app.wait_run(interactive, timeout=20).status is fs.RunStatus.SUCCEEDED, project.logs()

    starts = [(c["t"], c["asset"]) for c in project.records("calls.jsonl") if c["phase"] == "start"]
    assert sorted(starts)[0][1] == "interactive", starts
    first = _steps(app, interactive)[("interactive", None)].started_at
    backfill_starts = [s.started_at for s in _steps(app, backfill).values()]
    assert first is not None and all(s is not None and first < s for s in backfill_starts)


def test_an_interactive_run_that_joins_a_backfill_step_does_not_wait_behind_the_backfill(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(PARTS)
    for key in "abcde":
        project.touch(f"go-{key}")
    app = project.app()
    backfill = app.submit_plan(app.plan(["part"], partitions=list("abcde")), priority=PRIORITY_BACKFILL)
    # The backfill's step for "e" is queued (last): the interactive run joins it ...
    interactive = app.submit(["part"], partition="e")
    assert project.sql("SELECT count(*) FROM procrastinate_jobs") == [(5,)]
    project.start_worker("--concurrency", "1")
    assert app.wait_run(interactive, timeout=20).status is fs.RunStatus.SUCCEEDED, project.logs()
    assert app.wait_run(backfill, timeout=20).status is fs.RunStatus.SUCCEEDED, project.logs()
    # ... and the shared step runs at the interactive priority, before the backfill's others.
    starts = sorted((c["t"], c["key"]) for c in project.records("calls.jsonl") if c["phase"] == "start")
    assert [k for _, k in starts] == ["e", "a", "b", "c", "d"], starts
    assert len(_successes(app, "part", "e")) == 1


# ---------------------------------------------------------------------- housekeeping
def test_prune_jobs_deletes_finished_jobs_only(queue_project: Callable[..., QueueProject]) -> None:
    project = queue_project(PARTS)
    app = project.app()
    app.submit_plan(app.plan(["part"], partitions=["a", "b", "c"]))
    jobs = [r[0] for r in project.sql("SELECT id FROM procrastinate_jobs ORDER BY id")]
    assert len(jobs) == 3
    project.sql("SELECT procrastinate_cancel_job_v1(:id, false, false)", {"id": jobs[0]})
    project.sql("SELECT procrastinate_finish_job_v1(:id, 'failed', false)", {"id": jobs[1]})
    # Finished moments ago: kept while younger than the retention.
    db = app.run_queue().db
    assert db.prune_jobs(older_than=3600) == 0
    assert db.prune_jobs(older_than=0) == 2
    assert project.sql("SELECT id, status::text FROM procrastinate_jobs") == [(jobs[2], "todo")]
