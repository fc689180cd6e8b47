"""How a queue deployment is tuned: limits, heartbeats, housekeeping.

Read from the ``[queue]`` table of flowstone.toml (or passed to ``FlowStone(queue=...)``)::

    [queue]
    concurrency = 4              # steps one worker runs at once (flowstone worker --concurrency)
    tenant_limit = 8             # running steps per tenant, across all workers
    stalled_after = "30s"        # a worker silent this long is dead: its steps run again
    retention = "7d"             # finished jobs are pruned after this
    poll_every = "1s"            # idle workers look for delayed jobs (retries) this often
    [queue.queue_limits]
    backfill = 4                 # running steps of one queue, across all workers
    [queue.pool_limits]
    warehouse = 4                # adds to / overrides Pipeline(pool_limits=...)
    [queue.tenant_limits]
    acme = 2                     # one tenant's own limit (overrides tenant_limit)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowstone._durations import parse_duration
from flowstone._errors import ConfigurationError

DEFAULT_QUEUE = "flowstone"
TASK_NAME = "flowstone.run_step"
# Interactive runs go before backfills; within one priority, first come first served.
PRIORITY_INTERACTIVE = 10
PRIORITY_BACKFILL = 0


@dataclass(frozen=True)
class QueueConfig:
    """Limits and timings every worker (and enqueuer) of one deployment shares."""

    concurrency: int = 4
    pool_limits: Mapping[str, int] = field(default_factory=dict)
    queue_limits: Mapping[str, int] = field(default_factory=dict)
    tenant_limit: int | None = None
    tenant_limits: Mapping[str, int] = field(default_factory=dict)
    stalled_after: float = 30.0
    reap_every: float = 2.0
    retention: float = 7 * 86400.0
    # How long a step waits before trying again when a limit is full or its partition is running.
    backoff: float = 0.25
    # A step whose upstream is not there yet (dependency_not_ready) tries again this often, at
    # most this long in all, without using up its retry attempts.
    not_ready_every: float = 2.0
    not_ready_for: float = 600.0
    # New jobs wake idle workers at once (LISTEN/NOTIFY); delayed ones are found by this poll.
    poll_every: float = 1.0

    @property
    def heartbeat_every(self) -> float:
        return max(0.2, self.stalled_after / 4)

    def tenant_limit_for(self, tenant: str) -> int | None:
        return self.tenant_limits.get(tenant, self.tenant_limit)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> QueueConfig:
        known = {
            "concurrency",
            "pool_limits",
            "queue_limits",
            "tenant_limit",
            "tenant_limits",
            "stalled_after",
            "reap_every",
            "retention",
            "backoff",
            "not_ready_every",
            "not_ready_for",
        }
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigurationError(
                f"[queue] has unknown key(s) {unknown}; known: {sorted(known)}", context={"keys": unknown}
            )
        values: dict[str, Any] = {}
        for key in ("concurrency", "tenant_limit"):
            if key in table:
                values[key] = _positive(table[key], f"queue.{key}")
        for key in ("pool_limits", "queue_limits", "tenant_limits"):
            if key in table:
                raw = table[key]
                if not isinstance(raw, Mapping):
                    raise ConfigurationError(f"[queue.{key}] must be a table of name = limit")
                values[key] = {str(k): _positive(v, f"queue.{key}.{k}") for k, v in raw.items()}
        for key in (
            "stalled_after",
            "reap_every",
            "retention",
            "backoff",
            "not_ready_every",
            "not_ready_for",
            "poll_every",
        ):
            if key in table:
                try:
                    values[key] = parse_duration(table[key])
                except ValueError as exc:
                    raise ConfigurationError(f"queue.{key}: {exc}", context={"key": key}) from None
        return cls(**values)


def _positive(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{where} must be a positive integer, got {value!r}", context={"key": where})
    return value
