"""Partition mappings: which upstream partitions one downstream partition consumes.

An asset names a mapping per input with ``ins={"upstream": In(mapping=...)}``; without one the
default follows from the two definitions (see :func:`default_mapping`)::

    @pipeline.asset(partitioned_by=days, ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-6))})
    def rolling_week(context, raw: dict[str, list]): ...          # today and the six days before

When a mapping yields several upstream partitions the function receives ``{key: value}`` in key
order; when it yields one, the value itself.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

from flowstone.partitions import (
    DynamicPartitions,
    MultiPartitions,
    PartitionsDefinition,
    TimeWindowPartitions,
)
from flowstone.partitions._schedules import to_us

Missing = Literal["fail", "skip", "wait"]
Definition = PartitionsDefinition | None


class MappedKeys(NamedTuple):
    keys: list[str | None]
    missing: list[str] = []


class PartitionMapping(abc.ABC):
    """Maps a downstream partition key to the upstream keys it reads."""

    @abc.abstractmethod
    def upstream_keys(self, downstream: Definition, key: str | None, upstream: Definition) -> MappedKeys:
        """The upstream keys for downstream ``key``. Partitions the upstream definition cannot have
        (a window before its start) are described in ``missing``; the caller also treats returned
        keys the upstream does not (yet) have as missing, and decides per ``In.missing``."""

    @abc.abstractmethod
    def many(self, downstream: Definition, upstream: Definition) -> bool:
        """Whether the asset receives ``{key: value}`` rather than one value."""

    def problem(self, downstream: Definition, upstream: Definition) -> str | None:
        """Why this mapping cannot join these two definitions, or None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class IdentityMapping(PartitionMapping):
    """Partition k reads upstream partition k (the default for identical definitions)."""

    def upstream_keys(self, downstream: Definition, key: str | None, upstream: Definition) -> MappedKeys:
        return MappedKeys([key])

    def many(self, downstream: Definition, upstream: Definition) -> bool:
        return False

    def problem(self, downstream: Definition, upstream: Definition) -> str | None:
        if downstream is None or upstream is None:
            return "identity mapping needs both assets partitioned"
        if downstream != upstream:
            return f"identity mapping needs the same partitions, got {downstream!r} and {upstream!r}"
        return None


@dataclass(frozen=True, repr=True)
class TimeWindowMapping(PartitionMapping):
    """Upstream time windows overlapping the downstream window, shifted by whole upstream windows.

    ``TimeWindowMapping()`` between daily assets is the identity; between hourly upstream and a daily
    downstream it is the rollup (all 24 hours, 23 or 25 on DST days). ``start_offset=-1,
    end_offset=-1`` reads yesterday's partition; ``start_offset=-6`` a rolling week.
    """

    start_offset: int = 0
    end_offset: int = 0

    def __post_init__(self) -> None:
        if self.start_offset > self.end_offset:
            raise ValueError(f"start_offset {self.start_offset} is after end_offset {self.end_offset}")

    def upstream_keys(self, downstream: Definition, key: str | None, upstream: Definition) -> MappedKeys:
        assert isinstance(downstream, TimeWindowPartitions) and isinstance(upstream, TimeWindowPartitions)
        assert key is not None
        window = downstream.window(key)
        first, last = _covering_indexes(upstream, window.start, window.end)
        first += self.start_offset
        last += self.end_offset
        count = upstream.count()
        keys: list[str | None] = [upstream.key_at(i) for i in range(max(first, 0), min(last, count - 1) + 1)]
        missing = []
        if first < 0:
            missing.append(f"{min(-first, last - first + 1)} window(s) before {upstream.key_at(0)}")
        if last >= count:
            missing.append(f"{min(last - count + 1, last - first + 1)} window(s) after the last one")
        return MappedKeys(keys, missing)

    def many(self, downstream: Definition, upstream: Definition) -> bool:
        if self.start_offset != self.end_offset:
            return True
        return not _same_cadence(downstream, upstream)

    def problem(self, downstream: Definition, upstream: Definition) -> str | None:
        if not isinstance(downstream, TimeWindowPartitions) or not isinstance(upstream, TimeWindowPartitions):
            return "a time-window mapping needs time-window partitions on both assets"
        return None


@dataclass(frozen=True, repr=True)
class Rollup(TimeWindowMapping):
    """All upstream windows a downstream window covers (hourly -> daily, daily -> monthly)."""


class AllPartitionsMapping(PartitionMapping):
    """Every upstream partition, as ``{key: value}`` (an unpartitioned report over all days)."""

    def upstream_keys(self, downstream: Definition, key: str | None, upstream: Definition) -> MappedKeys:
        assert upstream is not None
        return MappedKeys(list(upstream.keys()))

    def many(self, downstream: Definition, upstream: Definition) -> bool:
        return True

    def problem(self, downstream: Definition, upstream: Definition) -> str | None:
        return "all-partitions mapping needs a partitioned upstream" if upstream is None else None


class StaticMapping(PartitionMapping):
    """An explicit table: downstream key -> upstream key or list of keys."""

    def __init__(self, table: Mapping[str, str | Sequence[str]]) -> None:
        self.table = {k: ([v] if isinstance(v, str) else list(v)) for k, v in table.items()}
        self._many = any(not isinstance(v, str) for v in table.values())

    def upstream_keys(self, downstream: Definition, key: str | None, upstream: Definition) -> MappedKeys:
        ups = self.table.get(key or "")
        if ups is None:  # never silently nothing: the In's missing= policy decides
            return MappedKeys([], [f"for {key!r} (the static mapping has no entry for it)"])
        return MappedKeys(list(ups))

    def many(self, downstream: Definition, upstream: Definition) -> bool:
        return self._many

    def problem(self, downstream: Definition, upstream: Definition) -> str | None:
        if downstream is None or upstream is None:
            return "a static mapping needs both assets partitioned"
        # Dynamic keys are only known at run time: those sides are checked per run (as missing).
        if not _has_dynamic(downstream):
            unknown_down = [k for k in self.table if k not in downstream]
            if unknown_down:
                return (
                    f"static mapping names downstream keys {unknown_down[:5]} that {downstream!r} "
                    "does not have"
                )
        if not _has_dynamic(upstream):
            unknown_up = sorted({u for ups in self.table.values() for u in ups if u not in upstream})
            if unknown_up:
                return f"static mapping names upstream keys {unknown_up[:5]} that {upstream!r} does not have"
        return None

    def __repr__(self) -> str:
        return f"StaticMapping({self.table!r})"


class DimensionMapping(PartitionMapping):
    """Project multi-dimensional partitions onto shared dimensions, matched by name.

    Each upstream dimension that the downstream also has takes the downstream's key; any other
    upstream dimension contributes all of its keys. ``renames={"upstream_dim": "downstream_dim"}``
    pairs dimensions with different names. A single (non-multi) definition counts as one
    dimension named by ``dimension``.
    """

    def __init__(self, dimension: str | None = None, *, renames: Mapping[str, str] | None = None) -> None:
        self.dimension = dimension
        self.renames = dict(renames or {})

    def _single_name(self, single: PartitionsDefinition, other: Definition) -> str | None:
        """The dimension a single definition stands for: given, or the one of the multi-dimensional
        side partitioned the same way."""
        if self.dimension is not None:
            return self.dimension
        if isinstance(other, MultiPartitions):
            names = [n for n, d in other.dimensions.items() if d == single]
            if len(names) == 1:
                return names[0]
        return None

    def _dims(self, definition: Definition, other: Definition) -> dict[str, PartitionsDefinition]:
        if isinstance(definition, MultiPartitions):
            return dict(definition.dimensions)
        if definition is None:
            return {}
        name = self._single_name(definition, other)
        return {} if name is None else {name: definition}

    def _split(self, definition: Definition, other: Definition, key: str) -> dict[str, str]:
        if isinstance(definition, MultiPartitions):
            return definition.split(key)
        assert definition is not None
        name = self._single_name(definition, other)
        assert name is not None
        return {name: key}

    def upstream_keys(self, downstream: Definition, key: str | None, upstream: Definition) -> MappedKeys:
        assert key is not None and upstream is not None
        down_keys = self._split(downstream, upstream, key)
        up_dims = self._dims(upstream, downstream)
        names = list(up_dims)
        choices: list[list[str]] = []
        for name in names:
            down_name = self.renames.get(name, name)
            if down_name in down_keys:
                choices.append([down_keys[down_name]])
            else:
                choices.append(list(up_dims[name].keys()))
        combos = itertools.product(*choices)
        if isinstance(upstream, MultiPartitions):
            return MappedKeys([upstream.key_of(**dict(zip(names, combo, strict=True))) for combo in combos])
        return MappedKeys([combo[0] for combo in combos])

    def many(self, downstream: Definition, upstream: Definition) -> bool:
        down = self._dims(downstream, upstream)
        return any(self.renames.get(n, n) not in down for n in self._dims(upstream, downstream))

    def problem(self, downstream: Definition, upstream: Definition) -> str | None:
        down, up = self._dims(downstream, upstream), self._dims(upstream, downstream)
        if not down or not up:
            return (
                "a dimension mapping needs multi-dimensional partitions on one side and, on the "
                "other, a definition that matches one of its dimensions (or dimension=...)"
            )
        shared = [n for n in up if self.renames.get(n, n) in down]
        if not shared:
            return f"no shared dimension between {sorted(down)} and {sorted(up)}"
        for name in shared:
            if down[self.renames.get(name, name)] != up[name]:
                return f"dimension '{name}' is partitioned differently on the two assets"
        return None

    def __repr__(self) -> str:
        return f"DimensionMapping({self.dimension!r}, renames={self.renames!r})"


@dataclass(frozen=True)
class In:
    """How an asset reads one input: its partition mapping and what a missing partition means.

    ``missing``: ``"fail"`` (the step fails with dependency_not_ready), ``"skip"`` (read what
    exists; a single missing input is passed as None), ``"wait"`` (do not run the step now; it is
    skipped with dependency_not_ready and runs once the partition exists).
    """

    mapping: PartitionMapping | None = None
    missing: Missing = "fail"

    def __post_init__(self) -> None:
        if self.mapping is not None and not isinstance(self.mapping, PartitionMapping):
            raise TypeError(f"In(mapping=...) must be a partition mapping, got {self.mapping!r}")
        if self.missing not in ("fail", "skip", "wait"):
            raise ValueError(f"In(missing=...) must be 'fail', 'skip' or 'wait', got {self.missing!r}")


class _UnpartitionedUpstream(PartitionMapping):
    """Every downstream partition reads the one value of an unpartitioned upstream."""

    def upstream_keys(self, downstream: Definition, key: str | None, upstream: Definition) -> MappedKeys:
        return MappedKeys([None])

    def many(self, downstream: Definition, upstream: Definition) -> bool:
        return False


UNPARTITIONED_UPSTREAM = _UnpartitionedUpstream()


def default_mapping(downstream: Definition, upstream: Definition) -> PartitionMapping | None:
    """The mapping used when an input names none, or None when there is no sensible default."""
    if upstream is None:
        return UNPARTITIONED_UPSTREAM
    if downstream is None:
        return AllPartitionsMapping()
    if downstream == upstream:
        return IdentityMapping()
    if isinstance(downstream, TimeWindowPartitions) and isinstance(upstream, TimeWindowPartitions):
        return TimeWindowMapping()
    if isinstance(downstream, MultiPartitions) or isinstance(upstream, MultiPartitions):
        mapping = DimensionMapping()
        return mapping if mapping.problem(downstream, upstream) is None else None
    return None


def _has_dynamic(definition: PartitionsDefinition) -> bool:
    """Whether some of the keys of ``definition`` are dynamic (added at run time)."""
    if isinstance(definition, MultiPartitions):
        return any(_has_dynamic(d) for d in definition.dimensions.values())
    return isinstance(definition, DynamicPartitions)


def _same_cadence(downstream: Definition, upstream: Definition) -> bool:
    if not isinstance(downstream, TimeWindowPartitions) or not isinstance(upstream, TimeWindowPartitions):
        return False
    return (downstream.cron, downstream.timezone) == (upstream.cron, upstream.timezone)


def _covering_indexes(upstream: TimeWindowPartitions, start: datetime, end: datetime) -> tuple[int, int]:
    """Indexes of the first and last upstream windows overlapping [start, end), counted from the
    upstream's first window even where they fall before it (negative) or past its last one.

    Not clipped to the upstream's range: a month rolled up from days that start mid-month must
    see the days before the first one as missing, not silently read half a month. The upstream's
    schedule numbers windows before its start and after its end too (an irregular cron numbers
    everything before its start -1, which still counts as missing).
    """
    schedule, first_window = upstream._sched, upstream._first
    first = schedule.floor(to_us(start)) - first_window
    last = schedule.floor(to_us(end) - 1) - first_window
    return first, last
