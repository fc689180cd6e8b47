"""OpenTelemetry traces of runs: one ``flowstone.run`` span, one child span per step.

Only the OpenTelemetry *API* is used; where spans go is up to the tracer provider you configure
(the SDK with an OTLP exporter, say)::

    from opentelemetry.sdk.trace import TracerProvider
    OpenTelemetrySpans(TracerProvider(...)).attach(app.events)

Spans start and end at the events' own timestamps. The run span is a child of whatever span is
current when ``materialize`` is called, so a run nests in a request or job trace. I/O, retries
and any other event of a run become span events on the step's span (or the run's).

A step's span is made when the step ends, with its start time from ``step.started`` and every
attribute at once (the SDK then checks attributes once, and a step costs one call into it); it
is made sooner when an event must be added to it before then (a retry, an I/O call). Span
processors therefore see a step's span start when the step ends, or at that event.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flowstone._errors import ConfigurationError
from flowstone._events import Event, EventBus
from flowstone.telemetry._json_logs import _once

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import AttributeValue

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RUN_ERRORS = frozenset({"failed", "abandoned"})

StepKey = tuple[str | None, str | None]


def _ns(at: datetime) -> int:
    """An event time as integer nanoseconds since the epoch, exactly (no float rounding)."""
    delta = (at if at.tzinfo is not None else at.replace(tzinfo=UTC)) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _attribute(value: Any) -> AttributeValue | None:
    """``value`` as an attribute value (str, bool, int, float); structures as JSON text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    try:
        return json.dumps(value, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


def _error(value: Any) -> tuple[str | None, str | None]:
    """(type, message) of an event's ``error``: a ``FlowStoneError.to_dict()``, exception or text."""
    if isinstance(value, Mapping):
        kind, message = value.get("type"), value.get("message")
        return (None if kind is None else str(kind)), (None if message is None else str(message))
    if isinstance(value, BaseException):
        return str(getattr(value, "type", type(value).__name__)), str(value)
    return None, None if value is None else str(value)


def _event_attributes(event: Event, step: StepKey | None) -> dict[str, AttributeValue]:
    """An event's data as ``flowstone.*`` span event attributes (``None`` values left out).

    What only repeats the step the span is for (its asset and partition, a load's consumer)
    is left out too: the SDK checks every attribute, and the span already says so.
    """
    attributes: dict[str, AttributeValue] = {}
    if step is None or (event.asset, event.partition_key) != step:
        if event.asset is not None:
            attributes["flowstone.asset"] = event.asset
        if event.partition_key is not None:
            attributes["flowstone.partition"] = event.partition_key
    for key, value in event.data.items():
        if key == "error":
            kind, message = _error(value)
            if kind is not None:
                attributes["flowstone.error_type"] = kind
            if message is not None:
                attributes["flowstone.error_message"] = message
            continue
        if key == "consumer" and step is not None and value == step[0]:
            continue
        converted = _attribute(value)
        if converted is not None:
            attributes[f"flowstone.{key}"] = converted
    return attributes


def _ignore(event: Event) -> None:
    pass


@dataclass
class _RunSpans:
    span: Span
    context: Context
    # The run's open steps: a step's span once made, until then when it started (ns since the
    # epoch): the span is made when the step ends unless an event must be added to it sooner.
    steps: dict[StepKey, Span | int] = field(default_factory=dict)
    failed: int = 0
    skipped: int = 0


class OpenTelemetrySpans:
    """Turns run and step events into OpenTelemetry spans.

    ``tracer_provider`` defaults to the global one (``opentelemetry.trace.set_tracer_provider``).
    ``pipeline`` names the pipeline on run spans (``enable`` fills it in from the app).
    ``io_events=True`` adds a span event per I/O call (duration, bytes) to the step's span; off
    by default, since a rollup reading many partitions makes many and each costs a few
    microseconds in the SDK. Thread-safe: I/O events
    arrive from worker threads.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        pipeline: str | None = None,
        io_events: bool = False,
    ) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise ConfigurationError(
                "OpenTelemetry spans need the OpenTelemetry API: pip install 'flowstone[otel]'",
                context={"extra": "otel"},
                original=exc,
            ) from exc
        from flowstone import __version__

        self._trace = trace
        self._tracer = trace.get_tracer("flowstone", __version__, tracer_provider=tracer_provider)
        self.pipeline = pipeline
        self._runs: dict[str, _RunSpans] = {}
        self._lock = threading.Lock()
        self._handlers: dict[str, Callable[[Event], None]] = {
            "run.started": self._run_started,
            "run.finished": self._run_finished,
            "step.started": self._step_started,
            "step.succeeded": self._step_succeeded,
            "step.failed": self._step_failed,
            "step.skipped": self._step_skipped,
            "io.loaded": self._io_loaded,
            "error": self._error,
        }
        self._io_events = io_events
        if not io_events:
            self._handlers["io.loaded"] = self._handlers["io.stored"] = _ignore

    def __repr__(self) -> str:
        return f"OpenTelemetrySpans(pipeline={self.pipeline!r}, open_runs={len(self._runs)})"

    def attach(self, bus: EventBus, *, batched: bool = True) -> Callable[[], None]:
        """Subscribe to ``bus``; returns the function that detaches again (safe to call twice).

        ``batched`` (the default): the events of steps reach it in batches, in order, by the end
        of their run at the latest (see ``flowstone._events``); ``False`` delivers each event as
        it is emitted, on the thread that emits it.
        """
        excluded = () if self._io_events else ("io.loaded", "io.stored")
        return _once(bus.subscribe(self, exclude=excluded, batched=batched))

    def __call__(self, event: Event) -> None:
        if not self._runs and event.type != "run.started":
            return  # no run is being recorded (none started, or no SDK): nothing to add to
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(event)
        else:
            self._span_event(event, self._target(event, (event.asset, event.partition_key)))

    # ------------------------------------------------------------------ runs
    def _run_started(self, event: Event) -> None:
        if event.run_id is None:
            return
        attributes: dict[str, AttributeValue] = {"flowstone.run_id": event.run_id}
        pipeline = event.data.get("pipeline") or self.pipeline
        if pipeline is not None:
            attributes["flowstone.pipeline"] = str(pipeline)
        steps = event.data.get("steps")
        if isinstance(steps, int):
            attributes["flowstone.step_count"] = steps
        # No context given: the span is a child of whatever is current in the caller's thread.
        span = self._tracer.start_span("flowstone.run", attributes=attributes, start_time=_ns(event.at))
        if not span.is_recording():
            # No SDK, or the run was sampled out: its step spans would record nothing either,
            # so the run's other events are skipped at the cost of one dict lookup.
            span.end()
            return
        with self._lock:
            self._runs[event.run_id] = _RunSpans(span, self._trace.set_span_in_context(span))

    def _run_finished(self, event: Event) -> None:
        with self._lock:
            run = self._runs.pop(event.run_id, None) if event.run_id is not None else None
        if run is None:
            return
        end = _ns(event.at)
        for key, leftover in run.steps.items():  # not normally any: every started step ends
            self._close(run, key, leftover, {"flowstone.status": "unknown"}).end(end_time=end)
        status = str(event.data.get("status", "unknown"))
        span = run.span
        span.set_attributes(
            {
                "flowstone.status": status,
                "flowstone.failed_steps": run.failed,
                "flowstone.skipped_steps": run.skipped,
            }
        )
        if status in _RUN_ERRORS:
            span.set_status(
                self._trace.Status(
                    self._trace.StatusCode.ERROR,
                    f"run {status}: {run.failed} step(s) failed, {run.skipped} skipped",
                )
            )
        span.end(end_time=end)

    # ------------------------------------------------------------------ steps
    def _step_started(self, event: Event) -> None:
        with self._lock:
            run = self._runs.get(event.run_id) if event.run_id is not None else None
            if run is None:
                return
            key = (event.asset, event.partition_key)
            existing = run.steps.get(key)
            if existing is None:  # the span is made when the step ends (or sooner, if need be)
                run.steps[key] = _ns(event.at)
                return
            span = self._opened(run, key, existing)
        # Started again (a retry): one span per step, the new attempt is an event on it.
        self._span_event(event, (span, key))

    def _start_step(
        self, run: _RunSpans, key: StepKey, start: int, more: dict[str, AttributeValue] | None = None
    ) -> Span:
        """A new step span started at ``start`` (ns), with ``more`` attributes beside its own."""
        # No run id: the parent run span has it (every attribute costs a check in the SDK).
        asset, partition = key
        attributes: dict[str, AttributeValue] = {}
        if asset is not None:
            attributes["flowstone.asset"] = asset
        if partition is not None:
            attributes["flowstone.partition"] = partition
        if more:
            attributes.update(more)
        return self._tracer.start_span(
            f"flowstone.step {asset}", context=run.context, attributes=attributes, start_time=start
        )

    def _opened(self, run: _RunSpans, key: StepKey, entry: Span | int) -> Span:
        """The step's span, made now if it was only a start time (call with the lock held)."""
        if isinstance(entry, int):
            entry = run.steps[key] = self._start_step(run, key, entry)
        return entry

    def _close(
        self, run: _RunSpans, key: StepKey, entry: Span | int, attributes: dict[str, AttributeValue]
    ) -> Span:
        """The step's span with its final ``attributes``: made with them when only a start time
        was kept (one call into the SDK), else added to it. The caller ends it."""
        if isinstance(entry, int):
            return self._start_step(run, key, entry, attributes)
        entry.set_attributes(attributes)
        return entry

    def _end_step(
        self, event: Event, attributes: dict[str, AttributeValue], *, create: bool = False, count: str = ""
    ) -> Span | None:
        """The step's span with its final ``attributes``, taken out of the open ones (one made
        now, starting and ending at this event, if the step never started and ``create``);
        ``count`` names the run's counter to increase. The caller ends it."""
        with self._lock:
            run = self._runs.get(event.run_id) if event.run_id is not None else None
            if run is None:
                return None
            key = (event.asset, event.partition_key)
            entry = run.steps.pop(key, None)
            if entry is None:
                if not create:
                    return None
                entry = _ns(event.at)
            if count == "failed":
                run.failed += 1
            elif count == "skipped":
                run.skipped += 1
        return self._close(run, key, entry, attributes)

    def _step_succeeded(self, event: Event) -> None:
        attributes: dict[str, AttributeValue] = {"flowstone.status": "succeeded"}
        duration = event.data.get("duration_ms")
        if isinstance(duration, (int, float)):
            attributes["flowstone.duration_ms"] = duration
        span = self._end_step(event, attributes)
        if span is not None:
            span.end(end_time=_ns(event.at))

    def _step_failed(self, event: Event) -> None:
        kind, message = _error(event.data.get("error"))
        attributes: dict[str, AttributeValue] = {"flowstone.status": "failed"}
        if kind is not None:
            attributes["flowstone.error_type"] = kind
            attributes["error.type"] = kind
        span = self._end_step(event, attributes, create=True, count="failed")
        if span is None:
            return
        at = _ns(event.at)
        # The semantic conventions' exception event, without a Python exception to record.
        exception: dict[str, AttributeValue] = {"exception.type": kind or "error"}
        if message is not None:
            exception["exception.message"] = message
        span.add_event("exception", exception, timestamp=at)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message))
        span.end(end_time=at)

    def _step_skipped(self, event: Event) -> None:
        attributes: dict[str, AttributeValue] = {"flowstone.status": "skipped"}
        reason = event.data.get("reason")
        if reason is not None:
            attributes["flowstone.reason"] = str(reason)
        span = self._end_step(event, attributes, create=True, count="skipped")
        if span is not None:
            span.end(end_time=_ns(event.at))

    # ------------------------------------------------------------------ span events
    def _error(self, event: Event) -> None:
        # A step's error is already on its span (step.failed / step.retrying carry it).
        if event.asset is None:
            self._span_event(event, self._target(event, (None, None)))

    def _io_loaded(self, event: Event) -> None:
        # ``asset``/``partition_key`` name the upstream value read; the step is the consumer's.
        consumer = event.data.get("consumer")
        partition = event.data.get("consumer_partition", event.partition_key)
        self._span_event(event, self._target(event, (consumer, partition), consumer=consumer))

    def _target(
        self, event: Event, key: StepKey, *, consumer: Any = None
    ) -> tuple[Span | None, StepKey | None]:
        """The open span an event belongs to, and its step: the step's span, else the run's
        (with no step), else nothing (an event outside any run seen here).

        For a load, when the consumer's partition is not the upstream's (a rollup, say), the
        consumer's only open step is taken; with several in flight the run span gets the event.
        """
        with self._lock:
            run = self._runs.get(event.run_id) if event.run_id is not None else None
            if run is None:
                return None, None
            entry = run.steps.get(key)
            if entry is not None:
                return self._opened(run, key, entry), key
            if consumer is not None:
                candidates = [(k, e) for k, e in run.steps.items() if k[0] == consumer]
                if len(candidates) == 1:
                    found, entry = candidates[0]
                    return self._opened(run, found, entry), found
            return run.span, None

    def _span_event(self, event: Event, target: tuple[Span | None, StepKey | None]) -> None:
        span, step = target
        if span is not None:
            span.add_event(event.type, _event_attributes(event, step), timestamp=_ns(event.at))
