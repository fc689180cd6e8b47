"""Property tests: time-window mappings tile their windows exactly, across DST changes."""

from __future__ import annotations

import itertools
from datetime import date, timedelta

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import flowstone as fs

ZONES = ["UTC", "Europe/Oslo", "America/New_York", "Australia/Sydney"]
# 2024-2025 spans two spring and two autumn switches in every zone above.
DAYS = st.dates(min_value=date(2024, 1, 2), max_value=date(2025, 12, 28))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(zone=st.sampled_from(ZONES), day=DAYS)
@example(zone="Europe/Oslo", day=date(2025, 3, 30))  # 23 hours
@example(zone="Europe/Oslo", day=date(2025, 10, 26))  # 25 hours
@example(zone="America/New_York", day=date(2024, 11, 3))
def test_rollup_hours_tile_the_day_exactly(zone: str, day: date) -> None:
    days = fs.DailyPartitions(start="2024-01-01", end="2026-01-01", timezone=zone)
    hours = fs.HourlyPartitions(start="2024-01-01", end="2026-01-01", timezone=zone)
    key = day.isoformat()
    mapped = fs.Rollup().upstream_keys(days, key, hours)
    assert mapped.missing == []
    windows = [hours.window(k) for k in mapped.keys if k is not None]
    day_window = days.window(key)
    # Contiguous, in order, and exactly covering the (23, 24 or 25 hour) day.
    assert windows[0].start == day_window.start and windows[-1].end == day_window.end
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert len(windows) == round(day_window.duration.total_seconds() / 3600)


@settings(max_examples=60, deadline=None, database=None)
@given(
    zone=st.sampled_from(ZONES),
    day=DAYS,
    start=st.integers(min_value=-10, max_value=0),
    width=st.integers(min_value=0, max_value=10),
)
def test_offsets_select_a_contiguous_range_or_report_what_is_missing(
    zone: str, day: date, start: int, width: int
) -> None:
    days = fs.DailyPartitions(start="2024-01-01", end="2026-01-01", timezone=zone)
    mapping = fs.TimeWindowMapping(start_offset=start, end_offset=start + width)
    mapped = mapping.upstream_keys(days, day.isoformat(), days)
    expected = [day + timedelta(days=i) for i in range(start, start + width + 1)]
    inside = [d.isoformat() for d in expected if date(2024, 1, 1) <= d <= date(2025, 12, 31)]
    assert mapped.keys == inside
    assert bool(mapped.missing) == (len(inside) < len(expected))
    assert mapping.many(days, days) == (width > 0)
