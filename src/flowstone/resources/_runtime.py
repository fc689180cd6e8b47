"""Resources as one run sees them: set up on first use, torn down when the run ends."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from flowstone._errors import FlowStoneError, ResourceUnavailable
from flowstone._events import EventBus


def _config_of(resource: Any) -> Mapping[str, Any]:
    config = getattr(resource, "config", None)
    return dict(config) if isinstance(config, Mapping) else {}


class RunResources(Mapping[str, Any]):
    """A lazy mapping from resource name to handle, for one run.

    A declared object with ``setup`` is set up the first time a step asks for it (once, even
    when steps run on several threads); a failing setup is remembered and raised as
    ``ResourceUnavailable`` (retryable) to every step that requires it. Plain objects pass
    through unchanged. ``teardown()`` releases what was set up, in reverse order.
    """

    def __init__(self, declared: Mapping[str, Any], *, events: EventBus | None = None) -> None:
        self._declared = dict(declared)
        self._events = events
        self._handles: dict[str, Any] = {}
        self._failures: dict[str, ResourceUnavailable] = {}
        self._order: list[str] = []
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[str]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)

    def __contains__(self, name: object) -> bool:
        return name in self._declared

    def __getitem__(self, name: str) -> Any:
        resource = self._declared[name]
        if not callable(getattr(resource, "setup", None)):
            return resource
        with self._lock:
            if name in self._handles:
                return self._handles[name]
            if name in self._failures:
                raise self._failures[name]
            try:
                handle = resource.setup(_config_of(resource))
            except Exception as exc:
                retryable = exc.retryable if isinstance(exc, FlowStoneError) else True
                failure = ResourceUnavailable(
                    f"resource '{name}' could not be set up: {type(exc).__name__}: {exc}",
                    context={"resource": name},
                    retryable=retryable,
                    original=exc,
                )
                self._failures[name] = failure
                raise failure from exc
            self._handles[name] = handle
            self._order.append(name)
            return handle

    def teardown(self) -> None:
        """Release every handle set up in this run, last first; failures are logged, not raised."""
        import logging

        with self._lock:
            order, self._order = self._order, []
            handles, self._handles = self._handles, {}
        for name in reversed(order):
            release = getattr(self._declared[name], "teardown", None)
            if callable(release):
                try:
                    release(handles[name])
                except Exception:
                    logging.getLogger("flowstone.resources").exception(
                        "teardown of resource '%s' failed", name
                    )
