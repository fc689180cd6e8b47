"""Structured logs: every FlowStone event as one JSON object on one line, for log shippers.

Through ``logging`` (logger ``flowstone.events.json``; the JSON line is the record's message
and the event rides along as ``record.flowstone_event``)::

    JsonLogs(level=logging.INFO).attach(app.events)

or straight to a stream, without ``logging`` at all::

    JsonLogs(sys.stdout).attach(app.events)

A line looks like ``{"at": "2025-01-15T08:00:00.123456+00:00", "level": "error",
"type": "step.failed", "run_id": "...", "asset": "report", "partition": null,
"error_type": "execution_error", "error_message": "...", ...}``.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from pathlib import PurePath
from typing import Any, TextIO

from flowstone._events import Event, EventBus

LOGGER_NAME = "flowstone.events.json"

# The level of each known event type; unknown types log at INFO (see ``event_level``).
_LEVELS: dict[str, int] = {
    # At INFO a step is one line, when it ends (with its duration); its start is DEBUG.
    "step.started": logging.DEBUG,
    "io.loaded": logging.DEBUG,
    "io.stored": logging.DEBUG,
    "sensor.poll": logging.DEBUG,
    "resource.health": logging.DEBUG,
    "step.skipped": logging.WARNING,
    "step.retrying": logging.WARNING,
    "checkpoint.rejected": logging.WARNING,
    "checkpoint.timed_out": logging.WARNING,
    "step.failed": logging.ERROR,
    "error": logging.ERROR,
}
_RUN_LEVELS = {"failed": logging.ERROR, "abandoned": logging.ERROR, "cancelled": logging.WARNING}
# Record keys of our own: event data with the same name is written as ``data_<name>``.
_RESERVED = frozenset({"at", "level", "type", "run_id", "asset", "partition"})


def event_level(event: Event) -> int:
    """How serious an event is: failures ERROR, skips and retries WARNING, I/O DEBUG, else INFO.

    A run that did not succeed is an ERROR (WARNING when cancelled); any other event whose data
    carries an ``error`` or ``ok=False`` (a failed resource setup, say) is at least a WARNING.
    """
    data = event.data
    if event.type == "run.finished":
        return _RUN_LEVELS.get(str(data.get("status")), logging.INFO)
    level = _LEVELS.get(event.type, logging.INFO)
    if level < logging.WARNING and (data.get("error") is not None or data.get("ok") is False):
        return logging.WARNING
    return level


def _error_fields(error: Any, record: dict[str, Any]) -> None:
    """Flatten an event's ``error`` (a ``FlowStoneError.to_dict()``, an exception or a message)."""
    if isinstance(error, Mapping):
        record["error_type"] = error.get("type")
        record["error_message"] = error.get("message")
        if "retryable" in error:
            record["retryable"] = error["retryable"]
        if error.get("context"):
            record["error_context"] = error["context"]
    elif isinstance(error, BaseException):
        record["error_type"] = getattr(error, "type", type(error).__name__)
        record["error_message"] = str(error)
    else:
        record["error_message"] = error if isinstance(error, str) else str(error)


_LEVEL_NAMES: dict[int, str] = {}
_LEVEL_TEXTS: dict[int, str] = {}  # the same, as JSON text


def _level_name(level: int) -> str:
    name = _LEVEL_NAMES.get(level)
    if name is None:
        name = _LEVEL_NAMES[level] = logging.getLevelName(level).lower()
    return name


def event_record(event: Event, level: int | None = None) -> dict[str, Any]:
    """The JSON object logged for ``event`` (values not yet made JSON-safe)."""
    record: dict[str, Any] = {
        "at": event.at.isoformat(),
        "level": _level_name(event_level(event) if level is None else level),
        "type": event.type,
        "run_id": event.run_id,
        "asset": event.asset,
        "partition": event.partition_key,
    }
    for key, value in event.data.items():
        if key == "error" and value is not None:
            _error_fields(value, record)
        else:
            record[f"data_{key}" if key in _RESERVED else key] = value
    return record


def _default(value: Any) -> Any:
    """What ``json`` cannot encode itself: dates as ISO text, enums by value, the rest as text."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as text: strict JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_finite(v) for v in value]
    return value


# One encoder for every line: json.dumps with options would build a new one per call.
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), allow_nan=False)


def to_json(record: Mapping[str, Any]) -> str:
    """One compact line of strict JSON, whatever the values are."""
    try:
        return _ENCODER.encode(record)
    except ValueError:  # NaN or infinity somewhere (a circular structure raises again below)
        return _ENCODER.encode(_finite(record))


# What the encoder does with a str (ASCII-only output), the C version where there is one.
_text = json.encoder.encode_basestring_ascii
# ',"key":' per data key seen, so a key is escaped once (bounded: keys are a fixed set in practice).
_KEY_TEXTS: dict[str, str] = {}
_MAX_KEY_TEXTS = 1024
# Data keys that event_record renames or flattens: a line with one is built the general way.
_SPECIAL_KEYS = _RESERVED | {"error"}


def _plain(value: Any) -> str | None:
    """``value`` as JSON text when it is a str, int, finite float, bool or None, exactly as the
    encoder writes it; ``None`` for anything else (subclasses included)."""
    kind = type(value)
    if kind is str:
        return _text(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return None


def event_line(event: Event, level: int | None = None) -> str:
    """``to_json(event_record(event, level))``, without the record or the general encoder when
    every value is plain (str, int, finite float, bool, None), as for a step's events."""
    if level is None:
        level = event_level(event)
    level_text = _LEVEL_TEXTS.get(level)
    if level_text is None:
        level_text = _LEVEL_TEXTS[level] = _text(_level_name(level))
    at = event.at
    kind, run_id, asset, partition = (
        _plain(event.type),
        _plain(event.run_id),
        _plain(event.asset),
        _plain(event.partition_key),
    )
    if type(at) is not datetime or kind is None or run_id is None or asset is None or partition is None:
        return to_json(event_record(event, level))
    parts = [
        f'{{"at":"{at.isoformat()}","level":{level_text},"type":{kind},"run_id":{run_id},'
        f'"asset":{asset},"partition":{partition}'
    ]
    for key, value in event.data.items():
        text = _plain(value)
        if text is None or key in _SPECIAL_KEYS:
            return to_json(event_record(event, level))
        key_text = _KEY_TEXTS.get(key)
        if key_text is None:
            if type(key) is not str:
                return to_json(event_record(event, level))
            key_text = f",{_text(key)}:"
            if len(_KEY_TEXTS) < _MAX_KEY_TEXTS:
                _KEY_TEXTS[key] = key_text
        parts.append(key_text)
        parts.append(text)
    parts.append("}")
    return "".join(parts)


class JsonLogs:
    """Logs each event as one JSON line: through ``logging`` (default) or to ``stream``.

    ``level`` drops less serious events (see ``event_level``) before any work is done for them;
    through ``logging`` the logger's own level applies as well. Usable as a plain subscriber
    (``app.events.subscribe(JsonLogs())``) or via ``attach``, which returns the detach function.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        logger: logging.Logger | str | None = None,
        level: int | str = logging.INFO,
        flush: bool = True,
    ) -> None:
        if stream is not None and logger is not None:
            raise ValueError("JsonLogs writes to a stream or through a logger, not both")
        self.stream = stream
        self.logger: logging.Logger | None = None
        if stream is None:
            self.logger = (
                logger if isinstance(logger, logging.Logger) else logging.getLogger(logger or LOGGER_NAME)
            )
        if isinstance(level, str):
            named = logging.getLevelNamesMapping().get(level.upper())
            if named is None:
                raise ValueError(f"unknown log level {level!r}")
            level = named
        self.level = level
        self.flush = flush
        self._lock = threading.Lock()  # I/O events arrive from worker threads

    def __repr__(self) -> str:
        target = f"stream={self.stream!r}" if self.logger is None else f"logger={self.logger.name!r}"
        return f"JsonLogs({target}, level={logging.getLevelName(self.level)})"

    def attach(self, bus: EventBus, *, batched: bool = True) -> Callable[[], None]:
        """Subscribe to ``bus``; returns the function that detaches again (safe to call twice).

        Event types that can never reach ``level`` (I/O events below DEBUG) are not even built.
        ``batched`` (the default): the events of steps reach it in batches, in order, by the end
        of their run at the latest (see ``flowstone._events``); ``False`` delivers each event as
        it is emitted, on the thread that emits it.
        """
        quiet = [t for t in ("step.started", "io.loaded", "io.stored") if _LEVELS[t] < self.level]
        return _once(bus.subscribe(self, exclude=quiet, batched=batched))

    def __call__(self, event: Event) -> None:
        level = event_level(event)
        if level < self.level:
            return
        logger = self.logger
        if logger is None:
            line = event_line(event, level) + "\n"
            stream = self.stream
            assert stream is not None
            with self._lock:
                stream.write(line)
                if self.flush:
                    stream.flush()
        elif logger.isEnabledFor(level):
            logger.log(level, event_line(event, level), extra={"flowstone_event": event})


def _once(detach: Callable[[], None]) -> Callable[[], None]:
    """``detach`` made idempotent: the second call does nothing."""
    done = threading.Event()

    def once() -> None:
        if not done.is_set():
            done.set()
            detach()

    return once
