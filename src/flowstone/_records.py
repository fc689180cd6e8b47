"""Read-only records of what the store holds: runs, steps, materializations, lineage, backfills."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # Everything that could run did; steps wait behind a checkpoint for a decision.
    WAITING_APPROVAL = "waiting_approval"
    RETRYING = "retrying"  # an attempt failed; the next one waits for its delay
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING_APPROVAL)


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    QUEUED = "queued"  # queue runs: its job is waiting for a worker
    WAITING_APPROVAL = "waiting_approval"  # a checkpoint waiting for a person's decision
    RUNNING = "running"
    RETRYING = "retrying"  # an attempt failed; the next one waits for its delay
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    ABANDONED = "abandoned"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Materialization:
    """One attempt to compute and store an asset partition (``status`` success or failed).

    ``data_version`` identifies the stored data: one the asset returned, or else the stored
    value's checksum (``value_hash``), which it defaults to.
    """

    id: str
    run_id: str
    asset: str
    partition_key: str | None
    status: str
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    value_hash: str | None = None
    value_size: int | None = None
    io_manager: str | None = None
    code_version: str | None = None
    host: str | None = None
    pid: int | None = None
    attempt: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    retryable: bool | None = None
    tenant: str = "default"
    data_version: str | None = None

    def __post_init__(self) -> None:
        # Here rather than in the run writer, so that the record a run hands back and the one
        # read back from the store are equal.
        if self.data_version is None and self.value_hash is not None:
            object.__setattr__(self, "data_version", self.value_hash)


@dataclass(frozen=True)
class StepRecord:
    id: str
    run_id: str
    position: int
    asset: str
    partition_key: str | None
    status: StepStatus
    attempt: int
    upstream: list[list[str]]
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    materialization_id: str | None
    reason: str | None
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True)
class RunRecord:
    id: str
    pipeline: str
    status: RunStatus
    selection: list[str]
    partition_key: str | None
    force: bool
    actor: str
    executor: str
    host: str
    pid: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    step_count: int
    error: str | None
    tenant: str = "default"
    backfill_id: str | None = None

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds() * 1000


@dataclass(frozen=True)
class AssetPartitionState:
    """The latest outcome of one asset partition."""

    asset: str
    partition_key: str | None
    last_status: str
    last_run_id: str
    last_materialization_id: str
    success_materialization_id: str | None
    success_at: datetime | None
    updated_at: datetime
    data_version: str | None = None  # of the latest success
    code_version: str | None = None  # of the latest success
    stale_since: datetime | None = None  # set by invalidation, cleared by the next success

    @property
    def stale(self) -> bool:
        return self.stale_since is not None


@dataclass(frozen=True)
class LineageEntry:
    """One node reached by a lineage query, ``depth`` hops from where it started."""

    asset: str
    partition_key: str | None
    materialization_id: str | None
    depth: int
    run_id: str | None = None
    status: str | None = None
    finished_at: datetime | None = None
    stale: bool | None = None


@dataclass(frozen=True)
class PartitionStatus:
    """Health of one asset's partitions, counted in the store.

    ``counts`` maps each latest status (``success``, ``failed`` ...) to its number of partitions;
    ``stale`` counts partitions invalidated since their latest success (of any status) and
    ``fresh`` the successful ones that are not. ``missing`` (partitions of the definition with no
    record at all) is known only when the definition's ``total`` was given. ``failed_keys`` is
    one page of the failed partitions, in key order (an unpartitioned asset's key is ``''``).
    Staleness here is invalidation on purpose (``Store.mark_stale``); staleness from changed
    code or upstream data is worked out from the recorded versions, not counted here.
    """

    asset: str
    counts: dict[str, int]
    stale: int
    fresh: int
    total: int | None
    missing: int | None
    failed_keys: list[str]
    page: int
    page_size: int

    @property
    def recorded(self) -> int:
        """Partitions with at least one materialization."""
        return sum(self.counts.values())

    @property
    def succeeded(self) -> int:
        return self.counts.get("success", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def failed_pages(self) -> int:
        return -(-self.failed // self.page_size) if self.page_size else 0


class BackfillStatus(enum.StrEnum):
    REQUESTED = "requested"
    RUNNING = "running"
    RETRYING = "retrying"  # an attempt failed; the next one waits for its delay
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self not in (BackfillStatus.REQUESTED, BackfillStatus.RUNNING)


BACKFILL_COUNT_NAMES = ("queued", "running", "succeeded", "failed", "skipped")


@dataclass(frozen=True)
class BackfillRecord:
    """A backfill: the partitions asked for, how they were chosen, and how far it got.

    ``spec`` says how the keys were chosen (``{"from": .., "to": ..}``, ``{"partitions": [..]}``
    or ``{"all": true}``); ``counts`` holds the number of steps queued, running, succeeded,
    failed and skipped.
    """

    id: str
    pipeline: str
    assets: list[str]
    spec: dict[str, Any]
    partition_keys: list[str]
    force: bool
    parallel: int
    status: BackfillStatus
    counts: dict[str, int]
    cancel_requested: bool
    actor: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    error: str | None
    tenant: str = "default"

    @property
    def done(self) -> int:
        return sum(self.counts.get(name, 0) for name in ("succeeded", "failed", "skipped"))

    @property
    def total(self) -> int:
        return sum(self.counts.get(name, 0) for name in BACKFILL_COUNT_NAMES)
