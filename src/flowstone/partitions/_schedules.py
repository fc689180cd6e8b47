"""Window boundaries of time-window partitions: the instants ("ticks") at which windows start.

A schedule numbers its ticks with integers: ``tick(n)`` is the n-th boundary as integer
microseconds since the Unix epoch and ``floor(t)`` the number of the last boundary at or before
``t``. Window ``n`` is ``[tick(n), tick(n + 1))``. All arithmetic is on absolute instants, so DST
changes never make windows overlap or leave holes between them.

Regular schedules answer both in O(1):

* ``FixedGrid``: every N minutes (N divides 60) or every hour — consecutive windows of the same
  absolute length, whatever the zone's DST does. Their wall-clock labels repeat in an autumn
  repeat hour, which is why sub-daily keys carry the UTC offset outside UTC.
* ``LocalTimes``: at fixed wall-clock times of every day (daily at 06:00, every 6 hours...). A day
  of a daily schedule lasts 23 or 25 hours on DST switch days.
* ``Weekly`` and ``Monthly``: one wall-clock time on a weekday / on a day of month <= 28.

Any other cron (weekdays only, the last day of a month, uneven minutes...) is a ``CronIteration``:
its ticks come from croniter, computed lazily from the definition's start and cached.

Wall times are read with ``fold=0``: an ambiguous time (autumn repeat) is its first occurrence and
a time inside a spring-forward gap lands just after the gap.
"""

from __future__ import annotations

import abc
import bisect
import functools
import itertools
import re
import threading
from collections.abc import Hashable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
_ONE_US = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch."""
    return (moment - EPOCH) // _ONE_US


def from_us(us: int, tz: tzinfo) -> datetime:
    """Integer microseconds since the epoch as an aware datetime in ``tz``."""
    seconds, micro = divmod(us, SECOND_US)
    if not micro:  # every tick: the faster C path
        return datetime.fromtimestamp(seconds, tz)
    return (EPOCH + timedelta(microseconds=us)).astimezone(tz)


def wall_to_us(wall: datetime, tz: tzinfo) -> int:
    """A naive wall-clock time in ``tz`` as an instant (its ``fold`` picks the occurrence)."""
    return to_us(wall.replace(tzinfo=tz))


class Schedule(abc.ABC):
    """Numbered window boundaries; see the module docstring."""

    regular = True

    @abc.abstractmethod
    def tick(self, n: int) -> int:
        """The n-th boundary, in microseconds since the epoch."""

    @abc.abstractmethod
    def floor(self, t: int) -> int:
        """The largest ``n`` with ``tick(n) <= t``."""

    @abc.abstractmethod
    def identity(self) -> Hashable:
        """Equal for schedules with the same ticks."""


class FixedGrid(Schedule):
    """Ticks every ``period`` microseconds, offset by ``phase`` from the epoch."""

    def __init__(self, period: int, phase: int) -> None:
        self.period = period
        self.phase = phase % period

    def tick(self, n: int) -> int:
        return n * self.period + self.phase

    def floor(self, t: int) -> int:
        return (t - self.phase) // self.period

    def identity(self) -> Hashable:
        return ("grid", self.period, self.phase)


class LocalSchedule(Schedule):
    """Ticks at wall-clock times; ``floor`` guesses from the local date, then steps to the answer."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz

    @abc.abstractmethod
    def _guess(self, local: datetime) -> int:
        """A tick number at most a few ticks away from ``floor`` of the instant ``local``."""

    def floor(self, t: int) -> int:
        n = self._guess(from_us(t, self.tz))
        while self.tick(n) > t:
            n -= 1
        while self.tick(n + 1) <= t:
            n += 1
        return n

    def _at(self, day: date, minute_of_day: int) -> int:
        hour, minute = divmod(minute_of_day, 60)
        return wall_to_us(datetime.combine(day, time(hour, minute)), self.tz)

    @abc.abstractmethod
    def date_of(self, n: int) -> date:
        """The local date tick ``n`` is scheduled on (before DST resolution)."""

    @abc.abstractmethod
    def number_of(self, day: date) -> int | None:
        """The tick scheduled on ``day`` (one-a-day schedules only), or ``None``.

        Daily, weekly and monthly keys name ticks through these two, not through the resolved
        instant: a local day that does not exist at all (Pacific/Apia skipped 2011-12-30) keeps its
        own key, with an empty window, instead of colliding with the next day.
        """


class LocalTimes(LocalSchedule):
    """Ticks at the same wall-clock times (minutes after midnight, sorted) every day."""

    def __init__(self, minutes_of_day: tuple[int, ...], tz: ZoneInfo) -> None:
        super().__init__(tz)
        self.minutes_of_day = minutes_of_day
        self._per_day = len(minutes_of_day)

    def tick(self, n: int) -> int:
        day, i = divmod(n, self._per_day)
        return self._at(date.fromordinal(day), self.minutes_of_day[i])

    def _guess(self, local: datetime) -> int:
        i = bisect.bisect_right(self.minutes_of_day, local.hour * 60 + local.minute) - 1
        return local.toordinal() * self._per_day + i

    def date_of(self, n: int) -> date:
        return date.fromordinal(n // self._per_day)

    def number_of(self, day: date) -> int | None:
        return day.toordinal() if self._per_day == 1 else None

    def identity(self) -> Hashable:
        return ("times", self.minutes_of_day, self.tz.key)


class Weekly(LocalSchedule):
    """One tick a week, on ``weekday`` (0 = Monday, as ``date.weekday()``) at a wall-clock time."""

    def __init__(self, weekday: int, minute_of_day: int, tz: ZoneInfo) -> None:
        super().__init__(tz)
        self.weekday = weekday
        self.minute_of_day = minute_of_day
        self._base = 1 + weekday  # date.fromordinal(1), 0001-01-01, is a Monday

    def tick(self, n: int) -> int:
        return self._at(date.fromordinal(self._base + 7 * n), self.minute_of_day)

    def _guess(self, local: datetime) -> int:
        return (local.toordinal() - self._base) // 7

    def date_of(self, n: int) -> date:
        return date.fromordinal(self._base + 7 * n)

    def number_of(self, day: date) -> int | None:
        weeks, rest = divmod(day.toordinal() - self._base, 7)
        return None if rest else weeks

    def identity(self) -> Hashable:
        return ("weekly", self.weekday, self.minute_of_day, self.tz.key)


class Monthly(LocalSchedule):
    """One tick a month, on day ``day`` (1..28) at a wall-clock time."""

    def __init__(self, day: int, minute_of_day: int, tz: ZoneInfo) -> None:
        super().__init__(tz)
        self.day = day
        self.minute_of_day = minute_of_day

    def tick(self, n: int) -> int:
        year, month0 = divmod(n, 12)
        return self._at(date(year, month0 + 1, self.day), self.minute_of_day)

    def _guess(self, local: datetime) -> int:
        return local.year * 12 + local.month - 1

    def date_of(self, n: int) -> date:
        year, month0 = divmod(n, 12)
        return date(year, month0 + 1, self.day)

    def number_of(self, day: date) -> int | None:
        return day.year * 12 + day.month - 1 if day.day == self.day else None

    def identity(self) -> Hashable:
        return ("monthly", self.day, self.minute_of_day, self.tz.key)


class CronIteration(Schedule):
    """Ticks of an irregular cron from ``start`` on, computed lazily with croniter and cached.

    Tick 0 is the first one at or after ``start``; ``floor`` of an earlier instant is -1. Each
    cron time is read as a wall-clock time in ``tz``; a time that falls on or before the previous
    tick after DST resolution (a spring-forward gap) is dropped, so ticks strictly increase.
    """

    regular = False
    _CHUNK = 512

    def __init__(self, expression: str, tz: ZoneInfo, start: int) -> None:
        from croniter import croniter

        self.expression = expression
        self.tz = tz
        self.start = start
        base = from_us(start, tz).replace(tzinfo=None) - timedelta(seconds=1)
        self._iter = croniter(expression, base)
        self._ticks: list[int] = []
        self._exhausted = False
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (CronIteration, (self.expression, self.tz, self.start))  # ticks are recomputed

    def _extend(self, done: Any) -> None:
        """Compute more ticks until ``done()`` is true or the cron runs out."""
        from croniter import CroniterError

        with self._lock:
            ticks = self._ticks
            while not self._exhausted and not done():
                for _ in range(self._CHUNK):
                    try:
                        wall = self._iter.get_next(datetime)
                    except (CroniterError, OverflowError, ValueError):
                        self._exhausted = True
                        break
                    t = wall_to_us(wall.replace(fold=0), self.tz)
                    if t >= self.start and (not ticks or t > ticks[-1]):
                        ticks.append(t)

    def tick(self, n: int) -> int:
        if n < 0:
            raise IndexError(f"tick {n} is before the start of the schedule")
        if n >= len(self._ticks):
            self._extend(lambda: n < len(self._ticks))
            if n >= len(self._ticks):
                raise IndexError(f"the cron {self.expression!r} has no tick {n}")
        return self._ticks[n]

    def floor(self, t: int) -> int:
        if not self._ticks or self._ticks[-1] <= t:
            self._extend(lambda: bool(self._ticks) and self._ticks[-1] > t)
        return bisect.bisect_right(self._ticks, t) - 1

    def identity(self) -> Hashable:
        return ("cron", self.expression, self.tz.key, self.start)


# ---------------------------------------------------------------------- cron classification
_DAY_NAMES = re.compile(r"sun|mon|tue|wed|thu|fri|sat")


def schedule_for_cron(expression: str, tz: ZoneInfo, start: int) -> Schedule:
    """The cheapest schedule with the ticks of ``expression`` in ``tz``; ``ValueError`` if invalid."""
    from croniter import croniter

    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"cron={expression!r} is not a cron expression")
    fields = expression.split()
    if not expression.startswith("@") and len(fields) != 5:
        raise ValueError(
            f"cron={expression!r} must have five fields (minute hour day-of-month month day-of-week)"
        )
    try:
        expanded, nth_weekday = croniter.expand(expression)
    except (ValueError, TypeError, KeyError) as exc:  # croniter's errors are ValueErrors
        raise ValueError(f"cron={expression!r} is not a valid cron expression: {exc}") from None
    if len(expanded) != 5:
        raise ValueError(f"cron={expression!r} must have five fields")
    if nth_weekday or _has_special_days(fields) or not _plain(expanded):
        return CronIteration(expression, tz, start)
    minutes, hours, days, months, weekdays = expanded
    every_day = days == ["*"] and months == ["*"] and weekdays == ["*"]
    minute_set = list(range(60)) if minutes == ["*"] else sorted(minutes)
    hour_set = list(range(24)) if hours == ["*"] else sorted(hours)
    if every_day and len(hour_set) == 24 and 60 % len(minute_set) == 0:
        step = 60 // len(minute_set)
        if all(m == minute_set[0] + i * step for i, m in enumerate(minute_set)):
            start_day = datetime.combine(from_us(start, tz).date(), time(0, minute_set[0]))
            return FixedGrid(step * MINUTE_US, wall_to_us(start_day, tz))
    if every_day:
        times = tuple(sorted(h * 60 + m for h in hour_set for m in minute_set))
        gaps = [b - a for a, b in itertools.pairwise(times)] + [times[0] + 1440 - times[-1]]
        # A tick pushed past a spring-forward gap must still come before the next tick.
        if min(gaps) * MINUTE_US > max_offset_change(tz, from_us(start, UTC).year):
            return LocalTimes(times, tz)
        return CronIteration(expression, tz, start)
    if len(hour_set) == 1 and len(minute_set) == 1:
        minute_of_day = hour_set[0] * 60 + minute_set[0]
        if days == ["*"] and months == ["*"] and len(weekdays) == 1 and weekdays != ["*"]:
            return Weekly((weekdays[0] - 1) % 7, minute_of_day, tz)
        if days != ["*"] and len(days) == 1 and days[0] <= 28 and months == ["*"] and weekdays == ["*"]:
            return Monthly(days[0], minute_of_day, tz)
    return CronIteration(expression, tz, start)


def _plain(expanded: list[list[Any]]) -> bool:
    return all(field == ["*"] or all(isinstance(v, int) for v in field) for field in expanded)


def _has_special_days(fields: list[str]) -> bool:
    """``15W``, ``L``, ``5L``, ``1#2``: croniter's expansion does not always show them."""
    if len(fields) != 5:
        return False
    day_of_month, day_of_week = fields[2].lower(), _DAY_NAMES.sub("", fields[4].lower())
    return any(c in day_of_month for c in "lw?") or any(c in day_of_week for c in "l#?")


@functools.lru_cache(maxsize=64)
def max_offset_change(tz: tzinfo, since_year: int) -> int:
    """The largest change of ``tz``'s UTC offset (microseconds) from ``since_year`` to 2100.

    Sampled every two weeks, which sees every DST period. 0 for a zone that keeps one offset over
    those years (UTC, Asia/Kolkata since 1946...).
    """
    biggest = 0
    previous: timedelta | None = None
    moment = datetime(max(1, min(since_year, 2100)), 1, 1, tzinfo=UTC)
    step = timedelta(days=14)
    stop = datetime(2101, 1, 1, tzinfo=UTC)
    while moment < stop:
        offset = moment.astimezone(tz).utcoffset()
        if previous is not None and offset is not None and offset != previous:
            biggest = max(biggest, abs(offset - previous) // _ONE_US)
        previous = offset
        moment += step
    return biggest
