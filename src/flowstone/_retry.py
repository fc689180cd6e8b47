"""Retry policies: which failures of a step are tried again, how often, and after how long.

Only retryable errors are retried: a timeout, a transient storage failure, an unavailable
resource, an exception type listed in ``retry_on``, or :class:`Retry` raised by the asset. An
asset's own bug (``execution_error``) fails at once::

    @pipeline.asset(retry=fs.RetryPolicy(max_attempts=4, base_delay="2s", retry_on=(TimeoutError,)))
    def prices(context): ...

    pipeline = fs.Pipeline("shop", retry_policy=fs.RetryPolicy(max_attempts=2))  # the default

Delays grow with the attempt (``exponential``: base, 2x base, 4x base ...; ``linear``: base, 2x
base ...; ``constant``), are capped at ``max_delay``, then spread by ``jitter`` (a fraction: 0.1
means +/-10 %) so that many failing steps do not come back at the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flowstone._durations import parse_duration
from flowstone._errors import FlowStoneError

BACKOFFS = ("exponential", "linear", "constant")
# Raising Retry without any policy still retries, this many attempts in all.
DEFAULT_RETRY_ATTEMPTS = 3


class Retry(FlowStoneError):
    """Raise from an asset to ask for another attempt, optionally after a given delay.

    ``raise fs.Retry("upstream API not ready", after="30s")``. It is honoured up to the asset's
    ``RetryPolicy.max_attempts`` (or ``max_attempts`` given here, or 3 without any policy).
    """

    type = "retry_requested"
    default_retryable = True
    hint = (
        "It asked to be retried and ran out of attempts: fix what it waits for, or allow more "
        'with RetryPolicy(max_attempts=N) or Retry(after="30s", max_attempts=N).'
    )

    def __init__(
        self,
        message: str = "the asset asked to be retried",
        *,
        after: float | str | timedelta | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.after = None if after is None else _seconds(after, "Retry(after=...)")
        self.max_attempts = max_attempts
        context: dict[str, Any] = {}
        if self.after is not None:
            context["after_s"] = self.after
        super().__init__(message, context=context)


def _seconds(value: float | str | timedelta, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return 0.0
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if seconds < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing step is retried (see the module docstring)."""

    max_attempts: int = 3
    backoff: str = "exponential"
    base_delay: float | str | timedelta = 1.0
    max_delay: float | str | timedelta = 300.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = field(default=())
    _base_s: float = field(init=False, repr=False, compare=False, default=0.0)
    _max_s: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"RetryPolicy max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if self.backoff not in BACKOFFS:
            raise ValueError(f"RetryPolicy backoff must be one of {list(BACKOFFS)}, got {self.backoff!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy jitter must be between 0 and 1, got {self.jitter!r}")
        object.__setattr__(self, "_base_s", _seconds(self.base_delay, "RetryPolicy base_delay"))
        object.__setattr__(self, "_max_s", _seconds(self.max_delay, "RetryPolicy max_delay"))
        if self._max_s < self._base_s:
            raise ValueError(
                f"RetryPolicy max_delay ({self.max_delay}) is below base_delay ({self.base_delay})"
            )
        raw: Any = self.retry_on
        if isinstance(raw, type):  # retry_on=TimeoutError, one type without a tuple
            raw = (raw,)
        if not isinstance(raw, (tuple, list, set, frozenset)):
            raise ValueError(f"RetryPolicy retry_on must list exception types, got {raw!r}")
        retry_on = tuple(raw)
        for kind in retry_on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ValueError(f"RetryPolicy retry_on must list exception types, got {kind!r}")
        object.__setattr__(self, "retry_on", retry_on)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
        base = self._base_s
        if self.backoff == "exponential":
            raw = base * 2 ** (attempt - 1)
        elif self.backoff == "linear":
            raw = base * attempt
        else:
            raw = base
        capped = min(raw, self._max_s)
        if self.jitter:
            capped *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, float(capped))

    def marks_retryable(self, exc: BaseException) -> bool:
        return bool(self.retry_on) and isinstance(exc, self.retry_on)


NO_RETRY = RetryPolicy(max_attempts=1, base_delay=0.0, jitter=0.0)


def next_delay(policy: RetryPolicy | None, error: FlowStoneError, attempt: int) -> float | None:
    """Seconds before the next attempt after ``error`` ended attempt ``attempt``; None: give up."""
    if not error.retryable:
        return None
    limit = (policy or NO_RETRY).max_attempts
    if isinstance(error, Retry):
        limit = error.max_attempts or (policy.max_attempts if policy else DEFAULT_RETRY_ATTEMPTS)
    if attempt >= limit:
        return None
    if isinstance(error, Retry) and error.after is not None:
        return error.after
    return (policy or RetryPolicy()).delay(attempt)
