"""Partitions whose keys a function computes from a config (the seeds' ``partition_fn(config)``).

    def tenant_regions(config):
        return [f"{t}:{r}" for t in config["tenants"] for r in config["regions"]]

    parts = FunctionPartitions(tenant_regions, {"tenants": ["acme"], "regions": ["eu", "us"]})

``fn(config)`` is called once, on first use (not at import), and must return unique non-empty
string keys; their order is the definition's order and each key's value is the key itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from flowstone.partitions._dynamic import KeyListPartitions, _LazyKeys


class FunctionPartitions(KeyListPartitions):
    """Keys ``fn(config)``, computed lazily once and validated (unique, non-empty strings)."""

    def __init__(self, fn: Callable[[Any], Sequence[str]], config: Any = None) -> None:
        if not callable(fn):
            raise ValueError(f"FunctionPartitions needs a function config -> keys, got {fn!r}")
        self.fn = fn
        self.config = config
        self._lazy = _LazyKeys(functools.partial(fn, config), f"FunctionPartitions({_name(fn)})")

    def _identity(self) -> Hashable:
        return self.fn  # equality also compares config, which may not be hashable: see __eq__

    def __eq__(self, other: object) -> bool:
        if type(other) is not FunctionPartitions:
            return NotImplemented
        return self.fn == other.fn and bool(self.config == other.config)

    def __hash__(self) -> int:
        return hash(("FunctionPartitions", self.fn))

    def __repr__(self) -> str:
        config = "" if self.config is None else f", config={self.config!r}"
        return f"FunctionPartitions({_name(self.fn)}{config})"


def _name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{qualname}" if module else qualname
