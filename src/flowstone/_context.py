"""The context an asset function receives as its first argument."""

from __future__ import annotations

import logging
import threading
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

    __slots__ = (
        "_stop",
        "_stop_reason",
        "asset_name",
        "log",
        "partition",
        "partition_key",
        "resources",
        "run_id",
        "tenant",
    )

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
        self._stop = threading.Event()
        self._stop_reason = ""
        self.log = logging.LoggerAdapter(
            _log, {"asset": asset_name, "partition": partition_key, "run_id": run_id}
        )

    def __repr__(self) -> str:
        return f"Context(asset={self.asset_name!r}, partition={self.partition_key!r}, run={self.run_id})"

    @property
    def should_stop(self) -> bool:
        """True once the step timed out (or its run was cancelled): a long loop should return.

        A thread cannot be killed, so a step past its ``timeout`` is recorded as failed and its
        thread abandoned; checking this between chunks of work lets it end early::

            for chunk in chunks:
                context.raise_if_stopped()
                process(chunk)
        """
        return self._stop.is_set()

    def raise_if_stopped(self) -> None:
        """Raise ``StepTimeout`` if the step has been asked to stop."""
        if self._stop.is_set():
            from flowstone._errors import StepTimeout

            raise StepTimeout(
                f"asset '{self.asset_name}' stopped: {self._stop_reason or 'asked to stop'}",
                context={"asset": self.asset_name, "partition": self.partition_key},
            )

    def _request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self._stop.set()
