"""``FlowStone``: a pipeline bound to a store, I/O managers and resources.

app = flowstone.FlowStone(pipeline, store="sqlite:///.flowstone/flowstone.db")
run = app.materialize(["daily_report"], partition="2025-01-15")
app.lineage.upstream("daily_report", partition="2025-01-15")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowstone._assets import AssetDefinition
from flowstone._clock import Clock, SystemClock
from flowstone._errors import ConfigurationError, FlowStoneError, ValidationError
from flowstone._events import (
    BATCHED_TYPES,
    CHECKPOINT_APPROVED,
    CHECKPOINT_REJECTED,
    CHECKPOINT_REQUESTED,
    CHECKPOINT_TIMED_OUT,
    RESOURCE_HEALTH,
    RESOURCE_SETUP,
    RESOURCE_TEARDOWN,
    RUN_FINISHED,
    RUN_STARTED,
    SCHEDULE_TICK,
    SENSOR_POLL,
    SENSOR_TRIGGERED,
    Event,
    EventBus,
)
from flowstone._lineage import Lineage
from flowstone._pipeline import Pipeline
from flowstone.io._base import IOManager

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from flowstone._catalog import CatalogReport
    from flowstone._doctor import CheckResult
    from flowstone._records import BackfillRecord, RunRecord, StepRecord
    from flowstone.checkpoints._api import Approvals, Notifier
    from flowstone.engine._backfill import BackfillResult
    from flowstone.engine._planner import Plan, Resolve
    from flowstone.engine._result import RunResult
    from flowstone.engine._status import AssetStatus
    from flowstone.partitions import PartitionsDefinition
    from flowstone.queue._config import QueueConfig
    from flowstone.queue._run_queue import Progress, RunQueue
    from flowstone.resources._runtime import RunResources
    from flowstone.store._store import Store

_log = logging.getLogger("flowstone")
DEFAULT_STORE = ".flowstone/flowstone.db"
DEFAULT_EVENT_RETENTION = "30d"


# Kept in a run's event log beside what the run writer stores (run and step events).
_RESOURCE_EVENTS = frozenset({RESOURCE_SETUP, RESOURCE_TEARDOWN, RESOURCE_HEALTH})
# Every other known type: the engine does not build I/O events for the resource event keeper.
_NOT_RESOURCE_EVENTS = BATCHED_TYPES | {
    RUN_STARTED,
    RUN_FINISHED,
    CHECKPOINT_REQUESTED,
    CHECKPOINT_APPROVED,
    CHECKPOINT_REJECTED,
    CHECKPOINT_TIMED_OUT,
    SCHEDULE_TICK,
    SENSOR_POLL,
    SENSOR_TRIGGERED,
}


def _check_executor(executor: str | None) -> None:
    from flowstone.engine._runner import check_executor

    check_executor(executor)


class FlowStone:
    """Binds a validated pipeline to where its metadata and values live.

    ``store`` is a database URL (``sqlite:///path.db``, ``postgresql://...``), a SQLAlchemy
    engine or a ``Store``; by default ``.flowstone/flowstone.db`` under the current directory.
    ``clock`` is what retry delays (and later timeouts and schedules) wait on; tests pass a
    ``flowstone.testing.FakeClock``. ``io_managers`` adds or replaces named I/O managers. The
    built-in ones (``filesystem``, the default, ``memory``, ``parquet``, ``object_store``,
    ``postgres``, ``duckdb``) are created with their defaults when an asset names one that is not
    bound. ``event_retention`` is how long run events are kept (``prune_events``, which queue
    workers and the daemon call on their own; ``event_retention`` in flowstone.toml).

    A resource setting that cannot be resolved (a missing environment variable) is an error
    here, before anything runs. ``check_resources=False`` defers that to the resource's setup,
    for tools that only read the store (``flowstone runs`` and the like on a machine without the
    warehouse's password)::

        warehouse = SQLDatabase(url=fs.EnvVar("DW_URL"))
        app = fs.FlowStone(pipeline, resources={"warehouse": warehouse})  # DW_URL unset: error
        reader = fs.FlowStone(pipeline, resources={"warehouse": warehouse}, check_resources=False)
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        store: str | Engine | Store | None = None,
        io_managers: Mapping[str, IOManager] | None = None,
        resources: Mapping[str, Any] | None = None,
        tenant: str = "default",
        storage_dir: str | Path | None = None,
        clock: Clock | None = None,
        queue: QueueConfig | None = None,
        notifier: Notifier | None = None,
        event_retention: str | float | timedelta = DEFAULT_EVENT_RETENTION,
        check_resources: bool = True,
    ) -> None:
        from flowstone._durations import parse_duration
        from flowstone.io._filesystem import FilesystemIOManager
        from flowstone.io._memory import MemoryIOManager
        from flowstone.store._store import Store

        overrides = dict(io_managers or {})
        for name, manager in {**pipeline.io_managers, **overrides}.items():
            if not isinstance(manager, IOManager):
                raise TypeError(f"I/O manager {name!r} does not implement the IOManager protocol")
        self.resources: dict[str, Any] = dict(resources or {})
        pipeline.validate(io_managers=overrides, resources=list(self.resources))
        if check_resources:
            from flowstone.resources import check_resources as check

            check(self.resources)  # a missing environment variable is reported now, not mid-run
        try:
            self.event_retention = timedelta(seconds=parse_duration(event_retention))
        except ValueError as exc:
            raise ConfigurationError(
                f"event_retention: {exc}", context={"field": "event_retention"}, original=exc
            ) from exc
        self.pipeline = pipeline
        self.tenant = tenant
        self.clock: Clock = clock or SystemClock()
        from flowstone.queue._config import QueueConfig

        self.queue_config = queue or QueueConfig()
        from flowstone.checkpoints._api import LogNotifier

        # Told about approval requests, escalations, decisions and timeouts.
        self.notifier: Notifier = notifier or LogNotifier()
        self._run_queue: RunQueue | None = None
        if store is None:
            store = "sqlite:///" + str(Path(DEFAULT_STORE).resolve())
        self.store = Store.open(store)
        if storage_dir is None:
            db = self.store.engine.url.database if self.store.dialect == "sqlite" else None
            storage_dir = (
                Path(db).parent / "storage" if db and db != ":memory:" else Path(".flowstone/storage")
            )
        self.io_managers: dict[str, IOManager] = {
            "memory": MemoryIOManager(),
            "filesystem": FilesystemIOManager(storage_dir),
        }
        self.io_managers.update(pipeline.io_managers)
        self.io_managers.update(overrides)
        self._create_builtin_io_managers(Path(storage_dir))
        self.events = EventBus()
        self.lineage = Lineage(self)
        # A run whose process died (killed, crashed, machine restarted) is marked abandoned now,
        # so its steps show as not done and the next materialize runs them again.
        self.recover()

    def __repr__(self) -> str:
        return f"FlowStone({self.pipeline.name!r}, store={self.store.engine.url!r})"

    def close(self) -> None:
        for manager in self.io_managers.values():
            close = getattr(manager, "close", None)
            if callable(close):
                close()
        self.store.close()

    def _create_builtin_io_managers(self, storage_dir: Path) -> None:
        from flowstone.io._registry import create

        users: dict[str, list[AssetDefinition[..., Any]]] = {}
        for definition in self.pipeline.assets.values():
            name = definition.io_manager or self.pipeline.default_io_manager
            if name not in self.io_managers:
                users.setdefault(name, []).append(definition)
        store_url = self.store.engine.url.render_as_string(hide_password=False)
        for name, assets in users.items():
            try:
                self.io_managers[name] = create(name, None, storage_dir=storage_dir, store_url=store_url)
            except FlowStoneError as exc:
                first = assets[0]
                raise ConfigurationError(
                    f"asset '{first.name}' ({first.location}) uses I/O manager '{name}': {exc.message}",
                    context={"asset": first.name, "io_manager": name},
                    original=exc,
                ) from exc

    def __enter__(self) -> FlowStone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ running
    def resolver(self) -> Resolve:
        """Each asset's partitions definition, with dynamic partitions bound to the keys in the
        store (read once per resolver, so one run sees one set of keys)."""
        dynamic: dict[str, list[str]] = {}
        bound: dict[str, PartitionsDefinition | None] = {}

        def dynamic_keys(name: str) -> list[str]:
            if name not in dynamic:
                dynamic[name] = self.store.dynamic_partition_keys(tenant=self.tenant, name=name)
            return dynamic[name]

        def resolve(asset: str) -> PartitionsDefinition | None:
            if asset not in bound:
                definition = self.pipeline.assets[asset].partitioned_by
                bound[asset] = None if definition is None else definition.bind(dynamic_keys)
            return bound[asset]

        return resolve

    def plan(
        self,
        selection: str | Iterable[str | AssetDefinition[..., Any]],
        *,
        partition: str | None = None,
        partitions: Sequence[str] | None = None,
        force: bool = False,
        stale: bool = False,
    ) -> Plan:
        """What ``materialize`` would run, without running it."""
        from flowstone.engine._planner import plan_run

        if partition is not None and partitions is not None:
            raise ValueError("give partition= or partitions=, not both")
        return plan_run(
            self.pipeline,
            self.store,
            tenant=self.tenant,
            selected=self.select(selection),
            partition_keys=[partition] if partition is not None else partitions,
            force=force,
            stale=stale,
            resolve=self.resolver(),
        )

    def select(self, selection: str | Iterable[str | AssetDefinition[..., Any]]) -> set[str]:
        """Asset names for a selection (names, ``+name``, ``name+``, ``tag:x``, ``*``)."""
        items = [selection] if isinstance(selection, (str, AssetDefinition)) else list(selection)
        exprs = [i.name if isinstance(i, AssetDefinition) else i for i in items]
        if not exprs:
            raise ValueError("select at least one asset")
        return self.pipeline.graph.select(exprs)

    def materialize(
        self,
        selection: str | Iterable[str | AssetDefinition[..., Any]],
        *,
        partition: str | None = None,
        partitions: Sequence[str] | None = None,
        force: bool = False,
        stale: bool = False,
        parallel: int = 1,
        values: bool = False,
        actor: str = "api",
        executor: str | None = None,
    ) -> RunResult:
        """Materialize the selection (plus missing upstream) and return the run's outcome.

        ``partition`` (or several ``partitions``) picks the partitions of the selected assets;
        their upstream partitions follow from the partition mappings. ``stale=True`` also
        re-runs what is stale; ``parallel`` > 1 runs independent steps on that many threads
        (``executor="processes"``: in a process each, so a step past its timeout is terminated);
        ``values=True`` keeps each step's value on the result (``run.steps["x"].value``).
        """
        plan = self.plan(selection, partition=partition, partitions=partitions, force=force, stale=stale)
        return self.execute(plan, parallel=parallel, values=values, actor=actor, executor=executor)

    def execute(
        self,
        plan: Plan,
        *,
        parallel: int = 1,
        values: bool = False,
        actor: str = "api",
        backfill_id: str | None = None,
        cancelled: Callable[[], bool] | None = None,
        executor: str | None = None,
    ) -> RunResult:
        """Run a plan made by :meth:`plan` (what ``materialize`` does after planning).

        ``executor="queue"`` submits it to the run queue (PostgreSQL stores only) and waits for
        ``flowstone worker`` processes to run it; :meth:`submit` returns at once instead.
        """
        _check_executor(executor)
        if executor == "queue":
            run_id = self.submit_plan(plan, actor=actor, backfill_id=backfill_id)
            self.wait_run(run_id)
            return self.run_result(run_id)
        from flowstone.engine._runner import RunEnv, execute_plan

        resources, end_resources = self._run_resources()
        env = RunEnv(
            self.pipeline,
            self.store,
            self.tenant,
            self.io_managers,
            resources,
            self.events,
            plan.resolve or self.resolver(),
            cancelled=cancelled,
            backfill_id=backfill_id,
            clock=self.clock,
            notifier=self.notifier,
        )
        try:
            return execute_plan(
                env, plan, parallel=parallel, keep_values=values, actor=actor, executor=executor
            )
        finally:
            end_resources()

    def _run_resources(self) -> tuple[RunResources, Callable[[], None]]:
        """One run's resources, set up as its steps ask for them, and the function that ends
        them: teardown (even after a failure), then their events (setups, health checks,
        teardowns; those of step processes too, re-emitted here) stored in the run's event log."""
        from flowstone.resources._runtime import RunResources

        resources = RunResources(self.resources, events=self.events, clock=self.clock.monotonic)
        if not self.resources:  # nothing to set up: the bus is left as it was
            return resources, lambda: None
        kept: list[Event] = []

        def keep(event: Event) -> None:
            if event.type in _RESOURCE_EVENTS:
                kept.append(event)

        detach = self.events.subscribe(keep, exclude=_NOT_RESOURCE_EVENTS)

        def end() -> None:
            try:
                resources.teardown()
            finally:
                detach()
                run_id = resources.run_id
                mine = [e for e in kept if run_id is not None and e.run_id == run_id]
                if mine:
                    try:
                        self.store.record_events(tenant=self.tenant, events=mine)
                    except Exception:  # the run's own outcome is recorded; this is its footnote
                        _log.exception("could not store the resource events of run %s", run_id)

        return resources, end

    # ------------------------------------------------------------------ checkpoints
    @property
    def approvals(self) -> Approvals:
        """Approval requests of the pipeline's checkpoints: list, approve, modify, reject."""
        from flowstone.checkpoints._api import Approvals

        return Approvals(self)

    def resume_run(self, run_id: str, *, parallel: int = 1, executor: str | None = None) -> RunResult:
        """Run what a paused run (``waiting_approval``) can run now that a gate was decided:
        its pending steps whose gates are decided, in the same run. Decisions made while it runs
        are picked up before it pauses again. When another process is resuming the run already,
        this returns its current state."""
        from flowstone._records import RunStatus

        _check_executor(executor)  # before the paused run is reopened
        for _ in range(1000):  # each pass runs at least one step
            prepared = self._resume_plan(run_id)
            if prepared is None:
                self.store.settle_paused_run(tenant=self.tenant, run_id=run_id)
                break
            plan, pending = prepared
            if not self.store.reopen_run(tenant=self.tenant, run_id=run_id):
                break  # someone else resumes it (or it is not paused)
            result = self._execute_resumed(run_id, plan, pending, parallel=parallel, executor=executor)
            if result.status is not RunStatus.WAITING_APPROVAL:
                return result
        return self.run_result(run_id)

    def _resume_plan(self, run_id: str) -> tuple[Plan, dict[tuple[str, str | None], str]] | None:
        """The plan of a paused run's steps that can run now, or None when there are none."""
        import dataclasses

        from flowstone._records import StepStatus

        found = self.run(run_id)
        if found is None:
            raise ValidationError(f"no run {run_id!r}", context={"run_id": run_id})
        record, steps = found
        # A pending step runs now unless an upstream step of this run still waits for a decision
        # (or is itself held back by one): a gate's downstream waits for that gate, not for others.
        # Steps are stored in plan (dependency) order, so one pass sees every upstream first.
        status = {(s.asset, s.partition_key): s.status for s in steps}
        held: set[tuple[str, str | None]] = set()
        pending: dict[tuple[str, str | None], str] = {}
        for step in sorted(steps, key=lambda s: s.position):
            key = (step.asset, step.partition_key)
            upstream = [(asset, part or None) for asset, part in step.upstream or []]
            if any(status.get(u) is StepStatus.WAITING_APPROVAL or u in held for u in upstream):
                held.add(key)
            elif step.status is StepStatus.PENDING:
                pending[key] = step.id
        if not pending:
            return None
        selected = set(record.selection)
        keys = sorted({s.partition_key for s in steps if s.asset in selected and s.partition_key is not None})
        # force: a selected step left pending runs even when an older run materialized it (the
        # planner would call it up to date and leave it pending for ever).
        plan = self.plan(record.selection, partitions=keys or None, force=True)
        runnable = [s for s in plan.steps if s.key in pending]
        if not runnable:
            return None
        # The inputs not run now (the decided gate, steps done before the pause): their latest
        # materializations, for lineage and data versions.
        done_inputs = sorted({i for s in runnable for i in s.inputs if i not in pending}, key=str)
        existing = self.store.latest_success(tenant=self.tenant, pairs=done_inputs)
        return dataclasses.replace(plan, steps=runnable, existing=existing), pending

    def _execute_resumed(
        self,
        run_id: str,
        plan: Plan,
        pending: Mapping[tuple[str, str | None], str],
        *,
        parallel: int,
        executor: str | None,
    ) -> RunResult:
        from flowstone.engine._runner import RunEnv, execute_plan

        resources, end_resources = self._run_resources()
        env = RunEnv(
            self.pipeline,
            self.store,
            self.tenant,
            self.io_managers,
            resources,
            self.events,
            plan.resolve or self.resolver(),
            clock=self.clock,
            notifier=self.notifier,
        )
        try:
            return execute_plan(
                env,
                plan,
                parallel=parallel,
                actor="system:resume",
                executor=executor,
                resume=(run_id, pending),
            )
        finally:
            end_resources()

    # ------------------------------------------------------------------ the run queue
    def run_queue(self) -> RunQueue:
        """The run queue on this store (PostgreSQL only); workers are ``flowstone worker``."""
        if self._run_queue is None:
            from flowstone.queue._run_queue import RunQueue

            self._run_queue = RunQueue(self.store, self.pipeline, config=self.queue_config)
        return self._run_queue

    def submit(
        self,
        selection: str | Iterable[str | AssetDefinition[..., Any]],
        *,
        partition: str | None = None,
        partitions: Sequence[str] | None = None,
        force: bool = False,
        stale: bool = False,
        actor: str = "api",
        priority: int | None = None,
    ) -> str:
        """Enqueue a run for workers and return its id at once (``materialize`` that does not wait).

        Interactive runs carry a higher ``priority`` than backfills by default.
        """
        plan = self.plan(selection, partition=partition, partitions=partitions, force=force, stale=stale)
        return self.submit_plan(plan, actor=actor, priority=priority)

    def submit_plan(
        self,
        plan: Plan,
        *,
        actor: str = "api",
        priority: int | None = None,
        backfill_id: str | None = None,
    ) -> str:
        from flowstone.io._memory import MemoryIOManager
        from flowstone.queue._config import PRIORITY_BACKFILL, PRIORITY_INTERACTIVE

        in_memory = sorted(
            {
                s.asset
                for s in plan.steps
                if isinstance(
                    self.io_managers.get(
                        self.pipeline.assets[s.asset].io_manager or self.pipeline.default_io_manager
                    ),
                    MemoryIOManager,
                )
            }
        )
        if in_memory:
            raise ValidationError(
                f"the run queue cannot run {in_memory}: their values would live in the memory of "
                "whichever worker ran them, out of reach of the others and of this process; use a "
                "storing I/O manager (filesystem, parquet, object_store, postgres)",
                context={"assets": in_memory},
            )
        if priority is None:
            priority = PRIORITY_BACKFILL if backfill_id else PRIORITY_INTERACTIVE
        return self.run_queue().submit(
            plan, tenant=self.tenant, actor=actor, priority=priority, backfill_id=backfill_id
        )

    def wait_run(
        self, run_id: str, *, timeout: float | None = None, on_progress: Progress | None = None
    ) -> RunRecord:
        """Wait until a queue run ends (polling the store); returns its record."""
        self.run_queue().wait(
            tenant=self.tenant, run_id=run_id, timeout=timeout, on_progress=on_progress, clock=self.clock
        )
        found = self.store.get_run(tenant=self.tenant, run_id=run_id)
        assert found is not None
        return found

    def cancel_run(self, run_id: str, *, actor: str = "api", reason: str | None = None) -> bool:
        """Cancel a queue run: steps not started are dropped, running ones asked to stop."""
        return self.run_queue().cancel(tenant=self.tenant, run_id=run_id, actor=actor, reason=reason)

    def run_result(self, run_id: str) -> RunResult:
        """A finished run's outcome from the store (values are not kept)."""
        from flowstone._errors import FlowStoneError
        from flowstone.engine._result import RunResult, StepResult, StepResults
        from flowstone.store._store import utcnow

        found = self.run(run_id)
        if found is None:
            raise ValidationError(f"no run {run_id!r}", context={"run_id": run_id})
        record, steps = found
        results = []
        for step in steps:
            mat = (
                self.store.get_materialization(tenant=self.tenant, materialization_id=step.materialization_id)
                if step.materialization_id
                else None
            )
            error = None
            if step.error_type:
                error = FlowStoneError(step.error_message or step.error_type)
                error.type = step.error_type  # type: ignore[misc]
            results.append(
                StepResult(
                    step.asset,
                    step.partition_key,
                    step.status,
                    materialization=mat,
                    error=error,
                    reason=step.reason,
                    duration_ms=step.duration_ms,
                    attempts=max(1, step.attempt),
                )
            )
        return RunResult(
            run_id=record.id,
            status=record.status,
            steps=StepResults(results),
            started_at=record.started_at or record.created_at,
            finished_at=record.finished_at or utcnow(),
        )

    def backfill(
        self,
        selection: str | Iterable[str | AssetDefinition[..., Any]],
        *,
        start: str | None = None,
        end: str | None = None,
        partitions: Sequence[str] | None = None,
        all_partitions: bool = False,
        force: bool = False,
        parallel: int = 1,
        actor: str = "api",
        on_start: Callable[[int, int], None] | None = None,
        on_progress: Callable[[dict[str, int]], None] | None = None,
        executor: str | None = None,
    ) -> BackfillResult:
        """Materialize many partitions of the selected assets as one tracked backfill.

        Choose the partitions one way: ``start``/``end`` keys (inclusive), ``partitions``, or
        ``all_partitions=True``. Partitions already materialized and not stale are skipped unless
        ``force``. ``on_start(total, up_to_date)`` and ``on_progress(counts)`` feed progress bars.
        ``executor`` as for :meth:`materialize` (``"processes"``: a process per step).
        """
        from flowstone.engine._backfill import backfill_keys, run_backfill

        assets = sorted(self.select(selection))
        keys, spec = backfill_keys(
            self, assets, start=start, end=end, partitions=partitions, all_partitions=all_partitions
        )
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        _check_executor(executor)  # before a backfill is recorded
        record = self.store.create_backfill(
            tenant=self.tenant,
            pipeline=self.pipeline.name,
            assets=assets,
            spec=spec,
            partition_keys=keys,
            force=force,
            parallel=parallel,
            actor=actor,
        )
        return run_backfill(
            self,
            record,
            force=force,
            parallel=parallel,
            actor=actor,
            on_start=on_start,
            on_progress=on_progress,
            executor=executor,
        )

    def resume_backfill(
        self,
        backfill_id: str,
        *,
        parallel: int | None = None,
        actor: str = "api",
        on_start: Callable[[int, int], None] | None = None,
        on_progress: Callable[[dict[str, int]], None] | None = None,
        executor: str | None = None,
    ) -> BackfillResult:
        """Run again whatever a backfill did not finish (its successes are not redone)."""
        from flowstone.engine._backfill import run_backfill

        record = self.get_backfill(backfill_id)
        self.store.resume_backfill(tenant=self.tenant, backfill_id=record.id, actor=actor)
        return run_backfill(
            self,
            record,
            force=False,
            parallel=parallel or record.parallel,
            actor=actor,
            on_start=on_start,
            on_progress=on_progress,
            executor=executor,
        )

    def cancel_backfill(self, backfill_id: str, *, actor: str = "api", reason: str | None = None) -> bool:
        """Ask a running backfill to stop: queued steps are skipped, running ones finish."""
        record = self.get_backfill(backfill_id)
        requested = self.store.request_cancel(
            tenant=self.tenant, backfill_id=record.id, actor=actor, reason=reason
        )
        # A backfill on the queue runs in workers: cancel its run there.
        for run in self.store.list_runs(tenant=self.tenant, limit=1000, backfill_id=record.id):
            if run.executor == "queue" and not run.status.finished:
                requested = self.cancel_run(run.id, actor=actor, reason=reason) or requested
        return requested

    def get_backfill(self, backfill_id: str) -> BackfillRecord:
        record = self.store.get_backfill(tenant=self.tenant, backfill_id=backfill_id)
        if record is None:
            raise ValidationError(
                f"no backfill {backfill_id!r} (give its id or a unique prefix of at least 4 characters)",
                context={"backfill_id": backfill_id},
            )
        return record

    # ------------------------------------------------------------------ partitions and health
    def status(self, asset: str, *, memo: dict[str, set[str | None]] | None = None) -> AssetStatus:
        """Partitions of ``asset``: total, fresh, stale, missing, failed.

        Pass one ``memo`` dict to several calls so upstream staleness is worked out once."""
        from flowstone.engine._status import asset_status

        self.pipeline.get(asset)
        return asset_status(self, asset, memo)

    def invalidate(
        self,
        asset: str,
        *,
        partition: str | None = None,
        all_partitions: bool = False,
        downstream: bool = False,
        actor: str = "api",
        reason: str | None = None,
    ) -> int:
        """Mark data stale on purpose; ``downstream=True`` also marks what was built from it.
        Returns how many partitions were marked."""
        self.pipeline.get(asset)  # unknown names: AssetNotFound with a suggestion
        definition = self.resolver()(asset)
        if all_partitions:
            pairs: list[tuple[str, str | None]] = [
                (asset, s.partition_key) for s in self.store.asset_states(tenant=self.tenant, asset=asset)
            ]
        else:
            if definition is not None and partition is None:
                raise ValidationError(f"asset '{asset}' is partitioned; give --partition or --all")
            from flowstone.engine._planner import typed_partition

            typed_partition(definition, asset, partition)
            pairs = [(asset, None if definition is None else partition)]
        if downstream:
            for _asset, key in list(pairs):
                for entry in self.store.lineage_downstream(
                    tenant=self.tenant, asset=_asset, partition_key=key
                ):
                    pairs.append((entry.asset, entry.partition_key))
        return self.store.mark_stale(
            tenant=self.tenant, actor=actor, pairs=list(dict.fromkeys(pairs)), reason=reason
        )

    def dynamic_partition_names(self) -> set[str]:
        from flowstone.partitions import DynamicPartitions, MultiPartitions

        names: set[str] = set()
        for definition in self.pipeline.assets.values():
            parts = definition.partitioned_by
            dims = parts.dimensions.values() if isinstance(parts, MultiPartitions) else [parts]
            names.update(d.name for d in dims if isinstance(d, DynamicPartitions))
        return names

    def _dynamic_name(self, name: str) -> str:
        known = self.dynamic_partition_names()
        if name not in known:
            import difflib

            guesses = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean '{guesses[0]}'?" if guesses else ""
            raise ValidationError(
                f"no dynamic partitions named {name!r} in pipeline '{self.pipeline.name}'{hint}",
                context={"name": name, "known": sorted(known)},
            )
        return name

    def add_partitions(self, name: str, keys: Sequence[str], *, actor: str = "api") -> list[str]:
        """Add keys to the dynamic partitions ``name``; returns those that were new."""
        return self.store.add_dynamic_partitions(
            tenant=self.tenant, name=self._dynamic_name(name), keys=keys, actor=actor
        )

    def remove_partitions(self, name: str, keys: Sequence[str], *, actor: str = "api") -> list[str]:
        """Remove keys from the dynamic partitions ``name`` (stored values are left alone)."""
        return self.store.remove_dynamic_partitions(
            tenant=self.tenant, name=self._dynamic_name(name), keys=keys, actor=actor
        )

    def recover(self, *, stale_after: timedelta | None = None) -> list[str]:
        """Mark runs whose process died as abandoned (done automatically before the first run)."""
        return self.store.recover(tenant=self.tenant, stale_after=stale_after)

    # ------------------------------------------------------------------ reading
    def runs(self, *, limit: int = 20, status: str | None = None) -> list[RunRecord]:
        return self.store.list_runs(tenant=self.tenant, limit=limit, status=status)

    def run(self, run_id: str) -> tuple[RunRecord, list[StepRecord]] | None:
        record = self.store.get_run(tenant=self.tenant, run_id=run_id)
        if record is None:
            return None
        return record, self.store.run_steps(tenant=self.tenant, run_id=record.id)

    def load(self, asset: str, *, partition: str | None = None) -> Any:
        """Load an asset's stored value through its I/O manager."""
        from flowstone.engine._planner import typed_partition
        from flowstone.io._base import IOContext

        definition = self.pipeline.get(asset)
        manager = self.io_managers[definition.io_manager or self.pipeline.default_io_manager]
        return manager.load(
            IOContext(
                asset=asset,
                partition_key=partition,
                partition=typed_partition(self.resolver()(asset), asset, partition),
                tenant=self.tenant,
                config=definition.io_config,
            )
        )

    def doctor(self) -> list[CheckResult]:
        """Is everything this app needs there? The store, each used I/O manager's extra, and every
        resource (set up, health-checked, torn down). ``flowstone doctor`` prints the same."""
        from flowstone._doctor import health

        return health(self)

    def prune_events(
        self, *, older_than: str | float | timedelta | None = None, dry_run: bool = False
    ) -> int:
        """Delete run events older than ``older_than`` (default: ``event_retention``, 30 days
        unless configured); returns the count.

        Keeps the event log from growing without bound (``flowstone store prune``; queue workers
        and the daemon call it on their own); runs, materializations, lineage and the audit log
        are kept.
        """
        from flowstone._durations import parse_duration

        age = self.event_retention if older_than is None else timedelta(seconds=parse_duration(older_than))
        cutoff = self.clock.now() - age
        return self.store.prune_events(tenant=self.tenant, before=cutoff, dry_run=dry_run)

    def rebuild_catalog(self, *, dry_run: bool = False, actor: str = "api") -> CatalogReport:
        """Re-import the ``_asset.json`` sidecars of the filesystem I/O managers into the store.

        For a lost or new metadata database: every value whose file still matches its sidecar
        becomes a successful materialization again, with its lineage (see ``flowstone._catalog``).
        """
        from flowstone._catalog import rebuild_catalog

        return rebuild_catalog(self, dry_run=dry_run, actor=actor)

    @property
    def io_manager_names(self) -> Sequence[str]:
        from flowstone.io._registry import BUILTINS

        return sorted(set(BUILTINS) | set(self.io_managers))
