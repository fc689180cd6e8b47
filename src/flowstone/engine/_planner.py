"""Planning: which (asset, partition) steps a run must execute, in dependency order.

The rule a user sees: the selected assets are materialized for the requested partitions unless
they already are (``force`` re-runs them; ``stale=True`` also re-runs those that are stale),
together with whatever upstream partitions they read, through their partition mappings, that are
not materialized yet (or, with ``stale=True``, are stale). A step whose upstream is re-run in the
same plan is re-run too, since its input changes.

An asset partition is *stale* when it was invalidated, its code version changed, an upstream
partition it consumed now has a different data version, the upstream partitions it reads are not
the ones it consumed, or an upstream partition it reads is itself stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowstone._errors import ValidationError
from flowstone._mappings import In, MappedKeys, PartitionMapping, default_mapping
from flowstone._pipeline import Pipeline
from flowstone.partitions import PartitionsDefinition
from flowstone.store._store import Store

StepKey = tuple[str, str | None]
Resolve = Callable[[str], PartitionsDefinition | None]


@dataclass(frozen=True)
class InputGroup:
    """One input of a step: the upstream asset, the partitions it reads, and how."""

    asset: str
    keys: tuple[str | None, ...]
    many: bool
    missing: tuple[str, ...] = ()
    policy: str = "fail"


@dataclass(frozen=True)
class PlannedStep:
    asset: str
    partition_key: str | None
    groups: tuple[InputGroup, ...] = ()

    @property
    def key(self) -> StepKey:
        return (self.asset, self.partition_key)

    @property
    def inputs(self) -> tuple[StepKey, ...]:
        return tuple((g.asset, k) for g in self.groups for k in g.keys)

    @property
    def blocked(self) -> tuple[str, str] | None:
        """(policy, reason) when an upstream partition this step reads does not exist."""
        for group in self.groups:
            if group.missing and group.policy != "skip":
                shown = ", ".join(str(m) for m in group.missing[:3])
                more = f" and {len(group.missing) - 3} more" if len(group.missing) > 3 else ""
                return group.policy, f"upstream '{group.asset}' has no partition {shown}{more}"
        return None


@dataclass(frozen=True)
class Plan:
    steps: list[PlannedStep]
    selection: list[str]
    partition_keys: list[str | None]
    force: bool = False
    # Inputs the plan reads but does not recompute: their latest successful materialization.
    existing: dict[StepKey, str] = field(default_factory=dict)
    up_to_date: list[StepKey] = field(default_factory=list)
    stale: list[StepKey] = field(default_factory=list)
    # The (bound) partitions definitions the plan was made with; the run reads the same ones.
    resolve: Resolve | None = field(default=None, compare=False, repr=False)

    @property
    def partition_key(self) -> str | None:
        """The one requested partition (None for unpartitioned or multi-partition plans)."""
        return self.partition_keys[0] if len(self.partition_keys) == 1 else None


def mapping_for(pipeline: Pipeline, asset: str, dep: str, resolve: Resolve) -> tuple[PartitionMapping, In]:
    definition = pipeline.assets[asset]
    spec = definition.ins.get(dep) or In()
    mapping = spec.mapping or default_mapping(resolve(asset), resolve(dep))
    if mapping is None:  # validation reports this before any run
        raise ValidationError(
            f"asset '{asset}' has no partition mapping for its input '{dep}'",
            context={"asset": asset, "upstream": dep},
        )
    return mapping, spec


def typed_partition(definition: PartitionsDefinition | None, asset: str, partition_key: str | None) -> Any:
    if definition is None or partition_key is None:
        return None
    try:
        return definition.to_value(partition_key)
    except ValueError as exc:
        raise ValidationError(
            f"partition {partition_key!r} is not valid for asset '{asset}': {exc}",
            context={"asset": asset, "partition": partition_key},
        ) from None


def plan_run(
    pipeline: Pipeline,
    store: Store,
    *,
    tenant: str,
    selected: Iterable[str],
    partition_keys: Sequence[str] | None,
    force: bool,
    resolve: Resolve,
    stale: bool = False,
) -> Plan:
    graph = pipeline.graph
    targets_assets = set(selected)
    keys = list(partition_keys or [])
    order = graph.topological_order()
    rank = {name: i for i, name in enumerate(order)}

    # 1. Target steps: each selected asset for each requested key it has.
    targets: set[StepKey] = set()
    for asset in sorted(targets_assets, key=rank.__getitem__):
        definition = resolve(asset)
        if definition is None:
            targets.add((asset, None))
            continue
        fitting = [k for k in keys if k in definition]
        if fitting:
            targets.update((asset, k) for k in fitting)
    for asset in targets_assets:
        definition = resolve(asset)
        if definition is None or any(a == asset for a, _ in targets):
            continue
        downstream_selected = graph.downstream([asset]) & targets_assets
        if not downstream_selected:  # its keys can only come from the request itself
            if not keys:
                raise ValidationError(
                    f"asset '{asset}' is partitioned; choose a partition (partition=... / --partition)",
                    context={"asset": asset},
                )
            typed_partition(definition, asset, keys[0])  # raises naming the bad key
    # The requested keys choose partitions of the selected assets only (an unpartitioned asset
    # reads its upstream partitions through its mappings), so each must be a key of one of them:
    # never silently drop a key.
    partitioned = [a for a in sorted(targets_assets, key=rank.__getitem__) if resolve(a) is not None]
    if keys and not partitioned:
        raise ValidationError(
            f"partition {keys[0]!r} given but none of {sorted(targets_assets)} is partitioned",
            context={"partition": keys[0]},
        )
    for requested in keys:
        if not any((a, requested) in targets for a in partitioned):
            typed_partition(resolve(partitioned[0]), partitioned[0], requested)  # raises, naming it
            raise ValidationError(  # pragma: no cover - typed_partition rejects what `in` rejected
                f"partition {requested!r} is not valid for {partitioned}", context={"partition": requested}
            )

    # 2. Expand upstream through the partition mappings.
    groups: dict[StepKey, tuple[InputGroup, ...]] = {}
    frontier = list(targets)
    while frontier:
        step = frontier.pop()
        if step in groups:
            continue
        asset, key = step
        step_groups = []
        for dep in graph.dependencies(asset):
            mapping, spec = mapping_for(pipeline, asset, dep, resolve)
            up = resolve(dep)
            mapped: MappedKeys = mapping.upstream_keys(resolve(asset), key, up)
            present = [u for u in mapped.keys if up is None or (u is not None and u in up)]
            absent = [str(u) for u in mapped.keys if up is not None and (u is None or u not in up)]
            step_groups.append(
                InputGroup(
                    dep,
                    tuple(present),
                    mapping.many(resolve(asset), up),
                    tuple(mapped.missing) + tuple(absent),
                    spec.missing,
                )
            )
            frontier.extend((dep, u) for u in present)
        groups[step] = tuple(step_groups)

    # 3. Decide what must run, in dependency order.
    ordered = sorted(groups, key=lambda s: (rank[s[0]], s[1] or ""))
    # A partition whose latest attempt failed is not done, even with an older success.
    materialized = store.latest_success(tenant=tenant, pairs=ordered, last_succeeded=True)
    stale_steps = _stale_steps(pipeline, store, tenant, ordered, groups, materialized) if stale else set()
    needed: set[StepKey] = set()
    for step in ordered:
        done = step in materialized and step not in stale_steps
        upstream_rerun = any((g.asset, k) in needed for g in groups[step] for k in g.keys)
        if step[0] in targets_assets:
            if force or not done or upstream_rerun:
                needed.add(step)
        elif not done:
            needed.add(step)

    # Keep only the upstream steps that a needed target actually waits for.
    keep: set[StepKey] = set()
    work = [s for s in needed if s in targets or s[0] in targets_assets]
    while work:
        step = work.pop()
        if step in keep:
            continue
        keep.add(step)
        work.extend((g.asset, k) for g in groups[step] for k in g.keys if (g.asset, k) in needed)

    steps = [PlannedStep(a, k, groups[(a, k)]) for a, k in ordered if (a, k) in keep]
    existing: dict[StepKey, str] = {}
    for planned in steps:
        for upstream_step in planned.inputs:
            if upstream_step not in keep and upstream_step in materialized:
                existing[upstream_step] = materialized[upstream_step]
    return Plan(
        steps=steps,
        selection=sorted(targets_assets),
        partition_keys=list(keys) if keys else [None],
        force=force,
        existing=existing,
        up_to_date=[s for s in ordered if s in targets and s not in keep],
        stale=sorted(stale_steps, key=lambda s: (rank[s[0]], s[1] or "")),
        resolve=resolve,
    )


def _stale_steps(
    pipeline: Pipeline,
    store: Store,
    tenant: str,
    ordered: list[StepKey],
    groups: dict[StepKey, tuple[InputGroup, ...]],
    materialized: dict[StepKey, str],
) -> set[StepKey]:
    """The materialized steps of the plan that are stale (see the module docstring)."""
    states: dict[StepKey, Any] = {}
    by_asset: dict[str, list[str | None]] = {}
    for asset, key in ordered:
        by_asset.setdefault(asset, []).append(key)
    for asset, keys in by_asset.items():
        for key, state in store.latest_states(tenant=tenant, asset=asset, keys=keys).items():
            states[(asset, key)] = state
    consumed = store.consumed_versions(tenant=tenant, materialization_ids=list(materialized.values()))
    stale: set[StepKey] = set()
    for step in ordered:
        found = states.get(step)
        if found is None or step not in materialized:
            continue
        state = found
        definition = pipeline.assets[step[0]]
        reads = {(g.asset, k) for g in groups[step] for k in g.keys}
        used = {(a, k): v for a, k, _mat, v in consumed.get(materialized[step], [])}
        if (
            state.stale_since is not None
            or state.code_version != definition.code_version
            or any(dep in stale for dep in reads)
            or set(used) != reads
            or any(dep in states and states[dep].data_version != version for dep, version in used.items())
        ):
            stale.add(step)
    return stale
