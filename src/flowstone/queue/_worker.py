"""``flowstone worker``: pick up queue steps and run them, on any host that reaches the store.

One procrastinate worker per process runs up to ``concurrency`` steps at a time (each on a
thread: asset functions are ordinary blocking code). Per job it:

1. claims the step (``QueueDB.claim``): the database refuses a second running copy of the same
   (tenant, asset, partition) and enforces pool, queue and tenant limits;
2. computes it exactly as the local executors do (``engine._runner._compute``: load inputs,
   call the asset, store the value through its I/O manager);
3. records the outcome and hands off to the downstream steps in one transaction
   (``QueueDB.finish``) — only after the value is stored.

Housekeeping runs inside every worker, on a thread: steps of workers that stopped sending
heartbeats are handed to a new job (``reap``), and finished jobs are pruned (``prune_jobs``).
Resources are set up once per worker process and torn down when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flowstone._context import Context
from flowstone._errors import DependencyNotReady, ExecutionError, FlowStoneError, ValidationError
from flowstone._events import STEP_FAILED, STEP_RETRYING, STEP_SUCCEEDED, Event
from flowstone._ids import new_id
from flowstone._retry import next_delay
from flowstone.engine._planner import InputGroup, PlannedStep, mapping_for
from flowstone.engine._process import ProcessStepExecutor
from flowstone.engine._runner import (
    RunEnv,
    _compute,
    _compute_isolated,
    _Computed,
    _Isolated,
    _StepIO,
    build_materialization,
)
from flowstone.io._base import UpstreamVersion
from flowstone.queue._config import DEFAULT_QUEUE, TASK_NAME, QueueConfig
from flowstone.queue._db import ApprovalToOpen, Claimed, Finish, JobArgs, QueueDB, conninfo
from flowstone.store._store import HOST, utcnow
from flowstone.store._writer import StepOutcome, StepRows

if TYPE_CHECKING:
    from flowstone._app import FlowStone

_log = logging.getLogger("flowstone.worker")


class _Running:
    """Contexts of the steps this worker runs, to ask them to stop when their run is cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, tuple[Any, list[Context]]] = {}

    def add(self, job_id: int, should_abort: Any) -> list[Context]:
        contexts: list[Context] = []
        with self._lock:
            self._jobs[job_id] = (should_abort, contexts)
        return contexts

    def remove(self, job_id: int) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def check(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for should_abort, contexts in jobs:
            try:
                abort = bool(should_abort())
            except Exception:  # the job finished meanwhile
                continue
            if abort:
                for context in contexts:
                    context._request_stop("its run was cancelled")


class Worker:
    """Runs queue steps of ``app``'s pipeline until stopped (SIGINT/SIGTERM or :meth:`stop`)."""

    def __init__(
        self,
        app: FlowStone,
        *,
        concurrency: int | None = None,
        queues: Iterable[str] | None = None,
        config: QueueConfig | None = None,
        name: str | None = None,
        isolate: bool = False,
    ) -> None:
        self.app = app
        self.config = config or app.queue_config
        self.concurrency = concurrency or self.config.concurrency
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        self.queues = list(queues) if queues else None
        self.name = name or f"{HOST}:{os.getpid()}"
        self.db = QueueDB(app.store.engine, app.pipeline, config=self.config)
        self.codes = self.db.codes  # computed once (it reads every asset's source)
        from flowstone.resources._runtime import RunResources

        self.resources = RunResources(app.resources, events=app.events, clock=app.clock.monotonic)
        self._running = _Running()
        # isolate: each step in a forked process (a cancelled or timed-out step is terminated).
        self._processes: ProcessStepExecutor | None = (
            ProcessStepExecutor(self.concurrency) if isolate else None
        )
        self._stop = threading.Event()
        self._procrastinate: Any = None
        self._worker_task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> None:
        """Block, running steps, until stopped."""
        import procrastinate

        self.db.ensure_schema()
        # The job table's own writes (fetch, finish) need no disk flush: a job whose finish is
        # lost in a database crash runs again and finds its step already recorded.
        info, kwargs = conninfo(
            self.app.store.engine.url.render_as_string(hide_password=False),
            options="-c synchronous_commit=off",
        )
        connector = _connector(info, kwargs, self._stop)
        papp = procrastinate.App(connector=connector)
        worker = self

        @papp.task(name=TASK_NAME, pass_context=True)
        def run_step(context: Any, /, **kwargs: Any) -> None:
            worker.run_job(int(context.job.id), kwargs, context.should_abort)

        self._procrastinate = papp
        keeper = threading.Thread(target=self._housekeeping, name="flowstone-housekeeping", daemon=True)
        keeper.start()
        _log.info("worker %s started (concurrency %d, queues %s)", self.name, self.concurrency, self.queues)
        try:
            asyncio.run(self._run_async(papp))
        finally:
            self._stop.set()
            keeper.join(timeout=10)
            if self._processes is not None:
                self._processes.shutdown()
            self.resources.teardown()
            for manager in self.app.io_managers.values():
                close = getattr(manager, "close", None)
                if callable(close):
                    with contextlib.suppress(Exception):
                        close()

    async def _run_async(self, papp: Any) -> None:
        from procrastinate.exceptions import ConnectorException

        self._loop = asyncio.get_running_loop()
        async with papp.open_async():
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self.stop)
            while not self._stop.is_set():
                self._worker_task = asyncio.ensure_future(
                    papp.run_worker_async(
                        queues=self.queues,
                        name=self.name,
                        concurrency=self.concurrency,
                        wait=True,
                        listen_notify=True,
                        fetch_job_polling_interval=1.0,
                        abort_job_polling_interval=0.5,
                        install_signal_handlers=False,
                        update_heartbeat_interval=self.config.heartbeat_every,
                        stalled_worker_timeout=self.config.stalled_after,
                        delete_jobs="successful",
                    )
                )
                try:
                    await self._worker_task
                    return
                except asyncio.CancelledError:
                    return
                except ConnectorException as exc:
                    if self._stop.is_set():
                        return
                    # The job loop ended on a database error it could not ride out, e.g. this
                    # worker was presumed dead (no heartbeat for stalled_after: its row is gone,
                    # so every fetch fails on the foreign key). Start again as a new worker.
                    _log.warning(
                        "worker %s: the job loop stopped on a database error (%s); starting it again",
                        self.name,
                        exc.__cause__ or exc,
                    )
                    await asyncio.sleep(0.5 + random.random())

    def stop(self) -> None:
        """Stop fetching steps; running ones finish first."""
        self._stop.set()
        task, loop = self._worker_task, self._loop
        if task is not None and loop is not None and not task.done():
            loop.call_soon_threadsafe(task.cancel)

    def _housekeeping(self) -> None:
        next_prune = time.monotonic()
        while not self._stop.wait(self.config.reap_every * (0.75 + random.random() / 2)):
            try:
                self._running.check()
                for asset, key in self.db.reap(
                    stalled_after=self.config.stalled_after, max_attempts=self._max_attempts
                ):
                    _log.warning("step '%s' [%s] of a dead worker handed to a new job", asset, key)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 3600
                    self.db.prune_jobs(older_than=self.config.retention)
                    self.app.prune_events()
                if self.app.pipeline.checkpoints:
                    # Checkpoint timeouts: decisions are conditional updates, so several
                    # workers (and daemons) doing this at once decide each request once.
                    for approval_id, what in self.app.approvals.process_timeouts():
                        _log.warning("approval %s timed out: %s", approval_id[:12], what)
            except Exception:
                _log.exception("housekeeping failed; trying again")

    def _max_attempts(self, asset: str) -> int:
        definition = self.app.pipeline.assets.get(asset)
        policy = (definition.retry if definition else None) or self.app.pipeline.retry_policy
        return max(3, policy.max_attempts) if policy else 3

    # ------------------------------------------------------------------ one job
    def run_job(self, job_id: int, kwargs: dict[str, Any], should_abort: Any = None) -> None:
        args = JobArgs.from_kwargs(kwargs)
        claimed = self.db.claim(job_id, args, worker=self.name)
        if not isinstance(claimed, Claimed):
            return
        contexts = self._running.add(job_id, should_abort or (lambda: False))
        try:
            self._run_claimed(claimed, contexts, should_abort)
        except BaseException as exc:  # SystemExit from an asset, a bug here: not a stuck step
            _log.exception("step '%s' [%s] of run %s crashed", args.asset, args.partition, args.run)
            crashed = ExecutionError(
                f"running asset '{args.asset}' raised {type(exc).__name__}: {exc}",
                context={"asset": args.asset, "partition": args.partition, "worker": self.name},
            )
            # Recorded unless the outcome was recorded already (then finish refuses: the step
            # is no longer running) or the store is unreachable (then the reaper hands it on).
            with contextlib.suppress(Exception):
                self._record_failure_without_asset(claimed, crashed)
            if not isinstance(exc, (Exception, SystemExit)):
                raise
        finally:
            self._running.remove(job_id)

    def _env(self, tenant: str, contexts: list[Context]) -> RunEnv:
        app = self.app
        return RunEnv(
            app.pipeline,
            app.store,
            tenant,
            app.io_managers,
            self.resources,
            app.events,
            app.resolver(),
            clock=app.clock,
            on_context=contexts.append,
        )

    def _compute(
        self,
        env: RunEnv,
        claimed: Claimed,
        step_io: _StepIO,
        should_abort: Callable[[], bool] | None,
    ) -> _Computed:
        """Compute the step on this thread, or (``isolate``) in a forked process that is
        terminated when its run is cancelled or it overruns its timeout."""
        if self._processes is None:
            return _compute(env, claimed.step, claimed.args.run, step_io)
        args = claimed.args
        label = f"'{args.asset}'" + (f" [{args.partition}]" if args.partition is not None else "")
        task = functools.partial(_compute_isolated, env, claimed.step, args.run, step_io)
        future = self._processes.submit(
            task,
            timeout=self.app.pipeline.assets[args.asset].timeout,
            label=label,
            stop_requested=should_abort,
        )
        outcome = future.result()
        inner = getattr(outcome, "result", outcome)
        if isinstance(inner, _Isolated):
            for event in inner.events:
                self.app.events.emit(event)
            return inner.computed
        error = inner if isinstance(inner, FlowStoneError) else ExecutionError(f"step failed: {inner!r}")
        error.context.setdefault("asset", args.asset)
        error.context.setdefault("partition", args.partition)
        trace = error.context.pop("traceback", None)
        return _Computed(
            claimed.started_at, 0.0, error=error, traceback=trace if isinstance(trace, str) else None
        )

    def _run_claimed(
        self, claimed: Claimed, contexts: list[Context], should_abort: Callable[[], bool] | None = None
    ) -> None:
        args = claimed.args
        env = self._env(args.tenant, contexts)
        key = (args.asset, args.partition)
        mat_id = new_id()
        definition = self.app.pipeline.assets.get(args.asset)
        mine = self.codes.get(args.asset)
        if definition is None or mine != args.code:
            what = (
                f"asset '{args.asset}' is not in this worker's pipeline '{self.app.pipeline.name}'"
                if definition is None
                else f"asset '{args.asset}' was enqueued with code version {args.code} but worker "
                f"{self.name} runs {mine}"
            )
            refused = ValidationError(
                f"{what}: deploy the same code to every worker and enqueuer, then run it again",
                context={
                    "asset": args.asset,
                    "enqueued_code": args.code,
                    "worker_code": mine,
                    "worker": self.name,
                },
            )
            computed = _Computed(utcnow(), 0.0, error=refused)
            if definition is None:
                self._record_failure_without_asset(claimed, refused)
                return
        else:
            blocked = claimed.step.blocked
            if blocked is not None and blocked[0] == "wait":
                blocked = self._look_again(claimed)
            if blocked is not None:
                computed = _Computed(
                    utcnow(),
                    0.0,
                    error=DependencyNotReady(
                        f"asset '{args.asset}' cannot run: {blocked[1]}",
                        context={"asset": args.asset, "partition": args.partition},
                        retryable=blocked[0] == "wait",
                    ),
                )
            else:
                upstream = tuple(
                    UpstreamVersion(a, k, *claimed.upstream.get((a, k), (None, None)))
                    for a, k in claimed.step.inputs
                )
                computed = self._compute(env, claimed, _StepIO(mat_id, upstream), should_abort)
        rows = StepRows("postgresql")
        error = computed.error
        if error is None and computed.waiting is not None and definition is not None:
            # A checkpoint whose condition holds: open its request; the step waits for it.
            from flowstone.checkpoints._api import request_fields

            links: list[list[Any]] = [
                [mat_up, a, k, version]
                for (a, k) in claimed.step.inputs
                for mat_up, version in [claimed.upstream.get((a, k), (None, None))]
                if mat_up is not None
            ]
            fields = request_fields(
                env,
                definition,
                run_id=args.run,
                partition_key=args.partition,
                computed=computed,
                lineage=links,
                attempt=args.attempt,
            )
            approval = ApprovalToOpen(
                approval_id=new_id(),
                checkpoint=args.asset,
                partition_key=args.partition,
                materialization_id=mat_id,
                message=fields.message,
                context=fields.context,
                timeout_at=fields.timeout_at,
                approval_type=fields.approval_type,
                now=fields.now,
            )
            if self.db.finish(claimed, Finish(rows, False, approval=approval)):
                from flowstone.checkpoints._api import _notify

                event = Event(
                    "checkpoint.requested",
                    utcnow(),
                    args.run,
                    args.asset,
                    args.partition,
                    {"approval_id": approval.approval_id, "message": approval.message},
                )
                self.app.events.emit(event)
                record = self.app.approvals.store.get(tenant=args.tenant, approval_id=approval.approval_id)
                if record is not None:
                    _notify(self.app.notifier, "requested", record)
            return
        if error is None:
            stored = computed.stored
            event = Event(
                STEP_SUCCEEDED,
                utcnow(),
                args.run,
                args.asset,
                args.partition,
                {
                    "duration_ms": round(computed.duration_ms, 3),
                    "io_manager": env.io_manager_name(definition) if definition else None,
                    "size_bytes": stored.size_bytes if stored is not None else None,
                },
            )
            mat = build_materialization(
                env,
                key,
                computed,
                "success",
                materialization_id=mat_id,
                run_id=args.run,
                attempt=args.attempt,
            )
            lineage = [
                (mat_up, a, k, version)
                for (a, k) in claimed.step.inputs
                for mat_up, version in [claimed.upstream.get((a, k), (None, None))]
                if mat_up is not None
            ]
            rows.finish_step(tenant=args.tenant, outcome=StepOutcome(claimed.step_id, mat, lineage, event))
            finish = Finish(rows, True, materialization_id=mat.id)
        elif error.type == DependencyNotReady.type and error.retryable and self._may_wait(claimed):
            event = Event(
                STEP_RETRYING,
                utcnow(),
                args.run,
                args.asset,
                args.partition,
                {"attempt": args.attempt, "waiting": True, "error": error.to_dict()},
            )
            rows.calls.append(("event", [rows._event(args.tenant, event)]))
            finish = Finish(rows, False, error=error, not_ready_delay=self.config.not_ready_every)
        else:
            policy = (definition.retry or self.app.pipeline.retry_policy) if definition else None
            delay = next_delay(policy, error, args.attempt)
            if delay is not None:
                event = Event(
                    STEP_RETRYING,
                    utcnow(),
                    args.run,
                    args.asset,
                    args.partition,
                    {"attempt": args.attempt, "delay_s": round(delay, 3), "error": error.to_dict()},
                )
                mat = build_materialization(
                    env,
                    key,
                    computed,
                    "failed",
                    materialization_id=mat_id,
                    run_id=args.run,
                    attempt=args.attempt,
                    retry_delay=delay,
                )
                rows.retry_step(tenant=args.tenant, outcome=StepOutcome(claimed.step_id, mat, (), event))
                finish = Finish(rows, False, error=error, retry_delay=delay)
            else:
                event = Event(
                    STEP_FAILED, utcnow(), args.run, args.asset, args.partition, {"error": error.to_dict()}
                )
                mat = build_materialization(
                    env,
                    key,
                    computed,
                    "failed",
                    materialization_id=mat_id,
                    run_id=args.run,
                    attempt=args.attempt,
                )
                rows.finish_step(tenant=args.tenant, outcome=StepOutcome(claimed.step_id, mat, (), event))
                finish = Finish(rows, False, error=error, materialization_id=mat.id)
        if self.db.finish(claimed, finish):
            self.app.events.emit(event)
        else:
            _log.warning(
                "step '%s' [%s] of run %s was handed to another job while this one ran; its outcome "
                "is not recorded",
                args.asset,
                args.partition,
                args.run,
            )

    def _look_again(self, claimed: Claimed) -> tuple[str, str] | None:
        """A step waiting for upstream partitions that did not exist when its run was planned
        (``In(missing="wait")``): are they declared and materialized now? Then the step reads
        them (``claimed`` is updated) and None is returned; else why it still waits."""
        app = self.app
        step = claimed.step
        resolve = app.resolver()  # the dynamic partitions as they are now
        groups: list[InputGroup] = []
        for group in step.groups:
            if not group.missing or group.policy != "wait":
                groups.append(group)
                continue
            mapping, _spec = mapping_for(app.pipeline, step.asset, group.asset, resolve)
            up = resolve(group.asset)
            mapped = mapping.upstream_keys(resolve(step.asset), step.partition_key, up)
            absent = [str(k) for k in mapped.keys if up is not None and (k is None or k not in up)]
            missing = tuple(mapped.missing) + tuple(absent)
            groups.append(InputGroup(group.asset, tuple(mapped.keys), group.many, missing, group.policy))
        looked = PlannedStep(step.asset, step.partition_key, tuple(groups))
        if looked.blocked is not None:
            return looked.blocked
        new = [pair for pair in looked.inputs if pair not in claimed.upstream]
        found = app.store.latest_success(tenant=claimed.args.tenant, pairs=new, last_succeeded=True)
        unbuilt = [pair for pair in new if pair not in found]
        if unbuilt:
            return (
                "wait",
                f"upstream '{unbuilt[0][0]}' has no materialization of partition {unbuilt[0][1]} yet",
            )
        versions = app.store.data_versions(tenant=claimed.args.tenant, materialization_ids=found.values())
        for pair, mat_id in found.items():
            claimed.upstream[pair] = (mat_id, versions.get(mat_id))
        claimed.step = looked
        return None

    def _may_wait(self, claimed: Claimed) -> bool:
        return (utcnow() - claimed.run_created_at).total_seconds() < self.config.not_ready_for

    def _record_failure_without_asset(self, claimed: Claimed, error: FlowStoneError) -> None:
        args = claimed.args
        rows = StepRows("postgresql")
        now = utcnow()
        rows.calls.append(
            (
                "finish_step",
                {
                    "step_id": claimed.step_id,
                    "attempt": args.attempt,
                    "status": "failed",
                    "finished_at": now,
                    "duration_ms": 0.0,
                    "materialization_id": None,
                    "error_type": error.type,
                    "error_message": error.message,
                },
            )
        )
        event = Event(STEP_FAILED, now, args.run, args.asset, args.partition, {"error": error.to_dict()})
        rows.calls.append(("event", [rows._event(args.tenant, event)]))
        self.db.finish(claimed, Finish(rows, False, error=error))


def _connector(info: str, kwargs: dict[str, Any], stopping: threading.Event) -> Any:
    """procrastinate's connector, made to ride out a lost database connection.

    - Its pool hands connections out unchecked: psycopg_pool's check waits 1 s, 2 s, 4 s ...
      after each dead connection, so once every pooled connection died at once (a cut, a
      restart of the server) the next heartbeat or fetch could wait up to 15 s, longer than a
      short stalled_after.
    - A query that fails because its connection is lost is tried again (at once, then backing
      off up to 1 s) until it gets through or the worker stops: the pool drops the dead
      connection when it comes back. procrastinate's own loops die at the first error: the
      fetch loop ends the worker, the heartbeat task dies silently (and the worker is then
      reaped while alive).
    """
    import procrastinate
    import psycopg
    import psycopg_pool

    async def autocommit(conn: Any) -> None:
        await conn.set_autocommit(True)

    def pool(**options: Any) -> Any:
        options["check"] = None
        # Each of procrastinate's calls is one statement: in autocommit it costs no BEGIN and
        # no COMMIT round trip (fetch and finish: four per step).
        options["configure"] = autocommit
        return psycopg_pool.AsyncConnectionPool(**options)

    class Connector(procrastinate.PsycopgConnector):
        async def _again(self, call: Any, query: Any, arguments: dict[str, Any]) -> Any:
            delay = 0.0
            while True:
                try:
                    return await call(query, **arguments)
                except procrastinate.exceptions.ConnectorException as exc:
                    if stopping.is_set() or not isinstance(exc.__cause__, psycopg.OperationalError):
                        raise
                    _log.warning("lost the database connection (%s); trying again", exc.__cause__)
                await asyncio.sleep(delay)
                delay = min(1.0, max(0.05, delay * 2))

        async def execute_query_async(self, query: Any, **arguments: Any) -> Any:
            return await self._again(super().execute_query_async, query, arguments)

        async def execute_query_one_async(self, query: Any, **arguments: Any) -> Any:
            return await self._again(super().execute_query_one_async, query, arguments)

        async def execute_query_all_async(self, query: Any, **arguments: Any) -> Any:
            return await self._again(super().execute_query_all_async, query, arguments)

    return Connector(conninfo=info, kwargs=kwargs, pool_factory=pool)


__all__ = ["DEFAULT_QUEUE", "Worker"]
