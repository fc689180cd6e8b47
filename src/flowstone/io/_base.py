"""The I/O manager protocol: store, load, delete, exists and describe one asset partition.

Besides the five required methods a manager may offer three optional ones, found by name:

``validate_config(config) -> list[str]``
    Problems with an asset's ``io_config`` (each naming the field at fault); pipeline validation
    reports them with the asset's file:line before anything runs.
``load_many(ctx, keys) -> value``
    Load many partitions of one upstream at once (a fan-in such as ``AllPartitionsMapping``). It
    returns a ``{key: value}`` dict, or, when ``ctx.expected_type`` asks for one table, the
    partitions combined into it. Without it the engine calls ``load`` per key.
``close()``
    Release connections; ``FlowStone.close`` calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class UpstreamVersion:
    """One input a stored value was computed from: which materialization, which data version."""

    asset: str
    partition_key: str | None
    materialization_id: str | None
    data_version: str | None


@dataclass(frozen=True)
class IOContext:
    """Which value an I/O manager is asked about; the same shape for load, store and delete.

    ``partition`` is the typed partition value (a ``date`` for daily partitions) and
    ``partition_key`` its canonical string. ``config`` is the asset's ``io_config``.

    On ``store`` the engine also fills in what provenance needs (``materialization_id``,
    ``data_version`` when the asset declared one, ``code_version`` and ``upstream``). On ``load``
    ``expected_type`` is the annotation of the parameter the value goes into (or ``None``), so a
    manager can hand back a pandas, polars or Arrow table as asked, and ``consumer`` the asset
    that reads it.
    """

    asset: str
    partition_key: str | None
    partition: Any = None
    tenant: str = "default"
    run_id: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    materialization_id: str | None = None
    data_version: str | None = None
    code_version: str | None = None
    upstream: tuple[UpstreamVersion, ...] = ()
    expected_type: Any = None
    consumer: str | None = None
    _observed: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def observe(self, *, size_bytes: int | None = None, row_count: int | None = None) -> None:
        """Tell the engine how much a load read; it goes on the ``io.loaded`` event."""
        if size_bytes is not None:
            self._observed["size_bytes"] = self._observed.get("size_bytes", 0) + int(size_bytes)
        if row_count is not None:
            self._observed["row_count"] = self._observed.get("row_count", 0) + int(row_count)

    @property
    def observed(self) -> Mapping[str, int]:
        return self._observed


@dataclass(frozen=True)
class StoredValue:
    """Facts about a stored value, recorded on its materialization.

    ``schema`` is a JSON-safe description (column name to type) when the manager knows one;
    ``extra`` holds anything else worth keeping (an object's etag, a table name).
    """

    size_bytes: int | None = None
    checksum: str | None = None
    updated_at: datetime | None = None
    row_count: int | None = None
    schema: Mapping[str, str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        """What goes into the materialization's metadata besides size and checksum."""
        found: dict[str, Any] = dict(self.extra)
        if self.row_count is not None:
            found["row_count"] = self.row_count
        if self.schema is not None:
            found["schema"] = dict(self.schema)
        return found


@runtime_checkable
class IOManager(Protocol):
    """Implement these five methods to store asset values anywhere.

    ``store`` must be atomic: a reader never sees half a value, and a crash leaves the previous
    value (or nothing) in place. ``load`` raises :class:`flowstone.ValueNotFound` when nothing is
    stored; other failures raise :class:`flowstone.IOManagerError` with ``retryable`` telling a
    transient failure (connection lost, disk full, 5xx) from a permanent one (permission, bad
    value). ``flowstone.io.io_error`` builds one from a foreign exception.
    """

    def store(self, ctx: IOContext, value: Any) -> StoredValue | None: ...

    def load(self, ctx: IOContext) -> Any: ...

    def delete(self, ctx: IOContext) -> None: ...

    def exists(self, ctx: IOContext) -> bool: ...

    def metadata(self, ctx: IOContext) -> StoredValue | None: ...
