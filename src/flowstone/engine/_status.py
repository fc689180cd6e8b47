"""Asset health: how many partitions are fresh, stale, missing or failed.

Counts come from the store's indexed status queries; staleness adds what versions say (changed
code, an upstream rebuilt with different data, invalidation) and what it inherits: a partition
built from a stale upstream partition is stale too, asset by asset in dependency order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowstone._app import FlowStone


@dataclass(frozen=True)
class AssetStatus:
    asset: str
    total: int
    fresh: int
    stale: int
    missing: int
    failed: int
    running: int


def stale_keys(app: FlowStone, asset: str, memo: dict[str, set[str | None]]) -> set[str | None]:
    """Successful partitions of ``asset`` that are stale, directly or through their upstream."""
    if asset in memo:
        return memo[asset]
    store, tenant = app.store, app.tenant
    definition = app.pipeline.assets[asset]
    stale = store.version_stale_keys(tenant=tenant, asset=asset, code_version=definition.code_version)
    for upstream in definition.deps:
        upstream_stale = stale_keys(app, upstream, memo)
        if upstream_stale:
            stale |= store.keys_consuming(
                tenant=tenant, asset=asset, upstream_asset=upstream, upstream_keys=upstream_stale
            )
    memo[asset] = stale
    return stale


def asset_status(app: FlowStone, asset: str, memo: dict[str, set[str | None]] | None = None) -> AssetStatus:
    definition = app.resolver()(asset)
    total = 1 if definition is None else definition.count()
    status = app.store.partition_status(tenant=app.tenant, asset=asset, total=total)
    stale = len(stale_keys(app, asset, {} if memo is None else memo))
    succeeded = status.counts.get("success", 0)
    return AssetStatus(
        asset=asset,
        total=total,
        fresh=max(succeeded - stale, 0),
        stale=stale,
        missing=status.missing or 0,
        failed=status.counts.get("failed", 0),
        running=status.counts.get("running", 0),
    )
