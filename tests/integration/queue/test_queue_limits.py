"""Concurrency limits hold across worker processes: pools, tenants and queues.

Each step records when it starts, then holds until the test releases it. The test waits until
the workers have tried, and put back, every step beyond the limit while the first ones hold, so a
limit that did not hold would show as a step started too many; after the release, the recorded
start/end times must never overlap more than the limit allows.
"""

from __future__ import annotations

from collections.abc import Callable

import flowstone as fs

from .conftest import PIPE_HELPERS, QueueProject, max_overlap, wait_for

KEYS = ["k1", "k2", "k3", "k4", "k5", "k6"]

LIMITED = (
    PIPE_HELPERS
    + """
import flowstone as fs

pipeline = fs.Pipeline("limited", pool_limits={"warehouse": 2})
keys = fs.StaticPartitions(["k1", "k2", "k3", "k4", "k5", "k6"])


def work(context):
    record("spans.jsonl", asset=context.asset_name, key=context.partition_key, phase="start")
    hold(context, "release")
    record("spans.jsonl", asset=context.asset_name, key=context.partition_key, phase="end")
    return context.partition_key


@pipeline.asset(partitioned_by=keys, pool="warehouse")
def pooled(context):
    return work(context)


@pipeline.asset(partitioned_by=keys)
def plain(context):
    return work(context)


@pipeline.asset(partitioned_by=keys, queue="backfill")
def queued(context):
    return work(context)
"""
)


def _spans(project: QueueProject, keys: list[str]) -> list[tuple[float, float]]:
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for r in project.records("spans.jsonl"):
        (starts if r["phase"] == "start" else ends)[r["key"]] = r["t"]
    assert sorted(starts) == sorted(ends) == keys
    return [(starts[k], ends[k]) for k in keys]


def _started(project: QueueProject) -> int:
    return sum(1 for r in project.records("spans.jsonl") if r["phase"] == "start")


def _check_limit(project: QueueProject, asset: str, limit: int, workers: int, keys: list[str]) -> None:
    app = project.app()
    run_id = app.submit_plan(app.plan([asset], partitions=keys))
    initial = dict(project.sql("SELECT partition_key, job_id FROM flowstone_run_steps"))
    for _ in range(workers):
        project.start_worker("--concurrency", "4")
    wait_for(lambda: _started(project) >= limit, what=f"{limit} steps to start")

    def the_rest_were_put_back() -> bool:
        rows = project.sql("SELECT partition_key, job_id, status FROM flowstone_run_steps")
        waiting = [(k, job) for k, job, status in rows if status == "queued"]
        return len(waiting) == len(keys) - limit and all(initial[k] != job for k, job in waiting)

    # Free worker slots took every other step's job and deferred it: the limit was full.
    wait_for(the_rest_were_put_back, what="the steps over the limit to be tried and deferred")
    assert _started(project) == limit, project.records("spans.jsonl")
    project.touch("release")
    record = app.wait_run(run_id, timeout=20)
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()
    assert max_overlap(_spans(project, keys)) == limit


def test_a_pool_limit_holds_across_workers(queue_project: Callable[..., QueueProject]) -> None:
    project = queue_project(LIMITED)
    _check_limit(project, "pooled", limit=2, workers=2, keys=KEYS)


def test_a_tenant_limit_holds_across_workers(queue_project: Callable[..., QueueProject]) -> None:
    project = queue_project(
        LIMITED, queue_toml='stalled_after = "3s"\nreap_every = "0.5s"\ntenant_limit = 1\n'
    )
    _check_limit(project, "plain", limit=1, workers=2, keys=KEYS[:3])


def test_a_queue_limit_holds_across_workers(queue_project: Callable[..., QueueProject]) -> None:
    project = queue_project(
        LIMITED, queue_toml='stalled_after = "3s"\nreap_every = "0.5s"\n[queue.queue_limits]\nbackfill = 3\n'
    )
    _check_limit(project, "queued", limit=3, workers=2, keys=KEYS)


def test_without_a_limit_the_same_steps_run_side_by_side(queue_project: Callable[..., QueueProject]) -> None:
    """The control: the steps above are held back by their limits, not by the workers."""
    project = queue_project(LIMITED)
    app = project.app()
    run_id = app.submit_plan(app.plan(["plain"], partitions=KEYS))
    project.start_worker("--concurrency", "8")
    wait_for(lambda: _started(project) == len(KEYS), what="every step to start at once")
    project.touch("release")
    assert app.wait_run(run_id, timeout=20).status is fs.RunStatus.SUCCEEDED, project.logs()
    assert max_overlap(_spans(project, KEYS)) == len(KEYS)
