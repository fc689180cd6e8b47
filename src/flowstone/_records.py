"""Read-only records of what the store holds: runs, steps, materializations, lineage."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    ABANDONED = "abandoned"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Materialization:
    """One attempt to compute and store an asset partition (``status`` success or failed)."""

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
