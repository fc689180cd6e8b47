"""Helpers for testing pipelines: run one asset without a store, and a clock that does not wait.

from flowstone.testing import FakeClock, run_asset

def test_daily_report() -> None:
    report = run_asset(daily_report, partition="2025-01-15", cleaned_events=[...], user_profiles=[...])
    assert report["rows"] == 2
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowstone._assets import AssetDefinition, Output
from flowstone._clock import FakeClock
from flowstone._context import Context, Resources
from flowstone._errors import DefinitionError
from flowstone._events import EventBus
from flowstone.engine._planner import typed_partition

__all__ = ["FakeClock", "run_asset"]


def run_asset(
    asset: AssetDefinition[..., Any],
    /,
    *,
    partition: str | None = None,
    resources: Mapping[str, Any] | None = None,
    run_id: str = "test-run",
    tenant: str = "default",
    output: bool = False,
    **inputs: Any,
) -> Any:
    """Call ``asset`` the way a run would, with the upstream values given as keywords.

    No store, no I/O manager, no server: the context carries the (typed) partition, the tenant
    and the resources the asset ``requires`` (Resource objects are set up for the call and torn
    down after it). Returns the value (``output=True``: the ``Output`` with its metadata). A
    missing or unexpected input is an error naming the asset.
    """
    missing = [name for name in asset.params if name not in inputs]
    unexpected = [name for name in inputs if name not in asset.deps]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing inputs {missing}")
        if unexpected:
            parts.append(f"unexpected inputs {unexpected} (it depends on {list(asset.deps)})")
        raise DefinitionError(
            f"run_asset('{asset.name}'): " + "; ".join(parts), context={"asset": asset.name}
        )
    if asset.partitioned_by is not None and partition is None:
        raise DefinitionError(
            f"run_asset('{asset.name}'): the asset is partitioned; pass partition='...'",
            context={"asset": asset.name},
        )
    from flowstone.resources._runtime import RunResources

    declared = dict(resources or {})
    absent = [name for name in asset.requires if name not in declared]
    if absent:
        raise DefinitionError(
            f"run_asset('{asset.name}'): it requires resources {absent}; pass resources={{...}}",
            context={"asset": asset.name, "resources": absent},
        )
    handles = RunResources(declared, events=EventBus())
    try:
        for name in asset.requires:
            handles[name]  # set up before the call, as in a run
        context = Context(
            asset_name=asset.name,
            partition_key=partition,
            partition=typed_partition(asset.partitioned_by, asset.name, partition),
            run_id=run_id,
            tenant=tenant,
            resources=Resources(asset.name, handles, asset.requires),
        )
        result = asset.fn(context, **inputs)
    finally:
        handles.teardown()
    if isinstance(result, Output):
        return result if output else result.value
    return Output(result) if output else result
