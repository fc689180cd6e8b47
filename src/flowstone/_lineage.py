"""Lineage queries on recorded materializations: upstream, downstream and impact.

app.lineage.upstream("daily_report", partition="2025-01-15")      # what it was built from
app.lineage.downstream("raw_events", partition="2025-01-15")      # what consumed it
app.lineage.impact("raw_events", partition="2025-01-15")          # what a change would touch
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowstone._errors import ValidationError
from flowstone._records import LineageEntry

if TYPE_CHECKING:
    from flowstone._app import FlowStone


class Lineage:
    def __init__(self, app: FlowStone) -> None:
        self._app = app

    def _check(self, asset: str, partition: str | None) -> None:
        """Unknown names raise AssetNotFound with a suggestion; partitions must fit the asset."""
        from flowstone.engine._planner import typed_partition

        definition = self._app.pipeline.get(asset)
        if definition.partitioned_by is not None and partition is None:
            raise ValidationError(
                f"asset '{asset}' is partitioned; choose a partition (partition=... / --partition)",
                context={"asset": asset},
            )
        if definition.partitioned_by is None and partition is not None:
            raise ValidationError(
                f"asset '{asset}' is not partitioned; drop partition={partition!r}",
                context={"asset": asset, "partition": partition},
            )
        typed_partition(self._app.resolver()(asset), asset, partition)

    def _latest(self, asset: str, partition: str | None) -> str | None:
        self._check(asset, partition)
        found = self._app.store.latest_success(tenant=self._app.tenant, pairs=[(asset, partition)])
        return found.get((asset, partition))

    def upstream(
        self, asset: str, *, partition: str | None = None, depth: int | None = None
    ) -> list[LineageEntry]:
        """The exact materializations the latest materialization of ``asset`` consumed."""
        mat_id = self._latest(asset, partition)
        if mat_id is None:
            return []
        return self._app.store.lineage_upstream(
            tenant=self._app.tenant, materialization_id=mat_id, depth=depth
        )

    def downstream(
        self, asset: str, *, partition: str | None = None, depth: int | None = None
    ) -> list[LineageEntry]:
        """Every materialization that consumed any materialization of ``asset`` (one row per
        downstream asset partition, at its smallest depth, latest first)."""
        self._check(asset, partition)
        store, tenant = self._app.store, self._app.tenant
        entries = store.lineage_downstream(tenant=tenant, asset=asset, partition_key=partition, depth=depth)
        seen: set[tuple[str, str | None]] = set()
        unique: list[LineageEntry] = []
        for entry in entries:  # ordered by depth, then newest first
            if (entry.asset, entry.partition_key) not in seen:
                seen.add((entry.asset, entry.partition_key))
                unique.append(entry)
        return unique

    def impact(
        self, asset: str, *, partition: str | None = None, depth: int | None = None
    ) -> list[LineageEntry]:
        """What a change to ``asset`` would touch: every downstream asset partition with its latest
        status, ``stale=True`` when its current value was not built from the latest ``asset``, and
        downstream assets in the graph that were never materialized (``materialization_id=None``)."""
        app = self._app
        store, tenant = app.store, app.tenant
        latest = self._latest(asset, partition)
        from_latest = (
            {
                e.materialization_id
                for e in store.lineage_downstream(tenant=tenant, materialization_ids=[latest], depth=depth)
            }
            if latest
            else set()
        )
        entries = self.downstream(asset, partition=partition, depth=depth)
        keys_by_asset: dict[str, list[str | None]] = {}
        for entry in entries:
            keys_by_asset.setdefault(entry.asset, []).append(entry.partition_key)
        # One chunked lookup per downstream asset, not one query per partition.
        states = {
            (name, key): found
            for name, keys in keys_by_asset.items()
            for key, found in store.latest_states(tenant=tenant, asset=name, keys=keys).items()
        }
        result: list[LineageEntry] = []
        for entry in entries:
            state = states.get((entry.asset, entry.partition_key))
            current = state.success_materialization_id if state else None
            result.append(
                LineageEntry(
                    asset=entry.asset,
                    partition_key=entry.partition_key,
                    materialization_id=current or entry.materialization_id,
                    depth=entry.depth,
                    run_id=state.last_run_id if state else entry.run_id,
                    status=state.last_status if state else entry.status,
                    finished_at=state.success_at if state else entry.finished_at,
                    stale=current not in from_latest,
                )
            )
        reached = {e.asset for e in result}
        graph = app.pipeline.graph
        frontier, level, seen = [asset], 0, {asset}
        while frontier and (depth is None or level < depth):
            level += 1
            nxt = []
            for node in frontier:
                for child in graph.dependents(node):
                    if child in seen:
                        continue
                    seen.add(child)
                    nxt.append(child)
                    if child not in reached:
                        key = partition if app.pipeline.assets[child].partitioned_by else None
                        result.append(LineageEntry(child, key, None, level, status=None, stale=None))
            frontier = nxt
        return sorted(result, key=lambda e: (e.depth, e.asset, e.partition_key or ""))
