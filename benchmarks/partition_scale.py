"""Partitions at scale: both halves of the issue's figure in one command.

- the definition side (count, membership, positions, ranges and pages over ~1,000,000 keys):
  ``partition_scale_definitions.py``;
- the store side (``partition_status`` over 1,000,000 materialization rows of one asset on SQLite
  and PostgreSQL): ``partition_scale_store.py``.

    python benchmarks/partition_scale.py
"""

from __future__ import annotations

import partition_scale_definitions
import partition_scale_store

if __name__ == "__main__":
    partition_scale_definitions.main()
    partition_scale_store.main()
