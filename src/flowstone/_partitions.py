"""Partition definitions: which keys an asset has and how a key maps to a typed value.

Each definition owns its codec: ``to_value(key)`` turns the canonical string key into the value
``context.partition`` sees and rejects keys that are not valid; it never guesses a type.

    days = DailyPartitions(start="2025-01-01")
    days.to_value("2025-01-15")      # datetime.date(2025, 1, 15)
    regions = StaticPartitions(["eu", "us"])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from typing import Any


class PartitionsDefinition:
    """Base class: the set of keys of a partitioned asset."""

    def to_value(self, key: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def keys(self) -> Iterator[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self.to_value(key)
        except ValueError:
            return False
        return True


class StaticPartitions(PartitionsDefinition):
    """A fixed list of string keys (regions, tenants, model names...)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = list(keys)
        if not self._keys:
            raise ValueError("StaticPartitions needs at least one key")
        for key in self._keys:
            if not isinstance(key, str) or not key:
                raise ValueError(f"partition keys must be non-empty strings, got {key!r}")
        if len(set(self._keys)) != len(self._keys):
            raise ValueError("StaticPartitions keys must be unique")
        self._set = frozenset(self._keys)

    def to_value(self, key: str) -> str:
        if key not in self._set:
            raise ValueError(f"{key!r} is not one of {sorted(self._set)}")
        return key

    def keys(self) -> Iterator[str]:
        return iter(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticPartitions) and other._keys == self._keys

    def __hash__(self) -> int:
        return hash(tuple(self._keys))

    def __repr__(self) -> str:
        return f"StaticPartitions({self._keys!r})"


class DailyPartitions(PartitionsDefinition):
    """One partition per calendar day, keyed ``YYYY-MM-DD``, from ``start`` to ``end`` inclusive."""

    def __init__(self, *, start: str | date, end: str | date | None = None) -> None:
        self.start = _as_date(start, "start")
        self.end = _as_date(end, "end") if end is not None else None
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")

    def to_value(self, key: str) -> date:
        try:
            value = date.fromisoformat(key)
        except (TypeError, ValueError):
            raise ValueError(f"{key!r} is not a day key (YYYY-MM-DD)") from None
        if len(key) != 10 or value.isoformat() != key:
            raise ValueError(f"{key!r} is not a day key (YYYY-MM-DD)")
        if value < self.start or (self.end is not None and value > self.end):
            raise ValueError(f"{key} is outside {self.start}..{self.end or 'open end'}")
        return value

    def keys(self) -> Iterator[str]:
        last = self.end if self.end is not None else date.today()
        day = self.start
        while day <= last:
            yield day.isoformat()
            day += timedelta(days=1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DailyPartitions) and (other.start, other.end) == (self.start, self.end)

    def __hash__(self) -> int:
        return hash((self.start, self.end))

    def __repr__(self) -> str:
        end = repr(self.end.isoformat()) if self.end else None
        return f"DailyPartitions(start={self.start.isoformat()!r}, end={end})"


def _as_date(value: str | date, field: str) -> date:
    if isinstance(value, datetime):  # a datetime is a date, but does not compare with one
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}={value!r} is not a date (YYYY-MM-DD)") from None
