"""``flowstone worker``: pick up queue steps and run them, on any host that reaches the store.

Jobs live in procrastinate's job table and are taken with its own SQL functions (fetch, finish,
worker registration and heartbeats), but the loop is ours: ``concurrency`` threads (asset
functions are ordinary blocking code), each on its own connection, repeat

1. **fetch and claim** in one transaction (``QueueDB.fetch``): procrastinate's fetch takes the
   highest-priority ready job, and the step is claimed with it: the database refuses a second
   running copy of the same (tenant, asset, partition) and enforces pool, queue and tenant
   limits;
2. **compute** exactly as the local executors do (``engine._runner._compute``: load inputs, call
   the asset, store the value through its I/O manager);
3. **finish** in one transaction (``QueueDB.finish``), only after the value is stored: the
   outcome, the hand-off to the downstream steps (their jobs are deferred there) and the end of
   the job itself commit together.

procrastinate's own asyncio worker costs about as much per job as our bookkeeping does (an event
loop hop, a thread hop, two more transactions); fetching and finishing inside our transactions
also closes the window where a step was recorded but its job was not.

Idle threads sleep until a job is deferred (LISTEN on procrastinate's channels, one thread
woken per new job) or a poll interval passes (delayed retries). Around them: a pulse thread
(heartbeats; steps whose run was cancelled are asked to stop) and housekeeping (steps of workers
that stopped sending heartbeats are handed to a new job by ``reap``, finished jobs pruned,
checkpoint timeouts). Resources are set up once per worker process and torn down when it stops.
"""

from __future__ import annotations

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
from flowstone._errors import DependencyNotReady, ExecutionError, FlowStoneError, StoreError, ValidationError
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
from flowstone.queue._config import DEFAULT_QUEUE, QueueConfig
from flowstone.queue._db import ApprovalToOpen, Claimed, Finish, QueueDB, WorkerGone, conninfo
from flowstone.store._store import HOST, utcnow
from flowstone.store._writer import StepOutcome, StepRows

if TYPE_CHECKING:
    from flowstone._app import FlowStone

_log = logging.getLogger("flowstone.worker")

# What a step does once its outcome is recorded (True) or refused (False): events, notices.
_After = Callable[[bool], None]


class _Running:
    """Steps this worker runs, by job id: a stop flag and their contexts, so that a cancel of
    their run reaches them (``context.should_stop``; ``--isolate`` terminates the process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, tuple[threading.Event, list[Context]]] = {}

    def add(self, job_id: int) -> tuple[threading.Event, list[Context]]:
        entry: tuple[threading.Event, list[Context]] = (threading.Event(), [])
        with self._lock:
            self._jobs[job_id] = entry
        return entry

    def remove(self, job_id: int) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def ids(self) -> list[int]:
        with self._lock:
            return list(self._jobs)

    def stop(self, job_ids: Iterable[int]) -> None:
        with self._lock:
            entries = [self._jobs[j] for j in job_ids if j in self._jobs]
        for flag, contexts in entries:
            flag.set()
            for context in list(contexts):
                context._request_stop("its run was cancelled")


class _Wakeup:
    """Where idle step threads sleep. A generation count closes the gap between a fetch that
    found nothing and the wait: a job deferred in between is not slept through."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.generation = 0

    def notify(self, count: int = 1) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify(count)

    def notify_all(self) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            if self.generation == seen:
                self._cond.wait(timeout)


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
        self.db = QueueDB(app.store.engine, app.pipeline, config=self.config, own_connections=True)
        self.codes = self.db.codes  # computed once (it reads every asset's source)
        from flowstone.resources._runtime import RunResources

        self.resources = RunResources(app.resources, events=app.events, clock=app.clock.monotonic)
        self._running = _Running()
        # isolate: each step in a forked process (a cancelled or timed-out step is terminated).
        self._processes: ProcessStepExecutor | None = (
            ProcessStepExecutor(self.concurrency) if isolate else None
        )
        self._stop = threading.Event()
        self._wake = _Wakeup()
        self._worker_id: int | None = None
        self._id_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> None:
        """Block, running steps, until stopped (SIGINT/SIGTERM in the main thread, or
        :meth:`stop`); steps that are running then finish first."""
        self.db.ensure_schema()
        self._worker_id = self.db.register_worker()
        helpers = [
            threading.Thread(target=self._listen, name="flowstone-listen", daemon=True),
            threading.Thread(target=self._pulse, name="flowstone-pulse", daemon=True),
            threading.Thread(target=self._housekeeping, name="flowstone-housekeeping", daemon=True),
        ]
        steppers = [
            threading.Thread(target=self._step_loop, name=f"flowstone-step-{i}")
            for i in range(self.concurrency)
        ]
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda _signum, _frame: self.stop())
        _log.info("worker %s started (concurrency %d, queues %s)", self.name, self.concurrency, self.queues)
        try:
            for thread in (*helpers, *steppers):
                thread.start()
            self._stop.wait()
            for thread in steppers:
                thread.join()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for thread in helpers:
                if thread.is_alive():
                    thread.join(timeout=10)
            with contextlib.suppress(Exception):
                # Jobs still held (a finish the store refused) lose their worker: reaped.
                self.db.unregister_worker(self._worker_id)
            self.db.close()
            if self._processes is not None:
                self._processes.shutdown()
            self.resources.teardown()
            for manager in self.app.io_managers.values():
                close = getattr(manager, "close", None)
                if callable(close):
                    with contextlib.suppress(Exception):
                        close()

    def stop(self) -> None:
        """Stop fetching steps; running ones finish first."""
        self._stop.set()
        self._wake.notify_all()

    def _current_id(self) -> int:
        assert self._worker_id is not None
        return self._worker_id

    def _register_again(self, gone: int) -> None:
        """This worker was presumed dead (no heartbeat for ``stalled_after``: its row is gone and
        its steps were handed on). It goes on as a new worker."""
        with self._id_lock:
            if self._worker_id == gone:
                self._worker_id = self.db.register_worker()
                _log.warning(
                    "worker %s was presumed dead by the others; registered again (id %s)",
                    self.name,
                    self._worker_id,
                )

    def _step_loop(self) -> None:
        while not self._stop.is_set():
            seen = self._wake.generation
            try:
                got = self.db.fetch(worker_id=self._current_id(), queues=self.queues, worker=self.name)
            except WorkerGone as gone:
                with contextlib.suppress(Exception):
                    self._register_again(gone.worker_id)
                continue
            except Exception:
                _log.exception("worker %s: fetching a step failed; trying again", self.name)
                self._stop.wait(0.5 + random.random())
                continue
            if got is False:
                self._wake.wait(seen, self.config.poll_every)
            while isinstance(got, Claimed):
                finish, after = self.run_claimed(got)
                got = self._record(got, finish, after)

    def _listen(self) -> None:
        """LISTEN on procrastinate's channels: wake one idle step thread per deferred job."""
        import psycopg
        from psycopg import sql

        info, kwargs = conninfo(self.app.store.engine.url.render_as_string(hide_password=False))
        channels = (
            [f"procrastinate_queue_v1#{q}" for q in self.queues]
            if self.queues
            else ["procrastinate_any_queue_v1"]
        )
        delay = 0.0
        while not self._stop.is_set():
            try:
                with psycopg.connect(info, autocommit=True, **kwargs) as conn:
                    for channel in channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self._wake.notify_all()  # jobs deferred while nobody listened
                    delay = 0.0
                    while not self._stop.is_set():
                        for _note in conn.notifies(timeout=0.5):
                            self._wake.notify(1)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                _log.warning("worker %s: lost the LISTEN connection (%s); connecting again", self.name, exc)
                self._stop.wait(delay)
                delay = min(1.0, max(0.05, delay * 2))

    def _pulse(self) -> None:
        """Heartbeats, and stop requests for the steps whose run was cancelled."""
        beat_every = self.config.heartbeat_every
        next_beat = time.monotonic() + beat_every
        while not self._stop.wait(min(0.5, beat_every)):
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + beat_every
                    worker_id = self._current_id()
                    if not self.db.heartbeat(worker_id):
                        self._register_again(worker_id)
                running = self._running.ids()
                if running:
                    self._running.stop(self.db.abort_requested(running))
            except Exception:
                _log.exception("worker %s: heartbeat failed; trying again", self.name)

    def _housekeeping(self) -> None:
        next_prune = time.monotonic()
        while not self._stop.wait(self.config.reap_every * (0.75 + random.random() / 2)):
            try:
                for asset, key in self.db.reap(
                    stalled_after=self.config.stalled_after, max_attempts=self._max_attempts
                ):
                    _log.warning("step '%s' [%s] of a dead worker handed to a new job", asset, key)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 3600
                    self.db.prune_jobs(older_than=self.config.retention)
                    self.app.prune_events()
                if self.app.pipeline.checkpoints:
                    self.db.pause_gated_runs()
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
    def run_claimed(self, claimed: Claimed) -> tuple[Finish, _After]:
        """Compute a claimed step: how to record its outcome, and what to do once it is (or is
        not) recorded. Whatever the asset or this code raises is the step's failure."""
        args = claimed.args
        flag, contexts = self._running.add(claimed.job_id)
        try:
            return self._run_claimed(claimed, contexts, flag.is_set)
        except BaseException as exc:  # SystemExit from an asset, a bug here: not a stuck step
            _log.exception("step '%s' [%s] of run %s crashed", args.asset, args.partition, args.run)
            crashed = ExecutionError(
                f"running asset '{args.asset}' raised {type(exc).__name__}: {exc}",
                context={"asset": args.asset, "partition": args.partition, "worker": self.name},
            )
            failure = self._failure_without_asset(claimed, crashed)
            if isinstance(exc, (Exception, SystemExit)):
                return failure
            # Recorded unless the outcome was recorded already (then finish refuses: the step is
            # no longer running) or the store is unreachable (then the reaper hands it on).
            with contextlib.suppress(Exception):
                self.db.finish(claimed, failure[0])
            raise
        finally:
            self._running.remove(claimed.job_id)

    def _record(self, claimed: Claimed, finish: Finish, after: _After) -> Claimed | bool:
        """Record the outcome and, in the same transaction, take the next job (unless stopping):
        one transaction per step, and a step's downstream job is often its thread's next.

        Tried again and again while the store is unreachable (the value is stored; recording it
        is all that is left), unless the worker is stopping: its job then loses its worker and
        is reaped. Returns the next job's fetch (see ``QueueDB.fetch``)."""
        delay = 0.5
        got: Claimed | bool
        while True:
            try:
                if self._stop.is_set():
                    recorded, got = self.db.finish(claimed, finish), False
                else:
                    recorded, got = self.db.finish_and_fetch(
                        claimed, finish, worker_id=self._current_id(), queues=self.queues, worker=self.name
                    )
            except WorkerGone as gone:
                after(gone.recorded)
                with contextlib.suppress(Exception):
                    self._register_again(gone.worker_id)
                return False
            except StoreError:
                if self._stop.is_set():
                    raise
                _log.exception(
                    "worker %s: recording '%s' failed; trying again", self.name, claimed.args.asset
                )
                self._stop.wait(delay)
                delay = min(5.0, delay * 2)
                continue
            after(recorded)
            return got

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
    ) -> tuple[Finish, _After]:
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
                return self._failure_without_asset(claimed, refused)
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

            def requested(recorded: bool) -> None:
                if not recorded:
                    return
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

            return Finish(rows, False, approval=approval), requested
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

        def emit(recorded: bool) -> None:
            if recorded:
                self.app.events.emit(event)
            else:
                _log.warning(
                    "step '%s' [%s] of run %s was handed to another job while this one ran; its "
                    "outcome is not recorded",
                    args.asset,
                    args.partition,
                    args.run,
                )

        return finish, emit

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

    def _failure_without_asset(self, claimed: Claimed, error: FlowStoneError) -> tuple[Finish, _After]:
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

        def emit(recorded: bool) -> None:
            if recorded:
                self.app.events.emit(event)

        return Finish(rows, False, error=error), emit


__all__ = ["DEFAULT_QUEUE", "Worker"]
