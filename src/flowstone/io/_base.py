"""The I/O manager protocol: store, load, delete, exists and describe one asset partition."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class IOContext:
    """Which value an I/O manager is asked about; the same for load, store and delete."""

    asset: str
    partition_key: str | None
    partition: Any = None
    tenant: str = "default"
    run_id: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredValue:
    """Facts about a stored value, recorded on its materialization."""

    size_bytes: int | None = None
    checksum: str | None = None
    updated_at: datetime | None = None
    row_count: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class IOManager(Protocol):
    """Implement these five methods to store asset values anywhere.

    ``store`` must be atomic: a reader never sees half a value, and a crash leaves the previous
    value (or nothing) in place. ``load`` raises :class:`flowstone.ValueNotFound` when nothing is
    stored; other failures raise :class:`flowstone.IOManagerError`.
    """

    def store(self, ctx: IOContext, value: Any) -> StoredValue | None: ...

    def load(self, ctx: IOContext) -> Any: ...

    def delete(self, ctx: IOContext) -> None: ...

    def exists(self, ctx: IOContext) -> bool: ...

    def metadata(self, ctx: IOContext) -> StoredValue | None: ...
