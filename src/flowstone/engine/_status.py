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
    """Partitions of ``asset`` whose latest success is stale, directly or through their upstream.

    Staleness through an upstream follows each partition's latest success, also where a later
    attempt failed (what was built from that success is what is stale); staleness by its own record
    (the store's ``version_stale_keys``) covers partitions whose last attempt succeeded.
    """
    if asset not in memo:
        own, inherited = _own_and_inherited(app, asset, memo)
        memo[asset] = own | inherited
    return memo[asset]


def _own_and_inherited(
    app: FlowStone, asset: str, memo: dict[str, set[str | None]]
) -> tuple[set[str | None], set[str | None]]:
    """(stale by its own record, stale only through a stale upstream partition it consumed)."""
    store, tenant = app.store, app.tenant
    definition = app.pipeline.assets[asset]
    own = store.version_stale_keys(tenant=tenant, asset=asset, code_version=definition.code_version)
    inherited: set[str | None] = set()
    for upstream in definition.deps:
        upstream_stale = stale_keys(app, upstream, memo)
        if upstream_stale:
            inherited |= store.keys_consuming(
                tenant=tenant, asset=asset, upstream_asset=upstream, upstream_keys=upstream_stale
            )
    return own, inherited - own


def asset_status(app: FlowStone, asset: str, memo: dict[str, set[str | None]] | None = None) -> AssetStatus:
    memo = {} if memo is None else memo
    definition = app.resolver()(asset)
    total = 1 if definition is None else definition.count()
    status = app.store.partition_status(tenant=app.tenant, asset=asset, total=total)
    own, inherited = _own_and_inherited(app, asset, memo)
    memo[asset] = own | inherited
    # ``own`` holds successes only; an inherited key whose last attempt failed counts as failed,
    # never as stale too (fresh + stale + missing + failed add up to the total).
    stale = len(own)
    if inherited:
        states = app.store.latest_states(tenant=app.tenant, asset=asset, keys=inherited)
        stale += sum(1 for state in states.values() if state.last_status == "success")
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
