"""The daemon: exactly-once with several daemons on PostgreSQL, take-over after a crash, the run
loop with its heartbeat and graceful stop, housekeeping, and launching on the queue.

Two (or three) ``Daemon`` objects on as many ``FlowStone`` apps share one PostgreSQL store, each in
its own thread, released together by a ``threading.Barrier`` to evaluate the same ticks at the same
moment. Tick times come from a ``FakeClock``; a dead daemon is made by letting a launch raise a
``BaseException`` (the process "dies" between claiming its tick and launching it) and moving its
heartbeat into the past in ``flowstone_daemons`` -- nothing waits for a heartbeat to go stale.
The one real-time part, the heartbeat thread of a daemon busy launching, is observed through an
``Event`` set by its heartbeat, not by sleeping.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone._errors import ConfigurationError
from flowstone.schedules import Daemon, PassReport
from flowstone.schedules._state import AutomationStore, Tick
from flowstone.store import _tables as t
from flowstone.store._store import utcnow
from flowstone.testing import FakeClock

T0 = datetime(2025, 1, 15, 12, 1, tzinfo=UTC)  # not on any tick of the schedules below
DEADLINE = 20.0  # seconds a thread may take once released

AppFactory = Callable[..., fs.FlowStone]


class Crash(BaseException):
    """The daemon's process dies here (not an Exception: nothing in the daemon catches it)."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def open_app(tmp_path: Path, clock: FakeClock) -> Iterator[AppFactory]:
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline, store: str, **kwargs: Any) -> fs.FlowStone:
        app = fs.FlowStone(pipeline, store=store, storage_dir=tmp_path / "storage", clock=clock, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


class Calls:
    """What the assets were run for, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[str, str | None]] = []

    def add(self, asset: str, key: str | None) -> None:
        with self._lock:
            self.items.append((asset, key))

    def of(self, asset: str) -> list[str | None]:
        with self._lock:
            return sorted((k for a, k in self.items if a == asset), key=str)


def busy_pipeline(calls: Calls) -> fs.Pipeline:
    """A five-minute schedule catching up everything, an hourly one catching up the latest, and
    a sensor whose requests have no key of their own (only one daemon may evaluate it)."""
    pipeline = fs.Pipeline("busy")
    fives = fs.TimeWindowPartitions(cron="*/5 * * * *", start="2025-01-01")

    @pipeline.asset(partitioned_by=fives)
    def every_five(context: fs.Context) -> str:
        calls.add("every_five", context.partition_key)
        return str(context.partition_key)

    @pipeline.asset()
    def hourly_total(context: fs.Context) -> int:
        calls.add("hourly_total", None)
        return 1

    @pipeline.asset()
    def polled(context: fs.Context) -> int:
        calls.add("polled", None)
        return 1

    pipeline.schedule("fives", cron="*/5 * * * *", target=["every_five"], catch_up="all")
    pipeline.schedule("hourly", cron="0 * * * *", target=["hourly_total"])

    @pipeline.sensor(interval="10m", target=["polled"])
    def poll(context: Any, cursor: str | None) -> fs.SensorResult:
        return fs.SensorResult(run_requests=[fs.RunRequest(force=True)], cursor=context.now.isoformat())

    return pipeline


def together(daemons: list[Daemon], now: datetime) -> list[PassReport]:
    """Every daemon's ``tick(now)`` at once, from threads released by one barrier."""
    barrier = threading.Barrier(len(daemons))
    reports: list[PassReport | None] = [None] * len(daemons)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(DEADLINE)
            reports[i] = daemons[i].tick(now=now)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(daemons))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive(), "a daemon pass did not finish"
    if failures:
        raise failures[0]
    return [r for r in reports if r is not None]


def all_ticks(app: fs.FlowStone, kind: str, name: str) -> list[Tick]:
    return list(reversed(AutomationStore(app.store, app.tenant).ticks(kind, name, limit=1000)))


def launched_runs(reports: list[PassReport], name: str) -> list[str]:
    return [r for report in reports for _, who, runs in report.launched if who == name for r in runs]


def set_heartbeat(app: fs.FlowStone, daemon: Daemon, at: datetime) -> None:
    with app.store.engine.begin() as conn:
        conn.execute(t.daemons.update().where(t.daemons.c.id == daemon.id).values(heartbeat_at=at))


def daemon_row(app: fs.FlowStone, daemon: Daemon) -> Any:
    with app.store.engine.connect() as conn:
        return conn.execute(sa.select(t.daemons).where(t.daemons.c.id == daemon.id)).one()


@contextmanager
def both_see_the_stale_tick(apps: list[fs.FlowStone]) -> Iterator[None]:
    """Hold each app's daemon right after it selected the ticks to take over, until every one has:
    the worst interleaving for the take-over (each then tries to move the same row)."""
    barrier = threading.Barrier(len(apps))

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = " ".join(statement.split()).lower()
        if text.startswith("select") and "from flowstone_ticks left outer join flowstone_daemons" in text:
            barrier.wait(DEADLINE)

    for app in apps:
        sa.event.listen(app.store.engine, "after_cursor_execute", hold)
    try:
        yield
    finally:
        for app in apps:
            sa.event.remove(app.store.engine, "after_cursor_execute", hold)


# ---------------------------------------------------------------------- exactly once
def test_two_daemons_racing_on_postgres_fire_every_tick_once(pg_url: str, open_app: AppFactory) -> None:
    calls = Calls()
    first, second = open_app(busy_pipeline(calls), pg_url), open_app(busy_pipeline(calls), pg_url)
    daemons = [Daemon(first), Daemon(second)]
    reports = together(daemons, T0)  # the first look of both: nothing is due yet
    assert launched_runs(reports, "fives") == [] and calls.of("every_five") == []

    now = T0
    for _ in range(4):  # each round: 3 or 4 five-minute ticks, maybe an hour, a sensor interval
        now += timedelta(minutes=17)
        reports += together(daemons, now)

    fives = all_ticks(first, "schedule", "fives")
    expected = [T0 - timedelta(minutes=1) + timedelta(minutes=5 * i) for i in range(1, 14)]
    assert [tick.tick_at for tick in fives] == expected
    assert {tick.status for tick in fives} == {"launched"}
    runs = launched_runs(reports, "fives")
    assert sorted(runs) == sorted(run for tick in fives for run in tick.run_ids)  # one run per tick
    assert len(set(runs)) == len(runs) == 13
    assert calls.of("every_five") == sorted(
        (tick - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M") for tick in expected
    )
    hourly = all_ticks(first, "schedule", "hourly")
    assert [tick.tick_at for tick in hourly] == [datetime(2025, 1, 15, 13, tzinfo=UTC)]
    assert len(launched_runs(reports, "hourly")) == 1 and calls.of("hourly_total") == [None]
    # The sensor: evaluated by one daemon per interval, each evaluation's request run once.
    polls = all_ticks(first, "sensor", "poll")
    assert len(polls) == len(launched_runs(reports, "poll")) == len(calls.of("polled")) == 5
    assert all(report.errors == [] for report in reports)
    # Housekeeping: once per hour slot (12:00 and 13:00), by one of the two.
    slots = all_ticks(first, "daemon", "housekeeping")
    assert len(slots) == sum(1 for report in reports if report.housekeeping) == 2


def test_two_daemons_evaluate_a_sensor_once_per_interval(pg_url: str, open_app: AppFactory) -> None:
    evaluations = Calls()

    def pipeline() -> fs.Pipeline:
        built = fs.Pipeline("polling")

        @built.asset()
        def polled(context: fs.Context) -> int:
            return 1

        @built.sensor(interval="1m", target=["polled"])
        def poll(context: Any, cursor: str | None) -> fs.SensorResult:
            evaluations.add("poll", context.now.isoformat())
            return fs.SensorResult(run_requests=[fs.RunRequest(force=True)])  # keyed by time only

        return built

    apps = [open_app(pipeline(), pg_url) for _ in range(2)]
    daemons = [Daemon(app) for app in apps]
    barrier = threading.Barrier(2)

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if " ".join(statement.split()).lower().startswith("select flowstone_automation_state"):
            barrier.wait(DEADLINE)  # both have read the sensor's state before either goes on

    for app in apps:
        sa.event.listen(app.store.engine, "after_cursor_execute", hold)
    results: list[PassReport] = []
    for minute in range(3):
        now = T0 + timedelta(minutes=minute)
        barrier.reset()
        threads = [
            threading.Thread(target=lambda d=d, n=n: results.append(d.tick(now=n)))
            for d, n in ((daemons[0], now), (daemons[1], now + timedelta(seconds=1)))  # clocks differ
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
    assert len(results) == 6
    assert len(evaluations.of("poll")) == 3  # once a minute, not once per daemon
    assert len(launched_runs(results, "poll")) == len(all_ticks(apps[0], "sensor", "poll")) == 3


def test_a_tick_left_launching_by_a_dead_daemon_is_launched_once_by_another(
    pg_url: str, open_app: AppFactory
) -> None:
    calls = Calls()
    apps = [open_app(busy_pipeline(calls), pg_url) for _ in range(3)]
    dead, second, third = (Daemon(app) for app in apps)
    together([dead, second, third], T0)

    def die(*args: Any, **kwargs: Any) -> list[str]:
        raise Crash

    dead._launch = die
    with pytest.raises(Crash):
        dead.tick(now=T0 + timedelta(minutes=4))  # claims 12:05, dies before launching it
    [left] = all_ticks(apps[0], "schedule", "fives")
    assert (left.status, left.daemon_id, left.run_ids) == ("launching", dead.id, [])

    # Its heartbeat is fresh: the others leave the tick alone (it may still be launching).
    reports = together([second, third], T0 + timedelta(minutes=5))
    assert launched_runs(reports, "fives") == [] and calls.of("every_five") == []
    assert all_ticks(apps[0], "schedule", "fives")[0].status == "launching"

    # Its heartbeat goes stale: exactly one of the two takes the tick over and launches it --
    # also when both have found the tick before either takes it (held at a barrier there).
    set_heartbeat(apps[0], dead, utcnow() - timedelta(minutes=10))
    with both_see_the_stale_tick(apps[1:]):
        reports = together([second, third], T0 + timedelta(minutes=6))
    [run] = launched_runs(reports, "fives")
    [tick] = all_ticks(apps[0], "schedule", "fives")
    assert (tick.status, tick.run_ids, tick.partitions) == ("launched", [run], ["2025-01-15T12:00"])
    assert tick.daemon_id in {second.id, third.id}
    assert calls.of("every_five") == ["2025-01-15T12:00"]
    reports = together([second, third], T0 + timedelta(minutes=7))
    assert launched_runs(reports, "fives") == [] and calls.of("every_five") == ["2025-01-15T12:00"]


def test_a_tick_of_a_daemon_that_stopped_is_taken_over_at_once(sqlite_url: str, open_app: AppFactory) -> None:
    calls = Calls()
    app = open_app(busy_pipeline(calls), sqlite_url)
    gone, other = Daemon(app), Daemon(app)
    gone.tick(now=T0)

    def die(*args: Any, **kwargs: Any) -> list[str]:
        raise Crash

    gone._launch = die
    with pytest.raises(Crash):
        gone.tick(now=T0 + timedelta(minutes=4))
    gone.state.stop_daemon(gone.id)  # it shut down (its heartbeat is still recent)
    report = other.tick(now=T0 + timedelta(minutes=5))
    assert len(launched_runs([report], "fives")) == 1
    assert calls.of("every_five") == ["2025-01-15T12:00"]


def test_a_daemon_busy_launching_keeps_beating_and_keeps_its_tick(pg_url: str, open_app: AppFactory) -> None:
    started, release = threading.Event(), threading.Event()
    pipeline = fs.Pipeline("slow")

    @pipeline.asset()
    def slow(context: fs.Context) -> int:
        started.set()
        assert release.wait(DEADLINE)
        return 1

    pipeline.schedule("slow", cron="*/5 * * * *", target=["slow"])
    busy_app, other_app = open_app(pipeline, pg_url), open_app(pipeline, pg_url)
    busy = Daemon(busy_app, stale_after=0.2)  # beats every 0.05 s while launching
    other = Daemon(other_app, stale_after=5)  # takes over after 5 s of silence
    busy.tick(now=T0)
    beat = threading.Event()
    heartbeat = busy.state.heartbeat

    def observed(daemon_id: str) -> None:
        heartbeat(daemon_id)
        beat.set()

    busy.state.heartbeat = observed
    outcome: list[PassReport] = []
    thread = threading.Thread(target=lambda: outcome.append(busy.tick(now=T0 + timedelta(minutes=4))))
    thread.start()
    try:
        assert started.wait(DEADLINE)  # the run of 12:05 is in progress
        set_heartbeat(busy_app, busy, utcnow() - timedelta(minutes=10))  # as if it went quiet
        beat.clear()
        assert beat.wait(DEADLINE)  # ... but its heartbeat thread beats again
        report = other.tick(now=T0 + timedelta(minutes=4, seconds=30))
        assert launched_runs([report], "slow") == []  # so the tick is not taken over
    finally:
        release.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    [tick] = all_ticks(busy_app, "schedule", "slow")
    assert (tick.status, tick.daemon_id) == ("launched", busy.id)
    assert launched_runs(outcome, "slow") == tick.run_ids


# ---------------------------------------------------------------------- the loop
def test_run_fires_due_ticks_and_stops_gracefully(
    sqlite_url: str, open_app: AppFactory, clock: FakeClock
) -> None:
    ran = threading.Event()
    pipeline = fs.Pipeline("loop")

    @pipeline.asset()
    def job(context: fs.Context) -> int:
        ran.set()
        return 1

    pipeline.schedule("job", cron="0 13 * * *", target=["job"])
    app = open_app(pipeline, sqlite_url)
    clock.advance((datetime(2025, 1, 15, 13, tzinfo=UTC) - T0).total_seconds())  # exactly due
    daemon = Daemon(app, interval=0.01)
    thread = threading.Thread(target=daemon.run, name="daemon-under-test")
    thread.start()
    try:
        assert ran.wait(DEADLINE)
    finally:
        daemon.stop()
        thread.join(DEADLINE)
    assert not thread.is_alive() and daemon.stopping
    row = daemon_row(app, daemon)
    assert row.stopped_at is not None and row.heartbeat_at is not None and row.pid > 0
    [tick] = all_ticks(app, "schedule", "job")
    assert tick.status == "launched" and len(tick.run_ids) == 1  # many passes, one run
    assert [r.actor for r in app.runs(limit=5)] == ["schedule:job"]


def test_next_wait_is_the_interval_with_jitter(sqlite_url: str, open_app: AppFactory) -> None:
    app = open_app(busy_pipeline(Calls()), sqlite_url)
    waits = [Daemon(app, interval=10.0).next_wait() for _ in range(500)]
    assert all(8.0 <= w <= 12.0 for w in waits)
    assert statistics.pstdev(waits) > 0.5 and 9.5 < statistics.mean(waits) < 10.5
    assert {Daemon(app, interval=10.0, jitter=0).next_wait() for _ in range(5)} == {10.0}
    with pytest.raises(ValueError, match="interval"):
        Daemon(app, interval=0)


def test_now_must_be_timezone_aware(sqlite_url: str, open_app: AppFactory) -> None:
    app = open_app(busy_pipeline(Calls()), sqlite_url)
    with pytest.raises(ValueError, match="timezone-aware"):
        Daemon(app).tick(now=datetime(2025, 1, 15, 12))


# ---------------------------------------------------------------------- housekeeping
def test_housekeeping_runs_once_per_slot_and_prunes_only_schedule_ticks(
    sqlite_url: str, open_app: AppFactory
) -> None:
    pipeline = fs.Pipeline("tidy")

    @pipeline.asset()
    def noon(context: fs.Context) -> int:
        return 1

    pipeline.schedule("noon", cron="5 12 * * *", target=["noon"])

    @pipeline.sensor(interval="10m", target=["noon"])
    def poll(context: Any, cursor: str | None) -> fs.SensorResult:
        return fs.SensorResult(run_requests=[fs.RunRequest()])

    app = open_app(pipeline, sqlite_url)
    first, second = Daemon(app, tick_retention="1d"), Daemon(app, tick_retention="1d")
    first.tick(now=T0)  # evaluates the sensor, and does the housekeeping of 12:00
    first.tick(now=T0 + timedelta(minutes=5))  # fires 12:05
    assert len(all_ticks(app, "schedule", "noon")) == len(all_ticks(app, "sensor", "poll")) == 1
    stale = Daemon(app)
    stale.tick(now=T0)
    stale.state.stop_daemon(stale.id)
    with app.store.engine.begin() as conn:
        conn.execute(
            t.daemons.update()
            .where(t.daemons.c.id == stale.id)
            .values(stopped_at=utcnow() - timedelta(days=8))
        )

    later = T0 + timedelta(days=2, minutes=1)
    reports = [first.tick(now=later), second.tick(now=later)]
    done = [report.housekeeping for report in reports if report.housekeeping]
    assert len(done) == 1  # one daemon per slot
    assert any("schedule tick(s) older than 1 days pruned" in line for line in done[0])
    assert any("1 stopped daemon(s) forgotten" in line for line in done[0])
    # Jan 15 went (older than a day), Jan 16 (fired in this pass, the latest missed tick) stays.
    noons = all_ticks(app, "schedule", "noon")
    assert [tick.tick_at for tick in noons] == [datetime(2025, 1, 16, 12, 5, tzinfo=UTC)]
    assert len(all_ticks(app, "sensor", "poll")) == 2  # sensor ticks are kept: their keys matter
    assert [tick.tick_at for tick in all_ticks(app, "daemon", "housekeeping")] == [
        datetime(2025, 1, 17, 12, tzinfo=UTC)
    ]
    with app.store.engine.connect() as conn:
        ids = set(conn.execute(sa.select(t.daemons.c.id)).scalars())
    assert ids == {first.id, second.id}
    # Later passes within the hour do not repeat it.
    assert first.tick(now=later + timedelta(minutes=5)).housekeeping == []


# ---------------------------------------------------------------------- the queue
def test_the_queue_executor_submits_runs_for_workers(pg_url: str, open_app: AppFactory) -> None:
    calls = Calls()
    app = open_app(busy_pipeline(calls), pg_url)
    daemon = Daemon(app, executor="queue")
    daemon.tick(now=T0)
    report = daemon.tick(now=T0 + timedelta(minutes=4))
    [run_id] = launched_runs([report], "fives")
    record = app.store.get_run(tenant=app.tenant, run_id=run_id)
    assert record is not None
    assert (record.executor, record.actor, record.status.finished) == ("queue", "schedule:fives", False)
    assert calls.of("every_five") == []  # submitted, not run here: that is a worker's job
    [tick] = all_ticks(app, "schedule", "fives")
    assert (tick.status, tick.run_ids) == ("launched", [run_id])


def test_the_queue_executor_needs_postgres(sqlite_url: str, open_app: AppFactory) -> None:
    app = open_app(busy_pipeline(Calls()), sqlite_url)
    with pytest.raises(ConfigurationError, match="needs a PostgreSQL store"):
        Daemon(app, executor="queue")
