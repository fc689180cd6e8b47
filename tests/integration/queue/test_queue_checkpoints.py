"""Checkpoints on queue runs: a gate parks its step (no worker held), the decision hands off to
the downstream jobs in its own transaction, and workers enforce gate timeouts."""

from __future__ import annotations

from collections.abc import Callable

import flowstone as fs

from .conftest import QueueProject, wait_for

GATED = """
import flowstone as fs

pipeline = fs.Pipeline("gated")


@pipeline.asset
def orders(context):
    return {"rows": 3, "change": 0.4}


@pipeline.checkpoint(message=lambda ctx, orders: f"change {orders['change']}")
def review(context, orders: dict) -> bool:
    return orders["change"] > 0.2


@pipeline.asset
def report(context, review):
    return review["rows"] * 10


@pipeline.asset
def side(context):
    return "independent"


@pipeline.checkpoint(timeout="1s", on_timeout="auto_approve")
def quick_review(context, orders) -> bool:
    return True


@pipeline.asset
def quick_report(context, quick_review):
    return quick_review["rows"]
"""


def _status(app: fs.FlowStone, run_id: str) -> dict[str, str]:
    found = app.run(run_id)
    assert found is not None
    return {s.asset: s.status.value for s in found[1]}


def test_a_queue_run_waits_at_a_gate_and_an_approval_hands_off_to_the_workers(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(GATED)
    app = project.app()
    run_id = app.submit(["report", "side"])
    project.start_worker("--concurrency", "2")
    record = app.wait_run(run_id, timeout=60)
    assert record.status is fs.RunStatus.WAITING_APPROVAL, project.logs()
    steps = _status(app, run_id)
    assert steps == {
        "orders": "succeeded",
        "review": "waiting_approval",
        "report": "pending",
        "side": "succeeded",
    }
    [request] = app.approvals.pending()
    assert (request.checkpoint, request.run_id, request.message) == ("review", run_id, "change 0.4")

    app.approvals.modify(request.id, {"rows": 7, "change": 0.0}, by="ana", reason="fixed the feed")
    record = app.wait_run(run_id, timeout=60)
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()
    assert app.load("report") == 70
    assert _status(app, run_id)["review"] == "succeeded"


def test_a_rejected_gate_of_a_queue_run_skips_its_downstream_and_fails_the_run(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(GATED)
    app = project.app()
    run_id = app.submit(["report"])
    project.start_worker("--concurrency", "1")
    assert app.wait_run(run_id, timeout=60).status is fs.RunStatus.WAITING_APPROVAL
    [request] = app.approvals.pending()
    app.approvals.reject(request.id, by="ana", reason="numbers look wrong")
    record = app.wait_run(run_id, timeout=30)
    assert record.status is fs.RunStatus.FAILED
    found = app.run(run_id)
    assert found is not None
    by_asset = {s.asset: s for s in found[1]}
    assert by_asset["review"].error_type == "checkpoint_rejected"
    assert (by_asset["report"].status.value, by_asset["report"].error_type) == (
        "skipped",
        "dependency_failed",
    )


def test_workers_enforce_gate_timeouts(queue_project: Callable[..., QueueProject]) -> None:
    project = queue_project(GATED)
    app = project.app()
    run_id = app.submit(["quick_report"])
    project.start_worker("--concurrency", "1")
    # No one decides: the worker's housekeeping applies on_timeout=auto_approve after 1 s.
    record = wait_for(
        lambda: (r := app.store.get_run(tenant="default", run_id=run_id)) and r.status.finished and r,
        timeout=60,
        what="the run to end after the gate timed out",
    )
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()
    [decided] = app.approvals.find(checkpoint="quick_review")
    assert (decided.status.value, decided.decided_by) == ("approved", "system:timeout")
    assert app.load("quick_report") == 3


def test_a_run_left_running_behind_its_gate_is_paused_by_the_workers(
    queue_project: Callable[..., QueueProject],
) -> None:
    """The gate's request and the run's last other step can commit at once, each transaction
    blind to the other: the run then shows 'running' with nothing to run. Every worker's
    housekeeping settles it (here the race is staged by resetting the status by hand)."""
    project = queue_project(GATED)
    app = project.app()
    run_id = app.submit(["report", "side"])
    project.start_worker("--concurrency", "2")
    assert app.wait_run(run_id, timeout=60).status is fs.RunStatus.WAITING_APPROVAL, project.logs()
    project.sql("UPDATE flowstone_runs SET status = 'running' WHERE id = :run", {"run": run_id})
    wait_for(
        lambda: (
            project.sql("SELECT status FROM flowstone_runs WHERE id = :run", {"run": run_id})
            == [("waiting_approval",)]
        ),
        timeout=30,
        what="the worker's housekeeping to pause the run again",
    )
    [request] = app.approvals.pending()
    app.approvals.approve(request.id, by="ana")
    assert app.wait_run(run_id, timeout=60).status is fs.RunStatus.SUCCEEDED, project.logs()
