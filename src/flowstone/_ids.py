"""Identifiers for runs, steps and materializations: 32 random hex characters.

Random rather than time-ordered on purpose: people use short prefixes (``flowstone run show
3fa9c2``) and the tables print the first 12 characters, which must tell ids apart.
"""

from __future__ import annotations

import uuid


def new_id() -> str:
    return uuid.uuid4().hex
