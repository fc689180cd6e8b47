"""Retry policies: what is retried, how long the run waits (on a fake clock), what is recorded."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

import flowstone as fs
from flowstone.testing import FakeClock

from .conftest import AppFactory


class Flaky:
    """Raises ``errors`` in turn on the first calls, then returns ``value``."""

    def __init__(self, *errors: BaseException, value: Any = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> Any:
        with self.lock:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
        return self.value


def events_of(app: fs.FlowStone, types: tuple[str, ...]) -> list[fs.Event]:
    seen: list[fs.Event] = []
    app.events.subscribe(lambda e: seen.append(e) if e.type in types else None)
    return seen


# ---------------------------------------------------------------------- the policy itself
def test_delays_grow_by_backoff_and_are_capped() -> None:
    exp = fs.RetryPolicy(max_attempts=10, base_delay="2s", max_delay="30s", jitter=0)
    assert [exp.delay(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    linear = fs.RetryPolicy(backoff="linear", base_delay=3, max_delay=10, jitter=0)
    assert [linear.delay(n) for n in range(1, 5)] == [3.0, 6.0, 9.0, 10.0]
    constant = fs.RetryPolicy(backoff="constant", base_delay="1m", jitter=0)
    assert [constant.delay(n) for n in (1, 5)] == [60.0, 60.0]


def test_jitter_spreads_delays_within_its_fraction() -> None:
    policy = fs.RetryPolicy(base_delay=10, max_delay=10, jitter=0.2)
    rng = random.Random(3)
    delays = [policy.delay(1, rng) for _ in range(500)]
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert max(delays) - min(delays) > 3  # really spread, not constant


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
        ({"backoff": "fibonacci"}, "backoff must be one of"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1"),
        ({"base_delay": "soon"}, "base_delay: not a duration"),
        ({"base_delay": 10, "max_delay": 5}, "max_delay (5) is below base_delay (10)"),
        ({"retry_on": (ValueError, "KeyError")}, "retry_on must list exception types"),
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fs.RetryPolicy(**kwargs)


def test_retry_on_takes_one_type_without_a_tuple() -> None:
    assert fs.RetryPolicy(retry_on=TimeoutError).retry_on == (TimeoutError,)
    assert fs.RetryPolicy(retry_on=[KeyError, OSError]).retry_on == (KeyError, OSError)
    with pytest.raises(ValueError, match="retry_on must list exception types, got 'TimeoutError'"):
        fs.RetryPolicy(retry_on="TimeoutError")  # type: ignore[arg-type]


def test_retry_must_be_a_policy(pipeline: fs.Pipeline) -> None:
    with pytest.raises(fs.DefinitionError, match=r"retry must be fs.RetryPolicy\(...\), got int"):

        @pipeline.asset(retry=3)  # type: ignore[arg-type]
        def a(context: fs.Context) -> int:
            return 1


# ---------------------------------------------------------------------- retries in a run
def test_a_retryable_failure_is_retried_after_its_delay_and_every_attempt_is_recorded(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    flaky = Flaky(fs.Retry("not yet"), fs.Retry("still not"), value=41)

    @pipeline.asset(retry=fs.RetryPolicy(max_attempts=3, base_delay="5s", jitter=0))
    def source(context: fs.Context) -> int:
        return int(flaky())

    @pipeline.asset()
    def plus_one(context: fs.Context, source: int) -> int:
        return source + 1

    clock = FakeClock()
    app = make_app(pipeline, clock=clock)
    retrying = events_of(app, ("step.retrying",))
    run = app.materialize(["plus_one"], values=True)
    assert run.success
    assert run.steps["plus_one"].value == 42
    assert flaky.calls == 3
    assert clock.slept == [5.0, 10.0]
    assert [(e.data["attempt"], e.data["delay_s"], e.data["error"]["type"]) for e in retrying] == [
        (1, 5.0, "retry_requested"),
        (2, 10.0, "retry_requested"),
    ]
    assert run.steps["source"].attempts == 3
    mats = sorted(app.store.materializations(tenant="default", run_id=run.run_id), key=lambda m: m.attempt)
    source_mats = [m for m in mats if m.asset == "source"]
    assert [(m.attempt, m.status, m.error_type) for m in source_mats] == [
        (1, "failed", "retry_requested"),
        (2, "failed", "retry_requested"),
        (3, "success", None),
    ]
    assert [m.metadata.get("retry_delay_s") for m in source_mats] == [5.0, 10.0, None]
    [_record, steps] = app.run(run.run_id) or (None, [])
    by_asset = {s.asset: s for s in steps}
    assert (by_asset["source"].status.value, by_asset["source"].attempt) == ("succeeded", 3)
    assert by_asset["source"].materialization_id == source_mats[-1].id
    state = app.store.partition_state(tenant="default", asset="source", partition_key=None)
    assert state is not None and state.last_status == "success"
    persisted = [e["type"] for e in app.store.list_events(tenant="default", run_id=run.run_id)]
    assert persisted.count("step.retrying") == 2
    assert persisted.count("step.started") == 4  # source three times, plus_one once


def test_an_execution_error_is_not_retried(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    flaky = Flaky(KeyError("bug"))

    @pipeline.asset(retry=fs.RetryPolicy(max_attempts=5, base_delay=0))
    def source(context: fs.Context) -> Any:
        return flaky()

    @pipeline.asset()
    def downstream(context: fs.Context, source: Any) -> Any:
        return source

    clock = FakeClock()
    run = make_app(pipeline, clock=clock).materialize(["downstream"])
    assert flaky.calls == 1
    assert clock.slept == []
    source_step = run.steps["source"]
    assert source_step.error is not None and source_step.error.type == "execution_error"
    assert source_step.error.retryable is False
    assert run.steps["downstream"].error is not None
    assert run.steps["downstream"].error.type == "dependency_failed"


def test_retry_on_marks_the_users_own_exceptions_retryable(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    class RateLimited(Exception):
        pass

    flaky = Flaky(RateLimited("429"), ValueError("bad data"))

    @pipeline.asset(retry=fs.RetryPolicy(max_attempts=5, base_delay=1, jitter=0, retry_on=(RateLimited,)))
    def source(context: fs.Context) -> Any:
        return flaky()

    clock = FakeClock()
    run = make_app(pipeline, clock=clock).materialize(["source"])
    assert flaky.calls == 2  # RateLimited retried; ValueError is not in retry_on
    assert clock.slept == [1.0]
    error = run.steps["source"].error
    assert error is not None and error.retryable is False and "ValueError" in error.message


def test_attempts_run_out_and_the_last_error_stands(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    flaky = Flaky(*[fs.IOManagerError(f"503 #{i}", retryable=True) for i in range(5)])

    @pipeline.asset(retry=fs.RetryPolicy(max_attempts=3, base_delay=1, jitter=0))
    def source(context: fs.Context) -> Any:
        return flaky()

    app = make_app(pipeline, clock=FakeClock())
    run = app.materialize(["source"])
    assert not run.success
    assert flaky.calls == 3
    step = run.steps["source"]
    assert step.attempts == 3
    assert step.error is not None and step.error.message == "503 #2"
    mats = app.store.materializations(tenant="default", run_id=run.run_id)
    assert sorted((m.attempt, m.status) for m in mats) == [(1, "failed"), (2, "failed"), (3, "failed")]


def test_pipeline_default_policy_and_asset_override(make_app: AppFactory) -> None:
    pipeline = fs.Pipeline("defaults", retry_policy=fs.RetryPolicy(max_attempts=2, base_delay=1, jitter=0))
    a_calls = Flaky(*[fs.StepTimeout("slow", retryable=True)] * 3)
    b_calls = Flaky(*[fs.StepTimeout("slow", retryable=True)] * 3)

    @pipeline.asset()
    def a(context: fs.Context) -> Any:
        return a_calls()

    @pipeline.asset(retry=fs.RetryPolicy(max_attempts=4, base_delay=2, jitter=0))
    def b(context: fs.Context) -> Any:
        return b_calls()

    clock = FakeClock()
    app = make_app(pipeline, clock=clock)
    retrying = events_of(app, ("step.retrying",))
    run = app.materialize(["a", "b"])
    assert (a_calls.calls, b_calls.calls) == (2, 4)
    assert run.steps["a"].status.value != "succeeded"
    assert run.steps["b"].status.value == "succeeded"
    delays = {name: [e.data["delay_s"] for e in retrying if e.asset == name] for name in ("a", "b")}
    assert delays == {"a": [1.0], "b": [2.0, 4.0, 8.0]}
    # the run waits only until the next retry is due: a's at t=1, b's at t=2, 6 and 14
    assert clock.slept == [1.0, 1.0, 4.0, 8.0]


def test_retry_after_sets_the_delay_and_works_without_a_policy(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    flaky = Flaky(fs.Retry(after="30s"), fs.Retry(after=45), fs.Retry(after=1))

    @pipeline.asset()
    def source(context: fs.Context) -> Any:
        return flaky()

    clock = FakeClock()
    run = make_app(pipeline, clock=clock).materialize(["source"])
    assert not run.success  # without a policy Retry allows three attempts in all
    assert flaky.calls == 3
    assert clock.slept == [30.0, 45.0]


def test_retry_after_zero_retries_at_once(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    flaky = Flaky(fs.Retry(after=0))

    @pipeline.asset()
    def source(context: fs.Context) -> Any:
        return flaky()

    clock = FakeClock()
    assert make_app(pipeline, clock=clock).materialize(["source"]).success
    assert clock.slept == []  # due at once: nothing to wait for
    with pytest.raises(ValueError, match=r"Retry\(after=...\): duration must be positive: -1"):
        fs.Retry(after=-1)


def test_a_timeout_is_retried(pipeline: fs.Pipeline, make_app: AppFactory, release: threading.Event) -> None:
    calls: list[int] = []

    @pipeline.asset(timeout=0.2, retry=fs.RetryPolicy(max_attempts=2, base_delay=0))
    def slow_once(context: fs.Context) -> int:
        calls.append(1)
        if len(calls) == 1:
            release.wait(30)  # stuck until the test ends; the step has long timed out by then
        return len(calls)

    run = make_app(pipeline, clock=FakeClock()).materialize(["slow_once"], values=True)
    assert run.success
    assert run.steps["slow_once"].value == 2
    assert run.steps["slow_once"].attempts == 2


def test_retries_with_parallel_steps(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    flakies = {name: Flaky(fs.Retry(), value=name) for name in ("p", "q", "r", "s")}
    policy = fs.RetryPolicy(max_attempts=2, base_delay=1, jitter=0)
    for name, flaky in flakies.items():

        def fn(context: fs.Context, flaky: Flaky = flaky) -> Any:
            return flaky()

        pipeline.add(fs.AssetDefinition(name=name, fn=fn, deps=(), retry=policy))
    run = make_app(pipeline, clock=FakeClock()).materialize(list(flakies), parallel=4)
    assert run.success
    assert all(f.calls == 2 for f in flakies.values())


def test_cancel_while_waiting_to_retry_skips_the_step(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    cancel = threading.Event()

    @pipeline.asset(retry=fs.RetryPolicy(max_attempts=3, base_delay=60, jitter=0))
    def source(context: fs.Context) -> Any:
        cancel.set()
        raise fs.Retry()

    app = make_app(pipeline, clock=FakeClock())
    run = app.execute(app.plan(["source"]), cancelled=cancel.is_set)
    assert run.status is fs.RunStatus.CANCELLED
    step = run.steps["source"]
    assert step.status is fs.StepStatus.SKIPPED
    assert step.reason == "cancelled while waiting to retry"
    [_, steps] = app.run(run.run_id) or (None, [])
    assert [(s.status.value, s.reason) for s in steps] == [("skipped", "cancelled while waiting to retry")]
