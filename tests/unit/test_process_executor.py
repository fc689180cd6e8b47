"""The process executor: each step in a forked process, timeouts that terminate, crashes that
fail one step only, and results (values, errors, events) that come back to the run."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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
    # each materialization says which process computed it
    for name, value in (("a", a_value), ("b", b_value)):
        [mat] = app.store.materializations(tenant=app.tenant, asset=name)
        assert mat.pid == value["pid"]
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

    with pytest.raises(fs.ValidationError, match="executor must be one of"):
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


@dataclass(frozen=True)
class PidLog(fs.ConfigurableResource):
    """Appends "setup PID" / "teardown PID" to ``path``; ``fail`` makes its setup raise (after
    logging the attempt). Defined at module level: the step processes use it as they find it."""

    path: str
    fail: bool = False

    def setup(self, config: Mapping[str, Any]) -> str:
        _log_line(config["path"], "setup")
        if config["fail"]:
            raise ConnectionError("warehouse is down")
        return str(config["path"])

    def teardown(self, handle: str) -> None:
        _log_line(handle, "teardown")


def _log_line(path: str, what: str) -> None:
    with open(path, "a") as out:
        out.write(f"{what} {os.getpid()}\n")


def _lines(path: Path) -> list[tuple[str, int]]:
    """The (what, pid) lines of a log written by PidLog or _log_line; none when it is absent."""
    if not path.exists():
        return []
    return [(what, int(pid)) for what, pid in (line.split() for line in path.read_text().splitlines())]


def test_resources_are_set_up_and_torn_down_in_each_step_process(
    pipeline: fs.Pipeline, make_app: AppFactory, tmp_path: Path
) -> None:
    log = tmp_path / "log.txt"

    @pipeline.asset(requires=["log"])
    def first(context: fs.Context) -> dict[str, Any]:
        return {"pid": os.getpid(), "handle": context.resources.log}

    @pipeline.asset(requires=["log"])
    def second(context: fs.Context, first: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "handle": context.resources.log}

    app = make_app(pipeline, resources={"log": PidLog(str(log))})
    run = app.materialize(["second"], executor="processes", parallel=2, values=True)
    assert run.success
    first_pid, second_pid = run.steps["first"].value["pid"], run.steps["second"].value["pid"]
    assert run.steps["first"].value["handle"] == run.steps["second"].value["handle"] == str(log)
    assert len({os.getpid(), first_pid, second_pid}) == 3
    # each step process sets the resource up for itself and tears it down before it ends
    assert _lines(log) == [
        ("setup", first_pid),
        ("teardown", first_pid),
        ("setup", second_pid),
        ("teardown", second_pid),
    ]


def test_a_failing_step_still_tears_down_its_resources_in_its_process(
    pipeline: fs.Pipeline, make_app: AppFactory, tmp_path: Path
) -> None:
    log = tmp_path / "log.txt"

    @pipeline.asset(requires=["log"])
    def broken(context: fs.Context) -> int:
        _log_line(context.resources.log, "asset")
        raise ValueError("bad input row 12")

    app = make_app(pipeline, resources={"log": PidLog(str(log))})
    run = app.materialize(["broken"], executor="processes")
    error = run.steps["broken"].error
    assert error is not None and error.type == "execution_error"
    assert "ValueError: bad input row 12" in error.message
    lines = _lines(log)
    assert [what for what, _ in lines] == ["setup", "asset", "teardown"]
    assert len({pid for _, pid in lines}) == 1  # all in the step's process ...
    assert lines[0][1] != os.getpid()  # ... which is not this one


def test_a_failing_resource_setup_fails_only_the_steps_that_require_it(
    pipeline: fs.Pipeline, make_app: AppFactory, tmp_path: Path
) -> None:
    good_log, bad_log = tmp_path / "good.txt", tmp_path / "bad.txt"
    ran = tmp_path / "ran.txt"

    @pipeline.asset(requires=["good", "bad"])
    def needs_bad(context: fs.Context) -> int:
        _log_line(str(ran), "needs_bad")
        return 1

    @pipeline.asset()
    def after_bad(context: fs.Context, needs_bad: int) -> int:
        return needs_bad

    @pipeline.asset(requires=["good"])
    def needs_good(context: fs.Context) -> int:
        return os.getpid()

    @pipeline.asset()
    def plain(context: fs.Context) -> int:
        return 3

    app = make_app(
        pipeline, resources={"good": PidLog(str(good_log)), "bad": PidLog(str(bad_log), fail=True)}
    )
    run = app.materialize(["after_bad", "needs_good", "plain"], executor="processes", parallel=2, values=True)
    assert not run.success
    error = run.steps["needs_bad"].error
    assert error is not None
    assert error.type == "resource_unavailable" and error.retryable is True
    assert error.message == "resource 'bad' could not be set up: ConnectionError: warehouse is down"
    assert error.context["resource"] == "bad" and error.context["asset"] == "needs_bad"
    assert run.steps["needs_bad"].attempts == 1  # retryable, but no retry policy: not retried
    [mat] = app.store.materializations(tenant="default", asset="needs_bad")
    assert mat.error_type == "resource_unavailable" and mat.retryable is True
    assert "ConnectionError: warehouse is down" in (mat.error_traceback or "")
    assert not ran.exists()  # the asset never ran
    assert run.steps["after_bad"].status is fs.StepStatus.SKIPPED
    assert run.steps["needs_good"].status is fs.StepStatus.SUCCEEDED
    assert run.steps["plain"].status is fs.StepStatus.SUCCEEDED
    # The failed setup was tried in the step's process and has nothing to tear down; "good",
    # set up before it in the same process, is torn down there all the same.
    [(what, bad_pid)] = _lines(bad_log)
    assert what == "setup" and bad_pid != os.getpid()
    good_pid = run.steps["needs_good"].value
    good_lines = _lines(good_log)
    assert {pid for _, pid in good_lines} == {bad_pid, good_pid}
    for pid in (bad_pid, good_pid):
        assert [what for what, p in good_lines if p == pid] == ["setup", "teardown"]


def test_a_step_whose_resource_fails_is_retried_in_a_new_process_per_its_policy(
    pipeline: fs.Pipeline, make_app: AppFactory, tmp_path: Path
) -> None:
    bad_log = tmp_path / "bad.txt"

    @pipeline.asset(requires=["bad"], retry=fs.RetryPolicy(max_attempts=3, base_delay=2, jitter=0))
    def needs_bad(context: fs.Context) -> int:
        return 1

    clock = FakeClock()
    app = make_app(pipeline, clock=clock, resources={"bad": PidLog(str(bad_log), fail=True)})
    run = app.materialize(["needs_bad"], executor="processes")
    step = run.steps["needs_bad"]
    assert step.error is not None and step.error.type == "resource_unavailable"
    assert step.attempts == 3
    assert clock.slept == [2.0, 4.0]
    setups = _lines(bad_log)
    assert [what for what, _ in setups] == ["setup"] * 3  # tried again by every attempt
    assert len({pid for _, pid in setups} | {os.getpid()}) == 4  # each in a process of its own


@pytest.mark.parametrize("inherited", ["default", "a worker's"])
def test_a_terminated_step_tears_down_its_resources(
    pipeline: fs.Pipeline, make_app: AppFactory, tmp_path: Path, inherited: str
) -> None:
    """Past its timeout a step's process is sent SIGTERM: it tears down what it set up, whatever
    SIGTERM handler it inherited (a queue worker's only asks the worker to stop, which would
    leave the step running until the SIGKILL, with nothing torn down)."""
    log = tmp_path / "log.txt"

    @pipeline.asset(requires=["log"], timeout=0.5)
    def stuck(context: fs.Context) -> int:
        _log_line(context.resources.log, "started")
        threading.Event().wait()  # never returns; only the SIGTERM ends it
        return 1

    stops: list[int] = []
    previous = signal.signal(
        signal.SIGTERM,
        (lambda signum, frame: stops.append(signum)) if inherited != "default" else signal.SIG_DFL,
    )
    try:
        run = make_app(pipeline, resources={"log": PidLog(str(log))}).materialize(
            ["stuck"], executor="processes"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    error = run.steps["stuck"].error
    assert error is not None and error.type == "timeout" and error.context["terminated"] is True
    child = error.context["pid"]
    assert child != os.getpid() and stops == []
    assert _lines(log) == [("setup", child), ("started", child), ("teardown", child)]
