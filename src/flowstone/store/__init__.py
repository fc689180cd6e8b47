"""The metadata store (runs, steps, materializations, lineage, events, audit)."""

from flowstone.store._store import Store

__all__ = ["Store"]
