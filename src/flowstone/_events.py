"""Typed in-process events: what happened to runs and steps, for logs, metrics and the UI.

Subscribers are called synchronously on the thread that records the fact; a failing subscriber
is logged and never breaks a run::

    app.events.subscribe(lambda event: print(event.type, event.asset))
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

_log = logging.getLogger("flowstone.events")

RUN_STARTED = "run.started"
RUN_FINISHED = "run.finished"
STEP_STARTED = "step.started"
STEP_SUCCEEDED = "step.succeeded"
STEP_FAILED = "step.failed"
STEP_SKIPPED = "step.skipped"
# An attempt failed with a retryable error and the step will run again after ``delay_s``
# (data: attempt, delay_s, error).
STEP_RETRYING = "step.retrying"
# Any error recorded on a step (data: the error's to_dict()), beside step.failed / step.retrying.
ERROR = "error"
RESOURCE_SETUP = "resource.setup"
RESOURCE_TEARDOWN = "resource.teardown"
RESOURCE_HEALTH = "resource.health"
CHECKPOINT_REQUESTED = "checkpoint.requested"
CHECKPOINT_APPROVED = "checkpoint.approved"
CHECKPOINT_REJECTED = "checkpoint.rejected"
CHECKPOINT_TIMED_OUT = "checkpoint.timed_out"
SCHEDULE_TICK = "schedule.tick"
SENSOR_POLL = "sensor.poll"
SENSOR_TRIGGERED = "sensor.triggered"
# Emitted by the engine around each I/O manager call, with duration_ms and, when known,
# size_bytes and row_count (not written to the store: they feed metrics and logs).
IO_LOADED = "io.loaded"
IO_STORED = "io.stored"


@dataclass(frozen=True)
class Event:
    type: str
    at: datetime
    run_id: str | None = None
    asset: str | None = None
    partition_key: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[Event], None]
Entry = tuple[Subscriber, frozenset[str]]

# Routes are cached for at most this many event types (types are a fixed set in practice).
_MAX_ROUTES = 256


class _Subscriptions:
    """One immutable snapshot of a bus's subscribers, and which of them take each event type.

    A bus replaces its snapshot, never mutates it: ``emit`` needs no lock, and a route computed
    while another thread subscribes lands in the old snapshot, never in the new one.
    """

    __slots__ = ("entries", "routes", "unwanted")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        # Types every subscriber skips: ``wants`` is one set lookup per call.
        skipped = [excluded for _, excluded in entries]
        self.unwanted: frozenset[str] = frozenset.intersection(*skipped) if skipped else frozenset()
        self.routes: dict[str, tuple[Subscriber, ...]] = {}

    def route(self, event_type: str) -> tuple[Subscriber, ...]:
        """The subscribers taking ``event_type``, in subscription order (cached per type)."""
        subscribers = self.routes.get(event_type)
        if subscribers is None:
            subscribers = tuple(s for s, excluded in self.entries if event_type not in excluded)
            if len(self.routes) < _MAX_ROUTES:
                self.routes[event_type] = subscribers
        return subscribers


class EventBus:
    def __init__(self) -> None:
        self._subscriptions = _Subscriptions([])

    @property
    def _entries(self) -> list[Entry]:
        """(subscriber, the event types it skips), in subscription order."""
        return self._subscriptions.entries

    def subscribe(self, subscriber: Subscriber, *, exclude: Iterable[str] = ()) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it again.

        ``exclude`` names event types it never wants: when no subscriber wants a type, the
        engine does not even build those events (I/O events are a few per step).
        """
        entry = (subscriber, frozenset(exclude))
        with _SUBSCRIBING:
            self._subscriptions = _Subscriptions([*self._entries, entry])

        def unsubscribe() -> None:
            with _SUBSCRIBING:
                self._subscriptions = _Subscriptions([e for e in self._entries if e is not entry])

        return unsubscribe

    @property
    def has_subscribers(self) -> bool:
        """False when nobody listens: callers may skip building an event at all."""
        return bool(self._subscriptions.entries)

    def wants(self, event_type: str) -> bool:
        """True when some subscriber takes events of ``event_type``."""
        subscriptions = self._subscriptions
        return bool(subscriptions.entries) and event_type not in subscriptions.unwanted

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every subscriber taking its type, on this thread, in order."""
        for subscriber in self._subscriptions.route(event.type):
            try:
                subscriber(event)
            except Exception:  # a broken subscriber must not fail the run it observes
                _log.exception("event subscriber %r failed on %s", subscriber, event.type)


# Serializes subscribe/unsubscribe (rare), so two at once never lose one another's change.
_SUBSCRIBING = threading.Lock()
