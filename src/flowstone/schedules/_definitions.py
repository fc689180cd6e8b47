"""Schedules and sensors as definitions: what to run, when, and for which partitions.

    pipeline.schedule("nightly", cron="0 3 * * *", timezone="Europe/Oslo", target=["daily_report"])

    @pipeline.schedule(cron="0 * * * *", target=["hourly_stats"])
    def hourly(tick):                       # optional: the partition (or partitions) for a tick
        return tick.strftime("%Y-%m-%d-%H:00")

    @pipeline.sensor(interval="30s", target=["raw_events"])
    def new_files(context, cursor):
        ...
        return fs.SensorResult(run_requests=["2025-01-15"], cursor="42")

By default a schedule over a time-partitioned asset targets the partition that just closed at the
tick (the nightly run of a daily asset materializes yesterday).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from flowstone._durations import parse_duration
from flowstone._errors import DefinitionError
from flowstone.schedules._cron import CronError, CronSchedule, check_cron, zone

CATCH_UP = ("latest", "all", "none")


@dataclass(frozen=True)
class RunRequest:
    """One run a sensor (or schedule) asks for: partitions of the target (or of ``selection``)."""

    partitions: tuple[str, ...] = ()
    selection: tuple[str, ...] | None = None
    key: str | None = None  # a sensor's own id for the request: the same key never runs twice
    force: bool = False

    def __post_init__(self) -> None:
        # One key given as a string is that key, not its characters.
        partitions: Any = self.partitions
        if isinstance(partitions, str):
            partitions = (partitions,)
        object.__setattr__(self, "partitions", tuple(str(p) for p in partitions or ()))
        selection: Any = self.selection
        if isinstance(selection, str):
            selection = (selection,)
        if selection is not None:
            object.__setattr__(self, "selection", tuple(selection))


@dataclass(frozen=True)
class SensorResult:
    """What one sensor evaluation found.

    ``run_requests``: partition keys (or :class:`RunRequest`) to run; ``cursor``: where to start
    next time (persisted after the evaluation); ``skip_reason``: why nothing was requested;
    ``dynamic_partitions``: keys to add to dynamic partition definitions first.
    """

    run_requests: Sequence[str | RunRequest] = ()
    cursor: str | None = None
    skip_reason: str | None = None
    dynamic_partitions: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def requests(self) -> list[RunRequest]:
        return [
            r if isinstance(r, RunRequest) else RunRequest(partitions=(str(r),)) for r in self.run_requests
        ]


@dataclass(frozen=True)
class ScheduleDefinition:
    name: str
    cron: str
    timezone: str
    target: tuple[str, ...]
    partition: Callable[[datetime], Any] | None = None
    catch_up: str = "latest"
    max_catch_up: int = 50
    description: str | None = None
    location: str = "<unknown>"

    @cached_property
    def schedule(self) -> CronSchedule:
        return CronSchedule(self.cron, self.timezone)


@dataclass(frozen=True)
class SensorDefinition:
    name: str
    fn: Callable[..., Any]
    interval: float
    target: tuple[str, ...]
    timeout: float = 60.0
    description: str | None = None
    location: str = "<unknown>"


def _location(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else "<unknown>"


def _caller_location() -> str:
    import inspect

    frame = inspect.currentframe()
    try:
        outer = frame.f_back.f_back.f_back if frame and frame.f_back and frame.f_back.f_back else None
        return f"{outer.f_code.co_filename}:{outer.f_lineno}" if outer is not None else "<unknown>"
    finally:
        del frame


def _targets(target: Any, what: str, fail: Callable[[str], DefinitionError]) -> tuple[str, ...]:
    if isinstance(target, str):
        target = [target]
    names = []
    for item in target or ():
        name = item if isinstance(item, str) else getattr(item, "name", None)
        if not isinstance(name, str):
            raise fail(f"{what} target must be asset names or selections, got {item!r}")
        names.append(name)
    if not names:
        raise fail(f"{what} needs a target: target=['asset', ...]")
    return tuple(names)


def build_schedule(
    name: str,
    *,
    cron: str,
    target: Any,
    timezone: str = "UTC",
    partition: Callable[[datetime], Any] | None = None,
    catch_up: str = "latest",
    max_catch_up: int = 50,
    description: str | None = None,
    location: str | None = None,
) -> ScheduleDefinition:
    where = location or _caller_location()

    def fail(text: str) -> DefinitionError:
        return DefinitionError(
            f"{where}: schedule '{name}': {text}", context={"schedule": name, "location": where}
        )

    if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
        raise fail("the name must be an identifier (letters, digits, _ and -)")
    try:
        check_cron(cron)
        zone(timezone)
    except CronError as exc:
        raise fail(str(exc)) from None
    if catch_up not in CATCH_UP:
        raise fail(f"catch_up must be one of {list(CATCH_UP)}, got {catch_up!r}")
    if not isinstance(max_catch_up, int) or max_catch_up < 1:
        raise fail(f"max_catch_up must be a positive integer, got {max_catch_up!r}")
    if partition is not None and not callable(partition):
        raise fail("partition must be a function (tick datetime) -> partition key(s)")
    return ScheduleDefinition(
        name=name,
        cron=cron,
        timezone=timezone,
        target=_targets(target, f"schedule '{name}'", fail),
        partition=partition,
        catch_up=catch_up,
        max_catch_up=max_catch_up,
        description=description,
        location=where,
    )


def build_sensor(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    interval: str | float | timedelta = "30s",
    target: Any,
    timeout: str | float | timedelta = "60s",
    description: str | None = None,
    location: str | None = None,
) -> SensorDefinition:
    sensor_name = str(name or getattr(fn, "__name__", ""))
    where = location or _location(fn)

    def fail(text: str) -> DefinitionError:
        return DefinitionError(
            f"{where}: sensor '{sensor_name}': {text}", context={"sensor": sensor_name, "location": where}
        )

    if not callable(fn):
        raise fail("@pipeline.sensor must decorate a function (context, cursor) -> SensorResult")
    if not sensor_name.replace("-", "_").isidentifier():
        raise fail("the name must be an identifier")
    try:
        interval_s = parse_duration(interval)
        timeout_s = parse_duration(timeout)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if interval_s <= 0:
        raise fail("interval must be positive")
    return SensorDefinition(
        name=sensor_name,
        fn=fn,
        interval=interval_s,
        target=_targets(target, f"sensor '{sensor_name}'", fail),
        timeout=timeout_s,
        description=description or (fn.__doc__ or "").strip() or None,
        location=where,
    )


def schedule_target_problem(schedule: ScheduleDefinition, pipeline: Any) -> str | None:
    """Why the ticks of ``schedule`` cannot pick their partitions by default, or None.

    A schedule without a ``partition`` function runs the partition that just closed, which only
    time-window partitions have: a target partitioned otherwise needs the function. For
    ``Pipeline.problems`` (unknown targets are reported there already, so they pass here).
    """
    from flowstone.partitions._time import TimeWindowPartitions

    if schedule.partition is not None:
        return None
    try:
        selected = pipeline.graph.select(list(schedule.target))
    except Exception:
        return None
    for asset in sorted(selected):
        partitions = pipeline.assets[asset].partitioned_by
        if partitions is None:
            continue
        if isinstance(partitions, TimeWindowPartitions):
            return None
        return (
            f"schedule '{schedule.name}' targets '{asset}', partitioned by {partitions!r}, which has no "
            "time windows: give the schedule a partition function (tick -> partition key)"
        )
    return None


def closed_partition(definition: Any, tick: datetime) -> str | None:
    """The key of the time window of ``definition`` that closed last at or before ``tick``.

    That is the window ``[start, end)`` with the latest ``end <= tick``: at a daily 02:00 tick in
    the partitions' zone it is yesterday, also on the 23- and 25-hour days of DST switches. None
    when ``definition`` is not time-windowed, when no window has ended by ``tick``, and past a
    bounded definition's ``end`` (once the window after its last one would have ended). Unlike
    ``key_for_time`` this does not depend on the real clock, so previews of future ticks and fake
    clocks in tests give the same answer as the daemon at that time.
    """
    from flowstone.partitions._schedules import to_us
    from flowstone.partitions._time import TimeWindowPartitions

    if not isinstance(definition, TimeWindowPartitions):
        return None
    at = to_us(tick.astimezone(UTC))
    if at < definition._start_us:
        return None
    n = definition._sched.floor(at) - 1  # the window containing ``tick`` is still open
    if n < definition._first or (definition._last is not None and n >= definition._last):
        return None
    return definition._encode(n)
