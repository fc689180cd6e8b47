"""Time-window partitions: one partition per window of a cron-shaped schedule in a time zone.

    days = DailyPartitions(start="2025-01-01", timezone="Europe/Oslo")
    days.to_value("2025-03-30")          # datetime.date(2025, 3, 30)
    days.window("2025-03-30").duration   # 23 hours: the spring switch day
    hours = HourlyPartitions(start="2025-01-01", timezone="Europe/Oslo")
    hours.key_at(0)                      # '2025-01-01T00:00+01:00'

Which windows: those lying wholly inside ``[start, end)``. ``start`` and ``end`` are dates or
date-times (ISO strings, ``date`` or ``datetime``); naive ones are wall-clock times in the
definition's time zone. An ``end`` of ``None`` keeps the definition open: it holds every window that
has ended by now, so today's daily partition appears once the day is over. ``start`` / ``end``
attributes are the aligned bounds: the start of the first window and the (exclusive) end of the last.

Keys (``fmt=None``):

* daily and weekly: ``YYYY-MM-DD``, the local date the window starts on;
* monthly: ``YYYY-MM-DD`` too (not ``YYYY-MM``), so every date-valued key is its value's
  ``isoformat()`` and a rollup from days to months compares like with like;
* minutely, hourly and any other cron: ``YYYY-MM-DDTHH:MM``, the local wall-clock start, followed
  outside UTC by the UTC offset, e.g. ``2025-10-26T02:00+02:00`` and ``2025-10-26T02:00+01:00`` for
  the two 02:00 hours of the autumn switch in Europe/Oslo. Minutely and hourly windows are
  consecutive absolute intervals, so without the offset those two keys would collide.

``fmt`` replaces the format with a ``strftime`` pattern. A key is decoded by ``strptime`` with that
same pattern and accepted only if re-encoding gives the key back (no guessing, no leniency about
zero padding); construction checks that the pattern round-trips and tells windows apart, and
minutely/hourly windows in a zone with DST need ``%z`` in it.

Values (``to_value``): a ``datetime.date`` (the local start date) for daily, weekly and monthly
partitions; a ``TimeWindow`` of aware datetimes in the definition's zone for everything else.
A local day that never happened (Pacific/Apia skipped 2011-12-30) keeps its key, with an empty
window; a wall-clock start inside a spring-forward gap moves forward by the gap (02:30 -> 03:30 in
Europe/Oslo).
Mind that Python subtracts two datetimes of the same zone by wall clock: use
``TimeWindow.duration`` for the real length of a window.
"""

from __future__ import annotations

import time as _time_module
from collections.abc import Hashable, Iterator
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flowstone.partitions._base import PartitionsDefinition, check_index, check_key_type
from flowstone.partitions._schedules import (
    MINUTE_US,
    FixedGrid,
    LocalSchedule,
    LocalTimes,
    Monthly,
    Schedule,
    Weekly,
    from_us,
    max_offset_change,
    schedule_for_cron,
    to_us,
    wall_to_us,
)

_UTC_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"})
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _now_us() -> int:
    """Now, in microseconds since the epoch (tests replace it to move the open end)."""
    return _time_module.time_ns() // 1000


class TimeWindow(NamedTuple):
    """A window ``[start, end)`` of aware datetimes in the definition's time zone."""

    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        """The real length (23 hours for a daily window on a spring-forward day)."""
        return self.end.astimezone(UTC) - self.start.astimezone(UTC)


class TimeWindowPartitions(PartitionsDefinition):
    """Partitions by the windows between consecutive ticks of ``cron`` in ``timezone``.

    ``TimeWindowPartitions(cron="0 */6 * * *", start="2025-01-01", timezone="Europe/Oslo")`` has
    four windows a day, starting at 00:00, 06:00, 12:00 and 18:00 local time (so the window across
    a DST switch lasts 5 or 7 hours; only every-N-minutes and hourly windows are fixed absolute
    lengths, see ``_schedules``). Regular crons (every N minutes or hours, daily / weekly / monthly
    at a time) answer ``count``, ``key_at`` and ``index_of`` in O(1); any other cron is iterated
    lazily with croniter from ``start``, its cron times read as wall-clock times (a repeated autumn
    hour ticks once). See the module docstring for bounds, keys and values.
    """

    _unit = "time window"
    _date_valued = False
    _wall_time = time(0, 0)  # date-valued subclasses: the time of day windows start

    cron: str
    timezone: ZoneInfo
    start: datetime
    end: datetime | None
    fmt: str | None

    def __init__(
        self,
        *,
        cron: str,
        start: str | date | datetime,
        end: str | date | datetime | None = None,
        timezone: str | ZoneInfo = "UTC",
        fmt: str | None = None,
    ) -> None:
        tz = _zone(timezone)
        start_us = _instant(start, "start", tz)
        self._setup(cron, schedule_for_cron(cron, tz, start_us), tz, start_us, start, end, fmt)

    def _setup(
        self,
        cron: str,
        schedule: Schedule,
        tz: ZoneInfo,
        start_us: int,
        start: object,
        end: str | date | datetime | None,
        fmt: str | None,
    ) -> None:
        self.cron = cron
        self.timezone = tz
        self.fmt = fmt
        self._sched = schedule
        self._utc = tz.key in _UTC_ZONES
        try:
            first = max(schedule.floor(start_us), 0) if not schedule.regular else schedule.floor(start_us)
            if schedule.tick(first) < start_us:
                first += 1
            self._first = first
            self._start_us = schedule.tick(first)
        except IndexError:
            raise ValueError(f"cron={cron!r} has no tick at or after start={start!r}") from None
        self.start = from_us(self._start_us, tz)
        self._last: int | None = None
        self._end_us: int | None = None
        self.end = None
        if end is not None:
            end_us = _instant(end, "end", tz)
            if end_us < start_us:
                raise ValueError(f"end {_show(end)} is before start {_show(start)}")
            last = schedule.floor(end_us)
            if last <= first:
                raise ValueError(
                    f"there is no whole window between start {_show(start)} and end {_show(end)}"
                )
            self._last = last
            self._end_us = schedule.tick(last)
            self.end = from_us(self._end_us, tz)
        if fmt is not None:
            self._check_fmt(fmt)

    # ------------------------------------------------------------------ keys <-> ticks
    def _encode(self, n: int) -> str:
        local = from_us(self._sched.tick(n), self.timezone)
        if self.fmt is not None:
            return local.strftime(self.fmt)
        return _wall_key(local, self._utc)

    def _decode(self, key: str) -> int:
        """The instant a key names (the start of its window), or ``ValueError``."""
        if self.fmt is not None:
            try:
                parsed = datetime.strptime(key, self.fmt)
            except ValueError:
                raise self._not_a_key(key) from None
            if parsed.tzinfo is not None:
                return to_us(parsed)
            return wall_to_us(parsed, self.timezone)
        # Lenient parse, strict check: index_of accepts the key only if it re-encodes to itself.
        try:
            moment = datetime.fromisoformat(key)
            if moment.tzinfo is None:
                return wall_to_us(moment, self.timezone)
            return to_us(moment)
        except (ValueError, OverflowError):
            raise self._not_a_key(key) from None

    def _tick_number(self, t: int, original: object, canonical: str | None = None) -> int:
        """The number of the window starting at instant ``t``, checked against the bounds."""
        sched = self._sched
        if not sched.regular and (t < self._start_us or t >= self._bound_us()):
            raise self._outside(original)
        try:
            n = sched.floor(t)
            starts_here = sched.tick(n) == t
        except (ValueError, OverflowError, IndexError):
            starts_here = False
        if not starts_here or (canonical is not None and self._encode(n) != canonical):
            if isinstance(original, str):
                raise self._not_a_key(original)
            raise ValueError(f"{original!r} is not the start of a window of {self!r}")
        if not self._first <= n < self._last_n():
            raise self._outside(original)
        return n

    def _bound_us(self) -> int:
        return self._end_us if self._end_us is not None else _now_us()

    def _last_n(self) -> int:
        if self._last is not None:
            return self._last
        return max(self._first, self._sched.floor(_now_us()))

    def _not_a_key(self, key: str) -> ValueError:
        article = "an" if self._unit.startswith(("a", "e", "i", "o", "u", "hour", "8-", "11", "18")) else "a"
        return ValueError(f"{key!r} is not {article} {self._unit} key ({self._hint()})")

    def _hint(self) -> str:
        if self.fmt is not None:
            return f"format {self.fmt!r}, the start of a window"
        if self._date_valued:
            return "YYYY-MM-DD"
        return "YYYY-MM-DDTHH:MM" + ("" if self._utc else "+HH:MM") + ", the start of a window"

    def _outside(self, key: object) -> ValueError:
        count = self.count()
        first = self._encode(self._first)
        if self._last is None:
            if count == 0:
                return ValueError(f"{key} is outside {first}.. (open end: no window has ended yet)")
            last = self._encode(self._first + count - 1)
            return ValueError(f"{key} is outside {first}..{last} (open end: windows that have ended by now)")
        return ValueError(f"{key} is outside {first}..{self._encode(self._last - 1)}")

    # ------------------------------------------------------------------ the contract
    def to_value(self, key: str) -> Any:
        return self._value(self._first + self.index_of(key))

    def _value(self, n: int) -> Any:
        return self._window(n)

    def to_key(self, value: Any) -> str:
        if isinstance(value, TimeWindow):
            n = self._tick_number(self._moment(value.start), value)
            if self._sched.tick(n + 1) != self._moment(value.end):
                raise ValueError(f"{value!r} is not a window of {self!r} (its end differs)")
        elif isinstance(value, datetime):
            n = self._tick_number(self._moment(value), value)
        else:
            raise ValueError(f"{value!r} is not a value of {self!r}")
        return self._encode(n)

    def count(self) -> int:
        return self._last_n() - self._first

    def key_at(self, index: int) -> str:
        check_index(self, index, self.count())
        return self._encode(self._first + index)

    def index_of(self, key: str) -> int:
        return self._key_number(check_key_type(key)) - self._first

    def _key_number(self, key: str) -> int:
        """The number of the window ``key`` names, checked to be in range."""
        return self._tick_number(self._decode(key), key, canonical=key)

    def _iter_range(self, lo: int, hi: int) -> Iterator[str]:
        encode, first = self._encode, self._first
        return (encode(first + i) for i in range(lo, hi))

    # ------------------------------------------------------------------ time queries
    def window(self, key: str) -> TimeWindow:
        """The window of ``key`` (``ValueError`` when it is not a key)."""
        return self._window(self._first + self.index_of(key))

    def key_for_time(self, t: datetime) -> str | None:
        """The key of the window containing ``t``, or ``None`` when no partition contains it.

        With an open end, the window still running now is not a partition yet: ``None``.
        """
        u = self._moment(t)
        if u < self._start_us or u >= self._bound_us():
            return None
        n = self._sched.floor(u)
        return self._encode(n) if self._first <= n < self._last_n() else None

    def keys_between(self, start: datetime, end: datetime) -> Iterator[str]:
        """The keys of the windows overlapping ``[start, end)``, lazily, in order."""
        lo_us, hi_us = max(self._moment(start), self._start_us), min(self._moment(end), self._bound_us())
        if hi_us <= lo_us:
            return iter(())
        lo = max(self._first, self._sched.floor(lo_us))
        hi = min(self._last_n(), self._sched.floor(hi_us - 1) + 1)
        return self._iter_range(lo - self._first, hi - self._first)

    def _window(self, n: int) -> TimeWindow:
        tz = self.timezone
        return TimeWindow(from_us(self._sched.tick(n), tz), from_us(self._sched.tick(n + 1), tz))

    def _moment(self, value: datetime) -> int:
        if not isinstance(value, datetime):
            raise ValueError(f"{value!r} is not a datetime")
        if value.tzinfo is None or value.utcoffset() is None:
            return wall_to_us(value, self.timezone)
        return to_us(value)

    # ------------------------------------------------------------------ construction checks
    def _check_fmt(self, fmt: str) -> None:
        if not isinstance(fmt, str) or not fmt.strip():
            raise ValueError(f"fmt={fmt!r} must be a non-empty strftime pattern")
        sched = self._sched
        if (
            isinstance(sched, FixedGrid)
            and "%z" not in fmt
            and max_offset_change(self.timezone, self.start.astimezone(UTC).year)
        ):
            raise ValueError(
                f"fmt={fmt!r} cannot tell apart the two windows of an autumn repeat hour in "
                f"{self.timezone.key}: include %z (the UTC offset)"
            )
        samples = [self._first, self._first + 1]
        if sched.regular:
            samples.append(sched.floor(sched.tick(self._first) + 400 * 24 * 60 * MINUTE_US))
        keys = []
        for n in samples:
            try:
                key = self._encode(n)
                ok = self._names(key, n)
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"fmt={fmt!r} does not round-trip: the window starting "
                    f"{from_us(sched.tick(n), self.timezone).isoformat()} does not decode back to itself"
                )
            keys.append(key)
        if len(set(keys)) != len(keys):
            raise ValueError(f"fmt={fmt!r} gives the same key to different windows ({keys[0]!r}...)")

    def _names(self, key: str, n: int) -> bool:
        """Whether ``key`` decodes to window ``n`` (bounds aside)."""
        return self._decode(key) == self._sched.tick(n)

    # ------------------------------------------------------------------ equality, repr
    def _identity(self) -> Hashable:
        return (self.cron, self._sched.identity(), self.timezone.key, self._start_us, self._end_us, self.fmt)

    def _repr_args(self) -> list[str]:
        return [f"cron={self.cron!r}"]

    def __repr__(self) -> str:
        args = [*self._repr_args(), f"start={self._show_bound(self.start)!r}"]
        if self.end is not None:
            args.append(f"end={self._show_bound(self.end)!r}")
        if self.timezone.key != "UTC":
            args.append(f"timezone={self.timezone.key!r}")
        if self.fmt is not None:
            args.append(f"fmt={self.fmt!r}")
        return f"{type(self).__name__}({', '.join(args)})"

    def _show_bound(self, moment: datetime) -> str:
        if self._date_valued and self._wall_time == time(0, 0) and moment.time() == time(0, 0):
            return moment.date().isoformat()
        return moment.replace(tzinfo=None).isoformat(timespec="minutes")


class MinutelyPartitions(TimeWindowPartitions):
    """Windows of ``every`` minutes (a divisor of 60), consecutive absolute intervals.

    Keys ``YYYY-MM-DDTHH:MM`` (plus the UTC offset outside UTC); values ``TimeWindow``.
    """

    def __init__(
        self,
        *,
        start: str | date | datetime,
        every: int = 1,
        end: str | date | datetime | None = None,
        timezone: str | ZoneInfo = "UTC",
        fmt: str | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1 or 60 % every:
            raise ValueError(f"every={every!r} must be a number of minutes dividing 60 (1, 2, 5, 15, 30...)")
        self.every = every
        self._unit = "minute" if every == 1 else f"{every}-minute"
        tz = _zone(timezone)
        start_us = _instant(start, "start", tz)
        midnight = datetime.combine(from_us(start_us, tz).date(), time(0, 0))
        schedule = FixedGrid(every * MINUTE_US, wall_to_us(midnight, tz))
        cron = "* * * * *" if every == 1 else ("0 * * * *" if every == 60 else f"*/{every} * * * *")
        self._setup(cron, schedule, tz, start_us, start, end, fmt)

    def _repr_args(self) -> list[str]:
        return [f"every={self.every}"] if self.every != 1 else []


class HourlyPartitions(TimeWindowPartitions):
    """One window per absolute hour, starting ``minute_offset`` minutes past the (local) hour.

    Keys ``YYYY-MM-DDTHH:MM`` (plus the UTC offset outside UTC); values ``TimeWindow``.
    """

    _unit = "hour"

    def __init__(
        self,
        *,
        start: str | date | datetime,
        end: str | date | datetime | None = None,
        timezone: str | ZoneInfo = "UTC",
        fmt: str | None = None,
        minute_offset: int = 0,
    ) -> None:
        self.minute_offset = _bounded(minute_offset, "minute_offset", 0, 59)
        tz = _zone(timezone)
        start_us = _instant(start, "start", tz)
        first = datetime.combine(from_us(start_us, tz).date(), time(0, minute_offset))
        schedule = FixedGrid(60 * MINUTE_US, wall_to_us(first, tz))
        self._setup(f"{minute_offset} * * * *", schedule, tz, start_us, start, end, fmt)

    def _repr_args(self) -> list[str]:
        return [f"minute_offset={self.minute_offset}"] if self.minute_offset else []


class _DateValued(TimeWindowPartitions):
    """Daily, weekly and monthly windows: keys and values name the local date a window starts on.

    Keys map to window numbers through the schedule's dates (``date_of`` / ``number_of``), not
    through instants, so they stay O(1) and unique even on a local day that does not exist.
    """

    _date_valued = True
    _days: LocalSchedule

    def _encode(self, n: int) -> str:
        day = self._days.date_of(n)
        if self.fmt is None:
            return day.isoformat()
        return datetime.combine(day, self._wall_time, tzinfo=self.timezone).strftime(self.fmt)

    def _day_number(self, key: str) -> int:
        """The number of the window ``key`` names, bounds aside; ``ValueError`` when none."""
        day: date | None = None
        try:
            if self.fmt is not None:
                day = datetime.strptime(key, self.fmt).date()
            elif len(key) == 10:
                day = date.fromisoformat(key)
        except ValueError:
            day = None
        n = None if day is None else self._days.number_of(day)
        if n is None or self._encode(n) != key:
            raise self._not_a_key(key)
        return n

    def _key_number(self, key: str) -> int:
        n = self._day_number(key)
        if not self._first <= n < self._last_n():
            raise self._outside(key)
        return n

    def _names(self, key: str, n: int) -> bool:
        return self._day_number(key) == n

    def _value(self, n: int) -> date:
        return self._days.date_of(n)

    def to_key(self, value: Any) -> str:
        if isinstance(value, date) and not isinstance(value, datetime):
            n = self._days.number_of(value)
            if n is None:
                raise ValueError(f"{value!r} is not the first day of a window of {self!r}")
            if not self._first <= n < self._last_n():
                raise self._outside(value.isoformat())
            return self._encode(n)
        return super().to_key(value)

    def _init_local(
        self,
        cron: str,
        make_schedule: Any,
        start: str | date | datetime,
        end: str | date | datetime | None,
        timezone: str | ZoneInfo,
        fmt: str | None,
        hour_offset: int,
        minute_offset: int,
    ) -> None:
        self.hour_offset = _bounded(hour_offset, "hour_offset", 0, 23)
        self.minute_offset = _bounded(minute_offset, "minute_offset", 0, 59)
        self._wall_time = time(hour_offset, minute_offset)
        tz = _zone(timezone)
        self._days = make_schedule(tz)
        self._setup(cron, self._days, tz, _instant(start, "start", tz), start, end, fmt)

    def _repr_args(self) -> list[str]:
        args = []
        if self.hour_offset:
            args.append(f"hour_offset={self.hour_offset}")
        if self.minute_offset:
            args.append(f"minute_offset={self.minute_offset}")
        return args


class DailyPartitions(_DateValued):
    """One window per local day (23 or 25 hours on DST switch days), from ``hour_offset:minute_offset``.

    Keys ``YYYY-MM-DD``; values ``datetime.date``.
    """

    _unit = "day"

    def __init__(
        self,
        *,
        start: str | date | datetime,
        end: str | date | datetime | None = None,
        timezone: str | ZoneInfo = "UTC",
        fmt: str | None = None,
        hour_offset: int = 0,
        minute_offset: int = 0,
    ) -> None:
        minute_of_day = _bounded(hour_offset, "hour_offset", 0, 23) * 60 + minute_offset
        self._init_local(
            f"{minute_offset} {hour_offset} * * *",
            lambda tz: LocalTimes((minute_of_day,), tz),
            start,
            end,
            timezone,
            fmt,
            hour_offset,
            minute_offset,
        )


class WeeklyPartitions(_DateValued):
    """One window per week, starting on weekday ``day_offset`` (0 = Monday ... 6 = Sunday, as
    ``date.weekday()``; ISO weeks by default) at ``hour_offset:minute_offset``.

    Keys ``YYYY-MM-DD`` of the first day; values ``datetime.date``.
    """

    _unit = "week"

    def __init__(
        self,
        *,
        start: str | date | datetime,
        end: str | date | datetime | None = None,
        timezone: str | ZoneInfo = "UTC",
        fmt: str | None = None,
        day_offset: int = 0,
        hour_offset: int = 0,
        minute_offset: int = 0,
    ) -> None:
        self.day_offset = _bounded(day_offset, "day_offset", 0, 6)
        minute_of_day = _bounded(hour_offset, "hour_offset", 0, 23) * 60 + minute_offset
        self._init_local(
            f"{minute_offset} {hour_offset} * * {(day_offset + 1) % 7}",
            lambda tz: Weekly(day_offset, minute_of_day, tz),
            start,
            end,
            timezone,
            fmt,
            hour_offset,
            minute_offset,
        )

    def _hint(self) -> str:
        if self.fmt is None:
            return f"YYYY-MM-DD of a {_WEEKDAYS[self.day_offset]}"
        return super()._hint()

    def _repr_args(self) -> list[str]:
        return ([f"day_offset={self.day_offset}"] if self.day_offset else []) + super()._repr_args()


class MonthlyPartitions(_DateValued):
    """One window per month, starting on day ``day_offset`` (1..28) at ``hour_offset:minute_offset``.

    Keys ``YYYY-MM-DD`` of the first day (e.g. ``2025-01-01``); values ``datetime.date``.
    """

    _unit = "month"

    def __init__(
        self,
        *,
        start: str | date | datetime,
        end: str | date | datetime | None = None,
        timezone: str | ZoneInfo = "UTC",
        fmt: str | None = None,
        day_offset: int = 1,
        hour_offset: int = 0,
        minute_offset: int = 0,
    ) -> None:
        self.day_offset = _bounded(day_offset, "day_offset", 1, 28)
        minute_of_day = _bounded(hour_offset, "hour_offset", 0, 23) * 60 + minute_offset
        self._init_local(
            f"{minute_offset} {hour_offset} {day_offset} * *",
            lambda tz: Monthly(day_offset, minute_of_day, tz),
            start,
            end,
            timezone,
            fmt,
            hour_offset,
            minute_offset,
        )

    def _hint(self) -> str:
        if self.fmt is None:
            return (
                "YYYY-MM-DD of the first day of a month"
                if self.day_offset == 1
                else (f"YYYY-MM-DD of day {self.day_offset} of a month")
            )
        return super()._hint()

    def _repr_args(self) -> list[str]:
        return ([f"day_offset={self.day_offset}"] if self.day_offset != 1 else []) + super()._repr_args()


# ---------------------------------------------------------------------- helpers
def _zone(timezone: str | ZoneInfo) -> ZoneInfo:
    if isinstance(timezone, ZoneInfo):
        return timezone
    if isinstance(timezone, str) and timezone:
        try:
            return ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise ValueError(f"timezone={timezone!r} is not a known IANA time zone name (e.g. 'UTC', 'Europe/Oslo')")


def _instant(value: object, field: str, tz: tzinfo) -> int:
    """A bound as an instant: dates are local midnight, naive date-times local wall time."""
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time(0, 0))
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
    if moment is None:
        raise ValueError(
            f"{field}={value!r} is not a date or date-time "
            "(ISO 8601, e.g. '2025-01-01' or '2025-01-01T06:00')"
        )
    try:
        if moment.tzinfo is None or moment.utcoffset() is None:
            return wall_to_us(moment, tz)
        return to_us(moment)
    except OverflowError:
        raise ValueError(f"{field}={value!r} is out of range") from None


def _bounded(value: int, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be an integer from {low} to {high}")
    return value


def _show(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def _wall_key(local: datetime, utc: bool) -> str:
    """``YYYY-MM-DDTHH:MM`` (``:SS`` only for the odd local-mean-time tick), plus the offset unless UTC."""
    if local.second:
        iso = local.isoformat(timespec="seconds")
        return iso[:19] if utc else iso
    iso = local.isoformat(timespec="minutes")
    return iso[:16] if utc else iso
