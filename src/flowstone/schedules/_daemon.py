"""``flowstone daemon``: one loop that fires schedules, polls sensors, launches what automation
conditions ask for, enforces checkpoint timeouts and keeps the metadata tidy.

Each pass (``Daemon.tick(now)``) is safe to run in several daemons at once against PostgreSQL:
a schedule tick or sensor request is a unique row inserted *before* its run is launched, so
exactly one daemon launches it; a tick left ``launching`` by a daemon that died is taken over by
another once that daemon's heartbeat is stale (or it stopped). Tick times come from the app's
clock (tests pass a ``FakeClock``); heartbeats are real time, written at every pass and by a
background thread while :meth:`Daemon.run` runs or a run is being launched (a long local run
must not make the daemon look dead). The
loop sleeps ``interval`` seconds with jitter between passes and stops after the pass in progress.

Runs go to the queue when the daemon is started with ``executor="queue"`` (``flowstone daemon
--executor queue``), else they run in the daemon's process.

Schedules. A schedule's cursor is the time of its last evaluation; a pass fires the ticks in
``(cursor, now]``. Its first evaluation starts at ``now`` (a tick exactly due then fires; earlier
ones are not "missed"), and a schedule turned back on starts when it was turned on. When more
than one tick is due (no daemon ran for a while, or a pass was late), ``catch_up`` decides:
``latest`` fires the most recent, ``all`` the most recent ``max_catch_up``, ``none`` only a tick
due within ``NONE_GRACE`` (or two intervals) of now; the others are recorded as ``skipped``.

Events. On the app's bus (``app.events``), stamped with the app's clock and emitted only by the
daemon that claimed the tick (so once however many daemons run):

- ``schedule.tick`` for each tick recorded: ``schedule``, ``tick`` (ISO), ``status`` (the tick's
  own: ``launched``, ``skipped`` or ``failed``), ``run_ids``, ``partitions``, ``reason`` (why it
  was skipped) and ``error`` (why it failed); ``run_id`` is the run it launched.
- ``sensor.poll`` for each evaluation of a sensor: ``sensor``, ``run_requests`` (how many),
  ``cursor_before`` / ``cursor_after`` (long ones shortened), ``cursor_changed``,
  ``duration_ms`` of the sensor's call, ``skip_reason`` and ``error`` (the evaluation failed).
- ``sensor.triggered`` for each run a sensor launched: ``sensor``, ``run_key`` (its request's
  key, if any), ``partitions``; ``run_id`` is the run.

A subscriber that raises is logged by the bus and never stops a pass::

    app.events.subscribe(lambda e: print(e.type, e.data), exclude=["sensor.poll"])
    Daemon(app).tick()
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flowstone._durations import parse_duration
from flowstone._errors import ConfigurationError, FlowStoneError
from flowstone._events import SCHEDULE_TICK, SENSOR_POLL, SENSOR_TRIGGERED, Event
from flowstone._ids import new_id
from flowstone.schedules._definitions import (
    RunRequest,
    ScheduleDefinition,
    SensorDefinition,
    SensorResult,
    closed_partition,
)
from flowstone.schedules._state import AutomationStore
from flowstone.store._store import utcnow

if TYPE_CHECKING:
    from flowstone._app import FlowStone

_log = logging.getLogger("flowstone.daemon")

# "none" catch-up still fires a tick this late (a daemon pass that came a little after it).
NONE_GRACE = timedelta(seconds=60)
# Missed ticks recorded as skipped per evaluation (the most recent ones); the report counts them.
SKIPPED_ROWS = 20
# Stopped or silent daemons are forgotten after this long (housekeeping).
DAEMON_RETENTION = timedelta(days=7)
_FIRST_LOOK = timedelta(microseconds=1)
# A sensor's cursor is shown whole in sensor.poll events up to this many characters (a
# file_arrival cursor lists every file it knows: each poll would log all of them).
CURSOR_SHOWN = 200


def _shown(cursor: str | None) -> str | None:
    """``cursor`` as a sensor.poll event shows it: long ones cut, with their length."""
    if cursor is None or len(cursor) <= CURSOR_SHOWN:
        return cursor
    return f"{cursor[:CURSOR_SHOWN]}... ({len(cursor)} characters)"


@dataclass
class PassReport:
    """What one daemon pass did (for logs and tests)."""

    launched: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (kind, name, run ids)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, name, reason)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    timeouts: list[tuple[str, str]] = field(default_factory=list)
    housekeeping: list[str] = field(default_factory=list)  # what housekeeping did, if it ran


class SensorContext:
    """What a sensor function receives besides its cursor."""

    def __init__(
        self,
        app: FlowStone,
        name: str,
        now: datetime,
        last_evaluated_at: datetime | None,
        daemon_id: str | None = None,
    ) -> None:
        self.app = app
        self.sensor_name = name
        self.now = now
        self.last_evaluated_at = last_evaluated_at
        self.log = logging.getLogger(f"flowstone.sensor.{name}")
        self.tenant = app.tenant
        self.daemon_id = daemon_id  # the evaluating daemon (for claiming ticks of its own)


class _Heartbeat:
    """Beats the daemon's row every ``every`` seconds (real time) on a thread until stopped."""

    def __init__(self, state: AutomationStore, daemon_id: str, every: float) -> None:
        self._state = state
        self._id = daemon_id
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowstone-daemon-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._state.heartbeat(self._id)
            except Exception:
                _log.warning("daemon heartbeat failed; trying again", exc_info=True)


class Daemon:
    """Evaluates the pipeline's schedules, sensors and automation conditions.

    ``interval``: seconds between passes of :meth:`run` (jittered by ``jitter``, a fraction);
    ``executor``: ``"queue"`` submits runs for workers, anything else is the local executor
    runs use in this process; ``stale_after``: seconds without a heartbeat after which another
    daemon takes over this one's unfinished ticks; ``housekeeping_every`` / ``tick_retention``:
    how often a daemon marks dead runs abandoned and prunes old schedule ticks, events and daemon
    rows, and how long schedule ticks are kept (events: the app's ``event_retention``).
    """

    def __init__(
        self,
        app: FlowStone,
        *,
        interval: float = 5.0,
        executor: str | None = None,
        name: str | None = None,
        stale_after: float = 60.0,
        jitter: float = 0.2,
        housekeeping_every: str | float | timedelta = "1h",
        tick_retention: str | float | timedelta = "90d",
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be a fraction in [0, 1), got {jitter!r}")
        if stale_after <= 0:
            raise ValueError(f"stale_after must be positive, got {stale_after!r}")
        if executor == "queue" and app.store.dialect != "postgresql":
            raise ConfigurationError(
                'the daemon\'s queue executor needs a PostgreSQL store (store = "postgresql://..."); '
                f"this store is {app.store.dialect}: leave the executor out to run in the daemon's process",
                context={"executor": executor},
            )
        self.app = app
        self.interval = interval
        self.executor = executor
        self.id = new_id()
        self.name = name or self.id[:12]
        self.state = AutomationStore(app.store, app.tenant)
        self.stale_after = timedelta(seconds=stale_after)
        self.jitter = jitter
        self.housekeeping_every = timedelta(seconds=parse_duration(housekeeping_every))
        self.tick_retention = timedelta(seconds=parse_duration(tick_retention))
        self._stop = threading.Event()
        self._registered = False
        self._beat: _Heartbeat | None = None
        self._evaluator: Any = None
        self._housekeeping_slot: str | None = None
        self._hanging: dict[str, threading.Thread] = {}  # sensor calls still running past their timeout

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Passes until :meth:`stop` (or SIGINT/SIGTERM from the CLI); the pass in progress
        finishes first. The daemon's row is marked stopped on the way out."""
        self._register()
        try:
            with self._beating():
                while not self._stop.is_set():
                    try:
                        report = self.tick()
                        for kind, name, runs in report.launched:
                            _log.info(
                                "%s '%s' launched run(s) %s", kind, name, ", ".join(r[:12] for r in runs)
                            )
                        for kind, name, text in report.errors:
                            _log.warning("%s '%s': %s", kind, name, text)
                    except Exception:
                        _log.exception("daemon pass failed; trying again")
                    self._stop.wait(self.next_wait())
        finally:
            self.state.stop_daemon(self.id)

    def next_wait(self) -> float:
        """Seconds to wait before the next pass: ``interval`` give or take ``jitter``."""
        return self.interval * (1 - self.jitter + 2 * self.jitter * random.random())

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _register(self) -> None:
        if not self._registered:
            self.state.register_daemon(self.id)
            self._registered = True

    @contextmanager
    def _beating(self) -> Iterator[None]:
        """A heartbeat thread for as long as the block runs (one per daemon)."""
        if self._beat is not None:
            yield
            return
        beat = _Heartbeat(self.state, self.id, max(0.05, self.stale_after.total_seconds() / 4))
        beat.start()
        self._beat = beat
        try:
            yield
        finally:
            self._beat = None
            beat.stop()

    def tick(self, now: datetime | None = None) -> PassReport:
        """One pass over everything the daemon looks after, as of ``now`` (the app's clock)."""
        self._register()
        self.state.heartbeat(self.id)
        now = now or self.app.clock.now()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware, got {now!r}")
        now = now.astimezone(UTC)
        report = PassReport()
        for schedule in self.app.pipeline.schedules.values():
            self._guarded(report, "schedule", schedule.name, self._schedule, schedule, now, report)
        for sensor in self.app.pipeline.sensors.values():
            self._guarded(report, "sensor", sensor.name, self._sensor, sensor, now, report)
        if any(a.automation is not None for a in self.app.pipeline.assets.values()):
            self._guarded(report, "automation", "conditions", self._automation, now, report)
        self._guarded(report, "checkpoints", "timeouts", self._timeouts, now, report)
        self._guarded(report, "daemon", "housekeeping", self._housekeeping, now, report)
        return report

    def _guarded(self, report: PassReport, kind: str, name: str, fn: Any, *args: Any) -> None:
        """``fn(*args)``; a failure is logged and reported, and the pass goes on."""
        try:
            fn(*args)
        except Exception as exc:
            _log.exception("%s '%s' failed", kind, name)
            report.errors.append((kind, name, f"{type(exc).__name__}: {exc}"))

    def _timeouts(self, now: datetime, report: PassReport) -> None:
        report.timeouts = self.app.approvals.process_timeouts(now=now)

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
    ) -> tuple[list[str], str | None]:
        """Launch the run of a claimed tick and record the outcome on the tick.

        Returns the runs launched and, when launching failed, why (reported already): the
        caller emits its own kind of event about it.
        """
        try:
            with self._beating():  # a local run can take long: the daemon must not look dead
                runs = self._launch(selection, partitions, actor=f"{kind}:{name}", force=force)
        except Exception as exc:
            text = exc.message if isinstance(exc, FlowStoneError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, FlowStoneError):
                _log.exception("%s '%s': launching failed", kind, name)
            self.state.finish_tick(tick_id, status="failed", partitions=partitions, reason=text)
            report.errors.append((kind, name, text))
            return [], text
        self.state.finish_tick(tick_id, status="launched", run_ids=runs, partitions=partitions)
        report.launched.append((kind, name, runs))
        return runs, None

    # ------------------------------------------------------------------ events
    def _emit(self, type_: str, run_id: str | None = None, **data: Any) -> None:
        """One event of the daemon's on the app's bus, at the app's time (not built when nobody
        takes ``type_``). Subscribers' failures are the bus's to log: a pass never sees them."""
        bus = self.app.events
        if bus.wants(type_):
            bus.emit(Event(type_, self.app.clock.now(), run_id, data=data))

    def _tick_recorded(
        self,
        name: str,
        tick: datetime,
        status: str,
        *,
        runs: Sequence[str] = (),
        partitions: Sequence[str] = (),
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        """``schedule.tick``: what became of one tick of schedule ``name`` (its row's status)."""
        self._emit(
            SCHEDULE_TICK,
            runs[0] if len(runs) == 1 else None,
            schedule=name,
            tick=tick.isoformat(),
            status=status,
            run_ids=list(runs),
            partitions=list(partitions),
            reason=reason,
            error=error,
        )

    def _fire_tick(
        self,
        schedule: ScheduleDefinition,
        tick: datetime,
        tick_id: int,
        partitions: list[str],
        report: PassReport,
    ) -> None:
        """Launch a claimed tick of ``schedule`` and emit what became of it."""
        runs, error = self._fire("schedule", schedule.name, tick_id, schedule.target, partitions, report)
        status = "failed" if error is not None else "launched"
        self._tick_recorded(schedule.name, tick, status, runs=runs, partitions=partitions, error=error)

    # ------------------------------------------------------------------ schedules
    def tick_partitions(self, schedule: ScheduleDefinition, tick: datetime) -> tuple[list[str], str | None]:
        """The partition keys a tick of ``schedule`` runs, or ``([], why)`` when it runs nothing.

        ``([], None)``: an unpartitioned target, run as a whole. With a ``partition`` function,
        what it returns for the tick (in the schedule's zone; None or nothing: skip the tick).
        Otherwise the partition of the target's time-window partitions that closed last at the
        tick (the first partitioned asset of the target, by name, decides).
        """
        if schedule.partition is not None:
            chosen = schedule.partition(tick.astimezone(schedule.schedule.tz))
            if isinstance(chosen, (set, frozenset)):
                chosen = sorted(chosen, key=str)
            if isinstance(chosen, (list, tuple)):
                keys = [str(k) for k in chosen]
            else:
                keys = [] if chosen is None else [str(chosen)]
            if not keys:
                return [], "the partition function chose no partition for this tick"
            return keys, None
        resolve = self.app.resolver()
        for asset in sorted(self.app.pipeline.graph.select(list(schedule.target))):
            definition = resolve(asset)
            if definition is None:
                continue
            key = closed_partition(definition, tick)
            if key is not None:
                return [key], None
            if not hasattr(definition, "key_for_time"):
                return [], (
                    f"'{asset}' is partitioned by {definition!r}, not by time: give the schedule a "
                    "partition function (tick -> partition key)"
                )
            return [], f"no partition of '{asset}' ({definition!r}) has closed by this tick"
        return [], None

    def _schedule(self, schedule: ScheduleDefinition, now: datetime, report: PassReport) -> None:
        name = schedule.name
        state = self.state.state("schedule", name)
        if state.enabled is False:
            return
        for stale in self.state.take_over_stale(
            "schedule", name, daemon_id=self.id, stale_after=self.stale_after
        ):
            _log.warning("schedule '%s': taking over tick %s of a daemon that stopped", name, stale.tick_key)
            partitions = [str(p) for p in stale.partitions]
            self._fire_tick(schedule, stale.tick_at, stale.id, partitions, report)
        since = datetime.fromisoformat(state.cursor) if state.cursor else now - _FIRST_LOOK
        if since >= now:
            return  # evaluated up to now already (or this daemon's clock is behind)
        policy = schedule.catch_up
        firing = schedule.max_catch_up if policy == "all" else 1
        recent = schedule.schedule.ticks_between(since, now, limit=firing + SKIPPED_ROWS)
        if policy == "none":
            grace = max(NONE_GRACE, timedelta(seconds=2 * self.interval))
            due = [t for t in recent[-1:] if now - t <= grace]
        else:
            due = recent[-firing:]
        missed = recent[: len(recent) - len(due)]
        if missed:
            more = "+" if len(recent) == firing + SKIPPED_ROWS else ""
            report.skipped.append(
                ("schedule", name, f"{len(missed)}{more} missed tick(s) not run (catch_up={policy})")
            )
            why = {
                "latest": "missed while no daemon evaluated the schedule; catch_up=latest runs only "
                "the most recent tick",
                "all": f"missed while no daemon evaluated the schedule; catch_up=all runs at most "
                f"{schedule.max_catch_up} missed ticks",
                "none": "missed while no daemon evaluated the schedule; catch_up=none runs no missed tick",
            }[policy]
            for tick in missed:
                if self.state.claim_tick(
                    "schedule", name, tick.isoformat(), tick, daemon_id=self.id, status="skipped", reason=why
                ):
                    self._tick_recorded(name, tick, "skipped", reason=why)
        claimed: list[tuple[datetime, int, list[str]]] = []
        for tick in due:
            try:
                partitions, skip = self.tick_partitions(schedule, tick)
            except Exception as exc:
                text = f"the partition function failed: {type(exc).__name__}: {exc}"
                if self.state.claim_tick(
                    "schedule", name, tick.isoformat(), tick, daemon_id=self.id, status="failed", reason=text
                ):
                    report.errors.append(("schedule", name, text))
                    self._tick_recorded(name, tick, "failed", error=text)
                continue
            if skip is not None:
                if self.state.claim_tick(
                    "schedule", name, tick.isoformat(), tick, daemon_id=self.id, status="skipped", reason=skip
                ):
                    report.skipped.append(("schedule", name, skip))
                    self._tick_recorded(name, tick, "skipped", reason=skip)
                continue
            tick_id = self.state.claim_tick(
                "schedule", name, tick.isoformat(), tick, daemon_id=self.id, partitions=partitions
            )
            if tick_id is not None:  # else another daemon has it
                claimed.append((tick, tick_id, partitions))
        # The claims are in the store before the cursor moves: a crash from here on leaves
        # 'launching' rows for another daemon (or this one restarted) to take over.
        self.state.save("schedule", name, cursor=now.isoformat(), last_evaluated_at=now, last_error=None)
        for tick, tick_id, partitions in claimed:
            self._fire_tick(schedule, tick, tick_id, partitions, report)

    # ------------------------------------------------------------------ housekeeping
    def _housekeeping(self, now: datetime, report: PassReport) -> None:
        """Once per ``housekeeping_every`` across all daemons: mark runs whose process died
        abandoned, prune schedule ticks older than ``tick_retention`` and run events older than
        the app's event retention (``FlowStone.prune_events``), and forget old daemons."""
        every = self.housekeeping_every.total_seconds()
        if every <= 0:
            return
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        slot = epoch + timedelta(seconds=((now - epoch).total_seconds() // every) * every)
        key = slot.isoformat()
        if self._housekeeping_slot == key:
            return
        self._housekeeping_slot = key
        tick_id = self.state.claim_tick("daemon", "housekeeping", key, slot, daemon_id=self.id)
        if tick_id is None:
            return  # another daemon has this slot
        done = []
        recovered = self.app.recover()
        if recovered:
            done.append(f"{len(recovered)} run(s) whose process died marked abandoned")
        pruned = self.state.prune_ticks(before=now - self.tick_retention)
        if pruned:
            done.append(f"{pruned} schedule tick(s) older than {self.tick_retention.days} days pruned")
        # No age given: the app's event retention (by the app's clock) is the one policy.
        events = self.app.prune_events()
        if events:
            done.append(f"{events} event(s) older than the event retention pruned")
        forgotten = self.state.prune_daemons(before=utcnow() - DAEMON_RETENTION)
        if forgotten:
            done.append(f"{forgotten} stopped daemon(s) forgotten")
        self.state.finish_tick(tick_id, status="launched", reason="; ".join(done) or "nothing to do")
        report.housekeeping = done or ["nothing to do"]

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
                "automation",
                request.name,
                tick_id,
                request.selection,
                list(request.partitions),
                report,
                force=request.force,
            )

    # ------------------------------------------------------------------ sensors
    def _sensor(self, sensor: SensorDefinition, now: datetime, report: PassReport) -> None:
        """Evaluate ``sensor`` if its interval has passed (one daemon per interval) and launch
        what it asks for; a failure (raised, timed out, bad result, unknown dynamic partitions) is
        the sensor's recorded error and leaves its cursor where it was."""
        name = sensor.name
        state = self.state.state("sensor", name)
        if state.enabled is False:
            return
        if (
            state.last_evaluated_at is not None
            and (now - state.last_evaluated_at).total_seconds() < sensor.interval
        ):
            return
        hanging = self._hanging.get(name)
        if hanging is not None and hanging.is_alive():
            report.skipped.append(("sensor", name, "its previous evaluation timed out and is still running"))
            return
        if not self.state.lease_evaluation("sensor", name, seen=state.last_evaluated_at, now=now):
            return  # another daemon is evaluating it in this interval
        context = SensorContext(self.app, name, now, state.last_evaluated_at, daemon_id=self.id)
        started = time.perf_counter()
        try:
            result = self._call_sensor(sensor, context, state.cursor)
            for partitions_name, keys in result.dynamic_partitions.items():
                self.app.add_partitions(partitions_name, list(keys), actor=f"sensor:{name}")
            requests = result.requests()
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            self._polled(name, started, state.cursor, None, 0, error=text)
            _log.warning("sensor '%s' failed: %s", name, text)
            self.state.save("sensor", name, last_evaluated_at=now, last_error=text)
            self.state.claim_tick(
                "sensor", name, now.isoformat(), now, daemon_id=self.id, status="failed", reason=text
            )
            report.errors.append(("sensor", name, text))
            return
        self._polled(
            name, started, state.cursor, result.cursor, len(requests), skip_reason=result.skip_reason
        )
        if not requests:
            report.skipped.append(("sensor", name, result.skip_reason or "nothing new"))
        for i, request in enumerate(requests):
            key = request.key or f"{now.isoformat()}#{i}"
            partitions = list(request.partitions)
            tick_id = self.state.claim_tick(
                "sensor", name, key, now, daemon_id=self.id, partitions=partitions
            )
            if tick_id is None:
                continue  # launched already (another daemon, an earlier evaluation)
            selection = request.selection or sensor.target
            runs, _ = self._fire("sensor", name, tick_id, selection, partitions, report, force=request.force)
            for run_id in runs:
                self._emit(SENSOR_TRIGGERED, run_id, sensor=name, run_key=request.key, partitions=partitions)
        values: dict[str, Any] = {"last_evaluated_at": now, "last_error": None}
        if result.cursor is not None:
            values["cursor"] = result.cursor
        self.state.save("sensor", name, **values)

    def _polled(
        self,
        name: str,
        started: float,
        before: str | None,
        after: str | None,
        requests: int,
        *,
        skip_reason: str | None = None,
        error: str | None = None,
    ) -> None:
        """``sensor.poll``: one evaluation of sensor ``name`` that began at ``started``
        (``time.perf_counter``). ``after`` None: the cursor stays where it was."""
        if not self.app.events.wants(SENSOR_POLL):
            return  # no cursor to shorten, no event to build
        after = before if after is None else after
        self._emit(
            SENSOR_POLL,
            sensor=name,
            run_requests=requests,
            cursor_before=_shown(before),
            cursor_after=_shown(after),
            cursor_changed=after != before,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            skip_reason=skip_reason,
            error=error,
        )

    def _call_sensor(
        self, sensor: SensorDefinition, context: SensorContext, cursor: str | None
    ) -> SensorResult:
        """``sensor.fn(context, cursor)`` on a thread, given up on after ``sensor.timeout``. A
        call past its timeout is remembered: the sensor is not called again until it returns."""
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
            self._hanging[sensor.name] = thread
            raise TimeoutError(
                f"sensor '{sensor.name}' did not return within its timeout of {sensor.timeout:g}s"
            )
        self._hanging.pop(sensor.name, None)
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
