"""Cron tick times in a time zone, DST-correct.

Ticks are computed by croniter in the schedule's zone and handled as absolute instants (UTC).
Two rules make daylight-saving changes behave as a person expects:

- a wall time that does not exist (spring forward) fires once, right after the gap;
- a wall time that happens twice (fall back) fires once, at its first occurrence — unless the
  schedule runs every hour (hour field ``*``), where both absolute hours are real hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class CronError(ValueError):
    pass


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown timezone {name!r} (an IANA name such as 'Europe/Oslo' or 'UTC')") from None


def check_cron(expression: str) -> None:
    from croniter import croniter

    if not isinstance(expression, str) or len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise CronError(
            f"invalid cron expression {expression!r} (five fields: minute hour day month weekday)"
        )


class CronSchedule:
    """The ticks of ``expression`` in zone ``timezone``."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        check_cron(expression)
        self.expression = expression
        self.tz = zone(timezone)
        self._hourly = expression.split()[1] == "*"

    def _iter(self, start: datetime) -> Iterator[datetime]:
        from croniter import croniter

        it = croniter(self.expression, start.astimezone(self.tz))
        previous_wall: datetime | None = None
        while True:
            tick: datetime = it.get_next(datetime)
            wall = tick.replace(tzinfo=None)
            if not self._hourly and previous_wall is not None and wall == previous_wall:
                continue  # the repeated hour of a fall-back day: fired at its first occurrence
            previous_wall = wall
            yield tick.astimezone(UTC)

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        return next(self._iter(moment))

    def ticks_between(self, after: datetime, until: datetime, *, limit: int = 100_000) -> list[datetime]:
        """Ticks in ``(after, until]``, oldest first (at most ``limit``, the latest ones)."""
        found: list[datetime] = []
        for tick in self._iter(after):
            if tick > until:
                break
            found.append(tick)
            if len(found) > limit:
                found.pop(0)
        return found

    def latest_at_or_before(
        self, moment: datetime, *, horizon: timedelta = timedelta(days=400)
    ) -> datetime | None:
        ticks = self.ticks_between(moment - horizon, moment, limit=1)
        return ticks[-1] if ticks else None

    def preview(self, after: datetime, count: int) -> list[datetime]:
        it = self._iter(after)
        return [next(it) for _ in range(count)]
