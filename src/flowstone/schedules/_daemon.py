"""``flowstone daemon``: one loop that fires schedules, polls sensors, enforces checkpoint
timeouts and keeps the metadata tidy.

Each pass (``Daemon.tick(now)``) is safe to run in several daemons at once against PostgreSQL:
a schedule tick or sensor request is a unique row inserted *before* its run is launched, so
exactly one daemon launches it; a tick left ``launching`` by a daemon that died is taken over by
another once that daemon's heartbeat is stale. Time comes from the app's clock (tests pass a
``FakeClock``); the loop sleeps ``interval`` seconds with jitter between passes.

Runs go to the queue when the daemon is started with ``executor="queue"`` (``flowstone daemon
--executor queue``), else they run in the daemon's process.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from flowstone._errors import FlowStoneError
from flowstone._ids import new_id
from flowstone.schedules._definitions import (
    RunRequest,
    ScheduleDefinition,
    SensorDefinition,
    SensorResult,
    closed_partition,
)
from flowstone.schedules._state import AutomationStore

if TYPE_CHECKING:
    from flowstone._app import FlowStone

_log = logging.getLogger("flowstone.daemon")

# "none" catch-up still fires a tick this late (a daemon pass that came a little after it).
NONE_GRACE = timedelta(seconds=60)


@dataclass
class PassReport:
    """What one daemon pass did (for logs and tests)."""

    launched: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (kind, name, run ids)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, name, reason)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    timeouts: list[tuple[str, str]] = field(default_factory=list)


class SensorContext:
    """What a sensor function receives besides its cursor."""

    def __init__(self, app: FlowStone, name: str, now: datetime, last_evaluated_at: datetime | None) -> None:
        self.app = app
        self.sensor_name = name
        self.now = now
        self.last_evaluated_at = last_evaluated_at
        self.log = logging.getLogger(f"flowstone.sensor.{name}")
        self.tenant = app.tenant


class Daemon:
    def __init__(
        self,
        app: FlowStone,
        *,
        interval: float = 5.0,
        executor: str | None = None,
        name: str | None = None,
        stale_after: float = 60.0,
    ) -> None:
        self.app = app
        self.interval = interval
        self.executor = executor
        self.id = new_id()
        self.name = name or self.id[:12]
        self.state = AutomationStore(app.store, app.tenant)
        self.stale_after = timedelta(seconds=stale_after)
        self._stop = threading.Event()
        self._registered = False
        self._evaluator: Any = None

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Passes until :meth:`stop` (or SIGINT/SIGTERM from the CLI)."""
        self._register()
        try:
            while not self._stop.is_set():
                try:
                    report = self.tick()
                    for kind, name, runs in report.launched:
                        _log.info("%s '%s' launched run(s) %s", kind, name, ", ".join(r[:12] for r in runs))
                except Exception:
                    _log.exception("daemon pass failed; trying again")
                self._stop.wait(self.interval * (0.8 + random.random() * 0.4))
        finally:
            self.state.stop_daemon(self.id)

    def stop(self) -> None:
        self._stop.set()

    def _register(self) -> None:
        if not self._registered:
            self.state.register_daemon(self.id)
            self._registered = True

    def tick(self, now: datetime | None = None) -> PassReport:
        """One pass over everything the daemon looks after, as of ``now`` (the app's clock)."""
        self._register()
        self.state.heartbeat(self.id)
        now = now or self.app.clock.now()
        report = PassReport()
        for schedule in self.app.pipeline.schedules.values():
            try:
                self._schedule(schedule, now, report)
            except Exception as exc:
                _log.exception("schedule '%s' failed", schedule.name)
                report.errors.append(("schedule", schedule.name, f"{type(exc).__name__}: {exc}"))
        for sensor in self.app.pipeline.sensors.values():
            self._sensor(sensor, now, report)
        if any(a.automation is not None for a in self.app.pipeline.assets.values()):
            try:
                self._automation(now, report)
            except Exception as exc:
                _log.exception("automation failed")
                report.errors.append(("automation", "conditions", f"{type(exc).__name__}: {exc}"))
        try:
            report.timeouts = self.app.approvals.process_timeouts(now=now)
        except Exception as exc:
            _log.exception("checkpoint timeouts failed")
            report.errors.append(("checkpoints", "timeouts", str(exc)))
        return report

    # ------------------------------------------------------------------ launching
    def _launch(
        self, selection: Sequence[str], partitions: Sequence[str], *, actor: str, force: bool = False
    ) -> list[str]:
        app = self.app
        keys = list(partitions) or None
        if self.executor == "queue":
            return [app.submit(list(selection), partitions=keys, actor=actor, force=force)]
        result = app.materialize(
            list(selection), partitions=keys, actor=actor, force=force, executor=self.executor
        )
        return [result.run_id]

    def _tick_partitions(self, schedule: ScheduleDefinition, tick: datetime) -> list[str]:
        if schedule.partition is not None:
            local = tick.astimezone(schedule.schedule.tz)
            chosen = schedule.partition(local)
            if chosen is None:
                return []
            if isinstance(chosen, (list, tuple, set)):
                return [str(k) for k in chosen]
            return [str(chosen)]
        resolve = self.app.resolver()
        for expr in schedule.target:
            for asset in sorted(self.app.pipeline.graph.select([expr])):
                definition = resolve(asset)
                if definition is None:
                    continue
                key = closed_partition(definition, tick)
                if key is not None:
                    return [key]
                return []
        return []

    def _fire(
        self,
        kind: str,
        name: str,
        tick_id: int,
        selection: Sequence[str],
        partitions: Sequence[str],
        report: PassReport,
        *,
        force: bool = False,
    ) -> None:
        try:
            runs = self._launch(selection, partitions, actor=f"{kind}:{name}", force=force)
        except FlowStoneError as exc:
            self.state.finish_tick(tick_id, status="failed", partitions=partitions, reason=exc.message)
            report.errors.append((kind, name, exc.message))
            return
        self.state.finish_tick(tick_id, status="launched", run_ids=runs, partitions=partitions)
        report.launched.append((kind, name, runs))

    # ------------------------------------------------------------------ schedules
    def _schedule(self, schedule: ScheduleDefinition, now: datetime, report: PassReport) -> None:
        state = self.state.state("schedule", schedule.name)
        if state.enabled is False:
            return
        for stale in self.state.take_over_stale(
            "schedule", schedule.name, daemon_id=self.id, stale_after=self.stale_after
        ):
            partitions = self._tick_partitions(schedule, stale.tick_at)
            self._fire("schedule", schedule.name, stale.id, schedule.target, partitions, report)
        if state.cursor is None:
            # First look (or just turned on): start from now; earlier ticks are not "missed".
            self.state.save("schedule", schedule.name, cursor=now.isoformat(), last_evaluated_at=now)
            return
        since = datetime.fromisoformat(state.cursor)
        cron = schedule.schedule
        limit = schedule.max_catch_up if schedule.catch_up == "all" else 1
        ticks = cron.ticks_between(since, now, limit=limit)
        if not ticks:
            self.state.save("schedule", schedule.name, last_evaluated_at=now)
            return
        to_fire = ticks
        if schedule.catch_up == "none":
            to_fire = [t for t in ticks if now - t <= NONE_GRACE]
        for tick in to_fire:
            key = tick.isoformat()
            partitions = self._tick_partitions(schedule, tick)
            tick_id = self.state.claim_tick(
                "schedule", schedule.name, key, tick, daemon_id=self.id, partitions=partitions
            )
            if tick_id is None:
                continue  # another daemon fired it
            self._fire("schedule", schedule.name, tick_id, schedule.target, partitions, report)
        missed = [t for t in ticks if t not in to_fire]
        if missed:
            report.skipped.append(
                (
                    "schedule",
                    schedule.name,
                    f"{len(missed)} missed tick(s) not caught up (catch_up={schedule.catch_up})",
                )
            )
            latest_missed = missed[-1]
            self.state.claim_tick(
                "schedule",
                schedule.name,
                latest_missed.isoformat(),
                latest_missed,
                daemon_id=self.id,
                status="skipped",
                reason=f"missed while no daemon ran; catch_up={schedule.catch_up}",
            )
        self.state.save("schedule", schedule.name, cursor=ticks[-1].isoformat(), last_evaluated_at=now)

    # ------------------------------------------------------------------ automation
    def _automation(self, now: datetime, report: PassReport) -> None:
        """Launch what the assets' automation conditions ask for (see ``_automation``)."""
        from flowstone.schedules._automation import AutomationEvaluator

        if self._evaluator is None:
            self._evaluator = AutomationEvaluator(self.app)
        for request in self._evaluator.evaluate(now):
            tick_id = self.state.claim_tick(
                "automation",
                request.name,
                request.key,
                now,
                daemon_id=self.id,
                partitions=list(request.partitions),
            )
            if tick_id is None:
                continue
            self._fire(
                "automation", request.name, tick_id, request.selection, list(request.partitions), report
            )

    # ------------------------------------------------------------------ sensors
    def _sensor(self, sensor: SensorDefinition, now: datetime, report: PassReport) -> None:
        state = self.state.state("sensor", sensor.name)
        if state.enabled is False:
            return
        if (
            state.last_evaluated_at is not None
            and (now - state.last_evaluated_at).total_seconds() < sensor.interval
        ):
            return
        context = SensorContext(self.app, sensor.name, now, state.last_evaluated_at)
        try:
            result = _call_with_timeout(sensor, context, state.cursor)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            _log.warning("sensor '%s' failed: %s", sensor.name, text)
            self.state.save("sensor", sensor.name, last_evaluated_at=now, last_error=text)
            self.state.claim_tick(
                "sensor", sensor.name, now.isoformat(), now, daemon_id=self.id, status="failed", reason=text
            )
            report.errors.append(("sensor", sensor.name, text))
            return
        for name, keys in result.dynamic_partitions.items():
            self.app.add_partitions(name, list(keys), actor=f"sensor:{sensor.name}")
        requests = result.requests()
        if not requests:
            reason = result.skip_reason or "nothing new"
            report.skipped.append(("sensor", sensor.name, reason))
        for i, request in enumerate(requests):
            key = request.key or f"{now.isoformat()}#{i}"
            tick_id = self.state.claim_tick(
                "sensor", sensor.name, key, now, daemon_id=self.id, partitions=list(request.partitions)
            )
            if tick_id is None:
                continue
            selection = request.selection or sensor.target
            self._fire(
                "sensor",
                sensor.name,
                tick_id,
                selection,
                list(request.partitions),
                report,
                force=request.force,
            )
        values: dict[str, Any] = {"last_evaluated_at": now, "last_error": None}
        if result.cursor is not None:
            values["cursor"] = result.cursor
        self.state.save("sensor", sensor.name, **values)


def _call_with_timeout(sensor: SensorDefinition, context: SensorContext, cursor: str | None) -> SensorResult:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = sensor.fn(context, cursor)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"flowstone-sensor-{sensor.name}", daemon=True)
    thread.start()
    thread.join(sensor.timeout)
    if thread.is_alive():
        raise TimeoutError(f"sensor '{sensor.name}' did not return within its timeout of {sensor.timeout:g}s")
    if "error" in box:
        raise box["error"]
    value = box.get("value")
    if value is None:
        return SensorResult(skip_reason="the sensor returned nothing")
    if isinstance(value, (list, tuple)):
        return SensorResult(run_requests=list(value))
    if not isinstance(value, SensorResult):
        raise TypeError(
            f"sensor '{sensor.name}' must return fs.SensorResult(...), got {type(value).__name__}"
        )
    return value


__all__ = ["Daemon", "PassReport", "RunRequest", "SensorContext"]
