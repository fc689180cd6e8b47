"""Time-window partitions: DST-correct windows, key formats, bounds, crons, open ends."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowstone as fs
from flowstone.partitions import _time

OSLO = ZoneInfo("Europe/Oslo")
NEW_YORK = ZoneInfo("America/New_York")
HOUR = timedelta(hours=1)


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def assert_contiguous(definition: fs.TimeWindowPartitions) -> list[fs.TimeWindow]:
    windows = [definition.window(k) for k in list(definition.keys())]
    for before, after in itertools.pairwise(windows):
        assert utc(before.end) == utc(after.start)
    assert all(w.duration > timedelta(0) for w in windows)
    return windows


# ---------------------------------------------------------------------- DST
@pytest.mark.parametrize(
    ("zone", "spring", "autumn"),
    [("Europe/Oslo", "2025-03-30", "2025-10-26"), ("America/New_York", "2025-03-09", "2025-11-02")],
)
def test_daily_windows_are_23_24_or_25_hours(zone: str, spring: str, autumn: str) -> None:
    days = fs.DailyPartitions(start="2025-01-01", end="2026-01-01", timezone=zone)
    assert days.count() == 365
    windows = assert_contiguous(days)
    hours = {k: w.duration / HOUR for k, w in zip(days.keys(), windows, strict=True)}
    assert hours[spring] == 23 and hours[autumn] == 25
    assert sorted(set(hours.values())) == [23, 24, 25]
    assert [k for k, h in hours.items() if h != 24] == [spring, autumn]
    assert days.to_value(spring) == date.fromisoformat(spring)
    window = days.window(spring)
    assert window.start.tzinfo == ZoneInfo(zone) and (window.start.hour, window.end.hour) == (0, 0)


@pytest.mark.parametrize("zone", ["Europe/Oslo", "America/New_York"])
def test_hourly_windows_are_consecutive_absolute_hours(zone: str) -> None:
    hours = fs.HourlyPartitions(start="2025-01-01", end="2026-01-01", timezone=zone)
    assert hours.count() == 365 * 24  # a year of absolute hours, whatever DST does
    keys = list(hours.keys())
    assert len(set(keys)) == len(keys)
    windows = assert_contiguous(hours)
    assert {w.duration for w in windows} == {HOUR}


def test_hourly_keys_tell_the_repeated_autumn_hour_apart() -> None:
    hours = fs.HourlyPartitions(start="2025-10-26", end="2025-10-27", timezone="Europe/Oslo")
    keys = list(hours.keys())
    assert len(keys) == 25
    assert keys[:5] == [
        "2025-10-26T00:00+02:00",
        "2025-10-26T01:00+02:00",
        "2025-10-26T02:00+02:00",
        "2025-10-26T02:00+01:00",
        "2025-10-26T03:00+01:00",
    ]
    first, second = hours.to_value(keys[2]), hours.to_value(keys[3])
    assert utc(first.end) == utc(second.start) == datetime(2025, 10, 26, 1, tzinfo=UTC)
    assert hours.to_key(second) == keys[3] and hours.to_key(first) == keys[2]
    # the spring day has 23 hours and no 02:00
    spring = fs.HourlyPartitions(start="2025-03-30", end="2025-03-31", timezone="Europe/Oslo")
    assert spring.count() == 23
    assert "2025-03-30T01:00+01:00" in spring and "2025-03-30T03:00+02:00" in spring
    assert not any(k.startswith("2025-03-30T02") for k in list(spring.keys()))


def test_sub_daily_keys_carry_the_offset_outside_utc_only() -> None:
    oslo = fs.HourlyPartitions(start="2025-07-01", timezone="Europe/Oslo")
    assert oslo.key_at(0) == "2025-07-01T00:00+02:00"
    for wrong in [
        "2025-07-01T00:00",
        "2025-07-01T01:00+03:00",
        "2025-07-01T00:00+0200",
        "2025-07-01 00:00+02:00",
    ]:
        assert wrong not in oslo
    # the same instant written with another offset is not the canonical key
    with pytest.raises(ValueError, match="not an hour key"):
        oslo.to_value("2025-06-30T23:00+01:00")
    in_utc = fs.HourlyPartitions(start="2025-07-01")
    assert in_utc.key_at(1) == "2025-07-01T01:00"
    assert "2025-07-01T01:00+00:00" not in in_utc and "2025-07-01T01:00Z" not in in_utc
    minutes = fs.MinutelyPartitions(start="2025-07-01", every=15, timezone="Asia/Kolkata")
    assert minutes.key_at(1) == "2025-07-01T00:15+05:30"


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(["Europe/Oslo", "America/New_York", "UTC", "Australia/Lord_Howe"]),
    start=st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 1, 1)),
    days=st.integers(min_value=1, max_value=120),
    offset_minutes=st.integers(min_value=0, max_value=1439),
    kind=st.sampled_from(["hourly", "daily", "6-hourly", "weekly", "monthly"]),
)
def test_windows_are_contiguous_and_key_for_time_agrees(
    zone: str, start: date, days: int, offset_minutes: int, kind: str
) -> None:
    end = start + timedelta(days=days + 62)  # room for at least one whole month
    definition: fs.TimeWindowPartitions
    if kind == "hourly":
        definition = fs.HourlyPartitions(start=start, end=end, timezone=zone)
    elif kind == "daily":
        definition = fs.DailyPartitions(start=start, end=end, timezone=zone, hour_offset=offset_minutes // 60)
    elif kind == "6-hourly":
        definition = fs.TimeWindowPartitions(cron="30 */6 * * *", start=start, end=end, timezone=zone)
    elif kind == "weekly":
        definition = fs.WeeklyPartitions(start=start, end=end, timezone=zone, day_offset=offset_minutes % 7)
    else:
        definition = fs.MonthlyPartitions(
            start=start, end=end, timezone=zone, day_offset=1 + offset_minutes % 28
        )
    windows = assert_contiguous(definition)
    assert len(windows) == definition.count()
    first, last = utc(windows[0].start), utc(windows[-1].end)
    assert utc(definition.start) == first and definition.end is not None and utc(definition.end) == last
    # key_for_time: the window that contains the instant
    probe = first + (last - first) * (offset_minutes / 1440)
    key = definition.key_for_time(probe)
    assert key is not None
    window = definition.window(key)
    assert utc(window.start) <= probe < utc(window.end)
    assert definition.key_for_time(first - timedelta(microseconds=1)) is None
    assert definition.key_for_time(last) is None
    assert definition.key_for_time(first) == definition.key_at(0)
    # keys_between: windows overlapping [a, b)
    a, b = probe, probe + timedelta(days=3)
    expected = [
        k for k, w in zip(definition.keys(), windows, strict=True) if utc(w.start) < b and utc(w.end) > a
    ]
    assert list(definition.keys_between(a, b)) == expected


def test_daily_with_an_hour_offset_in_a_spring_gap() -> None:
    days = fs.DailyPartitions(start="2025-03-28", end="2025-04-02", timezone="Europe/Oslo", hour_offset=2)
    windows = assert_contiguous(days)
    assert list(days.keys()) == ["2025-03-28", "2025-03-29", "2025-03-30", "2025-03-31"]
    # 02:00 does not exist on 2025-03-30: that day's window starts when the clock jumps, at 03:00
    assert days.window("2025-03-30").start.hour == 3
    assert [w.duration / HOUR for w in windows] == [24, 24, 23, 24]
    assert days.to_value("2025-03-30") == date(2025, 3, 30)


def test_a_local_day_that_does_not_exist_keeps_its_key_with_an_empty_window() -> None:
    # Samoa moved across the date line: 2011-12-30 never happened in Pacific/Apia.
    days = fs.DailyPartitions(start="2011-12-28", end="2012-01-02", timezone="Pacific/Apia")
    keys = list(days.keys())
    assert keys == ["2011-12-28", "2011-12-29", "2011-12-30", "2011-12-31", "2012-01-01"]
    assert [days.index_of(k) for k in keys] == list(range(5))
    assert all(days.to_key(days.to_value(k)) == k for k in keys)
    assert days.window("2011-12-30").duration == timedelta(0)
    assert days.window("2011-12-29").duration == timedelta(hours=24)
    assert days.key_for_time(days.window("2011-12-31").start) == "2011-12-31"


def test_weekly_and_monthly_partitions() -> None:
    weeks = fs.WeeklyPartitions(start="2025-01-01", end="2025-02-01")
    assert list(weeks.keys()) == ["2025-01-06", "2025-01-13", "2025-01-20"]  # ISO weeks, Monday first
    assert weeks.to_value("2025-01-13") == date(2025, 1, 13)
    with pytest.raises(ValueError, match="not a week key \\(YYYY-MM-DD of a Monday\\)"):
        weeks.to_value("2025-01-14")
    sundays = fs.WeeklyPartitions(start="2025-01-01", end="2025-02-01", day_offset=6)
    assert sundays.key_at(0) == "2025-01-05" and sundays.cron == "0 0 * * 0"
    months = fs.MonthlyPartitions(start="2025-01-15", end="2026-01-01", timezone="Europe/Oslo")
    assert months.key_at(0) == "2025-02-01" and months.count() == 11
    assert months.window("2025-03-01").duration == timedelta(days=31) - HOUR
    with pytest.raises(ValueError, match="not a month key"):
        months.to_value("2025-03")
    mid = fs.MonthlyPartitions(start="2025-01-01", end="2025-06-01", day_offset=15)
    assert list(mid.keys()) == ["2025-01-15", "2025-02-15", "2025-03-15", "2025-04-15"]


def test_values_are_dates_for_days_weeks_months_and_windows_otherwise() -> None:
    assert isinstance(fs.DailyPartitions(start="2025-01-01").to_value("2025-01-02"), date)
    cron_days = fs.TimeWindowPartitions(cron="0 0 * * *", start="2025-01-01", end="2025-02-01")
    value = cron_days.to_value("2025-01-02T00:00")
    assert isinstance(value, fs.TimeWindow)
    assert value == (datetime(2025, 1, 2, tzinfo=UTC), datetime(2025, 1, 3, tzinfo=UTC))
    assert cron_days.to_key(value) == "2025-01-02T00:00"
    assert cron_days.to_key(datetime(2025, 1, 2, tzinfo=UTC)) == "2025-01-02T00:00"
    with pytest.raises(ValueError):
        cron_days.to_key(date(2025, 1, 2))  # a date is not the value of a cron-shaped window
    with pytest.raises(ValueError, match="not the start of a window"):
        cron_days.to_key(datetime(2025, 1, 2, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="end differs"):
        cron_days.to_key(fs.TimeWindow(value.start, value.end + HOUR))


def test_irregular_crons_iterate_lazily_and_keep_dst() -> None:
    weekdays = fs.TimeWindowPartitions(cron="0 9 * * 1-5", start="2025-01-01", end="2025-02-01")
    keys = list(weekdays.keys())
    assert weekdays.count() == len(keys) == 22
    assert keys[:3] == ["2025-01-01T09:00", "2025-01-02T09:00", "2025-01-03T09:00"]
    assert weekdays.window("2025-01-03T09:00").duration == timedelta(days=3)  # Friday to Monday
    assert [weekdays.index_of(k) for k in keys] == list(range(22))
    assert "2025-01-04T09:00" not in weekdays  # a Saturday
    weekends = fs.TimeWindowPartitions(
        cron="30 2 * * 0,6", start="2025-03-20", end="2025-04-10", timezone="Europe/Oslo"
    )
    windows = assert_contiguous(weekends)
    # Sunday 2025-03-30 02:30 does not exist; its window starts when the clock jumps past it
    assert weekends.window("2025-03-30T03:30+02:00").start == datetime(2025, 3, 30, 3, 30, tzinfo=OSLO)
    assert len(windows) == 5  # Sat 22, Sun 23, Sat 29, Sun 30, Sat 5 (Sun 6's window ends after end)


@pytest.mark.parametrize(
    ("cron", "count"),
    [("*/15 * * * *", 96), ("0 */6 * * *", 4), ("0,30 * * * *", 48), ("0 0,12 * * *", 2), ("@hourly", 24)],
)
def test_regular_crons_count_in_o1(cron: str, count: int) -> None:
    definition = fs.TimeWindowPartitions(
        cron=cron, start="2025-01-01", end="2025-01-02", timezone="Europe/Oslo"
    )
    assert definition.count() == count
    assert definition._sched.regular  # the test is for the arithmetic path


def test_minutely_partitions_at_scale() -> None:
    minutes = fs.MinutelyPartitions(start="2024-01-01", end="2026-01-01")
    assert minutes.count() == 731 * 24 * 60
    assert minutes.key_at(minutes.count() - 1) == "2025-12-31T23:59"
    assert minutes.index_of("2025-06-01T12:34") == (517 * 24 * 60) + 12 * 60 + 34
    assert minutes.page(37) == [minutes.key_at(i) for i in range(3700, 3800)]
    assert "2025-06-01T12:34" in minutes and "2025-06-01T12:34:00" not in minutes
    fives = fs.MinutelyPartitions(start="2025-01-01", end="2025-01-02", every=5)
    assert fives.count() == 288 and fives.key_at(1) == "2025-01-01T00:05"
    assert "2025-01-01T00:03" not in fives


# ---------------------------------------------------------------------- formats
def test_custom_formats_round_trip_and_never_guess() -> None:
    days = fs.DailyPartitions(start="2025-01-01", end="2025-02-01", fmt="%Y%m%d")
    assert days.key_at(0) == "20250101"
    assert days.to_value("20250115") == date(2025, 1, 15)
    assert days.to_key(date(2025, 1, 15)) == "20250115"
    for wrong in ["2025-01-15", "2025115", "20250132", " 20250115"]:
        assert wrong not in days
    months = fs.MonthlyPartitions(start="2025-01-01", end="2026-01-01", fmt="%Y-%m")
    assert months.key_at(0) == "2025-01" and months.to_value("2025-12") == date(2025, 12, 1)
    assert "2025-1" not in months and "2025-01-01" not in months
    hours = fs.HourlyPartitions(
        start="2025-10-26", end="2025-10-27", timezone="Europe/Oslo", fmt="%Y%m%d%H%z"
    )
    keys = list(hours.keys())
    assert keys[2:4] == ["2025102602+0200", "2025102602+0100"]
    assert [hours.index_of(k) for k in keys] == list(range(25))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "%Y-%m"}, "does not round-trip"),
        ({"fmt": "%m-%d"}, "does not round-trip"),
        ({"fmt": ""}, "non-empty"),
        ({"timezone": "Mars/Olympus"}, "not a known IANA time zone"),
        ({"timezone": 1}, "not a known IANA time zone"),
        ({"end": "2024-01-01"}, "before start"),
        ({"end": "tomorrow"}, "not a date"),
        ({"hour_offset": 24}, "hour_offset=24"),
        ({"minute_offset": -1}, "minute_offset=-1"),
    ],
)
def test_bad_time_definitions_fail_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fs.DailyPartitions(start="2025-01-01", **kwargs)  # type: ignore[arg-type]


def test_bad_crons_and_sub_daily_formats_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="five fields"):
        fs.TimeWindowPartitions(cron="0 0 * *", start="2025-01-01")
    with pytest.raises(ValueError, match="not a valid cron"):
        fs.TimeWindowPartitions(cron="0 25 * * *", start="2025-01-01")
    with pytest.raises(ValueError, match="include %z"):
        fs.HourlyPartitions(start="2025-01-01", timezone="Europe/Oslo", fmt="%Y-%m-%dT%H")
    fs.HourlyPartitions(start="2025-01-01", timezone="Asia/Kolkata", fmt="%Y-%m-%dT%H:%M")  # no DST: fine
    with pytest.raises(ValueError, match="every=7"):
        fs.MinutelyPartitions(start="2025-01-01", every=7)
    with pytest.raises(ValueError, match="day_offset=29"):
        fs.MonthlyPartitions(start="2025-01-01", day_offset=29)
    with pytest.raises(ValueError, match="day_offset=7"):
        fs.WeeklyPartitions(start="2025-01-01", day_offset=7)


# ---------------------------------------------------------------------- open end
def test_open_end_holds_the_windows_that_have_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2025, 1, 10, 12, tzinfo=UTC)
    monkeypatch.setattr(_time, "_now_us", lambda: int(now.timestamp()) * 1_000_000)
    days = fs.DailyPartitions(start="2025-01-01")
    assert days.end is None and days.count() == 9
    assert days.key_at(8) == "2025-01-09" and "2025-01-10" not in days
    with pytest.raises(ValueError, match="open end"):
        days.to_value("2025-01-10")
    assert days.key_for_time(now) is None  # today is still running
    assert days.key_for_time(now - timedelta(days=1)) == "2025-01-09"
    now = datetime(2025, 1, 11, 0, 0, tzinfo=UTC)
    assert days.count() == 10 and "2025-01-10" in days
    future = fs.HourlyPartitions(start="2030-01-01")
    assert future.count() == 0 and list(future.keys()) == [] and future.page(0) == []


def test_equality_and_repr() -> None:
    a = fs.HourlyPartitions(start="2025-01-01", timezone="Europe/Oslo", minute_offset=30)
    assert a == fs.HourlyPartitions(start=datetime(2025, 1, 1), timezone=OSLO, minute_offset=30)
    assert a != fs.HourlyPartitions(start="2025-01-01", timezone="Europe/Oslo")
    assert a != fs.DailyPartitions(start="2025-01-01", timezone="Europe/Oslo")
    assert len({a, fs.HourlyPartitions(start="2025-01-01", timezone="Europe/Oslo", minute_offset=30)}) == 1
    assert repr(a) == "HourlyPartitions(minute_offset=30, start='2025-01-01T00:30', timezone='Europe/Oslo')"
    assert repr(fs.MinutelyPartitions(start="2025-01-01", every=5)) == (
        "MinutelyPartitions(every=5, start='2025-01-01T00:00')"
    )
    assert repr(fs.WeeklyPartitions(start="2025-01-06", day_offset=2)) == (
        "WeeklyPartitions(day_offset=2, start='2025-01-08')"
    )
