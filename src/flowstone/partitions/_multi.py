"""Multi-dimensional partitions: the product of any number of definitions (tenant x region x date).

    parts = MultiPartitions({"tenant": StaticPartitions(["acme", "globex"]),
                             "date": DailyPartitions(start="2025-01-01")})
    parts.key_of(tenant="acme", date="2025-01-15")    # 'acme|2025-01-15'
    value = parts.to_value("acme|2025-01-15")
    value.tenant, value.date                          # 'acme', datetime.date(2025, 1, 15)

A key is the dimension keys, in dimension order, joined with ``|``; a ``|`` or ``\\`` inside a
dimension key is escaped with a backslash (``a|b`` -> ``a\\|b``), so every key splits back into
exactly its dimension keys. Keys are ordered with the first dimension most significant, like
digits of a number, so position arithmetic (``key_at``, ``index_of``, ``count``) is O(number of
dimensions) with O(1) dimensions.

With an open-ended time dimension the count of a later dimension grows with time, so positions
are positions *now*: keep keys, not indexes, across calls.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from flowstone.partitions._base import PartitionsDefinition, check_index, check_key_type

SEPARATOR = "|"
ESCAPE = "\\"


def escape(key: str) -> str:
    """A dimension key made safe to join with ``|``."""
    if ESCAPE in key or SEPARATOR in key:
        return key.replace(ESCAPE, ESCAPE + ESCAPE).replace(SEPARATOR, ESCAPE + SEPARATOR)
    return key


def split_escaped(key: str) -> list[str] | None:
    """The parts of a joined key, or ``None`` when it is not in canonical escaped form."""
    if ESCAPE not in key:
        return key.split(SEPARATOR)
    parts: list[str] = []
    current: list[str] = []
    chars = iter(key)
    for char in chars:
        if char == ESCAPE:
            following = next(chars, None)
            if following not in (ESCAPE, SEPARATOR):
                return None  # a dangling or unknown escape has no canonical form
            current.append(following)
        elif char == SEPARATOR:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


class MultiPartitionKey(Mapping[str, Any]):
    """The value of a multi-dimensional key: dimension -> typed value, read-only.

    ``value["date"]`` and ``value.date`` both work (attribute access for dimensions whose names do
    not clash with mapping methods such as ``keys``); ``keys_by_dimension`` gives the string keys
    and ``str(value)`` the canonical key.
    """

    __slots__ = ("_key", "_keys", "_values")

    _values: dict[str, Any]
    _keys: dict[str, str]
    _key: str

    def __init__(self, values: Mapping[str, Any], keys: Mapping[str, str], key: str) -> None:
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_keys", dict(keys))
        object.__setattr__(self, "_key", key)

    def __getitem__(self, dimension: str) -> Any:
        return self._values[dimension]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            try:
                return self._values[name]
            except KeyError:
                pass
        raise AttributeError(f"{type(self).__name__} has no dimension {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def keys_by_dimension(self) -> dict[str, str]:
        """Dimension -> the dimension's string key."""
        return dict(self._keys)

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return self._key

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in self._values.items())
        return f"{type(self).__name__}({inner})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._values, self._keys, self._key))


class MultiPartitions(PartitionsDefinition):
    """The product of named dimensions, in dict order, the first one most significant."""

    def __init__(self, dimensions: Mapping[str, PartitionsDefinition]) -> None:
        if not isinstance(dimensions, Mapping) or not dimensions:
            raise ValueError("MultiPartitions needs a dict of at least one dimension name -> definition")
        for name, definition in dimensions.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"dimension names must be non-empty strings, got {name!r}")
            if not isinstance(definition, PartitionsDefinition):
                raise ValueError(f"dimension {name!r} must be a partitions definition, got {definition!r}")
        self._dims: dict[str, PartitionsDefinition] = dict(dimensions)
        self._names = tuple(self._dims)
        self._defs = tuple(self._dims.values())

    @property
    def dimensions(self) -> Mapping[str, PartitionsDefinition]:
        """Dimension name -> definition, in key order (read-only)."""
        return MappingProxyType(self._dims)

    # ------------------------------------------------------------------ keys
    def key_of(self, **dimension_keys: str) -> str:
        """The key of one string key per dimension (all dimensions, each a valid key)."""
        if set(dimension_keys) != set(self._names):
            raise ValueError(
                f"key_of needs exactly the dimensions {list(self._names)}, got {list(dimension_keys)}"
            )
        for name, definition in self._dims.items():
            _check_in(definition, name, dimension_keys[name])
        return SEPARATOR.join(escape(dimension_keys[name]) for name in self._names)

    def split(self, key: str) -> dict[str, str]:
        """Dimension -> string key of a valid key; ``ValueError`` when ``key`` is not one."""
        parts = self._parts(key)
        for name, definition, part in zip(self._names, self._defs, parts, strict=True):
            _check_in(definition, name, part, key)
        return dict(zip(self._names, parts, strict=True))

    def _parts(self, key: str) -> list[str]:
        parts = split_escaped(check_key_type(key))
        if parts is None or len(parts) != len(self._names):
            raise ValueError(
                f"{key!r} is not a key of {len(self._names)} dimension(s) {list(self._names)} "
                f"joined with '|' ('|' and '\\' inside a dimension key escaped with '\\')"
            )
        return parts

    # ------------------------------------------------------------------ the contract
    def to_value(self, key: str) -> MultiPartitionKey:
        parts = self.split(key)
        values = {name: self._dims[name].to_value(part) for name, part in parts.items()}
        return MultiPartitionKey(values, parts, key)

    def to_key(self, value: Any) -> str:
        if isinstance(value, MultiPartitionKey):
            return self.key_of(**value.keys_by_dimension)
        if not isinstance(value, Mapping) or set(value) != set(self._names):
            raise ValueError(f"{value!r} is not a value of {self!r}: give a mapping of {list(self._names)}")
        return self.key_of(**{name: self._dims[name].to_key(value[name]) for name in self._names})

    def count(self) -> int:
        total = 1
        for definition in self._defs:
            total *= definition.count()
        return total

    def key_at(self, index: int) -> str:
        counts = [definition.count() for definition in self._defs]
        total = 1
        for c in counts:
            total *= c
        check_index(self, index, total)
        return self._key_at(index, counts)

    def _key_at(self, index: int, counts: list[int]) -> str:
        parts = []
        for definition, c in zip(reversed(self._defs), reversed(counts), strict=True):
            index, digit = divmod(index, c)
            parts.append(escape(definition.key_at(digit)))
        parts.reverse()
        return SEPARATOR.join(parts)

    def index_of(self, key: str) -> int:
        parts = self._parts(key)
        index = 0
        for name, definition, part in zip(self._names, self._defs, parts, strict=True):
            try:
                position = definition.index_of(part)
            except ValueError as exc:
                raise ValueError(f"{key!r}: dimension {name!r}: {exc}") from None
            index = index * definition.count() + position
        return index

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        parts = split_escaped(key)
        if parts is None or len(parts) != len(self._defs):
            return False
        return all(part in definition for definition, part in zip(self._defs, parts, strict=True))

    def _iter_range(self, lo: int, hi: int) -> Iterator[str]:
        counts = [definition.count() for definition in self._defs]
        return (self._key_at(i, counts) for i in range(lo, hi))

    def bind(self, dynamic_keys: Callable[[str], Sequence[str]]) -> PartitionsDefinition:
        bound = {name: definition.bind(dynamic_keys) for name, definition in self._dims.items()}
        if all(bound[name] is self._dims[name] for name in self._names):
            return self
        return MultiPartitions(bound)

    def _identity(self) -> Hashable:
        return tuple(self._dims.items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{name!r}: {definition!r}" for name, definition in self._dims.items())
        return f"MultiPartitions({{{inner}}})"


def _check_in(definition: PartitionsDefinition, name: str, part: str, key: str | None = None) -> None:
    if isinstance(part, str) and part in definition:
        return
    try:
        definition.index_of(part)
    except ValueError as exc:
        where = f"{key!r}: " if key is not None else ""
        raise ValueError(f"{where}dimension {name!r}: {exc}") from None
    raise ValueError(f"dimension {name!r}: {part!r} is not a key")  # pragma: no cover - `in` disagreed
