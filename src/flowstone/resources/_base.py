"""The Resource protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Resource(Protocol):
    """Something set up once per run and shared by the steps that require it.

    ``setup(config)`` returns the handle assets receive; ``config`` holds the resource's settings
    with environment variables already resolved. ``teardown(handle)`` (optional) releases it.
    """

    def setup(self, config: Mapping[str, Any]) -> Any: ...
