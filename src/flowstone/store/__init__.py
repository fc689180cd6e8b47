"""The metadata store (runs, steps, materializations, lineage, partitions, backfills, events, audit)."""

from flowstone.store._store import Store

__all__ = ["Store"]
