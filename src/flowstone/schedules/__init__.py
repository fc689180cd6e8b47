"""Schedules, sensors and the daemon that evaluates them.

Define with ``pipeline.schedule(...)`` / ``@pipeline.sensor(...)`` (see ``_definitions``); run
``flowstone daemon`` (or ``flowstone dev``) to fire them.
"""

from __future__ import annotations

from flowstone.schedules._daemon import Daemon, PassReport, SensorContext
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
