"""Cron tick times of schedules across DST, and the partition a tick runs.

The rules (``flowstone.schedules._cron``): a wall time that does not exist fires once at the end
of the gap; a wall time that happens twice fires once, at its first occurrence; an every-hour
schedule is about absolute hours (the repeated hour fires twice, the missing hour not at all).
Besides hand-written cases for Europe/Oslo, the ticks are compared with a brute-force oracle that
walks every minute of the days around the switches in several zones (30-minute DST on Lord Howe,
a midnight switch in São Paulo), and ``next_after`` is checked from every 10 minutes around the
switches: a daemon's cursor may sit anywhere, also inside the repeated hour.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import flowstone as fs
from flowstone.schedules._cron import CronError, CronSchedule, check_cron, zone
from flowstone.schedules._definitions import closed_partition

OSLO = ZoneInfo("Europe/Oslo")
SPRING = datetime(2025, 3, 30, tzinfo=OSLO)  # 02:00 CET -> 03:00 CEST
AUTUMN = datetime(2025, 10, 26, tzinfo=OSLO)  # 03:00 CEST -> 02:00 CET


def oslo(text: str) -> datetime:
    """An ISO time with its offset, e.g. '2025-10-26T02:30+01:00', in UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)


def local(ticks: list[datetime], tz: ZoneInfo = OSLO) -> list[str]:
    return [t.astimezone(tz).isoformat(timespec="minutes") for t in ticks]


def day_ticks(schedule: CronSchedule, day: datetime) -> list[datetime]:
    """The ticks on local calendar day ``day`` (midnight to midnight, 23 to 25 hours)."""
    start = day.replace(hour=0, minute=0).astimezone(UTC)
    end = (day + timedelta(days=1)).replace(hour=0, minute=0).astimezone(UTC)
    return schedule.ticks_between(start - timedelta(microseconds=1), end - timedelta(microseconds=1))


# ---------------------------------------------------------------------- Europe/Oslo by hand
def test_daily_0230_spring_forward_fires_once_right_after_the_gap() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Oslo")
    ticks = schedule.ticks_between(oslo("2025-03-28T12:00+01:00"), oslo("2025-04-01T00:00+02:00"))
    assert local(ticks) == [
        "2025-03-29T02:30+01:00",
        "2025-03-30T03:00+02:00",  # 02:30 does not exist that night
        "2025-03-31T02:30+02:00",
    ]
    assert schedule.next_after(oslo("2025-03-30T01:59+01:00")) == oslo("2025-03-30T03:00+02:00")
    assert schedule.next_after(oslo("2025-03-30T03:00+02:00")) == oslo("2025-03-31T02:30+02:00")


def test_daily_0230_fall_back_fires_once_at_the_first_occurrence() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Oslo")
    ticks = schedule.ticks_between(oslo("2025-10-24T12:00+02:00"), oslo("2025-10-28T00:00+01:00"))
    assert local(ticks) == [
        "2025-10-25T02:30+02:00",
        "2025-10-26T02:30+02:00",
        "2025-10-27T02:30+01:00",
    ]
    # A cursor at (or just after) the first 02:30 must not see the repeated 02:30 as a new tick.
    first = oslo("2025-10-26T02:30+02:00")
    assert schedule.next_after(first) == oslo("2025-10-27T02:30+01:00")
    assert schedule.next_after(first + timedelta(seconds=13)) == oslo("2025-10-27T02:30+01:00")
    assert schedule.next_after(oslo("2025-10-26T02:10+01:00")) == oslo("2025-10-27T02:30+01:00")


def test_every_half_hour_of_the_0200_hour_does_not_repeat_in_autumn() -> None:
    schedule = CronSchedule("*/30 2 * * *", "Europe/Oslo")
    assert local(day_ticks(schedule, AUTUMN)) == ["2025-10-26T02:00+02:00", "2025-10-26T02:30+02:00"]
    assert local(day_ticks(schedule, SPRING)) == ["2025-03-30T03:00+02:00"]  # both in the gap: one


def test_hourly_schedule_fires_every_absolute_hour_across_both_switches() -> None:
    schedule = CronSchedule("0 * * * *", "Europe/Oslo")
    spring = day_ticks(schedule, SPRING)
    autumn = day_ticks(schedule, AUTUMN)
    assert len(spring) == 23 and len(autumn) == 25
    for ticks in (spring, autumn):
        assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(ticks))
    assert "2025-03-30T02:00" not in " ".join(local(spring))
    assert local(autumn)[1:5] == [
        "2025-10-26T01:00+02:00",
        "2025-10-26T02:00+02:00",
        "2025-10-26T02:00+01:00",  # the repeated hour is a real hour: it fires again
        "2025-10-26T03:00+01:00",
    ]
    # From inside the repeated hour, the next tick is the second 02:00.
    assert schedule.next_after(oslo("2025-10-26T02:20+02:00")) == oslo("2025-10-26T02:00+01:00")


def test_quarter_hourly_schedule_keeps_absolute_order_in_the_repeated_hour() -> None:
    ticks = day_ticks(CronSchedule("*/15 * * * *", "Europe/Oslo"), AUTUMN)
    assert len(ticks) == 25 * 4
    assert ticks == sorted(set(ticks))
    assert all(b - a == timedelta(minutes=15) for a, b in itertools.pairwise(ticks))


# ---------------------------------------------------------------------- the brute-force oracle
def _matcher(expression: str) -> Callable[[datetime], bool]:
    (minutes, hours, days, months, weekdays), _ = croniter.expand(expression)

    def ok(field: list[object], value: int) -> bool:
        return field == ["*"] or value in field

    def match(wall: datetime) -> bool:
        if not (ok(minutes, wall.minute) and ok(hours, wall.hour) and ok(months, wall.month)):
            return False
        weekday = (wall.weekday() + 1) % 7  # cron: Sunday is 0 (or 7)
        day_ok = ok(days, wall.day)
        weekday_ok = ok(weekdays, weekday) or (weekday == 0 and 7 in weekdays)
        if days != ["*"] and weekdays != ["*"]:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    return match


def oracle(expression: str, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The ticks in [start, end) by the rules, minute by absolute minute."""
    match = _matcher(expression)
    hourly = croniter.expand(expression)[0][1] == ["*"]
    ticks: list[datetime] = []

    def add(moment: datetime) -> None:
        if not ticks or ticks[-1] != moment:
            ticks.append(moment)

    moment, before = start, None
    while moment < end:
        here = moment.astimezone(tz)
        offset = here.utcoffset()
        assert offset is not None
        if before is not None and offset > before and not hourly:
            # A gap: the skipped wall times fire once, now (the end of the gap).
            wall = (moment + before).replace(tzinfo=None)
            if any(
                match(wall + timedelta(minutes=m))
                for m in range(int((offset - before).total_seconds() // 60))
            ):
                add(moment)
        before = offset
        wall = here.replace(tzinfo=None, fold=0)
        repeated = wall.replace(tzinfo=tz, fold=0).utcoffset() != wall.replace(tzinfo=tz, fold=1).utcoffset()
        if match(wall) and (hourly or not (repeated and here.fold == 1)):
            add(moment)
        moment += timedelta(minutes=1)
    return ticks


SWITCHES = [
    ("Europe/Oslo", datetime(2025, 3, 29, 12, tzinfo=UTC)),
    ("Europe/Oslo", datetime(2025, 10, 25, 12, tzinfo=UTC)),
    ("America/New_York", datetime(2025, 11, 1, 18, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2025, 4, 5, 6, tzinfo=UTC)),  # half-hour DST
    ("Australia/Lord_Howe", datetime(2025, 10, 4, 6, tzinfo=UTC)),
    ("America/Sao_Paulo", datetime(2018, 11, 3, 18, tzinfo=UTC)),  # midnight does not exist
]
CRONS = ["30 2 * * *", "0 * * * *", "*/20 * * * *", "*/30 2 * * *", "0 1-3 * * *", "0 0 * * *", "15 2 * * 0"]


@pytest.mark.parametrize(("tz_name", "around"), SWITCHES, ids=lambda v: str(v)[:16])
def test_ticks_match_the_minute_by_minute_oracle(tz_name: str, around: datetime) -> None:
    tz = ZoneInfo(tz_name)
    start, end = around - timedelta(hours=30), around + timedelta(hours=30)
    for expression in CRONS:
        schedule = CronSchedule(expression, tz_name)
        expected = oracle(expression, tz, start, end)
        got = schedule.ticks_between(start - timedelta(microseconds=1), end - timedelta(microseconds=1))
        assert local(got, tz) == local(expected, tz), expression
        # next_after from anywhere near the switch: never a tick twice, never one skipped.
        probe = around - timedelta(hours=5, seconds=1)
        while probe < around + timedelta(hours=5):
            following = [t for t in expected if t > probe]
            if following:
                assert schedule.next_after(probe) == following[0], (expression, probe.astimezone(tz))
            probe += timedelta(minutes=10)


# ---------------------------------------------------------------------- windows and limits
def test_ticks_between_is_half_open_and_limit_keeps_the_latest() -> None:
    schedule = CronSchedule("0 3 * * *", "UTC")
    a, b = datetime(2025, 1, 1, 3, tzinfo=UTC), datetime(2025, 1, 4, 3, tzinfo=UTC)
    assert schedule.ticks_between(a, b) == [a + timedelta(days=1), a + timedelta(days=2), b]
    assert schedule.ticks_between(a, b, limit=2) == [a + timedelta(days=2), b]
    assert schedule.ticks_between(b, a) == [] and schedule.ticks_between(a, a) == []
    assert schedule.latest_at_or_before(b) == b
    assert schedule.latest_at_or_before(b - timedelta(seconds=1)) == b - timedelta(days=1)


def test_a_cursor_from_long_ago_does_not_iterate_every_tick() -> None:
    schedule = CronSchedule("* * * * *", "Europe/Oslo")
    now = datetime(2025, 6, 1, 12, 0, 30, tzinfo=UTC)
    started = time.perf_counter()
    latest = schedule.ticks_between(now - timedelta(days=3650), now, limit=3)
    assert time.perf_counter() - started < 2.0  # ten years of minutes would take minutes
    assert latest == [datetime(2025, 6, 1, 12, tzinfo=UTC) - timedelta(minutes=2 - i) for i in range(3)]


def test_preview_lists_the_next_ticks() -> None:
    schedule = CronSchedule("0 2 * * *", "Europe/Oslo")
    assert local(schedule.preview(oslo("2025-03-28T12:00+01:00"), 3)) == [
        "2025-03-29T02:00+01:00",
        "2025-03-30T03:00+02:00",
        "2025-03-31T02:00+02:00",
    ]


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "expression",
    ["61 * * * *", "0 0 * *", "0 0 * * * *", "every day", "", "0 0 30 2 *", "@reboot", "H 0 * * *"],
)
def test_invalid_or_never_firing_crons_are_rejected(expression: str) -> None:
    with pytest.raises(CronError, match="cron expression"):
        check_cron(expression)


def test_aliases_and_unknown_zones() -> None:
    check_cron("@daily")
    assert CronSchedule("@hourly", "UTC").hourly
    for name in ("Mars/Olympus", "", "../etc/passwd"):
        with pytest.raises(CronError, match="unknown timezone"):
            zone(name)


# ---------------------------------------------------------------------- the closed partition
def test_closed_partition_of_oslo_days_across_dst() -> None:
    days = fs.DailyPartitions(start="2025-01-01", timezone="Europe/Oslo")
    nightly = CronSchedule("30 2 * * *", "Europe/Oslo")
    ticks = nightly.ticks_between(oslo("2025-03-28T12:00+01:00"), oslo("2025-04-01T00:00+02:00"))
    ticks += nightly.ticks_between(oslo("2025-10-24T12:00+02:00"), oslo("2025-10-28T00:00+01:00"))
    assert [closed_partition(days, t) for t in ticks] == [
        "2025-03-28",
        "2025-03-29",
        "2025-03-30",  # the 23-hour day
        "2025-10-24",
        "2025-10-25",
        "2025-10-26",  # the 25-hour day
    ]
    # At local midnight exactly the day that just ended is closed; a second before, the day before.
    midnight = oslo("2025-10-27T00:00+01:00")
    assert closed_partition(days, midnight) == "2025-10-26"
    assert closed_partition(days, midnight - timedelta(seconds=1)) == "2025-10-25"


def test_closed_partition_of_oslo_hours_in_the_repeated_hour() -> None:
    hours = fs.HourlyPartitions(start="2025-10-01", timezone="Europe/Oslo")
    hourly = CronSchedule("0 * * * *", "Europe/Oslo")
    ticks = day_ticks(hourly, AUTUMN)[2:6]
    assert [closed_partition(hours, t) for t in ticks] == [
        "2025-10-26T01:00+02:00",  # at 02:00+02:00
        "2025-10-26T02:00+02:00",  # at 02:00+01:00
        "2025-10-26T02:00+01:00",  # at 03:00+01:00
        "2025-10-26T03:00+01:00",
    ]


def test_closed_partition_bounds_offsets_and_kinds() -> None:
    days = fs.DailyPartitions(start="2025-01-01", end="2025-02-01", timezone="Europe/Oslo")
    assert closed_partition(days, oslo("2025-01-01T12:00+01:00")) is None  # nothing closed yet
    assert closed_partition(days, oslo("2025-01-02T00:00+01:00")) == "2025-01-01"
    assert closed_partition(days, oslo("2025-02-01T02:00+01:00")) == "2025-01-31"
    assert closed_partition(days, oslo("2025-02-03T02:00+01:00")) is None  # past the end
    # An open end does not depend on the real clock: a tick years ahead has its day.
    open_days = fs.DailyPartitions(start="2025-01-01", timezone="Europe/Oslo")
    assert closed_partition(open_days, oslo("2040-06-02T02:00+02:00")) == "2040-06-01"
    # Days starting at 06:00: at 02:00 the window that ended last started the day before yesterday.
    shifted = fs.DailyPartitions(start="2025-01-01", timezone="Europe/Oslo", hour_offset=6)
    assert closed_partition(shifted, oslo("2025-03-30T03:00+02:00")) == "2025-03-28"
    assert closed_partition(fs.StaticPartitions(["a"]), oslo("2025-03-30T03:00+02:00")) is None
