"""Properties every partitions definition keeps: codec and position round-trips, ranges, pages."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

import flowstone as fs

ZONES = ["UTC", "Europe/Oslo", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
# Dimension keys full of the separator and the escape character.
KEY_TEXT = st.text(alphabet=st.sampled_from(["a", "b", "|", "\\", "-", "é", " "]), min_size=1, max_size=6)


@st.composite
def statics(draw: st.DrawFn, max_size: int = 12) -> fs.StaticPartitions:
    return fs.StaticPartitions(draw(st.lists(KEY_TEXT, min_size=1, max_size=max_size, unique=True)))


@st.composite
def time_windows(draw: st.DrawFn) -> fs.TimeWindowPartitions:
    zone = draw(st.sampled_from(ZONES))
    start = draw(st.dates(min_value=date(1990, 1, 1), max_value=date(2035, 1, 1)))
    kind = draw(st.sampled_from(["minutely", "hourly", "daily", "weekly", "monthly", "cron", "irregular"]))
    if kind == "minutely":
        end = start + timedelta(days=draw(st.integers(1, 3)))
        every = draw(st.sampled_from([1, 5, 15, 30]))
        return fs.MinutelyPartitions(start=start, end=end, every=every, timezone=zone)
    if kind == "hourly":
        end = start + timedelta(days=draw(st.integers(1, 60)))
        return fs.HourlyPartitions(
            start=start, end=end, timezone=zone, minute_offset=draw(st.integers(0, 59))
        )
    if kind == "daily":
        end = start + timedelta(days=draw(st.integers(2, 400)))
        fmt = draw(st.sampled_from([None, "%Y%m%d", "%d.%m.%Y"]))
        return fs.DailyPartitions(
            start=start, end=end, timezone=zone, fmt=fmt, hour_offset=draw(st.integers(0, 23))
        )
    if kind == "weekly":
        end = start + timedelta(days=draw(st.integers(14, 800)))
        return fs.WeeklyPartitions(start=start, end=end, timezone=zone, day_offset=draw(st.integers(0, 6)))
    if kind == "monthly":
        end = start + timedelta(days=draw(st.integers(62, 2000)))
        return fs.MonthlyPartitions(start=start, end=end, timezone=zone, day_offset=draw(st.integers(1, 28)))
    end = start + timedelta(days=draw(st.integers(62, 120)))
    cron = draw(
        st.sampled_from(
            ["0 */6 * * *", "15 3 * * *", "0 0 1 * *"]
            if kind == "cron"
            else ["0 9 * * 1-5", "*/20 8-17 * * *", "0 0 L * *"]
        )
    )
    return fs.TimeWindowPartitions(cron=cron, start=start, end=end, timezone=zone)


def _keys_of(config: list[str]) -> list[str]:
    return config


@st.composite
def definitions(draw: st.DrawFn, depth: int = 0) -> fs.PartitionsDefinition:
    choices = ["static", "time", "function", "dynamic"] + (["multi"] if depth == 0 else [])
    kind = draw(st.sampled_from(choices))
    if kind == "static":
        return draw(statics())
    if kind == "time":
        return draw(time_windows())
    if kind == "function":
        return fs.FunctionPartitions(_keys_of, draw(st.lists(KEY_TEXT, min_size=1, max_size=8, unique=True)))
    if kind == "dynamic":
        keys = draw(st.lists(KEY_TEXT, max_size=8, unique=True))
        return fs.DynamicPartitions("things").bind(lambda name: keys)
    dims = draw(st.lists(definitions(depth=1), min_size=1, max_size=3))
    multi = fs.MultiPartitions({f"d{i}": d for i, d in enumerate(dims)})
    return multi if multi.count() <= 20_000 else draw(statics())


@settings(max_examples=150, deadline=None)
@given(definition=definitions(), data=st.data())
def test_keys_round_trip_through_values_and_positions(
    definition: fs.PartitionsDefinition, data: st.DataObject
) -> None:
    count = definition.count()
    if count == 0:
        assert list(definition.keys()) == [] and definition.page(0) == []
        return
    for _ in range(5):
        index = data.draw(st.integers(0, count - 1))
        key = definition.key_at(index)
        assert definition.index_of(key) == index
        assert key in definition
        assert definition.to_key(definition.to_value(key)) == key


@settings(max_examples=100, deadline=None)
@given(definition=definitions(), data=st.data())
def test_ranges_and_pages_are_slices_of_the_full_order(
    definition: fs.PartitionsDefinition, data: st.DataObject
) -> None:
    full = list(definition.keys())
    assert len(full) == definition.count() == len(set(full))
    assert [definition.key_at(i) for i in range(len(full))] == full
    if full:
        i = data.draw(st.integers(0, len(full) - 1))
        j = data.draw(st.integers(0, len(full) - 1))
        assert list(definition.keys(full[i], full[j])) == full[i : j + 1]
        assert list(definition.keys(start=full[i])) == full[i:]
        assert list(definition.keys(end=full[j])) == full[: j + 1]
    size = data.draw(st.integers(1, 50))
    number = data.draw(st.integers(0, len(full) // size + 1))
    assert definition.page(number, size) == full[number * size : (number + 1) * size]


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(KEY_TEXT, min_size=1, max_size=4))
def test_multi_keys_with_separators_round_trip(parts: list[str]) -> None:
    multi = fs.MultiPartitions({f"d{i}": fs.StaticPartitions([p]) for i, p in enumerate(parts)})
    key = multi.key_of(**{f"d{i}": p for i, p in enumerate(parts)})
    assert multi.split(key) == {f"d{i}": p for i, p in enumerate(parts)}
    assert multi.key_at(0) == key and multi.index_of(key) == 0 and key in multi
    value = multi.to_value(key)
    assert list(value.values()) == parts and value.keys_by_dimension == multi.split(key)
    assert str(value) == key and multi.to_key(value) == key


@settings(max_examples=100, deadline=None)
@given(key=st.text(alphabet=st.sampled_from(["a", "|", "\\"]), max_size=8))
def test_non_canonical_multi_keys_are_rejected(key: str) -> None:
    multi = fs.MultiPartitions(
        {"x": fs.StaticPartitions(["a", "a|", "\\"]), "y": fs.StaticPartitions(["a", "|"])}
    )
    if key in multi:
        assert multi.key_at(multi.index_of(key)) == key
    else:
        assert key not in list(multi.keys())


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(
        st.sampled_from(["2025-01-01", "2025-01-01T00:00", "2025-1-1", "20250101", "1", "true", "None"]),
        min_size=1,
        unique=True,
    )
)
def test_static_keys_that_look_like_dates_stay_strings(keys: list[str]) -> None:
    static = fs.StaticPartitions(keys)
    for key in keys:
        value = static.to_value(key)
        assert type(value) is str and value == key
