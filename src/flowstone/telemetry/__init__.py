"""Telemetry for FlowStone runs: JSON logs, OpenTelemetry spans and Prometheus metrics.

Each adapter is an event subscriber: ``adapter.attach(app.events)`` (or
``app.events.subscribe(adapter)``) starts it and returns the function that stops it. ``enable``
does that for several at once::

    from flowstone.telemetry import enable
    detach = enable(app, json_logs=True, otel=True, prometheus=metrics)
    ...
    detach()

Attached adapters take the events of steps in small batches (cheaper per event; in order, and
all delivered by the time ``materialize`` returns: see ``flowstone._events``);
``attach(bus, batched=False)`` delivers every event as it is emitted instead.

OpenTelemetry and prometheus-client are optional (``flowstone[otel]``, ``flowstone[prometheus]``)
and only imported when an adapter that needs them is created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flowstone.telemetry._json_logs import LOGGER_NAME, JsonLogs, event_level, event_record
from flowstone.telemetry._otel import OpenTelemetrySpans
from flowstone.telemetry._prometheus import MetricsServer, PrometheusMetrics, StoreMetrics, serve_metrics

if TYPE_CHECKING:
    from flowstone._app import FlowStone

__all__ = [
    "LOGGER_NAME",
    "JsonLogs",
    "MetricsServer",
    "OpenTelemetrySpans",
    "PrometheusMetrics",
    "StoreMetrics",
    "enable",
    "event_level",
    "event_record",
    "serve_metrics",
]


def enable(
    app: FlowStone,
    *,
    json_logs: bool | JsonLogs = False,
    otel: bool | OpenTelemetrySpans = False,
    prometheus: bool | PrometheusMetrics = False,
) -> Callable[[], None]:
    """Attach the chosen adapters to ``app.events``; returns one function detaching them all.

    ``True`` creates an adapter with its defaults (JSON through ``logging``, spans on the global
    tracer provider, metrics in a registry of their own); pass an instance to configure it or to
    keep a handle on it (``metrics.registry``). Every adapter is created before any is attached,
    so a missing extra attaches nothing.
    """
    adapters: list[JsonLogs | OpenTelemetrySpans | PrometheusMetrics] = []
    if json_logs is not False:
        adapters.append(JsonLogs() if json_logs is True else json_logs)
    if otel is not False:
        adapters.append(OpenTelemetrySpans(pipeline=app.pipeline.name) if otel is True else otel)
    if prometheus is not False:
        adapters.append(PrometheusMetrics() if prometheus is True else prometheus)
    detachers = [adapter.attach(app.events) for adapter in adapters]

    def detach() -> None:
        for undo in reversed(detachers):
            undo()

    return detach
