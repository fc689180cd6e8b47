"""The daemon on the event bus: ``schedule.tick``, ``sensor.poll`` and ``sensor.triggered``, what
they carry, that a failing sensor or subscriber does not stop a pass, how the telemetry adapters
take them, and housekeeping pruning old events.

Every pass is ``Daemon(app).tick()`` on an app whose ``FakeClock`` decides the time (events are
stamped with it); runs are real local runs on SQLite. Events are collected by a subscriber.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import flowstone as fs
from flowstone._events import SCHEDULE_TICK, SENSOR_POLL, SENSOR_TRIGGERED, Event
from flowstone.schedules import Daemon, PassReport
from flowstone.schedules._daemon import CURSOR_SHOWN
from flowstone.schedules._state import AutomationStore
from flowstone.store import _tables as t
from flowstone.telemetry import JsonLogs, OpenTelemetrySpans, PrometheusMetrics
from flowstone.testing import FakeClock

T0 = datetime(2025, 1, 16, 2, 0, tzinfo=UTC)  # exactly on the 02:00 tick of the schedules below
LETTERS = fs.StaticPartitions(["a", "b", "c"])
DAEMON_TYPES = (SCHEDULE_TICK, SENSOR_POLL, SENSOR_TRIGGERED)

AppFactory = Callable[[fs.Pipeline], fs.FlowStone]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def open_app(tmp_path: Path, sqlite_url: str, clock: FakeClock) -> Iterator[AppFactory]:
    """FlowStone apps on the test's SQLite store and fake clock; closed at teardown."""
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline) -> fs.FlowStone:
        app = fs.FlowStone(pipeline, store=sqlite_url, storage_dir=tmp_path / "storage", clock=clock)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


class Recorded:
    """The daemon's events an app emitted, in order (a bus subscriber)."""

    def __init__(self, app: fs.FlowStone) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []
        app.events.subscribe(self)

    def __call__(self, event: Event) -> None:
        if event.type in DAEMON_TYPES:
            with self._lock:
                self._events.append(event)

    def of(self, *types: str) -> list[Event]:
        with self._lock:
            return [e for e in self._events if e.type in types]


def launched(report: PassReport, name: str) -> list[str]:
    return [r for _, who, runs in report.launched if who == name for r in runs]


def run_partitions(app: fs.FlowStone, run_id: str) -> list[str | None]:
    found = app.run(run_id)
    assert found is not None
    return [step.partition_key for step in found[1]]


# ---------------------------------------------------------------------- schedule.tick
def test_a_due_tick_emits_one_schedule_tick_with_its_run(open_app: AppFactory, clock: FakeClock) -> None:
    pipeline = fs.Pipeline("nightly")

    @pipeline.asset()
    def report(context: fs.Context) -> int:
        return 1

    pipeline.schedule("nightly", cron="0 2 * * *", target=["report"])
    app = open_app(pipeline)
    recorded = Recorded(app)
    daemon = Daemon(app)

    daemon.tick(now=T0 - timedelta(minutes=1))  # the first look: nothing due yet
    clock.advance(15)  # the next pass comes a little after the tick; the event carries both times
    pass_report = daemon.tick()
    [run_id] = launched(pass_report, "nightly")
    [event] = recorded.of(SCHEDULE_TICK)
    assert (event.at, event.run_id, event.asset) == (clock.now(), run_id, None)
    assert event.data == {
        "schedule": "nightly",
        "tick": "2025-01-16T02:00:00+00:00",
        "status": "launched",
        "run_ids": [run_id],
        "partitions": [],
        "reason": None,
        "error": None,
    }
    found = app.run(run_id)
    assert found is not None and found[0].status is fs.RunStatus.SUCCEEDED
    # A pass with no tick due emits nothing; no other daemon event came either.
    clock.advance(60)
    daemon.tick()
    assert recorded.of(*DAEMON_TYPES) == [event]


def test_missed_skipped_and_failed_ticks_say_why(open_app: AppFactory, clock: FakeClock) -> None:
    pipeline = fs.Pipeline("why")

    @pipeline.asset(partitioned_by=LETTERS)
    def letters(context: fs.Context) -> str:
        return str(context.partition_key)

    @pipeline.asset(partitioned_by=fs.StaticPartitions([f"{hour:02d}" for hour in range(24)]))
    def hours(context: fs.Context) -> str:
        return str(context.partition_key)

    # Hourly, catching up only the latest tick: the ones missed while no daemon ran are skipped.
    pipeline.schedule("hourly", cron="0 * * * *", target=["hours"], partition=lambda tick: f"{tick.hour:02d}")
    pipeline.schedule("chooses_none", cron="0 2 * * *", target=["letters"], partition=lambda tick: None)

    def broken(tick: datetime) -> str:
        raise LookupError("no such day")

    pipeline.schedule("broken", cron="0 2 * * *", target=["letters"], partition=broken)
    app = open_app(pipeline)
    recorded = Recorded(app)
    daemon = Daemon(app)
    daemon.tick()  # 02:00: each schedule's first evaluation, its tick exactly due
    clock.advance(3 * 3600)
    pass_report = daemon.tick()  # 05:00: 03:00 and 04:00 were missed

    def outcome(name: str) -> list[tuple[str, str, str | None, str | None]]:
        return [
            (e.data["tick"], e.data["status"], e.data["reason"], e.data["error"])
            for e in recorded.of(SCHEDULE_TICK)
            if e.data["schedule"] == name
        ]

    hourly = outcome("hourly")
    assert [(tick, status) for tick, status, _, _ in hourly] == [
        ("2025-01-16T02:00:00+00:00", "launched"),
        ("2025-01-16T03:00:00+00:00", "skipped"),
        ("2025-01-16T04:00:00+00:00", "skipped"),
        ("2025-01-16T05:00:00+00:00", "launched"),
    ]
    assert all("catch_up=latest" in (reason or "") for _, status, reason, _ in hourly if status == "skipped")
    [latest] = [e for e in recorded.of(SCHEDULE_TICK) if e.data["tick"].startswith("2025-01-16T05")]
    assert latest.run_id == launched(pass_report, "hourly")[0]
    assert latest.data["partitions"] == ["05"] and run_partitions(app, latest.run_id) == ["05"]
    assert outcome("chooses_none") == [
        (
            "2025-01-16T02:00:00+00:00",
            "skipped",
            "the partition function chose no partition for this tick",
            None,
        )
    ]
    assert outcome("broken") == [
        (
            "2025-01-16T02:00:00+00:00",
            "failed",
            None,
            "the partition function failed: LookupError: no such day",
        )
    ]
    # The events agree with the tick rows the store keeps.
    rows = AutomationStore(app.store, app.tenant).ticks("schedule", "hourly", limit=10)
    assert sorted((r.tick_at.isoformat(), r.status) for r in rows) == [
        (tick, status) for tick, status, _, _ in hourly
    ]


# ---------------------------------------------------------------------- sensors
def test_a_sensor_request_emits_sensor_poll_then_sensor_triggered(
    open_app: AppFactory, clock: FakeClock
) -> None:
    pipeline = fs.Pipeline("sensing")

    @pipeline.asset(partitioned_by=LETTERS)
    def letters(context: fs.Context) -> str:
        return str(context.partition_key)

    long_cursor = "x" * (CURSOR_SHOWN * 5)

    @pipeline.sensor(interval="30s", target=["letters"])
    def arrivals(context: Any, cursor: str | None) -> fs.SensorResult:
        if cursor is None:
            return fs.SensorResult(run_requests=[fs.RunRequest(partitions=("b",), key="file-1")], cursor="c1")
        return fs.SensorResult(skip_reason="no new files", cursor=long_cursor)

    app = open_app(pipeline)
    recorded = Recorded(app)
    daemon = Daemon(app)
    pass_report = daemon.tick()
    [run_id] = launched(pass_report, "arrivals")
    poll, triggered = recorded.of(SENSOR_POLL, SENSOR_TRIGGERED)
    assert poll.type == SENSOR_POLL and poll.at == T0 and poll.run_id is None
    duration = poll.data.pop("duration_ms")
    assert isinstance(duration, float) and duration >= 0
    assert poll.data == {
        "sensor": "arrivals",
        "run_requests": 1,
        "cursor_before": None,
        "cursor_after": "c1",
        "cursor_changed": True,
        "skip_reason": None,
        "error": None,
    }
    assert (triggered.type, triggered.run_id) == (SENSOR_TRIGGERED, run_id)
    assert triggered.data == {"sensor": "arrivals", "run_key": "file-1", "partitions": ["b"]}
    assert run_partitions(app, run_id) == ["b"]

    # Next evaluation: nothing requested, nothing triggered; a long cursor is shown shortened.
    clock.advance(30)
    daemon.tick()
    [second] = recorded.of(SENSOR_POLL)[1:]
    assert recorded.of(SENSOR_TRIGGERED) == [triggered]
    assert (second.data["run_requests"], second.data["skip_reason"]) == (0, "no new files")
    assert second.data["cursor_before"] == "c1"
    shown = second.data["cursor_after"]
    assert shown.startswith("x" * CURSOR_SHOWN) and shown.endswith(f"({len(long_cursor)} characters)")
    assert len(shown) < len(long_cursor)
    assert second.data["cursor_changed"] is True


def test_a_failing_sensor_emits_its_error_and_the_pass_goes_on(open_app: AppFactory) -> None:
    pipeline = fs.Pipeline("sensing")

    @pipeline.asset(partitioned_by=LETTERS)
    def letters(context: fs.Context) -> str:
        return str(context.partition_key)

    @pipeline.asset()
    def report(context: fs.Context) -> int:
        return 1

    @pipeline.sensor(interval="30s", target=["letters"])
    def broken(context: Any, cursor: str | None) -> fs.SensorResult:
        raise RuntimeError("the source is down")

    @pipeline.sensor(interval="30s", target=["letters"])
    def healthy(context: Any, cursor: str | None) -> fs.SensorResult:
        return fs.SensorResult(run_requests=["a"])

    pipeline.schedule("nightly", cron="0 2 * * *", target=["report"])
    app = open_app(pipeline)
    recorded = Recorded(app)
    pass_report = Daemon(app).tick()

    polls = {e.data["sensor"]: e for e in recorded.of(SENSOR_POLL)}
    assert set(polls) == {"broken", "healthy"}
    failed = polls["broken"].data
    assert failed["error"] == "RuntimeError: the source is down"
    assert (failed["run_requests"], failed["cursor_before"], failed["cursor_after"]) == (0, None, None)
    assert failed["cursor_changed"] is False
    assert polls["healthy"].data["error"] is None
    # The other sensor and the schedule still ran in the same pass.
    [triggered] = recorded.of(SENSOR_TRIGGERED)
    assert triggered.data["sensor"] == "healthy" and triggered.run_id == launched(pass_report, "healthy")[0]
    assert triggered.data["run_key"] is None and triggered.data["partitions"] == ["a"]
    [tick] = recorded.of(SCHEDULE_TICK)
    assert tick.data["status"] == "launched" and tick.run_id == launched(pass_report, "nightly")[0]
    assert [(kind, name) for kind, name, _ in pass_report.errors] == [("sensor", "broken")]


def test_a_subscriber_that_raises_does_not_break_the_daemon(
    open_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = fs.Pipeline("sturdy")

    @pipeline.asset()
    def report(context: fs.Context) -> int:
        return 1

    @pipeline.sensor(interval="30s", target=["report"])
    def poke(context: Any, cursor: str | None) -> fs.SensorResult:
        return fs.SensorResult(run_requests=[fs.RunRequest(force=True)])

    pipeline.schedule("nightly", cron="0 2 * * *", target=["report"])
    app = open_app(pipeline)
    seen: list[str] = []

    def explode(event: Event) -> None:
        seen.append(event.type)
        raise RuntimeError(f"subscriber broke on {event.type}")

    app.events.subscribe(explode)
    recorded = Recorded(app)  # subscribed after the broken one: still gets every event
    with caplog.at_level(logging.ERROR, logger="flowstone.events"):
        pass_report = Daemon(app).tick()

    assert pass_report.errors == []
    assert len(launched(pass_report, "nightly")) == len(launched(pass_report, "poke")) == 1
    assert [e.type for e in recorded.of(*DAEMON_TYPES)] == [SCHEDULE_TICK, SENSOR_POLL, SENSOR_TRIGGERED]
    assert {SCHEDULE_TICK, SENSOR_POLL, SENSOR_TRIGGERED} <= set(seen)
    logged = {r.getMessage() for r in caplog.records if r.name == "flowstone.events"}
    assert any(SCHEDULE_TICK in message for message in logged)
    statuses = [t.status for t in AutomationStore(app.store, app.tenant).ticks("schedule", "nightly")]
    assert statuses == ["launched"]


def test_the_telemetry_adapters_take_the_daemon_events(
    open_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = fs.Pipeline("observed")

    @pipeline.asset()
    def report(context: fs.Context) -> int:
        return 1

    @pipeline.sensor(interval="30s", target=["report"])
    def poke(context: Any, cursor: str | None) -> fs.SensorResult:
        return fs.SensorResult(run_requests=[fs.RunRequest(force=True)], cursor="1")

    @pipeline.sensor(interval="30s", target=["report"])
    def broken(context: Any, cursor: str | None) -> fs.SensorResult:
        raise RuntimeError("the source is down")

    pipeline.schedule("nightly", cron="0 2 * * *", target=["report"])
    app = open_app(pipeline)
    lines = io.StringIO()
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = CollectorRegistry()
    JsonLogs(lines, level=logging.DEBUG).attach(app.events)
    OpenTelemetrySpans(provider, pipeline="observed").attach(app.events)
    PrometheusMetrics(registry).attach(app.events)
    with caplog.at_level(logging.ERROR, logger="flowstone.events"):
        assert Daemon(app).tick().errors == [("sensor", "broken", "RuntimeError: the source is down")]

    assert not [r for r in caplog.records if r.name == "flowstone.events"]  # no adapter failed
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    levels = {(r["type"], r.get("sensor") or r.get("schedule")): r["level"] for r in logged}
    assert levels[(SCHEDULE_TICK, "nightly")] == "info"
    assert levels[(SENSOR_POLL, "poke")] == "debug"
    assert levels[(SENSOR_POLL, "broken")] == "warning"  # it carries an error
    assert levels[(SENSOR_TRIGGERED, "poke")] == "info"
    [failed] = [r for r in logged if r["type"] == SENSOR_POLL and r["sensor"] == "broken"]
    assert failed["error_message"] == "RuntimeError: the source is down"
    # The two runs are traced and counted as before; the daemon's own events add nothing there.
    assert sorted(s.name for s in spans.get_finished_spans() if s.parent is None) == ["flowstone.run"] * 2
    assert registry.get_sample_value("flowstone_runs_total", {"status": "succeeded"}) == 2


# ---------------------------------------------------------------------- housekeeping
def test_housekeeping_prunes_events_older_than_the_retention(open_app: AppFactory, clock: FakeClock) -> None:
    pipeline = fs.Pipeline("tidy")

    @pipeline.asset()
    def report(context: fs.Context) -> int:
        return 1

    app = open_app(pipeline)
    old_run = app.materialize(["report"]).run_id
    new_run = app.materialize(["report"], force=True).run_id
    # Age them on the app's clock (the one pruning goes by): 40 days (past the default 30) and 1.
    ages = {old_run: timedelta(days=40), new_run: timedelta(days=1)}
    with app.store.engine.begin() as conn:
        for run_id, age in ages.items():
            conn.execute(t.events.update().where(t.events.c.run_id == run_id).values(at=clock.now() - age))
    old_count = len(app.store.list_events(tenant=app.tenant, run_id=old_run))
    new_count = len(app.store.list_events(tenant=app.tenant, run_id=new_run))
    assert old_count > 0 and new_count > 0

    daemon = Daemon(app)
    housekeeping = daemon.tick().housekeeping
    assert f"{old_count} event(s) older than the event retention pruned" in housekeeping
    assert app.store.list_events(tenant=app.tenant, run_id=old_run) == []
    assert len(app.store.list_events(tenant=app.tenant, run_id=new_run)) == new_count
    with app.store.engine.connect() as conn:
        [reason] = conn.execute(
            sa.select(t.ticks.c.reason).where(t.ticks.c.kind == "daemon", t.ticks.c.name == "housekeeping")
        ).scalars()
    assert f"{old_count} event(s) older than the event retention pruned" in (reason or "")

    # A day later (the next slot) the other run's events are still within the retention.
    clock.advance(24 * 3600)
    assert not any("event(s)" in line for line in daemon.tick().housekeeping)
    assert len(app.store.list_events(tenant=app.tenant, run_id=new_run)) == new_count
    # Once they are past it, the next slot prunes them too.
    clock.advance(30 * 24 * 3600)
    assert f"{new_count} event(s) older than the event retention pruned" in daemon.tick().housekeeping
    assert app.store.list_events(tenant=app.tenant, run_id=new_run) == []
