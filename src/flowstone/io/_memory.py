"""Values kept in this process's memory: for tests, notebooks and benchmarks."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from flowstone._errors import ValueNotFound
from flowstone.io._base import IOContext, StoredValue


class MemoryIOManager:
    """A dict keyed by (tenant, asset, partition). Values vanish with the process."""

    @classmethod
    def from_settings(cls, options: Mapping[str, Any], **_: Any) -> MemoryIOManager:
        if options:
            raise TypeError(f"the memory I/O manager takes no options, got {sorted(options)}")
        return cls()

    def __init__(self) -> None:
        self._values: dict[tuple[str, str, str | None], Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(ctx: IOContext) -> tuple[str, str, str | None]:
        return (ctx.tenant, ctx.asset, ctx.partition_key)

    def store(self, ctx: IOContext, value: Any) -> StoredValue | None:
        with self._lock:
            self._values[self._key(ctx)] = value
        return None

    def load(self, ctx: IOContext) -> Any:
        try:
            return self._values[self._key(ctx)]
        except KeyError:
            raise ValueNotFound(
                f"no value in memory for asset '{ctx.asset}' partition {ctx.partition_key!r} "
                "(memory values do not survive the process)",
                context={"asset": ctx.asset, "partition": ctx.partition_key},
            ) from None

    def delete(self, ctx: IOContext) -> None:
        with self._lock:
            self._values.pop(self._key(ctx), None)

    def exists(self, ctx: IOContext) -> bool:
        return self._key(ctx) in self._values

    def metadata(self, ctx: IOContext) -> StoredValue | None:
        return None if self._key(ctx) not in self._values else StoredValue()
