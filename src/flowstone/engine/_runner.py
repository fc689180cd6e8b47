"""Carry out a plan: run steps as their upstreams complete and record every outcome.

Threads (or later, remote workers) only compute: load inputs, call the asset, store the value.
All bookkeeping happens on the coordinating thread, in this order per step (invariant
"record after store"): the I/O manager has stored the value *before* the materialization, its
lineage and the new step status commit together. A crash between the two leaves no success
recorded, so the step simply runs again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import inspect
import itertools
import os
import threading
import time
import typing
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowstone._assets import AssetDefinition, Output
from flowstone._clock import Clock, SystemClock
from flowstone._context import Context, Resources
from flowstone._errors import (
    DependencyFailed,
    DependencyNotReady,
    ExecutionError,
    FlowStoneError,
    IOManagerError,
    StepTimeout,
    ValidationError,
    _json_safe,
    format_traceback,
)
from flowstone._events import (
    ERROR,
    IO_LOADED,
    IO_STORED,
    RUN_FINISHED,
    RUN_STARTED,
    STEP_FAILED,
    STEP_RETRYING,
    STEP_SKIPPED,
    STEP_STARTED,
    STEP_SUCCEEDED,
    Event,
    EventBus,
)
from flowstone._ids import new_id
from flowstone._pipeline import Pipeline
from flowstone._records import Materialization, RunStatus, StepStatus
from flowstone._retry import RetryPolicy, next_delay
from flowstone.engine._planner import Plan, PlannedStep, Resolve, StepKey, typed_partition
from flowstone.engine._result import _NOT_KEPT, RunResult, StepResult, StepResults
from flowstone.io._base import IOContext, IOManager, StoredValue, UpstreamVersion
from flowstone.io._frames import element_annotation
from flowstone.store._store import HOST, NewStep, Store, utcnow
from flowstone.store._writer import RunWriter, StepOutcome

CANCEL_CHECK_EVERY_S = 0.5


class Executor(Protocol):
    """Runs compute calls; ``capacity`` is how many may be in flight at once."""

    capacity: int

    def submit(self, fn: Callable[[], Any]) -> Future[Any]: ...

    def shutdown(self) -> None: ...


class SerialExecutor:
    """Runs each step inline, one at a time: deterministic, the default for tests."""

    capacity = 1
    name = "serial"

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn())
        except BaseException as exc:  # re-raised by the caller through future.result()
            future.set_exception(exc)
        return future

    def shutdown(self) -> None:
        pass


class ThreadPoolStepExecutor:
    """Runs independent steps concurrently on ``workers`` threads."""

    name = "threads"

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("parallel must be at least 1")
        self.capacity = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowstone-step")

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        return self._pool.submit(fn)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class RunEnv:
    """What a run needs besides its plan; built by ``FlowStone``."""

    pipeline: Pipeline
    store: Store
    tenant: str
    io_managers: Mapping[str, IOManager]
    resources: Mapping[str, Any]
    events: EventBus
    resolve: Resolve
    # Called between steps (at most every CANCEL_CHECK_EVERY_S): True stops starting new steps.
    cancelled: Callable[[], bool] | None = None
    backfill_id: str | None = None
    clock: Clock = field(default_factory=SystemClock)
    # True when the executor enforces timeouts itself (the process executor terminates the step).
    external_timeouts: bool = False
    # Called with each step's Context before the asset runs (the queue worker keeps it to ask
    # the step to stop when its run is cancelled).
    on_context: Callable[[Context], None] | None = None
    # Told about approval requests (flowstone.checkpoints.Notifier); None: the log notifier.
    notifier: Any = None
    _param_types: dict[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    def io_manager_name(self, asset: AssetDefinition[..., Any]) -> str:
        return asset.io_manager or self.pipeline.default_io_manager

    def retry_policy(self, asset: AssetDefinition[..., Any]) -> RetryPolicy | None:
        return asset.retry or self.pipeline.retry_policy

    def param_types(self, asset: AssetDefinition[..., Any]) -> Mapping[str, Any]:
        """The asset function's parameter annotations (strings when they cannot be resolved)."""
        found = self._param_types.get(asset.name)
        if found is None:
            found = self._param_types[asset.name] = _annotations(asset.fn)
        return found


# Resolving string annotations costs tens of microseconds a function: once per function, not per run.
_ANNOTATIONS: weakref.WeakKeyDictionary[Callable[..., Any], Mapping[str, Any]] = weakref.WeakKeyDictionary()


def _annotations(fn: Callable[..., Any]) -> Mapping[str, Any]:
    try:
        return _ANNOTATIONS[fn]
    except (KeyError, TypeError):
        pass
    try:
        found: Mapping[str, Any] = typing.get_type_hints(fn)
    except Exception:  # a forward reference that does not resolve: keep the text
        found = {
            name: param.annotation
            for name, param in inspect.signature(fn).parameters.items()
            if param.annotation is not inspect.Parameter.empty
        }
    with contextlib.suppress(TypeError):  # not weak-referenceable: just not cached
        _ANNOTATIONS[fn] = found
    return found


@dataclass(frozen=True)
class _StepIO:
    """What a step's store needs for provenance, decided on the coordinating thread."""

    materialization_id: str
    upstream: tuple[UpstreamVersion, ...]


@dataclass
class _Computed:
    """What a worker hands back: either a stored value or an error."""

    started_at: Any
    duration_ms: float
    value: Any = None
    stored: StoredValue | None = None
    metadata: dict[str, Any] | None = None
    data_version: str | None = None
    error: FlowStoneError | None = None
    traceback: str | None = None
    value_kept: bool = True
    # A checkpoint that needs a person: {"message": ..., "summary": ...}; the value is stored.
    waiting: dict[str, Any] | None = None
    # The process that computed it, when not the one recording it (the process executor).
    pid: int | None = None

    def without_value(self, reason: str) -> _Computed:
        """This outcome minus its value (which could not cross to the parent process)."""
        return dataclasses.replace(self, value=None, value_kept=False, metadata=dict(self.metadata or {}))


@dataclass
class _Isolated:
    """A step computed in another process: its outcome and the events it emitted there."""

    computed: _Computed
    events: list[Event]

    def without_value(self, reason: str) -> _Isolated:
        return _Isolated(self.computed.without_value(reason), self.events)


def _compute_isolated(env: RunEnv, step: PlannedStep, run_id: str, step_io: _StepIO) -> _Isolated:
    """``_compute`` in a step's own process: events are collected to be re-emitted by the parent,
    the executor enforces the timeout, and resources set up here are torn down here."""
    captured: list[Event] = []
    bus = EventBus()
    bus.subscribe(captured.append)
    resources = env.resources
    emit_to = getattr(resources, "emit_to", None)
    if callable(emit_to):  # this process's setups and teardowns go back with its other events
        emit_to(bus)
    for manager in env.io_managers.values():
        after_fork = getattr(manager, "after_fork", None)
        if callable(after_fork):
            after_fork()
    try:
        computed = _compute(
            dataclasses.replace(env, events=bus, external_timeouts=True), step, run_id, step_io
        )
    finally:
        teardown = getattr(resources, "teardown", None)
        if callable(teardown):
            teardown()
    return _Isolated(dataclasses.replace(computed, pid=os.getpid()), captured)


def _call_with_timeout(fn: Callable[[], Any], timeout: float | None, context: Context) -> Any:
    if timeout is None:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    asset = context.asset_name
    # A Python thread cannot be killed: on timeout the step fails, the thread is asked to stop
    # (context.should_stop) and left to end on its own.
    thread = threading.Thread(target=target, name=f"flowstone-timeout-{asset}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        context._request_stop(f"timeout of {timeout:g}s exceeded")
        raise StepTimeout(
            f"asset '{asset}' did not finish within its timeout of {timeout:g}s; its thread was "
            "abandoned and asked to stop (context.should_stop)",
            context={"asset": asset, "timeout_s": timeout, "abandoned_thread": thread.name},
        )
    if "error" in box:
        raise box["error"]
    return box["value"]


def _check_result(asset: AssetDefinition[..., Any], result: Any) -> None:
    """Values no I/O manager should be handed: they mean the asset is written wrongly."""
    if inspect.isawaitable(result) or inspect.isgenerator(result) or inspect.isasyncgen(result):
        kind = "a coroutine" if inspect.isawaitable(result) else "a generator"
        if inspect.iscoroutine(result):
            result.close()  # no "never awaited" warning on top of the error
        raise ExecutionError(
            f"asset '{asset.name}' returned {kind}, not a value: define it with a plain `def` that "
            "returns the value (async and generator assets are not supported)",
            context={"asset": asset.name, "location": asset.location},
        )


def _io_context(
    env: RunEnv, asset: AssetDefinition[..., Any], key: str | None, run_id: str, **extra: Any
) -> IOContext:
    return IOContext(
        asset=asset.name,
        partition_key=key,
        partition=typed_partition(env.resolve(asset.name), asset.name, key),
        tenant=env.tenant,
        run_id=run_id,
        config=asset.io_config,
        **extra,
    )


def _emit_io(
    env: RunEnv, type_: str, run_id: str, ctx: IOContext, manager: str, t0: float, **data: Any
) -> None:
    if env.events.wants(type_):
        env.events.emit(
            Event(
                type_,
                utcnow(),
                run_id,
                ctx.asset,
                ctx.partition_key,
                {"io_manager": manager, "duration_ms": round((time.perf_counter() - t0) * 1000, 3), **data},
            )
        )


def _load_group(
    env: RunEnv,
    asset: AssetDefinition[..., Any],
    dep: AssetDefinition[..., Any],
    keys: Any,
    many: bool,
    run_id: str,
) -> Any:
    """One input's value: a single partition, or ``{key: value}`` (or one combined table) for many."""
    name = env.io_manager_name(dep)
    manager = env.io_managers[name]
    expected = env.param_types(asset).get(dep.name)
    try:
        load_many = getattr(manager, "load_many", None) if many else None
        if load_many is not None and len(keys) > 1:
            ctx = _io_context(env, dep, None, run_id, expected_type=expected, consumer=asset.name)
            t0 = time.perf_counter()
            value = load_many(ctx, list(keys))
            _emit_io(
                env,
                IO_LOADED,
                run_id,
                ctx,
                name,
                t0,
                consumer=asset.name,
                partitions=len(keys),
                **ctx.observed,
            )
            return value
        element = element_annotation(expected) if many else expected
        values = {}
        for key in keys:
            ctx = _io_context(env, dep, key, run_id, expected_type=element, consumer=asset.name)
            t0 = time.perf_counter()
            values[key] = manager.load(ctx)
            _emit_io(env, IO_LOADED, run_id, ctx, name, t0, consumer=asset.name, **ctx.observed)
    except FlowStoneError:
        raise
    except Exception as exc:
        raise IOManagerError(
            f"loading '{dep.name}' for asset '{asset.name}' failed: {exc}",
            context={"asset": asset.name, "upstream": dep.name},
            original=exc,
        ) from exc
    if many:
        return values
    return next(iter(values.values()), None)  # one key, or none when a missing partition is skipped


def _compute(env: RunEnv, step: PlannedStep, run_id: str, step_io: _StepIO) -> _Computed:
    started_at = utcnow()
    t0 = time.perf_counter()
    asset = env.pipeline.assets[step.asset]
    stage = "load"
    try:
        inputs: dict[str, Any] = {}
        for group in step.groups:
            dep = env.pipeline.assets[group.asset]
            inputs[group.asset] = _load_group(env, asset, dep, group.keys, group.many, run_id)
        stage = "resources"
        for name in asset.requires:  # set up now: a failing resource fails only the steps needing it
            env.resources[name]
        context = Context(
            asset_name=asset.name,
            partition_key=step.partition_key,
            partition=typed_partition(env.resolve(asset.name), asset.name, step.partition_key),
            run_id=run_id,
            tenant=env.tenant,
            resources=Resources(asset.name, env.resources, asset.requires),
        )
        kwargs = inputs if asset.takes_var_kwargs else {p: inputs[p] for p in asset.params}
        if env.on_context is not None:
            env.on_context(context)
        stage = "execute"
        waiting: dict[str, Any] | None = None
        if asset.checkpoint is not None:
            from flowstone.checkpoints._gate import evaluate_gate

            result, waiting = evaluate_gate(asset, context, kwargs)
        else:
            result = _call_with_timeout(
                lambda: asset.fn(context, **kwargs), None if env.external_timeouts else asset.timeout, context
            )
        _check_result(asset, result)
        metadata: dict[str, Any] = {}
        data_version = None
        if isinstance(result, Output):
            metadata = {str(k): _json_safe(v) for k, v in result.metadata.items()}
            data_version = None if result.data_version is None else str(result.data_version)
            result = result.value
        stage = "store"
        manager_name = env.io_manager_name(asset)
        manager = env.io_managers[manager_name]
        ctx = _io_context(
            env,
            asset,
            step.partition_key,
            run_id,
            materialization_id=step_io.materialization_id,
            data_version=data_version,
            code_version=asset.code_version,
            upstream=step_io.upstream,
        )
        try:
            store_t0 = time.perf_counter()
            stored = manager.store(ctx, result)
            _emit_io(
                env,
                IO_STORED,
                run_id,
                ctx,
                manager_name,
                store_t0,
                size_bytes=stored.size_bytes if stored else None,
                row_count=stored.row_count if stored else None,
            )
        except FlowStoneError:
            raise
        except Exception as exc:
            raise IOManagerError(
                f"storing asset '{asset.name}' failed: {exc}",
                context={"asset": asset.name, "partition": step.partition_key},
                original=exc,
            ) from exc
        return _Computed(
            started_at,
            (time.perf_counter() - t0) * 1000,
            value=result,
            stored=stored,
            metadata=metadata,
            data_version=data_version,
            waiting=waiting,
        )
    except FlowStoneError as err:
        err.context.setdefault("asset", asset.name)
        err.context.setdefault("partition", step.partition_key)
        return _Computed(
            started_at,
            (time.perf_counter() - t0) * 1000,
            error=err,
            traceback=format_traceback(err.original or err),
        )
    except Exception as exc:
        policy = env.retry_policy(asset)
        error = ExecutionError(
            f"asset '{asset.name}' raised {type(exc).__name__}: {exc}"
            if stage == "execute"
            else f"asset '{asset.name}' failed while {stage}ing: {exc}",
            context={"asset": asset.name, "partition": step.partition_key, "location": asset.location},
            retryable=policy is not None and policy.marks_retryable(exc),
            original=exc,
        )
        return _Computed(
            started_at, (time.perf_counter() - t0) * 1000, error=error, traceback=format_traceback(exc)
        )


def build_materialization(
    env: RunEnv,
    key: StepKey,
    computed: _Computed,
    status: str,
    *,
    materialization_id: str,
    run_id: str,
    attempt: int,
    retry_delay: float | None = None,
) -> Materialization:
    """The record of one attempt of step ``key`` (``status`` success or failed)."""
    asset = env.pipeline.assets[key[0]]
    stored = computed.stored
    error = computed.error
    data_version = None
    if status == "success":
        data_version = computed.data_version or (stored.checksum if stored else None) or materialization_id
    return Materialization(
        id=materialization_id,
        data_version=data_version,
        run_id=run_id,
        asset=key[0],
        partition_key=key[1],
        status=status,
        started_at=computed.started_at,
        finished_at=utcnow(),
        duration_ms=computed.duration_ms,
        value_hash=stored.checksum if stored else None,
        value_size=stored.size_bytes if stored else None,
        io_manager=env.io_manager_name(asset),
        code_version=asset.code_version,
        host=HOST,
        pid=computed.pid or os.getpid(),
        attempt=attempt,
        metadata={
            **(stored.as_metadata() if stored else {}),
            **(computed.metadata or {}),
            **({"retry_delay_s": round(retry_delay, 3)} if retry_delay is not None else {}),
        },
        error_type=error.type if error else None,
        error_message=error.message if error else None,
        error_traceback=computed.traceback,
        retryable=error.retryable if error else None,
        tenant=env.tenant,
    )


class _Run:
    def __init__(
        self,
        env: RunEnv,
        plan: Plan,
        executor: Executor,
        *,
        keep_values: bool,
        resume: tuple[str, Mapping[StepKey, str]] | None = None,
    ) -> None:
        self.env = env
        self.plan = plan
        self.executor = executor
        self.keep_values = keep_values
        # Resuming (after a checkpoint's approval): the run and its steps exist already.
        self.resume = resume
        self.run_id = resume[0] if resume else new_id()
        keyed = [(s.key, s) for s in plan.steps]
        self.step_ids = {key: resume[1][key] if resume else new_id() for key, _ in keyed}
        self.steps = dict(keyed)
        self.inputs = {key: s.inputs for key, s in keyed}
        self.results: dict[StepKey, StepResult] = {
            key: StepResult(s.asset, s.partition_key, StepStatus.PENDING) for key, s in keyed
        }
        self.mat_ids: dict[StepKey, str] = dict(plan.existing)
        self.pending_mat_ids: dict[StepKey, str] = {}
        self.data_versions: dict[StepKey, str | None] = {}
        self.children: dict[StepKey, list[StepKey]] = {key: [] for key, _ in keyed}
        self.waiting: dict[StepKey, int] = {}
        for key, _ in keyed:
            planned_inputs = [i for i in self.inputs[key] if i in self.steps]
            self.waiting[key] = len(planned_inputs)
            for i in planned_inputs:
                self.children[i].append(key)
        self.writer: RunWriter | None = None
        self.cancelled = False
        self.last_cancel_check = float("-inf")
        self.attempts: dict[StepKey, int] = {}
        self.submitted: dict[StepKey, tuple[Any, float]] = {}
        # Steps waiting out a retry delay: (due on the clock's monotonic time, order, key).
        self.delayed: list[tuple[float, int, StepKey]] = []
        self._order = itertools.count()

    def emit(self, type_: str, key: StepKey | None = None, **data: Any) -> Event:
        event = Event(type_, utcnow(), self.run_id, key[0] if key else None, key[1] if key else None, data)
        self.env.events.emit(event)
        return event

    def execute(self, *, actor: str, executor_name: str) -> RunResult:
        env = self.env
        if self.resume is not None:  # reopened by the caller (FlowStone.resume_run)
            record = env.store.get_run(tenant=env.tenant, run_id=self.run_id)
            started_at = (record.started_at or record.created_at) if record else utcnow()
        else:
            started_at = self._create(actor, executor_name)
        return self._execute(started_at)

    def _create(self, actor: str, executor_name: str) -> Any:
        env = self.env
        return env.store.create_run(
            tenant=env.tenant,
            run_id=self.run_id,
            pipeline=env.pipeline.name,
            selection=self.plan.selection,
            partition_key=self.plan.partition_key,
            force=self.plan.force,
            actor=actor,
            executor=executor_name,
            steps=[
                NewStep(
                    self.step_ids[key],
                    i,
                    s.asset,
                    s.partition_key,
                    [[a, k or ""] for a, k in self.inputs[key]],
                )
                for i, (key, s) in enumerate(self.steps.items())
            ],
            backfill_id=env.backfill_id,
        )

    def _execute(self, started_at: Any) -> RunResult:
        env = self.env
        if self.plan.existing:  # the versions of inputs read but not recomputed, for provenance
            versions = env.store.data_versions(
                tenant=env.tenant, materialization_ids=self.plan.existing.values()
            )
            for key, mat_id in self.plan.existing.items():
                self.data_versions[key] = versions.get(mat_id)
        bind_run = getattr(env.resources, "bind_run", None)
        if callable(bind_run):
            bind_run(self.run_id)  # resource events carry the run id
        self.emit(RUN_STARTED, steps=len(self.plan.steps), pipeline=env.pipeline.name)
        self.writer = env.store.run_writer(self.run_id)
        try:
            self._loop()
        except BaseException as exc:
            self.executor.shutdown()
            self.writer.discard()
            self.emit(RUN_FINISHED, status=RunStatus.ABANDONED.value)
            env.store.abandon_run(
                tenant=env.tenant, run_id=self.run_id, reason=f"interrupted: {type(exc).__name__}"
            )
            raise
        self.executor.shutdown()
        self.writer.close()
        statuses = [r.status for r in self.results.values()]
        if self.resume is not None:
            # A resumed run ran only some of its steps: the others (gates decided or still
            # waiting, steps held behind them, steps that failed before the pause) count too.
            ran = set(self.step_ids.values())
            statuses += [
                s.status
                for s in env.store.run_steps(tenant=env.tenant, run_id=self.run_id)
                if s.id not in ran
            ]
        failed = any(s is not StepStatus.SUCCEEDED for s in statuses)
        waiting = any(s is StepStatus.WAITING_APPROVAL for s in statuses)
        if self.cancelled and not any(r.status is StepStatus.FAILED for r in self.results.values()):
            status = RunStatus.CANCELLED
        elif waiting:  # its pending steps wait for a decision; approving resumes them
            status = RunStatus.WAITING_APPROVAL
        else:
            status = RunStatus.FAILED if failed else RunStatus.SUCCEEDED
        finished_at = env.store.finish_run(tenant=env.tenant, run_id=self.run_id, status=status)
        self.emit(RUN_FINISHED, status=status.value)
        return RunResult(
            run_id=self.run_id,
            status=status,
            steps=StepResults(list(self.results.values())),
            started_at=started_at,
            finished_at=finished_at,
            up_to_date=list(self.plan.up_to_date),
        )

    def _loop(self) -> None:
        ready = deque(key for key in self.steps if self.waiting[key] == 0)
        inflight: dict[Future[Any], StepKey] = {}
        clock = self.env.clock
        while ready or inflight or self.delayed:
            due: list[StepKey] = []
            while self.delayed and self.delayed[0][0] <= clock.monotonic():
                due.append(heapq.heappop(self.delayed)[2])
            ready.extendleft(reversed(due))  # a retry goes before steps that have not started
            if (ready or self.delayed) and self._cancel_requested():
                self._cancel_pending()
                ready.clear()
            while ready and len(inflight) < self.executor.capacity:
                key = ready.popleft()
                blocked = self.steps[key].blocked
                if blocked is not None:
                    self._blocked(key, *blocked)
                    continue
                self._start(key)
                inflight[self._submit(key)] = key
            self._writer.maybe_flush()
            if not inflight:
                if self.delayed and not ready:
                    self._writer.flush()  # the retrying state is visible while the run waits
                    clock.sleep(max(0.0, self.delayed[0][0] - clock.monotonic()))
                continue
            # The serial executor hands back finished futures: no need to wait on them.
            timeout = max(0.0, self.delayed[0][0] - clock.monotonic()) if self.delayed else None
            done = [f for f in inflight if f.done()] or wait(
                list(inflight), timeout=timeout, return_when=FIRST_COMPLETED
            )[0]
            for future in done:
                key = inflight.pop(future)
                computed = self._outcome(key, future.result())
                if computed.error is None and computed.waiting is not None:
                    self._wait_for_approval(key, computed)
                elif computed.error is None:
                    self._succeeded(key, computed)
                    unblocked = []
                    for child in self.children[key]:
                        self.waiting[child] -= 1
                        if self.waiting[child] == 0 and self.results[child].status is StepStatus.PENDING:
                            unblocked.append(child)
                    # Front of the queue, in plan order: a downstream partition starts as soon as
                    # its own upstream partitions are done, not after the whole upstream.
                    ready.extendleft(reversed(unblocked))
                elif not self._retry(key, computed):
                    self._failed(key, computed)
        self._writer.flush()

    def _submit(self, key: StepKey) -> Future[Any]:
        step = self.steps[key]
        if not getattr(self.executor, "isolates", False):
            task = functools.partial(_compute, self.env, step, self.run_id, self._step_io(key))
            return self.executor.submit(task)
        self.submitted[key] = (utcnow(), time.perf_counter())
        isolated = functools.partial(_compute_isolated, self.env, step, self.run_id, self._step_io(key))
        label = f"'{key[0]}'" + (f" [{key[1]}]" if key[1] is not None else "")
        submit: Callable[..., Future[Any]] = self.executor.submit
        return submit(isolated, timeout=self.env.pipeline.assets[key[0]].timeout, label=label)

    def _outcome(self, key: StepKey, result: Any) -> _Computed:
        """The step's outcome, from a thread (as is) or from its process (events re-emitted)."""
        if isinstance(result, _Computed):
            return result
        inner = getattr(result, "result", result)  # a ChildOutcome from the process executor
        if isinstance(inner, _Isolated):
            for event in inner.events:
                self.env.events.emit(event)
            return inner.computed
        started_at, t0 = self.submitted.get(key, (utcnow(), time.perf_counter()))
        error = inner if isinstance(inner, FlowStoneError) else ExecutionError(f"step failed: {inner!r}")
        error.context.setdefault("asset", key[0])
        error.context.setdefault("partition", key[1])
        trace = error.context.pop("traceback", None)
        return _Computed(
            started_at,
            (time.perf_counter() - t0) * 1000,
            error=error,
            traceback=trace if isinstance(trace, str) else None,
        )

    def _retry(self, key: StepKey, computed: _Computed) -> bool:
        """Schedule another attempt when the error and the retry policy allow one."""
        error = computed.error
        assert error is not None
        attempt = self.attempts.get(key, 1)
        delay = next_delay(self.env.retry_policy(self.env.pipeline.assets[key[0]]), error, attempt)
        if delay is None or self.cancelled:
            return False
        event = self.emit(STEP_RETRYING, key, attempt=attempt, delay_s=round(delay, 3), error=error.to_dict())
        self._emit_error(key, error)
        mat = self._materialization(key, computed, "failed", retry_delay=delay)
        self._writer.retry_step(
            tenant=self.env.tenant, outcome=StepOutcome(self.step_ids[key], mat, (), event)
        )
        result = self.results[key]
        result.status = StepStatus.RETRYING
        result.error = error
        result.attempts = attempt + 1
        self.attempts[key] = attempt + 1
        heapq.heappush(self.delayed, (self.env.clock.monotonic() + delay, next(self._order), key))
        return True

    def _emit_error(self, key: StepKey, error: FlowStoneError) -> None:
        if self.env.events.wants(ERROR):
            self.emit(ERROR, key, error=error.to_dict())

    def _cancel_requested(self) -> bool:
        check = self.env.cancelled
        if check is None or self.cancelled:
            return self.cancelled
        now = self.env.clock.monotonic()
        if now - self.last_cancel_check >= CANCEL_CHECK_EVERY_S:
            self.last_cancel_check = now
            self.cancelled = bool(check())
        return self.cancelled

    def _cancel_pending(self) -> None:
        """Stop starting steps: every step not started yet is skipped; running ones finish."""
        pending = [k for k, r in self.results.items() if r.status is StepStatus.PENDING]
        self._skip(pending, "cancelled before it started", "cancelled", None)
        waiting = [k for k, r in self.results.items() if r.status is StepStatus.RETRYING]
        self.delayed.clear()
        self._skip(waiting, "cancelled while waiting to retry", "cancelled", None)

    def _blocked(self, key: StepKey, policy: str, reason: str) -> None:
        error = DependencyNotReady(
            f"asset '{key[0]}' cannot run: {reason}",
            context={"asset": key[0], "partition": key[1]},
        )
        if policy == "wait":
            self._skip([key], f"waiting: {reason}", error.type, error)
        else:
            self._start(key)
            computed = _Computed(utcnow(), 0.0, error=error)
            self._record(key, computed, self.emit(STEP_FAILED, key, error=error.to_dict()))
        self._skip_downstream(key)

    @property
    def _writer(self) -> RunWriter:
        assert self.writer is not None, "the run has not started"
        return self.writer

    def _start(self, key: StepKey) -> None:
        self.results[key].status = StepStatus.RUNNING
        attempt = self.attempts.get(key, 1)
        event = self.emit(STEP_STARTED, key, attempt=attempt) if attempt > 1 else self.emit(STEP_STARTED, key)
        self._writer.start_step(
            tenant=self.env.tenant, step_id=self.step_ids[key], attempt=attempt, event=event
        )

    def _step_io(self, key: StepKey) -> _StepIO:
        mat_id = new_id()
        self.pending_mat_ids[key] = mat_id
        upstream = tuple(
            UpstreamVersion(i[0], i[1], self.mat_ids.get(i), self.data_versions.get(i))
            for i in self.inputs[key]
        )
        return _StepIO(mat_id, upstream)

    def _materialization(
        self, key: StepKey, computed: _Computed, status: str, *, retry_delay: float | None = None
    ) -> Materialization:
        return build_materialization(
            self.env,
            key,
            computed,
            status,
            materialization_id=self.pending_mat_ids.pop(key, "") or new_id(),
            run_id=self.run_id,
            attempt=self.attempts.get(key, 1),
            retry_delay=retry_delay,
        )

    def _record(self, key: StepKey, computed: _Computed, event: Event) -> Materialization:
        ok = computed.error is None
        mat = self._materialization(key, computed, "success" if ok else "failed")
        # In-run upstreams pass their data version; for older ones the writer looks it up.
        lineage = [
            (self.mat_ids[i], i[0], i[1], self.data_versions.get(i))
            for i in self.inputs[key]
            if i in self.mat_ids
        ]
        self._writer.finish_step(
            tenant=self.env.tenant,
            outcome=StepOutcome(self.step_ids[key], mat, lineage if ok else (), event),
        )
        result = self.results[key]
        result.status = StepStatus.SUCCEEDED if ok else StepStatus.FAILED
        result.materialization = mat
        result.error = computed.error
        result.duration_ms = computed.duration_ms
        return mat

    def _succeeded(self, key: StepKey, computed: _Computed) -> None:
        stored = computed.stored
        event = self.emit(
            STEP_SUCCEEDED,
            key,
            duration_ms=round(computed.duration_ms, 3),
            io_manager=self.env.io_manager_name(self.env.pipeline.assets[key[0]]),
            size_bytes=stored.size_bytes if stored is not None else None,
        )
        mat = self._record(key, computed, event)
        self.mat_ids[key] = mat.id
        self.data_versions[key] = mat.data_version
        self.results[key]._value = computed.value if self.keep_values and computed.value_kept else _NOT_KEPT

    def _wait_for_approval(self, key: StepKey, computed: _Computed) -> None:
        """A checkpoint needs a person: its value is stored; open the request, park the step."""
        from flowstone.checkpoints._api import open_request

        assert computed.waiting is not None
        asset = self.env.pipeline.assets[key[0]]
        mat_id = self.pending_mat_ids.pop(key, None) or new_id()
        lineage = [
            [self.mat_ids[i], i[0], i[1], self.data_versions.get(i)]
            for i in self.inputs[key]
            if i in self.mat_ids
        ]
        self._writer.flush()  # the step's start is in the store before its request
        self._writer.wait_step(step_id=self.step_ids[key], attempt=self.attempts.get(key, 1))
        self._writer.flush()
        record = open_request(
            self.env,
            asset,
            run_id=self.run_id,
            step_id=self.step_ids[key],
            partition_key=key[1],
            materialization_id=mat_id,
            computed=computed,
            lineage=lineage,
            attempt=self.attempts.get(key, 1),
        )
        self.emit("checkpoint.requested", key, approval_id=record.id, message=record.message)
        result = self.results[key]
        result.status = StepStatus.WAITING_APPROVAL
        result.duration_ms = computed.duration_ms

    def _failed(self, key: StepKey, computed: _Computed) -> None:
        assert computed.error is not None
        self._emit_error(key, computed.error)
        self._record(key, computed, self.emit(STEP_FAILED, key, error=computed.error.to_dict()))
        self._skip_downstream(key)

    def _skip_downstream(self, failed: StepKey) -> None:
        reason = f"upstream '{failed[0]}' failed"
        frontier = list(self.children[failed])
        seen: set[StepKey] = set()
        while frontier:
            key = frontier.pop()
            if key in seen or self.results[key].status is not StepStatus.PENDING:
                continue
            seen.add(key)
            error = DependencyFailed(
                f"asset '{key[0]}' was not run: {reason}",
                context={"asset": key[0], "partition": key[1], "upstream": failed[0]},
            )
            self._skip([key], reason, error.type, error)
            frontier.extend(self.children[key])

    def _skip(self, keys: list[StepKey], reason: str, error_type: str, error: FlowStoneError | None) -> None:
        skipped: list[tuple[str, str, Event]] = []
        for key in keys:
            result = self.results[key]
            result.status = StepStatus.SKIPPED
            result.reason = reason
            result.error = error
            skipped.append((self.step_ids[key], error_type, self.emit(STEP_SKIPPED, key, reason=reason)))
        self._writer.skip_steps(tenant=self.env.tenant, skipped=skipped)


EXECUTORS = ("serial", "threads", "processes")
# What FlowStone.execute, materialize and backfill accept: these, and the run queue they hand to.
EXECUTOR_CHOICES = (*EXECUTORS, "queue")


def check_executor(executor: str | None) -> None:
    """Refuse an unknown ``executor=`` (``None`` picks the default) with a ValidationError."""
    if executor is not None and executor not in EXECUTOR_CHOICES:
        allowed = ", ".join(repr(e) for e in EXECUTOR_CHOICES)
        raise ValidationError(
            f"executor must be one of {allowed}, got {executor!r}",
            context={"field": "executor", "value": executor, "allowed": list(EXECUTOR_CHOICES)},
            hint="Pass one of those (or leave executor out for the default).",
        )


def execute_plan(
    env: RunEnv,
    plan: Plan,
    *,
    parallel: int = 1,
    keep_values: bool = False,
    actor: str = "api",
    executor: str | None = None,
    resume: tuple[str, Mapping[StepKey, str]] | None = None,
) -> RunResult:
    """Run ``plan``. ``executor``: ``serial`` (the default for one step at a time), ``threads``
    (the default when ``parallel`` > 1) or ``processes`` (a forked process per step, so a step
    past its timeout is terminated)."""
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    check_executor(executor)
    kind = executor or ("serial" if parallel == 1 else "threads")
    if kind not in EXECUTORS:  # "queue": FlowStone.execute submits those instead of calling this
        raise ValidationError(
            f"execute_plan runs in this process; executor {kind!r} is FlowStone.execute's to handle",
            context={"field": "executor", "value": kind, "allowed": list(EXECUTORS)},
        )
    chosen: Executor
    if kind == "processes":
        from flowstone.engine._process import ProcessStepExecutor
        from flowstone.io._memory import MemoryIOManager

        in_memory = sorted(
            {
                s.asset
                for s in plan.steps
                if isinstance(
                    env.io_managers[env.io_manager_name(env.pipeline.assets[s.asset])], MemoryIOManager
                )
            }
        )
        if in_memory:
            raise ValidationError(
                f"the process executor cannot run {in_memory}: their values live in memory, which "
                "each step's process has its own copy of; use a storing I/O manager (filesystem) "
                "or the threads executor",
                context={"assets": in_memory},
            )
        chosen = ProcessStepExecutor(parallel)
    elif kind == "threads":
        chosen = ThreadPoolStepExecutor(parallel)
    else:
        chosen = SerialExecutor()
    run = _Run(env, plan, chosen, keep_values=keep_values, resume=resume)
    return run.execute(actor=actor, executor_name=getattr(chosen, "name", "custom"))
