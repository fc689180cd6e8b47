"""The event bus: subscribers, what they exclude, and what the engine is told to build."""

from __future__ import annotations

import gc
import logging
import os
import threading
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


# ---------------------------------------------------------------------- batched subscribers
def step(type_: str, asset: str, run_id: str = "r1") -> Event:
    return Event(type_, AT, run_id, asset)


def test_batched_subscribers_get_step_events_in_order_when_a_batch_fills_or_another_event_comes() -> None:
    bus = EventBus(batch_size=3, batch_delay=3600)  # no delivery by time in this test
    batched: list[tuple[str, str | None]] = []
    plain: list[tuple[str, str | None]] = []
    bus.subscribe(lambda e: batched.append((e.type, e.asset)), batched=True)
    bus.subscribe(lambda e: plain.append((e.type, e.asset)))
    bus.emit(Event("run.started", AT, "r1"))
    bus.emit(step("step.started", "a"))
    bus.emit(step("step.succeeded", "a"))
    assert plain == [("run.started", None), ("step.started", "a"), ("step.succeeded", "a")]
    assert batched == [("run.started", None)]  # the step events are held
    bus.emit(step("step.started", "b"))  # the third held: the batch is delivered
    assert batched == plain
    bus.emit(step("step.succeeded", "b"))
    bus.emit(Event("run.finished", AT, "r1"))  # any other event delivers what is held first
    assert batched == plain
    assert plain == [
        ("run.started", None),
        ("step.started", "a"),
        ("step.succeeded", "a"),
        ("step.started", "b"),
        ("step.succeeded", "b"),
        ("run.finished", None),
    ]
    bus.emit(step("step.failed", "c"))
    assert batched[-1] == ("run.finished", None)
    bus.flush()
    assert batched == plain


def test_each_batched_subscriber_gets_its_own_types_in_order_and_failures_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(batch_size=100, batch_delay=3600)
    starts: list[str | None] = []
    everything: list[str] = []

    class Unhashable:  # compared by value, so not hashable: still a fine subscriber
        def __eq__(self, other: object) -> bool:
            return isinstance(other, Unhashable)

        __hash__ = None  # type: ignore[assignment]

        def __call__(self, event: Event) -> None:
            if event.asset == "bad":
                raise RuntimeError("cannot take this one")
            everything.append(f"{event.type} {event.asset}")

    bus.subscribe(lambda e: starts.append(e.asset), exclude=["step.succeeded"], batched=True)
    bus.subscribe(Unhashable(), batched=True)
    for asset in ("a", "bad", "b"):
        bus.emit(step("step.started", asset))
        bus.emit(step("step.succeeded", asset))
    with caplog.at_level(logging.ERROR, logger="flowstone.events"):
        bus.flush()
    assert starts == ["a", "bad", "b"]
    assert everything == ["step.started a", "step.succeeded a", "step.started b", "step.succeeded b"]
    assert sum("cannot take this one" in (r.exc_text or "") for r in caplog.records) == 2


def test_held_events_are_delivered_in_the_background_once_they_waited_batch_delay() -> None:
    bus = EventBus(batch_size=1000, batch_delay=0.01)
    delivered = threading.Event()
    threads: list[str] = []

    def subscriber(event: Event) -> None:
        threads.append(threading.current_thread().name)
        delivered.set()

    bus.subscribe(subscriber, batched=True)
    bus.emit(step("step.succeeded", "a"))  # nothing else comes (a long step runs, say)
    assert delivered.wait(timeout=30)
    assert threads == ["flowstone-events"]


def test_unsubscribing_delivers_what_is_held_first_and_stops_the_background_thread() -> None:
    bus = EventBus(batch_size=1000, batch_delay=3600)
    bus.subscribe(lambda e: None)
    assert bus._ticker is None  # subscribers taking every event at once need no thread
    seen: list[str | None] = []
    unsubscribe = bus.subscribe(lambda e: seen.append(e.asset), batched=True)
    ticker = bus._ticker  # started with the subscription, never in the middle of a run
    assert ticker is not None and ticker.thread.is_alive()
    bus.emit(step("step.started", "a"))
    assert bus._ticker is ticker
    unsubscribe()
    assert seen == ["a"]
    ticker.thread.join(timeout=30)
    assert not ticker.thread.is_alive() and bus._ticker is None
    bus.emit(step("step.started", "b"))
    bus.flush()
    assert seen == ["a"]


def test_the_background_thread_ends_with_its_bus() -> None:
    bus = EventBus(batch_size=1000, batch_delay=0.01)
    delivered = threading.Event()
    bus.subscribe(lambda e: delivered.set(), batched=True)
    bus.emit(step("step.started", "a"))
    assert delivered.wait(timeout=30)  # the thread delivered it, and now waits for more
    ticker = bus._ticker
    assert ticker is not None
    del bus
    gc.collect()
    ticker.thread.join(timeout=30)
    assert not ticker.thread.is_alive()


def test_flush_waits_for_a_delivery_under_way_on_another_thread() -> None:
    bus = EventBus(batch_size=1000, batch_delay=3600)
    inside, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def slow(event: Event) -> None:
        if event.asset == "a":
            inside.set()
            assert release.wait(timeout=30)
        seen.append(event.type)

    bus.subscribe(slow, batched=True)
    bus.emit(step("step.succeeded", "a"))
    other = threading.Thread(target=bus.flush)
    other.start()
    assert inside.wait(timeout=30)  # the other thread took the batch and is delivering it
    finished = threading.Event()

    def emit_run_finished() -> None:
        bus.emit(Event("run.finished", AT, "r1"))
        finished.set()

    emitter = threading.Thread(target=emit_run_finished)
    emitter.start()
    assert not finished.wait(timeout=0.2)  # run.finished waits for the earlier event
    release.set()
    assert finished.wait(timeout=30)
    other.join(timeout=30)
    emitter.join(timeout=30)
    assert seen == ["step.succeeded", "run.finished"]


def test_batch_size_one_delivers_every_event_as_it_is_emitted() -> None:
    bus = EventBus(batch_size=1)
    seen: list[str] = []
    bus.subscribe(lambda e: seen.append(e.type), batched=True)
    bus.emit(step("step.started", "a"))
    assert seen == ["step.started"]
    with pytest.raises(ValueError, match="batch_size"):
        EventBus(batch_size=0)
    with pytest.raises(ValueError, match="batch_delay"):
        EventBus(batch_delay=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_delivers_what_its_parent_held() -> None:
    bus = EventBus(batch_size=1000, batch_delay=3600)
    read, write = os.pipe()

    def report(event: Event) -> None:
        os.write(write, f"{os.getpid()} {event.asset}\n".encode())

    bus.subscribe(report, batched=True)
    bus.emit(step("step.started", "parent's"))
    pid = os.fork()
    if pid == 0:  # the child: its own events only
        try:
            bus.emit(step("step.started", "child's"))
            bus.flush()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    bus.flush()
    os.close(write)
    with os.fdopen(read) as lines:
        delivered = [line.split(" ", 1) for line in lines.read().splitlines()]
    assert delivered == [[str(pid), "child's"], [str(os.getpid()), "parent's"]]
