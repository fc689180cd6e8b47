"""The queue end to end: a run submitted here is carried out by real ``flowstone worker``
processes against the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import flowstone as fs

from .conftest import QueueProject

DIAMOND = """
import flowstone as fs

pipeline = fs.Pipeline("diamond")

@pipeline.asset
def top(context):
    return 2

@pipeline.asset
def left(context, top):
    return top + 1

@pipeline.asset
def right(context, top):
    return top * 10

@pipeline.asset
def bottom(context, left, right):
    return left + right
"""


def test_two_workers_carry_out_a_diamond_run_and_record_lineage(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(DIAMOND)
    app = project.app()
    run_id = app.submit(["bottom"])
    assert app.store.get_run(tenant="default", run_id=run_id).status is fs.RunStatus.QUEUED
    project.start_worker("--concurrency", "2")
    project.start_worker("--concurrency", "2")
    record = app.wait_run(run_id, timeout=60)
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()
    assert app.load("bottom") == 3 + 20
    result = app.run_result(run_id)
    assert {k: s.status for k, s in result.steps.items()} == {
        n: fs.StepStatus.SUCCEEDED for n in ("top", "left", "right", "bottom")
    }
    upstream = {e.asset for e in app.lineage.upstream("bottom")}
    assert {"left", "right", "top"} <= upstream
