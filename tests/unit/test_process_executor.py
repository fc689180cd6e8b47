"""The process executor: each step in a forked process, timeouts that terminate, crashes that
fail one step only, and results (values, errors, events) that come back to the run."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

import flowstone as fs
from flowstone.testing import FakeClock

from .conftest import AppFactory


def test_steps_run_in_their_own_processes_and_report_back(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    @pipeline.asset()
    def a(context: fs.Context) -> dict[str, int]:
        return {"pid": os.getpid(), "n": 20}

    @pipeline.asset()
    def b(context: fs.Context, a: dict[str, int]) -> dict[str, int]:
        return {"pid": os.getpid(), "n": a["n"] + 1, "a_pid": a["pid"]}

    app = make_app(pipeline)
    seen: list[fs.Event] = []
    app.events.subscribe(seen.append)
    run = app.materialize(["b"], executor="processes", parallel=2, values=True)
    assert run.success
    a_value, b_value = run.steps["a"].value, run.steps["b"].value
    assert b_value["n"] == 21
    assert len({os.getpid(), a_value["pid"], b_value["pid"]}) == 3  # parent and two children
    assert app.load("b") == b_value
    record = app.run(run.run_id)
    assert record is not None and record[0].executor == "processes"
    # the I/O events of the children reach the parent's subscribers
    assert [(e.type, e.asset) for e in seen if e.type.startswith("io.")] == [
        ("io.stored", "a"),
        ("io.loaded", "a"),
        ("io.stored", "b"),
    ]


def test_a_step_past_its_timeout_is_terminated(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(timeout=0.5)
    def stuck(context: fs.Context) -> int:
        threading.Event().wait()  # never returns; only terminating the process ends it
        return 1

    @pipeline.asset()
    def fine(context: fs.Context) -> int:
        return 2

    run = make_app(pipeline).materialize(["stuck", "fine"], executor="processes", parallel=2)
    error = run.steps["stuck"].error
    assert error is not None and error.type == "timeout" and error.retryable is True
    assert "was terminated" in error.message
    assert error.context["terminated"] is True
    with pytest.raises(ProcessLookupError):
        os.kill(error.context["pid"], 0)  # gone
    assert run.steps["fine"].status is fs.StepStatus.SUCCEEDED


def test_a_crashing_process_fails_only_its_step(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def killed(context: fs.Context) -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return 1

    @pipeline.asset()
    def after(context: fs.Context, killed: int) -> int:
        return killed

    @pipeline.asset()
    def other(context: fs.Context) -> int:
        return 3

    run = make_app(pipeline).materialize(["after", "other"], executor="processes", parallel=2)
    error = run.steps["killed"].error
    assert error is not None and error.type == "execution_error"
    assert "was killed by signal 9 (SIGKILL)" in error.message
    assert run.steps["after"].status is fs.StepStatus.SKIPPED
    assert run.steps["other"].status is fs.StepStatus.SUCCEEDED


def test_errors_keep_their_type_and_traceback_across_the_process_boundary(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    attempts: list[int] = []

    @pipeline.asset(retry=fs.RetryPolicy(max_attempts=2, base_delay=5, jitter=0))
    def flaky(context: fs.Context) -> int:
        attempts.append(1)  # the child's copy: every attempt starts from an empty list
        raise fs.Retry("not yet", after=7)

    @pipeline.asset()
    def broken(context: fs.Context) -> int:
        raise ValueError("bad input row 12")

    clock = FakeClock()
    app = make_app(pipeline, clock=clock)
    run = app.materialize(["flaky", "broken"], executor="processes", parallel=2)
    flaky_error = run.steps["flaky"].error
    assert flaky_error is not None and flaky_error.type == "retry_requested"
    assert run.steps["flaky"].attempts == 2
    assert clock.slept == [7.0]
    broken_error = run.steps["broken"].error
    assert broken_error is not None and broken_error.type == "execution_error"
    assert "ValueError: bad input row 12" in broken_error.message
    [mat] = app.store.materializations(tenant="default", asset="broken")
    assert "ValueError: bad input row 12" in (mat.error_traceback or "")
    assert attempts == []  # nothing ran in this process


def test_memory_values_cannot_cross_processes(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(io_manager="memory")
    def in_memory(context: fs.Context) -> int:
        return 1

    with pytest.raises(fs.ValidationError, match=r"process executor cannot run \['in_memory'\]"):
        make_app(pipeline).materialize(["in_memory"], executor="processes")


def test_unknown_executor_is_refused(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: fs.Context) -> int:
        return 1

    with pytest.raises(ValueError, match="executor must be one of"):
        make_app(pipeline).materialize(["a"], executor="gpu")


class PicklesOnce:
    """Pickles once (the I/O manager's store) and refuses the second time (back to the parent)."""

    pickled = 0

    def __reduce__(self) -> Any:
        type(self).pickled += 1
        if type(self).pickled > 1:
            raise TypeError("pickles only once")
        return (PicklesOnce, ())


def test_a_value_that_cannot_come_back_is_still_stored(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def once(context: fs.Context) -> PicklesOnce:
        return PicklesOnce()

    app = make_app(pipeline)
    run = app.materialize(["once"], executor="processes", values=True)
    assert run.success
    with pytest.raises(LookupError, match="was not kept"):
        _ = run.steps["once"].value
    assert isinstance(app.load("once"), PicklesOnce)
    assert PicklesOnce.pickled == 0  # all the pickling happened in the step's process


def test_a_backfill_can_run_its_steps_in_processes(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    days = fs.DailyPartitions(start="2025-01-01")

    @pipeline.asset(partitioned_by=days)
    def daily(context: fs.Context) -> dict[str, Any]:
        return {"day": context.partition_key, "pid": os.getpid()}

    app = make_app(pipeline)
    result = app.backfill(["daily"], start="2025-01-01", end="2025-01-04", parallel=2, executor="processes")
    assert result.status.value == "succeeded"
    values = [app.load("daily", partition=f"2025-01-0{d}") for d in range(1, 5)]
    assert [v["day"] for v in values] == [f"2025-01-0{d}" for d in range(1, 5)]
    assert os.getpid() not in {v["pid"] for v in values}
    [run] = app.runs(limit=1)
    assert run.executor == "processes"
