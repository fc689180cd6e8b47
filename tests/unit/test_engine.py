"""Materialization through ``FlowStone.materialize``: planning, execution, failures, parallelism."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs

from .conftest import AppFactory

StepStatus = fs.StepStatus
RunStatus = fs.RunStatus


def ran(run: fs.RunResult) -> list[str]:
    """Assets whose step ran in this run, in step order."""
    return [r.asset for r in run.steps.values()]


# ---------------------------------------------------------------------- execution
def test_values_flow_by_name_in_topological_order(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    calls: list[str] = []

    @pipeline.asset()
    def report(context: Any, cleaned: list[int], profiles: dict[str, int]) -> str:
        calls.append("report")
        return f"{sum(cleaned)}/{profiles['users']}"

    @pipeline.asset()
    def cleaned(context: Any, raw: list[int]) -> list[int]:
        calls.append("cleaned")
        return [x for x in raw if x > 0]

    @pipeline.asset()
    def profiles(context: Any, raw: list[int]) -> dict[str, int]:
        calls.append("profiles")
        return {"users": len(raw)}

    @pipeline.asset()
    def raw(context: Any) -> list[int]:
        calls.append("raw")
        return [3, -1, 4]

    app = make_app(pipeline)
    run = app.materialize(["report"], values=True)
    assert run.status is RunStatus.SUCCEEDED and run.success
    assert run.steps["report"].value == "7/3"
    assert run.steps["cleaned"].value == [3, 4]
    assert calls[0] == "raw" and calls[-1] == "report"
    assert sorted(calls) == ["cleaned", "profiles", "raw", "report"]
    assert ran(run)[0] == "raw" and ran(run)[-1] == "report"
    assert all(s.status is StepStatus.SUCCEEDED for s in run.steps.values())
    assert app.load("report") == "7/3"
    assert app.load("raw") == [3, -1, 4]
    run.raise_on_failure()


def test_context_describes_the_step(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    seen: dict[str, Any] = {}

    @pipeline.asset()
    def a(context: fs.Context) -> int:
        seen.update(
            asset=context.asset_name,
            run=context.run_id,
            tenant=context.tenant,
            partition=context.partition,
            key=context.partition_key,
        )
        context.log.info("hello")
        return 1

    run = make_app(pipeline).materialize("a")
    assert seen == {"asset": "a", "run": run.run_id, "tenant": "default", "partition": None, "key": None}


def test_var_kwargs_receive_all_dependencies(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any) -> int:
        return 2

    @pipeline.asset(depends_on=["a", "b"])
    def everything(context: Any, **upstream: Any) -> dict[str, Any]:
        return dict(upstream)

    @pipeline.asset(depends_on=[a, b])
    def mixed(context: Any, a: int, **rest: Any) -> tuple[int, dict[str, Any]]:
        return a, dict(rest)

    run = make_app(pipeline).materialize(["everything", "mixed"], values=True)
    assert run.steps["everything"].value == {"a": 1, "b": 2}
    assert run.steps["mixed"].value == (1, {"b": 2})


def test_default_valued_parameters_are_not_dependencies(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any, a: int, factor: int = 10) -> int:
        return a * factor

    run = make_app(pipeline).materialize("b", values=True)
    assert run.steps["b"].value == 10


def test_output_metadata_is_recorded(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(code_version="v7")
    def a(context: Any) -> fs.Output:
        return fs.Output([1, 2, 3], metadata={"rows": 3, "source": Path("/x")})

    app = make_app(pipeline)
    run = app.materialize("a", values=True)
    assert run.steps["a"].value == [1, 2, 3]
    assert app.load("a") == [1, 2, 3]  # the Output wrapper is not stored
    [mat] = app.store.materializations(tenant="default", asset="a")
    assert mat.status == "success"
    assert mat.metadata["rows"] == 3
    assert mat.metadata["source"] == "/x"  # made JSON-safe
    assert mat.code_version == "v7"
    assert mat.io_manager == "filesystem"
    assert mat.run_id == run.run_id
    assert mat.value_size and mat.value_size > 0
    assert mat.value_hash and mat.value_hash.startswith("sha256:")
    assert mat.error_type is None


def test_value_not_kept_unless_asked(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    run = make_app(pipeline).materialize("a")
    with pytest.raises(LookupError, match="values=True"):
        _ = run.steps["a"].value


def test_run_and_steps_are_recorded(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any, a: int) -> int:
        return a + 1

    app = make_app(pipeline)
    run = app.materialize("b", actor="alice")
    found = app.run(run.run_id)
    assert found is not None
    record, steps = found
    assert record.status is RunStatus.SUCCEEDED
    assert record.actor == "alice"
    assert record.step_count == 2
    assert record.finished_at is not None and record.duration_ms is not None
    assert [(s.asset, s.status) for s in steps] == [("a", StepStatus.SUCCEEDED), ("b", StepStatus.SUCCEEDED)]
    assert steps[1].upstream == [["a", ""]]
    assert all(s.materialization_id for s in steps)
    assert [r.id for r in app.runs()] == [run.run_id]
    assert app.run("0" * 32) is None


# ---------------------------------------------------------------------- planning
@pytest.fixture
def chain(pipeline: fs.Pipeline) -> Counter[str]:
    """a -> b -> c, plus an unrelated d; returns a call counter."""
    calls: Counter[str] = Counter()

    @pipeline.asset()
    def a(context: Any) -> int:
        calls["a"] += 1
        return 1

    @pipeline.asset()
    def b(context: Any, a: int) -> int:
        calls["b"] += 1
        return a + 1

    @pipeline.asset()
    def c(context: Any, b: int) -> int:
        calls["c"] += 1
        return b + 1

    @pipeline.asset()
    def d(context: Any) -> int:
        calls["d"] += 1
        return 0

    return calls


def test_plan_runs_selection_plus_missing_upstream(
    pipeline: fs.Pipeline, chain: Counter[str], make_app: AppFactory
) -> None:
    app = make_app(pipeline)
    plan = app.plan("c")
    assert [s.asset for s in plan.steps] == ["a", "b", "c"]
    run = app.materialize("c")
    assert ran(run) == ["a", "b", "c"]
    assert chain == {"a": 1, "b": 1, "c": 1}

    again = app.materialize("c")
    assert ran(again) == []
    assert again.status is RunStatus.SUCCEEDED
    assert again.up_to_date == [("c", None)]
    assert chain == {"a": 1, "b": 1, "c": 1}


def test_materialized_upstream_is_read_not_rerun(
    pipeline: fs.Pipeline, chain: Counter[str], make_app: AppFactory
) -> None:
    app = make_app(pipeline)
    app.materialize("b")
    run = app.materialize("c", values=True)
    assert ran(run) == ["c"]
    assert run.steps["c"].value == 3
    assert chain == {"a": 1, "b": 1, "c": 1}
    plan = app.plan("c", force=True)
    assert set(plan.existing) == {("b", None)}


def test_force_reruns_only_the_selection(
    pipeline: fs.Pipeline, chain: Counter[str], make_app: AppFactory
) -> None:
    app = make_app(pipeline)
    app.materialize("c")
    run = app.materialize("c", force=True)
    assert ran(run) == ["c"]
    assert chain == {"a": 1, "b": 1, "c": 2}
    run = app.materialize("+c", force=True)
    assert ran(run) == ["a", "b", "c"]
    assert chain == {"a": 2, "b": 2, "c": 3}


def test_selected_asset_reruns_when_upstream_is_missing(make_app: AppFactory) -> None:
    # Version 1 of the code: ``report`` had no upstream and was materialized.
    v1 = fs.Pipeline("p")

    @v1.asset(name="report")
    def report_v1(context: Any) -> str:
        return "old"

    make_app(v1).materialize("report")

    # Version 2 adds an upstream that was never materialized: it runs, and so must report.
    v2 = fs.Pipeline("p")

    @v2.asset()
    def source(context: Any) -> str:
        return "new"

    @v2.asset(name="report")
    def report_v2(context: Any, source: str) -> str:
        return source

    app = make_app(v2)
    run = app.materialize("report", force=False)
    assert ran(run) == ["source", "report"]
    assert run.up_to_date == []
    assert app.load("report") == "new"
    # and once both are there, nothing runs
    assert ran(app.materialize(["source", "report"])) == []


def test_up_to_date_selection_plans_nothing(
    pipeline: fs.Pipeline, chain: Counter[str], make_app: AppFactory
) -> None:
    app = make_app(pipeline)
    app.materialize(["c", "d"])
    plan = app.plan(["a", "b", "d"])
    assert plan.steps == []
    assert sorted(plan.up_to_date) == [("a", None), ("b", None), ("d", None)]
    run = app.materialize(["a", "c"], force=True)
    assert ran(run) == ["a", "c"]  # b is read from the store, not re-run
    assert chain == {"a": 2, "b": 1, "c": 2, "d": 1}


def test_selection_by_tag(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(tags=["nightly"])
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any) -> int:
        return 2

    run = make_app(pipeline).materialize("tag:nightly")
    assert ran(run) == ["a"]


def test_unknown_asset_in_materialize(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def daily_report(context: Any) -> int:
        return 1

    app = make_app(pipeline)
    with pytest.raises(fs.AssetNotFound, match="did you mean 'daily_report'"):
        app.materialize("daily_reprot")
    with pytest.raises(fs.AssetNotFound):
        app.load("daily_reprot")
    assert app.runs() == []


# ---------------------------------------------------------------------- failures
def test_failure_skips_downstream_and_keeps_earlier_values(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    broken = {"b": True}
    calls: Counter[str] = Counter()

    @pipeline.asset()
    def a(context: Any) -> int:
        calls["a"] += 1
        return 10

    @pipeline.asset()
    def b(context: Any, a: int) -> int:
        calls["b"] += 1
        if broken["b"]:
            raise ZeroDivisionError("boom in b")
        return a + 1

    @pipeline.asset()
    def c(context: Any, b: int) -> int:
        calls["c"] += 1
        return b + 1

    @pipeline.asset()
    def d(context: Any, c: int, a: int) -> int:
        calls["d"] += 1
        return c + a

    @pipeline.asset()
    def side(context: Any, a: int) -> int:
        calls["side"] += 1
        return a * 2

    app = make_app(pipeline)
    run = app.materialize(["d", "side"])
    assert run.status is RunStatus.FAILED and not run.success
    assert run.steps["a"].status is StepStatus.SUCCEEDED
    assert run.steps["side"].status is StepStatus.SUCCEEDED
    failed = run.steps["b"]
    assert failed.status is StepStatus.FAILED
    assert isinstance(failed.error, fs.ExecutionError)
    assert "ZeroDivisionError: boom in b" in str(failed.error)
    assert isinstance(failed.error.original, ZeroDivisionError)
    assert [s.asset for s in run.failures] == ["b"]
    for name in ["c", "d"]:
        step = run.steps[name]
        assert step.status is StepStatus.SKIPPED
        assert step.reason is not None and "upstream 'b' failed" in step.reason
        assert isinstance(step.error, fs.DependencyFailed)
    assert calls == {"a": 1, "b": 1, "side": 1}
    with pytest.raises(fs.ExecutionError):
        run.raise_on_failure()

    # The failed materialization is recorded with its type and traceback.
    [mat] = app.store.materializations(tenant="default", asset="b")
    assert mat.status == "failed"
    assert mat.error_type == "execution_error"
    assert mat.retryable is False
    assert mat.error_message is not None and "boom in b" in mat.error_message
    assert mat.error_traceback is not None
    assert "Traceback (most recent call last)" in mat.error_traceback
    assert "ZeroDivisionError: boom in b" in mat.error_traceback
    assert 'raise ZeroDivisionError("boom in b")' in mat.error_traceback
    assert app.store.materializations(tenant="default", asset="c") == []

    # Run and steps in the store agree.
    found = app.run(run.run_id)
    assert found is not None
    record, steps = found
    assert record.status is RunStatus.FAILED
    by_asset = {s.asset: s for s in steps}
    assert by_asset["b"].status is StepStatus.FAILED and by_asset["b"].error_type == "execution_error"
    assert by_asset["c"].status is StepStatus.SKIPPED
    assert by_asset["c"].reason is not None and "'b'" in by_asset["c"].reason
    assert by_asset["d"].status is StepStatus.SKIPPED
    assert [r.id for r in app.runs(status="failed")] == [run.run_id]

    # Values stored earlier in the run stay loadable; nothing is stored for the failed step.
    assert app.load("a") == 10
    assert app.load("side") == 20
    with pytest.raises(fs.ValueNotFound):
        app.load("b")

    # Fix the code: a re-run only runs what did not succeed.
    broken["b"] = False
    rerun = app.materialize(["d", "side"], values=True)
    assert rerun.status is RunStatus.SUCCEEDED
    assert ran(rerun) == ["b", "c", "d"]
    assert rerun.steps["d"].value == 10 + 1 + 1 + 10
    assert calls == {"a": 1, "b": 2, "c": 1, "d": 1, "side": 1}
    assert sorted(rerun.up_to_date) == [("side", None)]


def test_an_asset_returning_a_coroutine_or_generator_is_an_execution_error(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    @pipeline.asset()
    async def coro(context: Any) -> int:
        return 1

    @pipeline.asset()
    def gen(context: Any) -> Any:
        yield 1

    app = make_app(pipeline)
    run = app.materialize(["coro", "gen"])
    for name, kind in [("coro", "a coroutine"), ("gen", "a generator")]:
        error = run.steps[name].error
        assert error is not None and error.type == "execution_error", name
        assert f"asset '{name}' returned {kind}, not a value" in error.message
        assert "plain `def`" in error.user_message
    assert app.store.materializations(tenant="default", asset="coro")[0].error_type == "execution_error"


@pytest.mark.parametrize(
    "make_value",
    [lambda: lambda: 1, lambda: threading.Lock()],
    ids=["lambda", "lock"],
)
def test_unstorable_value_is_an_io_error(
    pipeline: fs.Pipeline, make_app: AppFactory, make_value: Any, tmp_path: Path
) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def bad(context: Any, a: int) -> Any:
        return make_value()

    app = make_app(pipeline)
    run = app.materialize("bad")
    step = run.steps["bad"]
    assert run.status is RunStatus.FAILED
    assert step.status is StepStatus.FAILED
    assert isinstance(step.error, fs.IOManagerError)
    assert step.error.type == "io_error"
    assert "cannot be pickled" in str(step.error)
    [mat] = app.store.materializations(tenant="default", asset="bad")
    assert mat.error_type == "io_error"
    assert app.load("a") == 1
    assert [p for p in (tmp_path / "storage").rglob("*") if p.is_file() and "bad" in p.parts] == []


def test_memory_io_manager_stores_anything(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(io_manager="memory")
    def fn_value(context: Any) -> Any:
        return lambda: 42

    @pipeline.asset()
    def called(context: Any, fn_value: Any) -> int:
        return int(fn_value())

    app = make_app(pipeline)
    run = app.materialize("called")
    assert run.success
    assert app.load("called") == 42
    assert app.load("fn_value")() == 42


def test_timeout_records_step_timeout(
    pipeline: fs.Pipeline, make_app: AppFactory, release: threading.Event
) -> None:
    started = threading.Event()

    @pipeline.asset()
    def first(context: Any) -> int:
        return 1

    @pipeline.asset(timeout="0.2s")
    def hangs(context: Any, first: int) -> int:
        started.set()
        release.wait(30)
        return first

    @pipeline.asset()
    def after(context: Any, hangs: int) -> int:
        return hangs

    app = make_app(pipeline)
    run = app.materialize("after")
    assert started.is_set()
    assert not release.is_set()  # it timed out; nobody released it
    step = run.steps["hangs"]
    assert step.status is StepStatus.FAILED
    assert isinstance(step.error, fs.StepTimeout)
    assert step.error.type == "timeout" and step.error.retryable is True
    assert "0.2s" in str(step.error)
    assert run.steps["after"].status is StepStatus.SKIPPED
    [mat] = app.store.materializations(tenant="default", asset="hangs")
    assert mat.status == "failed"
    assert mat.error_type == "timeout"
    assert mat.retryable is True
    assert 200 <= mat.duration_ms < 5000  # failed at its timeout, not when the asset gave up
    assert app.load("first") == 1


def test_asset_with_timeout_that_finishes_in_time(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(timeout="30s")
    def quick(context: Any) -> int:
        return 5

    @pipeline.asset(timeout="30s")
    def raises(context: Any) -> int:
        raise KeyError("inside the timeout thread")

    run = make_app(pipeline).materialize(["quick", "raises"], values=True)
    assert run.steps["quick"].value == 5
    err = run.steps["raises"].error
    assert isinstance(err, fs.ExecutionError) and isinstance(err.original, KeyError)


def test_flowstone_error_raised_by_asset_keeps_its_type(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def checked(context: Any) -> int:
        raise fs.ValidationError("row count 0 below minimum 1")

    app = make_app(pipeline)
    run = app.materialize("checked")
    err = run.steps["checked"].error
    assert isinstance(err, fs.ValidationError)
    assert err.context["asset"] == "checked"
    [mat] = app.store.materializations(tenant="default", asset="checked")
    assert mat.error_type == "validation_error"


@pytest.mark.parametrize("parallel", [1, 2])
def test_interrupted_run_is_abandoned(pipeline: fs.Pipeline, make_app: AppFactory, parallel: int) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any, a: int) -> int:
        raise KeyboardInterrupt

    @pipeline.asset()
    def c(context: Any, b: int) -> int:
        return b

    app = make_app(pipeline)
    with pytest.raises(KeyboardInterrupt):
        app.materialize("c", parallel=parallel)
    [record] = app.runs()
    assert record.status is RunStatus.ABANDONED
    assert record.error is not None and "KeyboardInterrupt" in record.error
    found = app.run(record.id)
    assert found is not None
    statuses = {s.asset: s.status for s in found[1]}
    assert statuses["b"] is StepStatus.ABANDONED and statuses["c"] is StepStatus.ABANDONED
    assert statuses["a"] in (StepStatus.SUCCEEDED, StepStatus.ABANDONED)  # a's record may be unflushed
    assert app.store.materializations(tenant="default", asset="b") == []
    # Nothing recorded as success is missing its value.
    for mat in app.store.materializations(tenant="default"):
        assert mat.status != "success" or app.load(mat.asset) == 1
    assert app.runs(status="running") == []


# ---------------------------------------------------------------------- parallel
def test_parallel_wide_graph(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    width = 12

    @pipeline.asset()
    def root(context: Any) -> int:
        return 100

    for i in range(width):

        def child(context: Any, root: int, i: int = i) -> int:
            return root + i

        pipeline.asset(name=f"child_{i}")(child)

    @pipeline.asset(depends_on=[f"child_{i}" for i in range(width)])
    def sink(context: Any, **children: int) -> int:
        return sum(children.values())

    app = make_app(pipeline)
    run = app.materialize("sink", parallel=4, values=True)
    assert run.success
    assert len(run.steps) == width + 2
    assert run.steps["sink"].value == sum(100 + i for i in range(width))
    record = app.runs()[0]
    assert record.executor == "threads"
    # lineage recorded for every input of the sink
    assert {e.asset for e in app.lineage.upstream("sink", depth=1)} == {f"child_{i}" for i in range(width)}


def _barrier_pipeline(barrier: threading.Barrier, wait_s: float) -> fs.Pipeline:
    pipeline = fs.Pipeline("barrier")

    @pipeline.asset()
    def left(context: Any) -> str:
        barrier.wait(timeout=wait_s)
        return "left"

    @pipeline.asset()
    def right(context: Any) -> str:
        barrier.wait(timeout=wait_s)
        return "right"

    @pipeline.asset()
    def both(context: Any, left: str, right: str) -> str:
        return left + right

    return pipeline


def test_parallel_runs_independent_steps_concurrently(make_app: AppFactory) -> None:
    barrier = threading.Barrier(2)
    app = make_app(_barrier_pipeline(barrier, wait_s=10))
    run = app.materialize("both", parallel=4, values=True)
    assert run.success, run.failures
    assert run.steps["both"].value == "leftright"


def test_serial_run_cannot_pass_the_barrier(make_app: AppFactory) -> None:
    # The control for the test above: one at a time, the barrier breaks.
    barrier = threading.Barrier(2)
    app = make_app(_barrier_pipeline(barrier, wait_s=0.2))
    run = app.materialize("both", parallel=1)
    assert run.status is RunStatus.FAILED
    errors = [s.error for s in run.failures]
    assert errors and all(isinstance(e, fs.ExecutionError) for e in errors)
    assert isinstance(errors[0].original, threading.BrokenBarrierError)  # type: ignore[union-attr]
    assert run.steps["both"].status is StepStatus.SKIPPED


def test_parallel_failure_skips_downstream(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def ok(context: Any) -> int:
        return 1

    @pipeline.asset()
    def broken(context: Any) -> int:
        raise RuntimeError("nope")

    @pipeline.asset()
    def joined(context: Any, ok: int, broken: int) -> int:
        return ok + broken

    @pipeline.asset()
    def tail(context: Any, joined: int) -> int:
        return joined

    app = make_app(pipeline)
    run = app.materialize("tail", parallel=3)
    assert run.status is RunStatus.FAILED
    assert run.steps["ok"].status is StepStatus.SUCCEEDED
    assert run.steps["broken"].status is StepStatus.FAILED
    assert run.steps["joined"].status is StepStatus.SKIPPED
    assert run.steps["tail"].status is StepStatus.SKIPPED
    assert app.load("ok") == 1


def test_thread_pool_needs_a_worker() -> None:
    from flowstone.engine._runner import ThreadPoolStepExecutor

    with pytest.raises(ValueError, match="at least 1"):
        ThreadPoolStepExecutor(0)


# ---------------------------------------------------------------------- events
def test_events_are_emitted_in_order(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any, a: int) -> int:
        raise RuntimeError("b fails")

    @pipeline.asset()
    def c(context: Any, b: int) -> int:
        return b

    app = make_app(pipeline)
    received: list[fs.Event] = []
    unsubscribe = app.events.subscribe(received.append)
    run = app.materialize("c")
    io_events = [e for e in received if e.type.startswith("io.")]
    errors = [e for e in received if e.type == "error"]
    events = [e for e in received if not e.type.startswith("io.") and e.type != "error"]
    assert [(e.asset, e.data["error"]["type"]) for e in errors] == [("b", "execution_error")]
    assert [(e.type, e.asset) for e in events] == [
        ("run.started", None),
        ("step.started", "a"),
        ("step.succeeded", "a"),
        ("step.started", "b"),
        ("step.failed", "b"),
        ("step.skipped", "c"),
        ("run.finished", None),
    ]
    assert all(e.run_id == run.run_id for e in events)
    assert events[0].data == {"steps": 3, "pipeline": "unit"}
    assert events[4].data["error"]["type"] == "execution_error"
    assert "upstream 'b' failed" in events[5].data["reason"]
    assert events[-1].data == {"status": "failed"}

    # a's value was stored, then loaded by b: each with its duration and size
    assert [(e.type, e.asset, e.data.get("consumer")) for e in io_events] == [
        ("io.stored", "a", None),
        ("io.loaded", "a", "b"),
    ]
    assert io_events[0].data["io_manager"] == "filesystem"
    assert io_events[0].data["size_bytes"] > 0
    assert io_events[1].data["duration_ms"] >= 0

    count = len(received)
    unsubscribe()
    app.materialize("a", force=True)
    assert len(received) == count


def test_broken_subscriber_does_not_break_the_run(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    app = make_app(pipeline)
    seen: list[str] = []

    def broken(event: fs.Event) -> None:
        raise RuntimeError("subscriber bug")

    app.events.subscribe(broken)
    app.events.subscribe(lambda e: seen.append(e.type))
    run = app.materialize("a")
    assert run.success
    assert seen == ["run.started", "step.started", "io.stored", "step.succeeded", "run.finished"]


def test_events_are_persisted(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    app = make_app(pipeline)
    run = app.materialize("a")
    types = [e["type"] for e in app.store.list_events(tenant="default", run_id=run.run_id)]
    assert types == ["run.started", "step.started", "step.succeeded", "run.finished"]
    audit = app.store.list_audit(tenant="default")
    assert [(a["action"], a["resource_id"], a["actor"]) for a in audit] == [
        ("materialize", run.run_id, "api")
    ]


# ---------------------------------------------------------------------- resources
def test_resources_listed_in_requires_are_available(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(requires=["db"])
    def a(context: fs.Context) -> str:
        assert "db" in context.resources and "http" not in context.resources
        return str(context.resources.db)

    run = make_app(pipeline, resources={"db": "sqlite-conn", "http": "client"}).materialize("a", values=True)
    assert run.steps["a"].value == "sqlite-conn"


def test_unlisted_resource_is_an_error_naming_the_asset(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(requires=["db"])
    def sneaky(context: fs.Context) -> str:
        return str(context.resources.http)

    app = make_app(pipeline, resources={"db": "conn", "http": "client"})
    run = app.materialize("sneaky")
    err = run.steps["sneaky"].error
    assert isinstance(err, fs.DefinitionError)
    assert "asset 'sneaky' uses resource 'http'" in str(err)
    assert "requires" in str(err)
    assert err.context["resource"] == "http"
    [mat] = app.store.materializations(tenant="default", asset="sneaky")
    assert mat.error_type == "definition_error"


def test_required_resource_that_is_not_configured_fails_binding(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    @pipeline.asset(requires=["warehouse"])
    def loads(context: fs.Context) -> int:
        return 1

    with pytest.raises(fs.PipelineInvalid) as info:
        make_app(pipeline, resources={"crm": object()})
    [problem] = info.value.problems
    assert problem.code == "unknown_resource" and problem.asset == "loads"
    assert "requires resource 'warehouse'" in str(problem) and __file__ in problem.location
    # Validation on its own (no resources known yet) does not complain.
    pipeline.validate()


@pytest.mark.parametrize("parallel", [0, -2])
def test_parallel_below_one_is_refused(pipeline: fs.Pipeline, make_app: AppFactory, parallel: int) -> None:
    @pipeline.asset()
    def a(context: fs.Context) -> int:
        return 1

    app = make_app(pipeline)
    with pytest.raises(ValueError, match="parallel must be at least 1"):
        app.materialize("a", parallel=parallel)
    assert app.runs() == []


def test_a_downstream_partition_starts_as_soon_as_its_own_upstream_is_done(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    days = fs.DailyPartitions(start="2025-01-01", end="2025-01-04")

    @pipeline.asset(partitioned_by=days)
    def raw(context: fs.Context) -> int:
        return 1

    @pipeline.asset(partitioned_by=days)
    def report(context: fs.Context, raw: int) -> int:
        return raw

    app = make_app(pipeline)
    started: list[tuple[str | None, str | None]] = []
    app.events.subscribe(
        lambda e: started.append((e.asset, e.partition_key)) if e.type == "step.started" else None
    )
    app.backfill(["report"], start="2025-01-01", end="2025-01-03")
    assert started == [
        (asset, day) for day in ("2025-01-01", "2025-01-02", "2025-01-03") for asset in ("raw", "report")
    ]


def test_a_timed_out_step_is_asked_to_stop_through_its_context(
    pipeline: fs.Pipeline, make_app: AppFactory, release: threading.Event
) -> None:
    noticed = threading.Event()

    @pipeline.asset(timeout=0.2)
    def long_loop(context: fs.Context) -> int:
        while not release.wait(0.01):
            if context.should_stop:
                noticed.set()
                context.raise_if_stopped()
        return 1

    run = make_app(pipeline).materialize(["long_loop"])
    error = run.steps["long_loop"].error
    assert error is not None and error.type == "timeout"
    assert "abandoned and asked to stop" in error.message
    assert error.context["abandoned_thread"] == "flowstone-timeout-long_loop"
    assert noticed.wait(10), "the abandoned thread never saw context.should_stop"


def test_an_interrupted_run_still_tells_its_subscribers_it_ended(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    @pipeline.asset()
    def a(context: fs.Context) -> int:
        raise KeyboardInterrupt

    app = make_app(pipeline)
    seen: list[fs.Event] = []
    app.events.subscribe(seen.append)
    with pytest.raises(KeyboardInterrupt):
        app.materialize(["a"])
    assert (seen[-1].type, seen[-1].data) == ("run.finished", {"status": "abandoned"})
