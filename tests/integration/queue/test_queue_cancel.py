"""Cancelling a queue run: steps not started are dropped with their jobs, the running one is
asked to stop, what finished keeps its success, and other runs are not dragged along."""

from __future__ import annotations

import json
from collections.abc import Callable

import flowstone as fs

from .conftest import PIPE_HELPERS, QueueProject, wait_for

CANCEL = (
    PIPE_HELPERS
    + """
import flowstone as fs

pipeline = fs.Pipeline("cancel")
parts = fs.StaticPartitions(["a", "b"])


@pipeline.asset
def first(context):
    record("calls.jsonl", asset="first", phase="start", run=context.run_id)
    return 1


@pipeline.asset
def blocker(context, first):
    record("calls.jsonl", asset="blocker", phase="start", run=context.run_id)
    released = hold(context, "release")
    record("calls.jsonl", asset="blocker", phase="end" if released else "stopped", run=context.run_id)
    context.raise_if_stopped()
    return first + 1


@pipeline.asset
def after(context, blocker):
    record("calls.jsonl", asset="after", phase="start", run=context.run_id)
    return blocker + 1


@pipeline.asset(queue="elsewhere")
def other(context, first):
    record("calls.jsonl", asset="other", phase="start", run=context.run_id)
    return 0


@pipeline.asset(partitioned_by=parts)
def part(context):
    record("calls.jsonl", asset="part", phase="start", run=context.run_id)
    released = hold(context, "release")
    record("calls.jsonl", asset="part", phase="end" if released else "stopped", run=context.run_id)
    context.raise_if_stopped()
    return context.partition_key
"""
)


def _steps(app: fs.FlowStone, run_id: str) -> dict[str, fs.StepRecord]:
    found = app.run(run_id)
    assert found is not None
    return {s.asset: s for s in found[1]}


def _calls(project: QueueProject, asset: str, phase: str, run: str | None = None) -> list[dict[str, object]]:
    return [
        c
        for c in project.records("calls.jsonl")
        if c["asset"] == asset and c["phase"] == phase and (run is None or c["run"] == run)
    ]


def test_cancelling_a_run_drops_waiting_steps_and_stops_the_running_one(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(CANCEL)
    app = project.app()
    run_id = app.submit(["after", "other"])
    # No worker takes the queue "elsewhere": `other` stays queued with its job waiting.
    project.start_worker("--concurrency", "2", "--queues", "flowstone")
    wait_for(lambda: _calls(project, "blocker", "start"), what="the blocking step to start")
    steps = _steps(app, run_id)
    assert steps["first"].status is fs.StepStatus.SUCCEEDED
    assert steps["blocker"].status is fs.StepStatus.RUNNING
    assert steps["other"].status is fs.StepStatus.QUEUED
    assert steps["after"].status is fs.StepStatus.PENDING
    other_job = project.sql(
        "SELECT job_id FROM flowstone_run_steps WHERE id = :id", {"id": steps["other"].id}
    )[0][0]
    assert project.sql("SELECT status::text FROM procrastinate_jobs WHERE id = :id", {"id": other_job}) == [
        ("todo",)
    ]

    assert app.cancel_run(run_id, reason="wrong day") is True
    record = app.wait_run(run_id, timeout=15)
    assert record.status is fs.RunStatus.CANCELLED, project.logs()

    steps = _steps(app, run_id)
    for waiting in ("other", "after"):
        assert steps[waiting].status is fs.StepStatus.SKIPPED
        assert steps[waiting].error_type == "cancelled"
    assert project.sql(
        "SELECT count(*) FROM procrastinate_jobs WHERE id = :id AND status = 'todo'", {"id": other_job}
    ) == [(0,)]
    wait_for(
        lambda: (
            project.sql("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')") == [(0,)]
        ),
        what="no job left to run",
    )
    # The running step saw context.should_stop and ended early; nothing after it ran.
    assert len(_calls(project, "blocker", "stopped")) == 1
    assert not _calls(project, "blocker", "end")
    assert steps["blocker"].status is fs.StepStatus.SKIPPED
    assert steps["blocker"].error_type == "cancelled"
    assert steps["blocker"].reason == "cancelled while running"
    assert steps["blocker"].finished_at is not None
    assert not _calls(project, "after", "start") and not _calls(project, "other", "start")
    # What finished before keeps its success.
    assert steps["first"].status is fs.StepStatus.SUCCEEDED
    assert app.load("first") == 1
    assert project.sql("SELECT count(*) FROM flowstone_step_claims") == [(0,)]
    assert app.cancel_run(run_id) is False  # already over
    (reason,) = project.sql("SELECT reason FROM flowstone_audit_log WHERE action = 'cancel'")[0]
    assert reason == "wrong day"


def test_a_run_that_joined_a_cancelled_queued_step_runs_it_itself(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(CANCEL)
    project.touch("release")
    app = project.app()
    leader = app.submit(["part"], partition="a")
    follower = app.submit(["part"], partition="a")
    assert project.sql("SELECT count(*) FROM procrastinate_jobs") == [(1,)]  # joined the leader's step
    assert app.cancel_run(leader) is True
    assert app.wait_run(leader, timeout=5).status is fs.RunStatus.CANCELLED
    project.start_worker("--concurrency", "2")
    assert app.wait_run(follower, timeout=15).status is fs.RunStatus.SUCCEEDED, project.logs()
    assert _steps(app, leader)["part"].error_type == "cancelled"
    assert len(_calls(project, "part", "start")) == 1
    assert _calls(project, "part", "start")[0]["run"] == follower


def test_a_run_that_joined_a_running_step_of_a_cancelled_run_is_not_failed_with_it(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(CANCEL)
    app = project.app()
    leader = app.submit(["part"], partition="b")
    follower = app.submit(["part"], partition="b")
    project.start_worker("--concurrency", "2")
    wait_for(lambda: _calls(project, "part", "start"), what="the shared step to start")
    assert app.cancel_run(leader) is True
    assert app.wait_run(leader, timeout=15).status is fs.RunStatus.CANCELLED, project.logs()
    assert len(_calls(project, "part", "stopped", run=leader)) == 1
    # The other run did not ask for the cancel: it builds the partition itself.
    project.touch("release")
    assert app.wait_run(follower, timeout=15).status is fs.RunStatus.SUCCEEDED, project.logs()
    step = _steps(app, follower)["part"]
    assert step.status is fs.StepStatus.SUCCEEDED
    assert len(_calls(project, "part", "end", run=follower)) == 1
    assert app.load("part", partition="b") == "b"


def test_a_step_cancelled_while_a_worker_puts_its_job_back_stays_cancelled(
    queue_project: Callable[..., QueueProject],
) -> None:
    """The race of a worker whose claim found a limit full (it defers the job again) with a
    cancel that lands in between: the cancelled step must not come back to life."""
    from flowstone.queue._db import JobArgs

    project = queue_project(CANCEL)
    app = project.app()
    run_id = app.submit(["part"], partition="a")
    ((job_id, raw),) = project.sql("SELECT id, args FROM procrastinate_jobs")
    args = JobArgs.from_kwargs(raw if isinstance(raw, dict) else json.loads(raw))
    assert app.cancel_run(run_id) is True
    assert app.wait_run(run_id, timeout=5).status is fs.RunStatus.CANCELLED
    assert app.run_queue().db.defer_again(job_id, args, 0.0) is False
    step = _steps(app, run_id)["part"]
    assert step.status is fs.StepStatus.SKIPPED and step.error_type == "cancelled"
    assert project.sql("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'") == [(0,)]
    assert project.sql("SELECT steps_left FROM flowstone_runs WHERE id = :id", {"id": run_id}) == [(0,)]


STUBBORN = (
    PIPE_HELPERS
    + """
import time

import flowstone as fs

pipeline = fs.Pipeline("stubborn")


@pipeline.asset
def stubborn(context):
    record("calls.jsonl", asset="stubborn", phase="start", run=context.run_id)
    deadline = time.monotonic() + 60
    while not (ROOT / "release").exists() and time.monotonic() < deadline:  # never checks should_stop
        time.sleep(0.01)
    record("calls.jsonl", asset="stubborn", phase="end", run=context.run_id)
    return 1


@pipeline.asset
def later(context, stubborn):
    return stubborn + 1
"""
)


def test_an_isolated_worker_terminates_a_step_that_ignores_the_cancel(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(STUBBORN)
    app = project.app()
    run_id = app.submit(["later"])
    project.start_worker("--concurrency", "1", "--isolate")
    started = wait_for(
        lambda: _calls(project, "stubborn", "start", run_id), timeout=30, what="the step to start"
    )
    assert app.cancel_run(run_id)
    record = app.wait_run(run_id, timeout=30)
    assert record.status is fs.RunStatus.CANCELLED, project.logs()
    steps = _steps(app, run_id)
    assert steps["stubborn"].error_type == "cancelled", steps["stubborn"]
    assert steps["later"].status is fs.StepStatus.SKIPPED
    # Its process was terminated: it never got to the end of its loop (nor kept running).
    assert _calls(project, "stubborn", "end") == []
    pid = int(started[0]["pid"])
    wait_for(lambda: not _alive(pid), timeout=10, what="the step's process to be gone")


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0) until its parent reaps it; count it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
