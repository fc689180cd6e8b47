"""Declarative automation conditions: what ``@pipeline.asset(automation=...)`` takes.

Kept apart from the evaluator (``_automation``) so that defining an asset stays light::

    @pipeline.asset(automation=[fs.eager(), fs.freshness(max_lag="6h")])
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flowstone._durations import parse_duration
from flowstone.schedules._cron import CronSchedule, check_cron, zone


# ---------------------------------------------------------------------- conditions
class AutomationCondition:
    """Base class of what ``automation=`` takes: ``eager()``, ``on_cron(...)``, ``freshness(...)``."""

    __slots__ = ()


@dataclass(frozen=True)
class Eager(AutomationCondition):
    """Materialize when an upstream partition read has a newer materialization (see module doc)."""

    def __repr__(self) -> str:
        return "eager()"


@dataclass(frozen=True)
class OnCron(AutomationCondition):
    """Materialize once per cron tick, after the upstream assets were updated since the tick."""

    cron: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        check_cron(self.cron)
        zone(self.timezone)

    @property
    def schedule(self) -> CronSchedule:
        return CronSchedule(self.cron, self.timezone)

    def __repr__(self) -> str:
        tz = "" if self.timezone == "UTC" else f", timezone={self.timezone!r}"
        return f"on_cron({self.cron!r}{tz})"


@dataclass(frozen=True)
class Freshness(AutomationCondition):
    """Overdue (event and notification) when the latest success is older than ``max_lag``."""

    max_lag: timedelta

    def __repr__(self) -> str:
        seconds = self.max_lag.total_seconds()
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size and seconds % size == 0:
                return f"freshness(max_lag='{seconds / size:g}{unit}')"
        return f"freshness(max_lag='{seconds:g}s')"


def eager() -> Eager:
    """Materialize a partition when a partition it reads has a newer materialization, once none
    of the partitions it reads is failing or missing."""
    return Eager()


def on_cron(cron: str, timezone: str = "UTC") -> OnCron:
    """Materialize after each tick of ``cron`` (in ``timezone``), once the upstream assets have
    been updated since the tick. ``ValueError`` for a bad expression or zone."""
    return OnCron(cron, timezone)


def freshness(max_lag: str | float | timedelta = "6h") -> Freshness:
    """Mark the asset overdue (event ``asset.overdue``, notification) when its latest successful
    materialization is older than ``max_lag`` (``"6h"``, ``"90m"``, seconds or a timedelta)."""
    return Freshness(timedelta(seconds=parse_duration(max_lag)))


_KNOWN = (Eager, OnCron, Freshness)
_EXPECTED = "expected eager(), on_cron(...) or freshness(...) (or a list of them)"


def check_condition(condition: Any) -> str | None:
    """None when ``condition`` is an automation condition (or a valid list of them), else what is
    wrong with it."""
    items = list(condition) if isinstance(condition, (list, tuple)) else [condition]
    if not items:
        return f"{_EXPECTED}, got an empty list"
    for item in items:
        if not isinstance(item, _KNOWN):
            return f"{_EXPECTED}, got {item!r}"
    triggers = [i for i in items if isinstance(i, (Eager, OnCron))]
    if len(triggers) > 1:
        return f"at most one of eager() and on_cron(...) per asset, got {triggers!r}"
    if sum(isinstance(i, Freshness) for i in items) > 1:
        return "at most one freshness(...) per asset"
    return None


def conditions_of(value: Any) -> tuple[AutomationCondition, ...]:
    """The conditions of an asset's ``automation=`` value (``()`` for None)."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(v for v in value if isinstance(v, AutomationCondition))
    return (value,) if isinstance(value, AutomationCondition) else ()
