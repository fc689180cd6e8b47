"""Typed in-process events: what happened to runs and steps, for logs, metrics and the UI.

Subscribers are called on the thread that records the fact, in order; a failing subscriber is
logged and never breaks a run::

    app.events.subscribe(lambda event: print(event.type, event.asset))

A subscriber may take the events of steps in batches (``subscribe(..., batched=True)``, as the
telemetry adapters do): handling a few dozen events in a row costs it markedly less than one at
a time between the engine's own work, since its code and data stay in the CPU's caches. Those
events (``BATCHED_TYPES``) are held, in order, and delivered when ``batch_size`` are held, when
any other event is emitted (``run.finished`` among them: a run's events are all delivered before
``materialize`` returns), on ``flush()``, or by a background thread once they have waited
``batch_delay`` seconds (a long step emits nothing else meanwhile; an event waits at most about
twice that). Each event keeps its own timestamp; it may be delivered on another thread than the
one that emitted it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
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


# The events of steps, a few per step of every run: what ``batched`` subscribers take in batches.
BATCHED_TYPES = frozenset(
    {STEP_STARTED, STEP_SUCCEEDED, STEP_FAILED, STEP_SKIPPED, STEP_RETRYING, ERROR, IO_LOADED, IO_STORED}
)

Subscriber = Callable[[Event], None]
# (subscriber, the event types it skips, whether it takes step events in batches)
Entry = tuple[Subscriber, frozenset[str], bool]
# Who gets an event of one type: now (on the emitting thread), later (batched), and whether
# batched events must be delivered first (any other type, while a batched subscriber exists).
Route = tuple[tuple[Subscriber, ...], tuple[Subscriber, ...], bool]

# Routes are cached for at most this many event types (types are a fixed set in practice).
_MAX_ROUTES = 256


class _Subscriptions:
    """One immutable snapshot of a bus's subscribers, and which of them take each event type.

    A bus replaces its snapshot, never mutates it: ``emit`` needs no lock, and a route computed
    while another thread subscribes lands in the old snapshot, never in the new one.
    """

    __slots__ = ("batched", "entries", "routes", "unwanted")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.batched = any(batched for _, _, batched in entries)
        # Types every subscriber skips: ``wants`` is one set lookup per call.
        skipped = [excluded for _, excluded, _ in entries]
        self.unwanted: frozenset[str] = frozenset.intersection(*skipped) if skipped else frozenset()
        self.routes: dict[str, Route] = {}

    def route(self, event_type: str) -> Route:
        """Who takes ``event_type`` and how, in subscription order (cached per type)."""
        route = self.routes.get(event_type)
        if route is None:
            taking = [(s, batched) for s, excluded, batched in self.entries if event_type not in excluded]
            if event_type in BATCHED_TYPES:
                now = tuple(s for s, batched in taking if not batched)
                route = (now, tuple(s for s, batched in taking if batched), False)
            else:
                route = (tuple(s for s, _ in taking), (), self.batched)
            if len(self.routes) < _MAX_ROUTES:
                self.routes[event_type] = route
        return route


class EventBus:
    """Subscribers of events, and the events held for those taking them in batches.

    ``batch_size`` and ``batch_delay`` (seconds) bound how many step events a batched subscriber
    may be behind, and for how long (see the module docstring); ``batch_size=1`` delivers every
    event as it is emitted.
    """

    def __init__(self, *, batch_size: int = 64, batch_delay: float = 0.5) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if not batch_delay > 0:
            raise ValueError(f"batch_delay must be positive, not {batch_delay}")
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self._subscriptions = _Subscriptions([])
        # Events held for batched subscribers, each with the ones it goes to: appended by any
        # thread, taken out only under ``_delivering`` (so in order, one batch at a time).
        self._held: deque[tuple[Event, tuple[Subscriber, ...]]] = deque()
        self._held_since = 0.0  # time.monotonic() when the first of them was held
        self._delivering = threading.RLock()
        self._ticker: _Ticker | None = None
        _BUSES.add(self)

    def __repr__(self) -> str:
        return f"EventBus(subscribers={len(self._entries)}, held={len(self._held)})"

    @property
    def _entries(self) -> list[Entry]:
        """(subscriber, the event types it skips, batched), in subscription order."""
        return self._subscriptions.entries

    def subscribe(
        self, subscriber: Subscriber, *, exclude: Iterable[str] = (), batched: bool = False
    ) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it again.

        ``exclude`` names event types it never wants: when no subscriber wants a type, the
        engine does not even build those events (I/O events are a few per step). ``batched``:
        it takes ``BATCHED_TYPES`` in batches, a little later and maybe on another thread (see
        the module docstring); the subscriber must then be thread-safe.
        """
        entry: Entry = (subscriber, frozenset(exclude), batched)
        with _SUBSCRIBING:
            self._subscriptions = _Subscriptions([*self._entries, entry])
        if batched:
            # Started now, not when a run holds its first events: a thread starting or waking
            # in the middle of a run slows that run down far more than its own work takes.
            self._start_ticker()

        def unsubscribe() -> None:
            with _SUBSCRIBING:
                remaining = [e for e in self._entries if e is not entry]
                self._subscriptions = _Subscriptions(remaining)
                ticker = self._ticker
                if ticker is not None and not any(batched for _, _, batched in remaining):
                    self._ticker = None
                    ticker.stop()
            if batched:  # what it was sent before it left reaches it before this returns
                self.flush()

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
        """Hand ``event`` to its subscribers: now on this thread, or held for batched ones."""
        now, later, drain = self._subscriptions.route(event.type)
        if drain:  # batched subscribers get every earlier event first (a few such events per run)
            self.flush()
        for subscriber in now:
            try:
                subscriber(event)
            except Exception:  # a broken subscriber must not fail the run it observes
                _log.exception("event subscriber %r failed on %s", subscriber, event.type)
        if later:
            held = self._held
            held.append((event, later))
            count = len(held)
            if count >= self.batch_size:
                self.flush()
            elif count == 1:  # a new batch: the ticker delivers it if it waits batch_delay
                self._held_since = time.monotonic()
                if self._ticker is None:  # none yet in a forked child, say
                    self._start_ticker()

    def flush(self) -> None:
        """Deliver every event held for batched subscribers now, on this thread.

        When it returns, every event emitted before the call has reached them: a delivery under
        way on another thread is waited for. Each subscriber takes the whole batch in turn (its
        code stays hot), its events in the order they were emitted.
        """
        held = self._held
        with self._delivering:
            while held:  # only a thread holding _delivering takes events out
                # Each subscriber's events, in order (by identity: a subscriber may be unhashable).
                queues: dict[int, tuple[Subscriber, list[Event]]] = {}
                for _ in range(len(held)):
                    event, subscribers = held.popleft()
                    for subscriber in subscribers:
                        queue = queues.get(id(subscriber))
                        if queue is None:
                            queue = queues[id(subscriber)] = (subscriber, [])
                        queue[1].append(event)
                for subscriber, events in queues.values():
                    for event in events:
                        try:
                            subscriber(event)
                        except Exception:  # logged, as for a subscriber called at once
                            _log.exception("event subscriber %r failed on %s", subscriber, event.type)

    def _start_ticker(self) -> None:
        with _SUBSCRIBING:
            if self._ticker is None or self._ticker.stopped:
                self._ticker = _Ticker(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent's held events are the parent's to deliver."""
        self._held = deque()
        self._delivering = threading.RLock()
        self._ticker = None


class _Ticker:
    """A bus's background thread: every ``batch_delay`` seconds, delivers a batch of held events
    that waited that long (a long step emits nothing else meanwhile), so no event waits much
    more than twice ``batch_delay``.

    It ticks on its own rather than being woken when events are held: a thread waking in the
    middle of a short run costs that run milliseconds on a busy host (its thread is moved off
    its CPU's warm caches), and while events flow the emitting thread delivers full batches
    itself. It holds the bus only weakly, and ends when the bus is collected or has no batched
    subscriber left.
    """

    def __init__(self, bus: EventBus) -> None:
        self._stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._run,
            args=(weakref.ref(bus), bus.batch_delay),
            name="flowstone-events",
            daemon=True,
        )
        self._finalizer = weakref.finalize(bus, self.stop)
        self.thread.start()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def stop(self) -> None:
        self._finalizer.detach()
        self._stopped.set()

    def _run(self, bus_ref: weakref.ref[EventBus], delay: float) -> None:
        while not self._stopped.wait(delay):
            bus = bus_ref()
            if bus is None:
                return
            # While events flow, the batch held now began moments ago: only one that waited
            # ``delay`` in full is delivered from here.
            if bus._held and bus._held_since + delay <= time.monotonic():
                try:
                    bus.flush()  # subscribers' errors are logged there; this is for the rest
                except Exception:
                    _log.exception("delivering held events failed")
            elif not bus._held and not bus._subscriptions.batched:  # started by a late emit
                self.stop()
                return
            del bus  # held weakly while waiting: the bus may be collected


# Serializes subscribe/unsubscribe and starting a ticker (rare), so none of them is lost.
_SUBSCRIBING = threading.Lock()
_BUSES: weakref.WeakSet[EventBus] = weakref.WeakSet()


def _reset_after_fork() -> None:
    global _SUBSCRIBING
    _SUBSCRIBING = threading.Lock()
    for bus in list(_BUSES):
        bus._after_fork()


def _flush_all() -> None:
    """At exit: deliver what is still held (events of steps of an unfinished run, say)."""
    for bus in list(_BUSES):
        bus.flush()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(_flush_all)
