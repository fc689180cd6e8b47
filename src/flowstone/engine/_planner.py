"""Planning: which (asset, partition) steps a run must execute, in dependency order.

The rule a user sees: the selected assets are materialized unless they already are (``force``
re-runs them), together with whatever upstream they need that is not materialized yet. A selected
asset whose upstream is re-run in the same plan is re-run too, since its input changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flowstone._errors import ValidationError
from flowstone._pipeline import Pipeline
from flowstone.store._store import Store

StepKey = tuple[str, str | None]


@dataclass(frozen=True)
class PlannedStep:
    asset: str
    partition_key: str | None
    inputs: tuple[StepKey, ...]

    @property
    def key(self) -> StepKey:
        return (self.asset, self.partition_key)


@dataclass(frozen=True)
class Plan:
    steps: list[PlannedStep]
    selection: list[str]
    partition_key: str | None
    force: bool = False
    # Inputs the plan reads but does not recompute: their latest successful materialization.
    existing: dict[StepKey, str] = field(default_factory=dict)
    up_to_date: list[StepKey] = field(default_factory=list)


def partition_key_for(pipeline: Pipeline, asset: str, partition_key: str | None) -> str | None:
    """The key ``asset`` is materialized under when the run targets ``partition_key``."""
    definition = pipeline.assets[asset].partitioned_by
    if definition is None:
        return None
    if partition_key is None:
        raise ValidationError(
            f"asset '{asset}' is partitioned; choose a partition (partition=... / --partition)",
            context={"asset": asset},
        )
    return partition_key


def typed_partition(pipeline: Pipeline, asset: str, partition_key: str | None) -> Any:
    definition = pipeline.assets[asset].partitioned_by
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
    partition_key: str | None,
    force: bool,
) -> Plan:
    graph = pipeline.graph
    targets = set(selected)
    closure = targets | graph.upstream(targets)
    order = [name for name in graph.topological_order() if name in closure]

    if partition_key is not None and not any(pipeline.assets[a].partitioned_by for a in closure):
        raise ValidationError(
            f"partition {partition_key!r} given but none of {sorted(targets)} is partitioned",
            context={"partition": partition_key},
        )
    keys: dict[str, str | None] = {}
    for name in order:
        keys[name] = partition_key_for(pipeline, name, partition_key)
        typed_partition(pipeline, name, keys[name])  # validates the key early, before any run

    materialized = store.latest_success(tenant=tenant, pairs=[(a, keys[a]) for a in order])
    needed: set[str] = set()
    for name in order:
        done = (name, keys[name]) in materialized
        if name in targets:
            if force or not done or any(d in needed for d in graph.dependencies(name)):
                needed.add(name)
        elif not done:
            needed.add(name)

    # Keep only the unselected upstream steps that some needed target actually waits for.
    keep: set[str] = set()
    frontier = [n for n in needed if n in targets]
    while frontier:
        node = frontier.pop()
        if node in keep:
            continue
        keep.add(node)
        frontier.extend(d for d in graph.dependencies(node) if d in needed)

    steps = [
        PlannedStep(
            asset=name,
            partition_key=keys[name],
            inputs=tuple((d, keys[d]) for d in graph.dependencies(name)),
        )
        for name in order
        if name in keep
    ]
    existing: dict[StepKey, str] = {}
    for step in steps:
        for dep in step.inputs:
            if dep[0] not in keep and dep in materialized:
                existing[dep] = materialized[dep]
    up_to_date = [(n, keys[n]) for n in order if n in targets and n not in keep]
    return Plan(
        steps=steps,
        selection=sorted(targets),
        partition_key=partition_key,
        force=force,
        existing=existing,
        up_to_date=up_to_date,
    )
