"""Dynamic partitions: keys added and removed at run time and kept in the store.

    customers = DynamicPartitions("customers")

The definition itself knows no keys. The app binds it to the store before planning a run:
``customers.bind(read_keys)`` returns the same definition over ``read_keys("customers")`` — a
sequence of keys in insertion order — read once, on first use, and kept for the life of the bound
object, so one plan sees one consistent set of keys.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

from flowstone.partitions._base import (
    PartitionsDefinition,
    check_index,
    check_key_type,
    preview,
    validated_keys,
)


class _LazyKeys:
    """Keys produced by a function, computed once on first use, validated, thread-safe.

    Pickles with the keys once computed, else with the function (when that pickles).
    """

    def __init__(self, produce: Callable[[], Sequence[str]], what: str) -> None:
        self._produce = produce
        self._what = what
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[str, ...], dict[str, int]] | None = None

    def get(self) -> tuple[tuple[str, ...], dict[str, int]]:
        loaded = self._loaded
        if loaded is None:
            with self._lock:
                if self._loaded is None:
                    keys = self._produce()
                    if isinstance(keys, str) or not hasattr(keys, "__iter__"):
                        raise ValueError(f"{self._what}: expected a sequence of keys, got {keys!r}")
                    self._loaded = validated_keys(list(keys), self._what)
                loaded = self._loaded
        return loaded

    def __getstate__(self) -> dict[str, Any]:
        return {
            "_produce": self._produce if self._loaded is None else None,
            "_what": self._what,
            "_loaded": self._loaded,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class KeyListPartitions(PartitionsDefinition):
    """Shared implementation of definitions over a lazily computed list of string keys."""

    _lazy: _LazyKeys | None

    def _keys_and_index(self) -> tuple[tuple[str, ...], dict[str, int]]:
        return self._lazy.get() if self._lazy is not None else ((), {})

    def _missing(self, key: object) -> ValueError:
        keys = self._keys_and_index()[0]
        return ValueError(f"{key!r} is not one of {preview(keys)} of {self!r}")

    def to_value(self, key: str) -> str:
        self.index_of(key)
        return key

    def to_key(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self:
            raise self._missing(value)
        return value

    def count(self) -> int:
        return len(self._keys_and_index()[0])

    def key_at(self, index: int) -> str:
        keys = self._keys_and_index()[0]
        check_index(self, index, len(keys))
        return keys[index]

    def index_of(self, key: str) -> int:
        index = self._keys_and_index()[1].get(check_key_type(key))
        if index is None:
            raise self._missing(key)
        return index

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._keys_and_index()[1]

    def _iter_range(self, lo: int, hi: int) -> Iterator[str]:
        keys = self._keys_and_index()[0]
        return (keys[i] for i in range(lo, hi))


class DynamicPartitions(KeyListPartitions):
    """Keys added and removed at run time, kept in the store under ``name``.

    Unbound (as declared in a pipeline) it has no keys. Two definitions with the same ``name``
    are equal, bound or not: binding reads the current keys of the same logical set.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(
                f"DynamicPartitions needs a non-empty name without surrounding spaces, got {name!r}"
            )
        self.name = name
        self._lazy = None

    @property
    def bound(self) -> bool:
        """Whether this definition reads its keys from the store (see ``bind``)."""
        return self._lazy is not None

    def bind(self, dynamic_keys: Callable[[str], Sequence[str]]) -> DynamicPartitions:
        bound = DynamicPartitions(self.name)
        bound._lazy = _LazyKeys(
            functools.partial(dynamic_keys, self.name), f"dynamic partitions {self.name!r}"
        )
        return bound

    def _missing(self, key: object) -> ValueError:
        if self._lazy is None:
            return ValueError(
                f"{key!r} is not a key of DynamicPartitions({self.name!r}): the definition is not bound "
                "to a store, so it has no keys yet"
            )
        return ValueError(f"{key!r} is not a key of DynamicPartitions({self.name!r})")

    def _identity(self) -> Hashable:
        return self.name

    def __repr__(self) -> str:
        return f"DynamicPartitions({self.name!r})"
