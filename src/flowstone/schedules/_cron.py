"""Cron tick times in a time zone, DST-correct.

croniter walks the cron's wall-clock times (naive, in the schedule's zone); each wall time is then
resolved to an absolute instant (UTC) by these rules, so daylight-saving changes behave as a
person expects:

- a wall time that does not exist (spring forward) fires once, at the end of the gap (a daily
  02:30 in Europe/Oslo fires at 03:00 on the last Sunday of March);
- a wall time that happens twice (fall back) fires once, at its first occurrence;
- a schedule that runs every hour (hour field ``*``) is about absolute hours instead: the repeated
  hour of a fall-back night fires twice (both are real hours) and the hour that does not exist in
  spring does not fire at all (no hour is lost either way).

Ticks come out strictly increasing whatever the zone does, and the ticks after any moment are the
same whichever moment an iteration starts from (a daemon's cursor may sit anywhere, also inside a
repeated hour).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# The largest change of a zone's UTC offset the iteration allows for (DST moves by one hour, a few
# zones by two). Wall times this far before a moment are looked at, and a tick is handed out once
# wall times this far past it have been seen.
SWING = timedelta(hours=3)
_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


class CronError(ValueError):
    pass


def zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name.strip():
        raise CronError(f"unknown timezone {name!r} (an IANA name such as 'Europe/Oslo' or 'UTC')")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(f"unknown timezone {name!r} (an IANA name such as 'Europe/Oslo' or 'UTC')") from None


def check_cron(expression: str) -> None:
    """Raise :class:`CronError` unless ``expression`` is a five-field cron that ever fires."""
    from croniter import CroniterError, croniter

    shape_ok = isinstance(expression, str) and (
        len(expression.split()) == 5 or expression.strip() in _ALIASES
    )
    if not shape_ok or not croniter.is_valid(expression):
        raise CronError(
            f"invalid cron expression {expression!r} (five fields: minute hour day month weekday)"
        )
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterError, ValueError, OverflowError):
        raise CronError(f"cron expression {expression!r} never fires (no such date)") from None


def _every_hour(expression: str) -> bool:
    from croniter import croniter

    expanded, _ = croniter.expand(expression)
    return bool(expanded[1] == ["*"])


class CronSchedule:
    """The ticks of ``expression`` in zone ``timezone``."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        check_cron(expression)
        self.expression = expression.strip()
        self.timezone = timezone
        self.tz = zone(timezone)
        self.hourly = _every_hour(self.expression)

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.timezone!r})"

    # ------------------------------------------------------------------ wall time -> instants
    def resolve(self, wall: datetime) -> list[datetime]:
        """The instants (UTC) a cron wall-clock time fires at: usually one; none or two around DST."""
        tz = self.tz
        first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        exists = first.astimezone(tz).replace(tzinfo=None) == wall
        if exists:  # the repeated hour of a fall-back night
            early, late = sorted((first, second))
            return [early, late] if self.hourly else [early]
        if self.hourly:  # the hour that does not exist: no absolute hour is skipped
            return []
        return [self._gap_end(*sorted((first, second)))]

    def _gap_end(self, before: datetime, after: datetime) -> datetime:
        """The instant the zone's offset changes, between ``before`` and ``after`` (a gap)."""
        tz = self.tz
        target = after.astimezone(tz).utcoffset()
        lo, hi = int(before.timestamp()), int(after.timestamp())
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if datetime.fromtimestamp(mid, tz).utcoffset() == target:
                hi = mid
            else:
                lo = mid
        return datetime.fromtimestamp(hi, UTC)

    # ------------------------------------------------------------------ iteration
    def _iter(self, after: datetime) -> Iterator[datetime]:
        """The ticks strictly after ``after``, oldest first (UTC)."""
        from croniter import CroniterError, croniter

        after = after.astimezone(UTC)
        tz = self.tz
        start_wall = after.astimezone(tz).replace(tzinfo=None) - SWING
        walls = croniter(self.expression, start_wall)
        pending: list[datetime] = []
        last = after
        while True:
            try:
                wall: datetime | None = walls.get_next(datetime)
            except (CroniterError, ValueError, OverflowError):
                wall = None  # no further dates: hand out what is left
            horizon = None if wall is None else wall.replace(tzinfo=tz).astimezone(UTC) - SWING
            while pending and (horizon is None or pending[0] < horizon):
                tick = heapq.heappop(pending)
                if tick > last:
                    last = tick
                    yield tick
            if wall is None:
                return
            for tick in self.resolve(wall):
                if tick > last:
                    heapq.heappush(pending, tick)

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        for tick in self._iter(moment):
            return tick
        raise CronError(f"cron expression {self.expression!r} has no tick after {moment.isoformat()}")

    def ticks_between(self, after: datetime, until: datetime, *, limit: int | None = None) -> list[datetime]:
        """Ticks in ``(after, until]``, oldest first; with ``limit`` only the latest ``limit``.

        With a limit the search starts near ``until`` and widens, so a cursor from long ago does
        not mean iterating every tick since.
        """
        if until <= after:
            return []
        if limit is None:
            return self._collect(after, until)
        if limit < 1:
            return []
        span = timedelta(hours=1)
        while True:
            start = max(after, until - span)
            found = self._collect(start, until)
            if len(found) >= limit or start == after:
                return found[-limit:]
            span *= 4

    def _collect(self, after: datetime, until: datetime) -> list[datetime]:
        found = []
        for tick in self._iter(after):
            if tick > until:
                break
            found.append(tick)
        return found

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        ticks = self.ticks_between(moment - timedelta(days=366 * 30), moment, limit=1)
        return ticks[-1] if ticks else None

    def preview(self, after: datetime, count: int) -> list[datetime]:
        ticks: list[datetime] = []
        for tick in self._iter(after):
            if len(ticks) >= count:
                break
            ticks.append(tick)
        return ticks
