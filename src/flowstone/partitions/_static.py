"""A fixed list of string keys (regions, tenants, model names...)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any

from flowstone.partitions._base import (
    PartitionsDefinition,
    check_index,
    check_key_type,
    preview,
    validated_keys,
)


class StaticPartitions(PartitionsDefinition):
    """A fixed list of non-empty, unique string keys, in the order given.

    The value of a key is the key itself: ``StaticPartitions(["2025-01-01"]).to_value("2025-01-01")``
    is the string, never a date.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        if isinstance(keys, str):
            raise ValueError("StaticPartitions takes a list of keys, not one string")
        self._keys, self._index = validated_keys(list(keys), "StaticPartitions")
        if not self._keys:
            raise ValueError("StaticPartitions needs at least one key")

    def to_value(self, key: str) -> str:
        self.index_of(key)
        return key

    def to_key(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self._index:
            raise ValueError(f"{value!r} is not one of {preview(self._keys)}")
        return value

    def count(self) -> int:
        return len(self._keys)

    def key_at(self, index: int) -> str:
        check_index(self, index, len(self._keys))
        return self._keys[index]

    def index_of(self, key: str) -> int:
        index = self._index.get(check_key_type(key))
        if index is None:
            raise ValueError(f"{key!r} is not one of {preview(self._keys)}")
        return index

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._index

    def _iter_range(self, lo: int, hi: int) -> Iterator[str]:
        keys = self._keys
        return (keys[i] for i in range(lo, hi))

    def _identity(self) -> Hashable:
        return self._keys

    def __repr__(self) -> str:
        return f"StaticPartitions({preview(self._keys, limit=10)})"
