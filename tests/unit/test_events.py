"""The event bus: subscribers, what they exclude, and what the engine is told to build."""

from __future__ import annotations

from datetime import UTC, datetime

from flowstone._events import Event, EventBus

AT = datetime(2025, 1, 15, tzinfo=UTC)


def test_excluded_types_are_not_delivered_and_not_wanted_when_nobody_takes_them() -> None:
    bus = EventBus()
    assert not bus.wants("io.loaded")  # nobody listens at all
    logs: list[str] = []
    metrics: list[str] = []
    off_logs = bus.subscribe(lambda e: logs.append(e.type), exclude=["io.loaded", "step.started"])
    assert not bus.wants("io.loaded") and bus.wants("step.succeeded")
    off_metrics = bus.subscribe(lambda e: metrics.append(e.type), exclude=["step.started"])
    assert bus.wants("io.loaded") and not bus.wants("step.started")
    for type_ in ("step.started", "io.loaded", "step.succeeded"):
        bus.emit(Event(type_, AT))
    assert logs == ["step.succeeded"]
    assert metrics == ["io.loaded", "step.succeeded"]
    off_metrics()
    assert not bus.wants("io.loaded")
    off_logs()
    assert not bus.has_subscribers and not bus.wants("step.succeeded")
