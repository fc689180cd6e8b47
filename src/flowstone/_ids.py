"""Identifiers for runs, steps and materializations: 32 hex characters, ordered by time.

The first 12 hex digits are the creation time in milliseconds and the rest is random (the layout
of a version 7 UUID, without the version bits). New rows therefore land at the end of every
index on an id instead of at random pages, which keeps inserts cheap on SQLite and PostgreSQL,
and ids sort roughly by creation.
"""

from __future__ import annotations

import os
import time


def new_id() -> str:
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"
