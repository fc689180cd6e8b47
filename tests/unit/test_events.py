"""The event bus: subscribers, what they exclude, and what the engine is told to build."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

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


def test_who_gets_an_event_follows_every_subscribe_and_unsubscribe() -> None:
    bus = EventBus()
    first: list[str] = []
    second: list[str] = []
    off_first = bus.subscribe(lambda e: first.append(e.type))
    bus.emit(Event("step.succeeded", AT))
    off_second = bus.subscribe(lambda e: second.append(e.type), exclude=["run.finished"])
    bus.emit(Event("step.succeeded", AT))
    bus.emit(Event("run.finished", AT))
    off_first()
    bus.emit(Event("step.succeeded", AT))
    off_second()
    off_second()  # twice is harmless
    bus.emit(Event("step.succeeded", AT))
    assert first == ["step.succeeded", "step.succeeded", "run.finished"]
    assert second == ["step.succeeded", "step.succeeded"]


def test_a_failing_subscriber_is_logged_and_the_others_still_get_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(lambda e: seen.append(e.type))
    with caplog.at_level(logging.ERROR, logger="flowstone.events"):
        bus.emit(Event("step.succeeded", AT))
    assert seen == ["step.succeeded"]
    assert any("subscriber bug" in (r.exc_text or "") for r in caplog.records)
