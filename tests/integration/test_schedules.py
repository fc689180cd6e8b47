"""Schedules end to end: definitions and their validation, and the daemon firing them on a fake clock.

Every pass is ``Daemon(app).tick(now=...)`` (or ``tick()`` reading the app's ``FakeClock``): nothing
waits for time to pass. The runs are real local runs on SQLite and PostgreSQL; what a tick ran is
read back from the store (tick rows, runs, materializations). Covered: the nightly run of a
Europe/Oslo daily asset materializing the day that just closed across both DST switches; the first
evaluation; catch-up ``latest`` / ``all`` (capped) / ``none`` after the daemon was down; turning a
schedule off and on (not caught up, audited); a restart continuing from the persisted cursor; the
partition function, and ticks that run nothing with the reason recorded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs
from flowstone._errors import DefinitionError, PipelineInvalid
from flowstone.schedules import Daemon, PassReport
from flowstone.schedules._definitions import schedule_target_problem
from flowstone.schedules._state import AutomationStore, Tick
from flowstone.testing import FakeClock

DAYS = fs.DailyPartitions(start="2025-01-01", timezone="Europe/Oslo")


def oslo(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


T0 = oslo("2025-01-15T12:00+01:00")

AppFactory = Callable[..., fs.FlowStone]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def _apps(store: str, tmp_path: Path, clock: FakeClock) -> Iterator[AppFactory]:
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline, **kwargs: Any) -> fs.FlowStone:
        kwargs.setdefault("store", store)
        app = fs.FlowStone(pipeline, storage_dir=tmp_path / "storage", clock=clock, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def open_app(tmp_path: Path, store_url: str, clock: FakeClock) -> Iterator[AppFactory]:
    """FlowStone apps on the test's store (SQLite and PostgreSQL) and fake clock; closed at teardown."""
    yield from _apps(store_url, tmp_path, clock)


@pytest.fixture
def open_sqlite_app(tmp_path: Path, sqlite_url: str, clock: FakeClock) -> Iterator[AppFactory]:
    """The same on SQLite only, for what does not depend on the database."""
    yield from _apps(sqlite_url, tmp_path, clock)


def nightly(**options: Any) -> fs.Pipeline:
    """``daily_report`` by Oslo day, and the schedule ``nightly`` at 02:30 Oslo time over it."""
    pipeline = fs.Pipeline("nightly")

    @pipeline.asset(partitioned_by=DAYS)
    def daily_report(context: fs.Context) -> str:
        return str(context.partition_key)

    options.setdefault("cron", "30 2 * * *")
    options.setdefault("timezone", "Europe/Oslo")
    pipeline.schedule("nightly", target=[daily_report], **options)
    return pipeline


def ticks(app: fs.FlowStone, name: str = "nightly") -> list[Tick]:
    """The schedule's ticks, oldest first."""
    return list(reversed(AutomationStore(app.store, app.tenant).ticks("schedule", name, limit=500)))


def summary(app: fs.FlowStone, name: str = "nightly") -> list[tuple[str, str, list[Any]]]:
    """(tick in Oslo time, status, partitions) of each tick, oldest first."""
    return [
        (t.tick_at.astimezone(DAYS.timezone).isoformat(timespec="minutes"), t.status, t.partitions)
        for t in ticks(app, name)
    ]


def launched(report: PassReport, name: str = "nightly") -> list[str]:
    return [r for kind, who, runs in report.launched if kind == "schedule" and who == name for r in runs]


def materialized(app: fs.FlowStone, asset: str = "daily_report") -> list[str | None]:
    mats = app.store.materializations(tenant=app.tenant, asset=asset, limit=1000)
    return sorted((m.partition_key for m in mats if m.status == "success"), key=str)


def cursor(app: fs.FlowStone, name: str = "nightly") -> str | None:
    return AutomationStore(app.store, app.tenant).state("schedule", name).cursor


# ---------------------------------------------------------------------- definitions
def test_schedule_definitions_by_name_and_by_decorator() -> None:
    pipeline = fs.Pipeline("defs")

    @pipeline.asset(partitioned_by=DAYS, tags=["reports"])
    def report(context: fs.Context) -> int:
        return 1

    named = pipeline.schedule("nightly", cron="0 2 * * *", timezone="Europe/Oslo", target=[report])

    @pipeline.schedule(cron="0 * * * *", target=["tag:reports"], catch_up="all", max_catch_up=3)
    def hourly(tick: datetime) -> str:
        return tick.date().isoformat()

    pipeline.validate()
    assert pipeline.schedules == {"nightly": named, "hourly": hourly}
    assert (named.target, named.catch_up, named.partition) == (("report",), "latest", None)
    assert (hourly.name, hourly.target, hourly.catch_up, hourly.max_catch_up) == (
        "hourly",
        ("tag:reports",),
        "all",
        3,
    )
    assert hourly.partition is not None
    assert hourly.location.endswith(f"test_schedules.py:{inspect.getsourcelines(hourly.partition)[1]}")


def _line_of(needle: str) -> int:
    source, first = inspect.getsourcelines(test_bad_definitions_fail_naming_the_file_and_line)
    return first + next(i for i, line in enumerate(source) if needle in line)


def test_bad_definitions_fail_naming_the_file_and_line() -> None:
    pipeline = fs.Pipeline("defs")

    @pipeline.asset()
    def thing(context: fs.Context) -> int:
        return 1

    here = Path(__file__).name
    with pytest.raises(DefinitionError) as bad_cron:
        pipeline.schedule("a", cron="61 * * * *", target=[thing])  # bad-cron
    assert f"{here}:{_line_of('# bad-cron')}: schedule 'a': invalid cron expression" in str(bad_cron.value)

    with pytest.raises(DefinitionError) as bad_zone:
        pipeline.schedule("b", cron="0 2 * * *", timezone="Europe/Olso", target=[thing])  # bad-zone
    assert f"{here}:{_line_of('# bad-zone')}: schedule 'b': unknown timezone 'Europe/Olso'" in str(
        bad_zone.value
    )

    with pytest.raises(DefinitionError, match="never fires"):
        pipeline.schedule("c", cron="0 0 30 2 *", target=[thing])
    with pytest.raises(DefinitionError, match="catch_up must be one of"):
        pipeline.schedule("d", cron="0 2 * * *", target=[thing], catch_up="some")
    with pytest.raises(DefinitionError, match="max_catch_up must be a positive integer"):
        pipeline.schedule("e", cron="0 2 * * *", target=[thing], catch_up="all", max_catch_up=0)
    with pytest.raises(DefinitionError, match="needs a target"):
        pipeline.schedule("f", cron="0 2 * * *", target=[])
    with pytest.raises(DefinitionError, match=f"{here}:.*unknown timezone"):

        @pipeline.schedule(cron="0 2 * * *", timezone="Nowhere/Land", target=[thing])
        def decorated(tick: datetime) -> None:
            return None

    assert pipeline.schedules == {}

    # Unknown targets are found by validation, every one, each naming where the schedule is.
    pipeline.schedule("typo", cron="0 2 * * *", target=["thnig"])  # unknown-target
    pipeline.schedule("thing", cron="0 3 * * *", target=["thing"])
    pipeline.schedule("thing", cron="0 4 * * *", target=["thing"])  # duplicate
    with pytest.raises(PipelineInvalid) as invalid:
        pipeline.validate()
    problems = {p.code: str(p) for p in invalid.value.problems}
    assert problems.keys() == {"unknown_target", "duplicate_name"}
    assert problems["unknown_target"].startswith(f"{Path(__file__)}:{_line_of('# unknown-target')}: ")
    assert "schedule 'typo' targets 'thnig'" in problems["unknown_target"]
    assert problems["duplicate_name"].startswith(f"{Path(__file__)}:{_line_of('# duplicate')}: ")
    with pytest.raises(PipelineInvalid):
        fs.FlowStone(pipeline, store="sqlite://")


def test_a_target_without_time_windows_needs_a_partition_function() -> None:
    pipeline = fs.Pipeline("defs")

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["eu", "us"]))
    def regional(context: fs.Context) -> int:
        return 1

    @pipeline.asset(partitioned_by=DAYS)
    def daily(context: fs.Context) -> int:
        return 1

    plain = pipeline.schedule("plain", cron="0 2 * * *", target=["regional"])
    chosen = pipeline.schedule("chosen", cron="0 2 * * *", target=["regional"], partition=lambda t: "eu")
    timed = pipeline.schedule("timed", cron="0 2 * * *", target=["daily"])
    typo = pipeline.schedule("typo", cron="0 2 * * *", target=["dialy"])
    assert schedule_target_problem(plain, pipeline) == (
        "schedule 'plain' targets 'regional', partitioned by StaticPartitions(['eu', 'us']), which has "
        "no time windows: give the schedule a partition function (tick -> partition key)"
    )
    assert [schedule_target_problem(d, pipeline) for d in (chosen, timed, typo)] == [None, None, None]


# ---------------------------------------------------------------------- firing
def test_nightly_runs_the_day_that_just_closed_across_both_dst_switches(open_app: AppFactory) -> None:
    app = open_app(nightly())
    daemon = Daemon(app, tick_retention="400d")  # housekeeping would prune March in October
    for start, end in (
        ("2025-03-28T12:00+01:00", "2025-04-01T12:00+02:00"),
        ("2025-10-24T12:00+02:00", "2025-10-28T12:00+01:00"),
    ):
        now = oslo(start)
        daemon.tick(now=now)  # the daemon was already looking
        while now < oslo(end):
            now += timedelta(hours=2, minutes=10)
            daemon.tick(now=now)
    launches = [t for t in summary(app) if t[1] == "launched"]
    assert launches == [
        ("2025-03-29T02:30+01:00", "launched", ["2025-03-28"]),
        ("2025-03-30T03:00+02:00", "launched", ["2025-03-29"]),  # 02:30 did not exist
        ("2025-03-31T02:30+02:00", "launched", ["2025-03-30"]),  # the 23-hour day
        ("2025-04-01T02:30+02:00", "launched", ["2025-03-31"]),
        ("2025-10-24T02:30+02:00", "launched", ["2025-10-23"]),  # back: the latest missed tick
        ("2025-10-25T02:30+02:00", "launched", ["2025-10-24"]),
        ("2025-10-26T02:30+02:00", "launched", ["2025-10-25"]),  # once, not again at 02:30+01:00
        ("2025-10-27T02:30+01:00", "launched", ["2025-10-26"]),  # the 25-hour day
        ("2025-10-28T02:30+01:00", "launched", ["2025-10-27"]),
    ]
    assert materialized(app) == [p for _, _, [p] in launches]
    # Between the two periods the daemon was away: the ticks of the summer were missed.
    assert {t.status for t in ticks(app) if t.run_ids == []} == {"skipped"}
    runs = [t.run_ids for t in ticks(app) if t.status == "launched"]
    assert all(len(r) == 1 for r in runs) and len({r[0] for r in runs}) == 9
    assert {run.actor for run in app.runs(limit=20)} == {"schedule:nightly"}


def test_hourly_schedule_fires_25_times_on_the_autumn_day(open_sqlite_app: AppFactory) -> None:
    pipeline = fs.Pipeline("hourly")
    hours = fs.HourlyPartitions(start="2025-10-01", timezone="Europe/Oslo")

    @pipeline.asset(partitioned_by=hours)
    def per_hour(context: fs.Context) -> str:
        return str(context.partition_key)

    pipeline.schedule("hourly", cron="0 * * * *", timezone="Europe/Oslo", target=["per_hour"])
    app = open_sqlite_app(pipeline)
    daemon = Daemon(app)
    now = oslo("2025-10-26T00:00+02:00") - timedelta(minutes=1)
    daemon.tick(now=now)
    while now < oslo("2025-10-26T23:30+01:00"):
        now += timedelta(minutes=50)  # passes at all sorts of minutes, less than an hour apart
        daemon.tick(now=now)
    done = summary(app, "hourly")
    assert len(done) == 25 and {status for _, status, _ in done} == {"launched"}
    assert done[2:5] == [
        ("2025-10-26T02:00+02:00", "launched", ["2025-10-26T01:00+02:00"]),
        ("2025-10-26T02:00+01:00", "launched", ["2025-10-26T02:00+02:00"]),
        ("2025-10-26T03:00+01:00", "launched", ["2025-10-26T02:00+01:00"]),
    ]
    assert len(materialized(app, "per_hour")) == 25


def test_first_evaluation_fires_a_tick_exactly_due(open_sqlite_app: AppFactory) -> None:
    app = open_sqlite_app(nightly())
    due = oslo("2025-01-16T02:30+01:00")
    report = Daemon(app).tick(now=due)
    assert summary(app) == [("2025-01-16T02:30+01:00", "launched", ["2025-01-15"])]
    assert len(launched(report)) == 1 and cursor(app) == due.isoformat()


def test_first_evaluation_after_a_tick_starts_from_now(open_sqlite_app: AppFactory, clock: FakeClock) -> None:
    app = open_sqlite_app(nightly())
    daemon = Daemon(app)
    clock.advance((oslo("2025-01-16T02:31+01:00") - T0).total_seconds())
    report = daemon.tick()  # the app's clock: a minute after 02:30 -- not "missed", not run
    assert launched(report) == [] and ticks(app) == [] and report.skipped == []
    assert cursor(app) == clock.now().isoformat()
    clock.advance(24 * 3600)
    daemon.tick()
    assert summary(app) == [("2025-01-17T02:30+01:00", "launched", ["2025-01-16"])]


def down_for_five_nights(app: fs.FlowStone) -> tuple[Daemon, PassReport]:
    """A daemon that looked at T0, was down for five 02:30 ticks, and looks again at 12:00."""
    Daemon(app).tick(now=T0)
    daemon = Daemon(app)  # "restarted"
    return daemon, daemon.tick(now=T0 + timedelta(days=5))


def test_catch_up_latest_runs_only_the_most_recent_missed_tick(open_app: AppFactory) -> None:
    app = open_app(nightly())
    daemon, report = down_for_five_nights(app)
    assert summary(app) == [
        ("2025-01-16T02:30+01:00", "skipped", []),
        ("2025-01-17T02:30+01:00", "skipped", []),
        ("2025-01-18T02:30+01:00", "skipped", []),
        ("2025-01-19T02:30+01:00", "skipped", []),
        ("2025-01-20T02:30+01:00", "launched", ["2025-01-19"]),
    ]
    assert all("catch_up=latest" in (t.reason or "") for t in ticks(app)[:4])
    assert report.skipped == [("schedule", "nightly", "4 missed tick(s) not run (catch_up=latest)")]
    assert materialized(app) == ["2025-01-19"]
    # Nothing is fired twice by the next passes.
    assert launched(daemon.tick(now=T0 + timedelta(days=5, minutes=5))) == []
    assert len(ticks(app)) == 5


def test_catch_up_all_runs_every_missed_tick_up_to_the_cap(open_sqlite_app: AppFactory) -> None:
    app = open_sqlite_app(nightly(catch_up="all", max_catch_up=3))
    _, report = down_for_five_nights(app)
    assert summary(app) == [
        ("2025-01-16T02:30+01:00", "skipped", []),
        ("2025-01-17T02:30+01:00", "skipped", []),
        ("2025-01-18T02:30+01:00", "launched", ["2025-01-17"]),
        ("2025-01-19T02:30+01:00", "launched", ["2025-01-18"]),
        ("2025-01-20T02:30+01:00", "launched", ["2025-01-19"]),
    ]
    assert "at most 3 missed ticks" in (ticks(app)[0].reason or "")
    assert len(launched(report)) == 3
    assert materialized(app) == ["2025-01-17", "2025-01-18", "2025-01-19"]


def test_catch_up_all_below_the_cap_runs_them_all_in_order(open_sqlite_app: AppFactory) -> None:
    app = open_sqlite_app(nightly(catch_up="all"))
    down_for_five_nights(app)
    assert [status for _, status, _ in summary(app)] == ["launched"] * 5
    runs = {r.id: r.created_at for r in app.runs(limit=10)}
    order = [runs[t.run_ids[0]] for t in ticks(app)]
    assert order == sorted(order)  # oldest tick first
    assert materialized(app) == ["2025-01-15", "2025-01-16", "2025-01-17", "2025-01-18", "2025-01-19"]


def test_catch_up_none_runs_no_missed_tick(open_sqlite_app: AppFactory) -> None:
    app = open_sqlite_app(nightly(catch_up="none"))
    _, report = down_for_five_nights(app)
    assert [status for _, status, _ in summary(app)] == ["skipped"] * 5
    assert launched(report) == [] and materialized(app) == []
    assert "catch_up=none" in (ticks(app)[-1].reason or "")


def test_catch_up_none_still_fires_the_tick_that_is_due_now(open_sqlite_app: AppFactory) -> None:
    app = open_sqlite_app(nightly(catch_up="none"))
    Daemon(app).tick(now=T0)
    daemon = Daemon(app)
    due = oslo("2025-01-19T02:30+01:00")
    report = daemon.tick(now=due + timedelta(seconds=20))  # a pass 20 s after the tick
    assert summary(app) == [
        ("2025-01-16T02:30+01:00", "skipped", []),
        ("2025-01-17T02:30+01:00", "skipped", []),
        ("2025-01-18T02:30+01:00", "skipped", []),
        ("2025-01-19T02:30+01:00", "launched", ["2025-01-18"]),
    ]
    assert len(launched(report)) == 1
    report = daemon.tick(now=due + timedelta(days=1, seconds=5))  # and then every night
    assert summary(app)[-1] == ("2025-01-20T02:30+01:00", "launched", ["2025-01-19"])


def test_a_schedule_turned_off_and_on_does_not_catch_up_the_off_period(open_app: AppFactory) -> None:
    app = open_app(nightly(catch_up="all"))
    state = AutomationStore(app.store, app.tenant)
    daemon = Daemon(app)
    daemon.tick(now=T0)
    off_at = T0 + timedelta(hours=1)
    assert (
        state.set_enabled("schedule", "nightly", False, actor="user:ops", reason="migration", at=off_at)
        is None
    )
    for day in range(1, 4):  # the daemon keeps passing: nothing fires while off
        assert launched(daemon.tick(now=T0 + timedelta(days=day))) == []
    on_at = T0 + timedelta(days=3, hours=1)
    assert state.set_enabled("schedule", "nightly", True, actor="user:ops", at=on_at) is False
    assert cursor(app) == on_at.isoformat()
    daemon.tick(now=on_at + timedelta(hours=1))
    assert ticks(app) == []  # the three nights off are neither run nor "missed"
    daemon.tick(now=T0 + timedelta(days=4))
    assert summary(app) == [("2025-01-19T02:30+01:00", "launched", ["2025-01-18"])]

    # Turning on what is on already does not move the cursor (no tick is lost by it).
    before = cursor(app)
    assert state.set_enabled("schedule", "nightly", True, actor="user:ops", at=T0 + timedelta(days=9)) is True
    assert cursor(app) == before

    audit = [a for a in app.store.list_audit(tenant=app.tenant) if a["resource_type"] == "schedule"]
    assert [(a["action"], a["resource_id"], a["actor"], a["reason"], a["details"]) for a in audit] == [
        ("schedule.off", "nightly", "user:ops", "migration", {"previous": "default"}),
        ("schedule.on", "nightly", "user:ops", None, {"previous": "off"}),
        ("schedule.on", "nightly", "user:ops", None, {"previous": "on"}),
    ]


def test_a_restarted_daemon_continues_from_the_persisted_cursor(open_app: AppFactory) -> None:
    first = open_app(nightly())
    Daemon(first).tick(now=T0)
    report = Daemon(first).tick(now=oslo("2025-01-16T03:00+01:00"))
    assert len(launched(report)) == 1
    first.close()

    # A new process: a new pipeline object, app and daemon on the same store.
    second = open_app(nightly())
    daemon = Daemon(second)
    assert launched(daemon.tick(now=oslo("2025-01-16T03:05+01:00"))) == []  # not again
    assert launched(daemon.tick(now=oslo("2025-01-17T02:30+01:00"))) != []
    assert summary(second) == [
        ("2025-01-16T02:30+01:00", "launched", ["2025-01-15"]),
        ("2025-01-17T02:30+01:00", "launched", ["2025-01-16"]),
    ]
    assert materialized(second) == ["2025-01-15", "2025-01-16"]


# ---------------------------------------------------------------------- what a tick runs
def test_the_partition_function_gets_the_local_tick_and_may_skip(open_sqlite_app: AppFactory) -> None:
    pipeline = fs.Pipeline("weekdays")
    seen: list[str] = []

    @pipeline.asset(partitioned_by=DAYS)
    def sales(context: fs.Context) -> str:
        return str(context.partition_key)

    @pipeline.schedule(cron="0 6 * * *", timezone="Europe/Oslo", target=["sales"])
    def mornings(tick: datetime) -> list[str] | None:
        seen.append(tick.isoformat())
        if tick.weekday() >= 5:
            return None  # weekends: nothing
        if tick.weekday() == 0:  # Mondays: the whole weekend
            return [(tick.date() - timedelta(days=n)).isoformat() for n in (3, 2, 1)]
        return [(tick.date() - timedelta(days=1)).isoformat()]

    app = open_sqlite_app(pipeline)
    daemon = Daemon(app)
    now = oslo("2025-03-27T12:00+01:00")  # a Thursday
    daemon.tick(now=now)
    for _ in range(5):
        now += timedelta(days=1)
        daemon.tick(now=now)
    assert seen[0] == "2025-03-28T06:00:00+01:00" and seen[-1] == "2025-04-01T06:00:00+02:00"
    assert summary(app, "mornings") == [
        ("2025-03-28T06:00+01:00", "launched", ["2025-03-27"]),
        ("2025-03-29T06:00+01:00", "skipped", []),
        ("2025-03-30T06:00+02:00", "skipped", []),
        ("2025-03-31T06:00+02:00", "launched", ["2025-03-28", "2025-03-29", "2025-03-30"]),
        ("2025-04-01T06:00+02:00", "launched", ["2025-03-31"]),
    ]
    assert ticks(app, "mornings")[1].reason == "the partition function chose no partition for this tick"
    assert len(ticks(app, "mornings")[3].run_ids) == 1  # one run for the three days
    assert materialized(app, "sales") == [
        "2025-03-27",
        "2025-03-28",
        "2025-03-29",
        "2025-03-30",
        "2025-03-31",
    ]


def test_ticks_that_cannot_run_are_recorded_with_the_reason(open_sqlite_app: AppFactory) -> None:
    pipeline = fs.Pipeline("reasons")
    regions = fs.StaticPartitions(["eu", "us"])

    @pipeline.asset(partitioned_by=regions)
    def by_region(context: fs.Context) -> str:
        return str(context.partition_key)

    @pipeline.asset()
    def whole(context: fs.Context) -> int:
        return 1

    @pipeline.asset(partitioned_by=DAYS)
    def daily(context: fs.Context) -> str:
        return str(context.partition_key)

    @pipeline.schedule(cron="0 2 * * *", target=["by_region"])
    def broken(tick: datetime) -> str:
        raise KeyError("no such region")

    pipeline.schedule("bad_key", cron="0 2 * * *", target=["by_region"], partition=lambda tick: "asia")
    pipeline.schedule("unpartitioned", cron="0 2 * * *", target=["whole"])
    pipeline.schedule("too_early", cron="0 2 * * *", target=["daily"])
    app = open_sqlite_app(pipeline)
    daemon = Daemon(app)
    start = datetime(2024, 12, 31, 1, tzinfo=UTC)  # DAYS start on 2025-01-01 in Oslo
    daemon.tick(now=start)
    report = daemon.tick(now=start + timedelta(hours=1))
    outcome = {name: [(t.status, t.reason) for t in ticks(app, name)] for name in pipeline.schedules}
    assert outcome["broken"] == [("failed", "the partition function failed: KeyError: 'no such region'")]
    [(status, reason)] = outcome["bad_key"]
    assert status == "failed" and "asia" in (reason or "")
    [(status, reason)] = outcome["unpartitioned"]
    assert (status, reason) == ("launched", None) and materialized(app, "whole") == [None]
    [(status, reason)] = outcome["too_early"]
    assert status == "skipped" and "no partition of 'daily'" in (reason or "")
    assert {name for kind, name, _ in report.errors} == {"broken", "bad_key"}
    # Every cursor moved on: nothing is retried on the next pass.
    assert launched(daemon.tick(now=start + timedelta(hours=2)), "unpartitioned") == []
    assert sum(len(ticks(app, name)) for name in pipeline.schedules) == 4


def test_a_failing_run_is_a_launched_tick_and_a_failing_schedule_does_not_stop_the_pass(
    open_sqlite_app: AppFactory,
) -> None:
    pipeline = fs.Pipeline("failing")

    @pipeline.asset()
    def flaky(context: fs.Context) -> int:
        raise RuntimeError("upstream is down")

    @pipeline.asset()
    def fine(context: fs.Context) -> int:
        return 1

    pipeline.schedule("flaky", cron="0 2 * * *", target=["flaky"])
    pipeline.schedule("fine", cron="0 2 * * *", target=["fine"])
    app = open_sqlite_app(pipeline)
    daemon = Daemon(app)
    at = datetime(2025, 1, 16, 2, tzinfo=UTC)
    report = daemon.tick(now=at)
    [flaky_tick] = ticks(app, "flaky")
    assert flaky_tick.status == "launched"
    run = app.run(flaky_tick.run_ids[0])
    assert run is not None and run[0].status is fs.RunStatus.FAILED
    assert len(launched(report, "fine")) == 1 and materialized(app, "fine") == [None]


def test_a_schedule_over_non_time_partitions_without_a_partition_function_fails_validation() -> None:
    pipeline = fs.Pipeline("regions")
    regions = fs.StaticPartitions(["eu", "us"])

    @pipeline.asset(partitioned_by=regions)
    def by_region(context: fs.Context) -> str:
        return str(context.partition_key)

    pipeline.schedule("regions", cron="0 2 * * *", target=["by_region"])
    [problem] = [p for p in pipeline.problems() if p.code == "schedule_partitions"]
    assert "no time windows" in problem.message and "partition function" in problem.message
    assert __file__.rsplit("/", 1)[1] in problem.location
