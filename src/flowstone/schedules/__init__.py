"""Schedules, sensors and the daemon that evaluates them.

Define with ``pipeline.schedule(...)`` / ``@pipeline.sensor(...)`` (see ``_definitions``); run
``flowstone daemon`` (or ``flowstone dev``) to fire them. The daemon and its store access are
imported only when asked for, so defining a schedule keeps ``import flowstone`` light.
"""

from __future__ import annotations

from typing import Any

from flowstone.schedules._definitions import RunRequest, ScheduleDefinition, SensorDefinition, SensorResult

__all__ = [
    "Daemon",
    "PassReport",
    "RunRequest",
    "ScheduleDefinition",
    "SensorContext",
    "SensorDefinition",
    "SensorResult",
]


def __getattr__(name: str) -> Any:
    if name in ("Daemon", "PassReport", "SensorContext"):
        from flowstone.schedules import _daemon

        return getattr(_daemon, name)
    raise AttributeError(name)
