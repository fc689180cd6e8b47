"""The context an asset function receives as its first argument."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flowstone._errors import DefinitionError

_log = logging.getLogger("flowstone.asset")


class Resources:
    """The resources an asset listed in ``requires=[...]``, as attributes.

    Asking for one it did not list is an error that names the asset, so a missing ``requires``
    shows up in the first test run rather than in production.
    """

    def __init__(self, asset: str, available: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        self._asset = asset
        self._available = available
        self._allowed = allowed

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._allowed:
            raise DefinitionError(
                f"asset '{self._asset}' uses resource '{name}' but does not list it in "
                f"requires=[...] (it lists {list(self._allowed)})",
                context={"asset": self._asset, "resource": name},
            )
        return self._available[name]

    def __contains__(self, name: object) -> bool:
        return name in self._allowed


class Context:
    """What a running step knows: which asset and partition, which run, and its resources.

    ``partition`` is the typed value (a ``date`` for ``DailyPartitions``); ``partition_key`` is
    the canonical string used in the store. Both are ``None`` for unpartitioned assets.
    """

    __slots__ = ("asset_name", "log", "partition", "partition_key", "resources", "run_id", "tenant")

    def __init__(
        self,
        *,
        asset_name: str,
        partition_key: str | None,
        partition: Any,
        run_id: str,
        tenant: str,
        resources: Resources,
    ) -> None:
        self.asset_name = asset_name
        self.partition_key = partition_key
        self.partition = partition
        self.run_id = run_id
        self.tenant = tenant
        self.resources = resources
        self.log = logging.LoggerAdapter(
            _log, {"asset": asset_name, "partition": partition_key, "run_id": run_id}
        )

    def __repr__(self) -> str:
        return f"Context(asset={self.asset_name!r}, partition={self.partition_key!r}, run={self.run_id})"
