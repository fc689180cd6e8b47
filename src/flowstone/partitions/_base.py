"""The contract every partitions definition keeps: an ordered set of string keys and their codec.

A definition is an *ordered* set of canonical string keys. It answers the questions a planner, a
backfill or a status page asks without building the list of keys: how many there are
(``count``), whether a string is one of them (``in``), the key at a position and the position of
a key (``key_at`` / ``index_of``), the keys between two keys (``keys(k1, k2)``, lazy) and one page
of them (``page``). ``to_value`` / ``to_key`` convert between a key and the typed value an asset
sees as ``context.partition``; decoding never guesses a type from the look of a string.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any


class PartitionsDefinition(abc.ABC):
    """Base class: the ordered set of keys of a partitioned asset.

    Subclasses implement ``to_value``, ``to_key``, ``count``, ``key_at``, ``index_of`` and
    ``_identity`` (what makes two definitions equal); everything else is derived from those.
    """

    __slots__ = ()

    # ------------------------------------------------------------------ codec
    @abc.abstractmethod
    def to_value(self, key: str) -> Any:
        """The typed value for ``key``; ``ValueError`` naming the key when it is not a key here."""

    @abc.abstractmethod
    def to_key(self, value: Any) -> str:
        """The canonical key of a typed value; ``ValueError`` when it is not the value of a key."""

    # ------------------------------------------------------------------ ordered set
    @abc.abstractmethod
    def count(self) -> int:
        """How many keys there are now (cheap: never builds the list)."""

    @abc.abstractmethod
    def key_at(self, index: int) -> str:
        """The key at position ``index`` (0-based); ``IndexError`` outside ``0 <= index < count()``.

        Negative indexes are out of range, not counted from the end: an offset computed as
        ``index_of(k) - 1`` must fail on the first key rather than wrap around to the last.
        """

    @abc.abstractmethod
    def index_of(self, key: str) -> int:
        """The position of ``key``; ``ValueError`` (saying why) when it is not a key."""

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self.index_of(key)
        except ValueError:
            return False
        return True

    def keys(self, start: str | None = None, end: str | None = None) -> Iterator[str]:
        """The keys from ``start`` to ``end`` (both inclusive; ``None``: first / last), lazily, in order.

        The bounds are checked now (``ValueError`` when one is not a key); an ``end`` before
        ``start`` gives no keys.
        """
        lo = 0 if start is None else self.index_of(start)
        hi = self.count() if end is None else self.index_of(end) + 1
        return self._iter_range(lo, hi)

    def page(self, number: int, size: int = 100) -> list[str]:
        """Page ``number`` (0-based) of the keys, ``size`` keys a page; ``[]`` past the last page."""
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"page number must be an integer >= 0, got {number!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"page size must be an integer >= 1, got {size!r}")
        lo = number * size
        return list(self._iter_range(lo, min(lo + size, self.count())))

    def _iter_range(self, lo: int, hi: int) -> Iterator[str]:
        """Keys at positions ``lo <= i < hi``; subclasses may walk faster than ``key_at`` per index."""
        for index in range(lo, hi):
            yield self.key_at(index)

    # ------------------------------------------------------------------ dynamic keys
    def bind(self, dynamic_keys: Callable[[str], Sequence[str]]) -> PartitionsDefinition:
        """This definition with its dynamic keys read through ``dynamic_keys(name)``.

        Only ``DynamicPartitions`` (and definitions containing one) have dynamic keys; the
        others return themselves.
        """
        return self

    # ------------------------------------------------------------------ equality
    @abc.abstractmethod
    def _identity(self) -> Hashable:
        """What makes two definitions of the same type equal."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, PartitionsDefinition)
        return bool(self._identity() == other._identity())

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._identity()))


def check_index(definition: PartitionsDefinition, index: int, count: int) -> None:
    """Raise ``IndexError`` unless ``0 <= index < count``."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"partition index must be an int, got {index!r}")
    if not 0 <= index < count:
        raise IndexError(f"partition index {index} is out of range for {count} keys of {definition!r}")


def check_key_type(key: object) -> str:
    """``key`` itself when it is a string; ``ValueError`` otherwise."""
    if not isinstance(key, str):
        raise ValueError(f"partition keys are strings, got {key!r}")
    return key


def validated_keys(keys: Sequence[Any], what: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """``keys`` as a tuple plus a key -> index dict; ``ValueError`` for a bad or duplicate key."""
    as_tuple = tuple(keys)
    index: dict[str, int] = {}
    for i, key in enumerate(as_tuple):
        if not isinstance(key, str) or not key:
            raise ValueError(f"{what}: partition keys must be non-empty strings, got {key!r}")
        if index.setdefault(key, i) != i:
            raise ValueError(f"{what}: keys must be unique, {key!r} appears more than once")
    return as_tuple, index


def preview(keys: Sequence[str], limit: int = 5) -> str:
    """A short rendering of a key list for error messages and reprs."""
    if len(keys) <= limit:
        return repr(list(keys))
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}, ... ({len(keys)} keys)]"
