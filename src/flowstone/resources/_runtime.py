"""Resources as one run sees them: set up on first use, torn down when the run ends.

Also :func:`check_resources`, which ``FlowStone`` calls when it is built so a missing
environment variable is reported before any run starts::

    check_resources({"warehouse": SQLDatabase(url=EnvVar("WAREHOUSE_URL"))})
    # ConfigurationError: resource 'warehouse', field 'url': environment variable WAREHOUSE_URL is not set

Every setup, teardown and health check is emitted on the event bus (``resource.setup``,
``resource.teardown``, ``resource.health``) with ``resource``, ``duration_ms``, ``ok`` and
``error`` (or ``detail`` for health).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from flowstone._errors import ConfigurationError, FlowStoneError, ResourceUnavailable
from flowstone._events import Event, EventBus
from flowstone.resources._base import Health, healthy, is_resource, resolve_config, unhealthy

_log = logging.getLogger("flowstone.resources")

RESOURCE_SETUP = "resource.setup"
RESOURCE_TEARDOWN = "resource.teardown"
RESOURCE_HEALTH = "resource.health"


def check_resources(declared: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Raise ``ConfigurationError`` listing every setting of every resource that cannot be
    resolved (each missing environment variable, with the resource and field it is for)."""
    problems: list[dict[str, Any]] = []
    for name, resource in declared.items():
        if not is_resource(resource):
            continue
        _, found = resolve_config(resource, environ)
        problems += [
            {"resource": name, "field": p.field, "variable": p.variable, "message": p.message} for p in found
        ]
    if problems:
        lines = [f"  - resource '{p['resource']}', field '{p['field']}': {p['message']}" for p in problems]
        raise ConfigurationError(
            f"{len(problems)} resource setting(s) cannot be resolved:\n" + "\n".join(lines),
            context={"resource_problems": problems},
        )


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class RunResources(Mapping[str, Any]):
    """A lazy mapping from resource name to handle, for one run.

    A declared :class:`Resource` is set up the first time a step asks for it (once, even when
    steps run on several threads; two different resources may set up at the same time), with its
    config resolved. A failing setup is raised as ``ResourceUnavailable`` to the steps that
    require it: retryable, unless the cause is a configuration error. A retryable failure is
    shared for ``failure_ttl`` seconds of ``clock`` (the steps waiting on that setup, and those
    asking right after, fail at once); a step asking later, such as a retry after its delay,
    tries the setup again. A configuration error is kept for the whole run. Plain objects pass
    through unchanged. ``teardown()`` releases what was set up, last first.

    ``environ`` replaces ``os.environ`` for :class:`EnvVar` settings (tests); ``clock`` is a
    monotonic clock in seconds (the app's, so a fake clock's sleeps count).
    """

    def __init__(
        self,
        declared: Mapping[str, Any],
        *,
        events: EventBus | None = None,
        environ: Mapping[str, str] | None = None,
        run_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        failure_ttl: float = 0.5,
    ) -> None:
        self._declared = dict(declared)
        self._events = events
        self._environ = environ
        self._clock = clock
        self._failure_ttl = failure_ttl
        self.run_id = run_id
        self._handles: dict[str, Any] = {}
        # name -> (message, retryable, original, when it failed on ``clock``)
        self._failures: dict[str, tuple[str, bool, BaseException, float]] = {}
        self._order: list[str] = []
        self._setup_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts above, never held during a setup
        self._closed = False

    def bind_run(self, run_id: str) -> None:
        """Tag this run's resource events with ``run_id`` (the runner calls it once it has one)."""
        self.run_id = run_id

    def emit_to(self, events: EventBus) -> None:
        """Emit on ``events`` from now on: in a step's own process, the bus whose events are
        handed back to the run's process (the inherited one would keep them in the child)."""
        self._events = events

    def __iter__(self) -> Iterator[str]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)

    def __contains__(self, name: object) -> bool:
        return name in self._declared

    def __getitem__(self, name: str) -> Any:
        resource = self._declared[name]
        if not is_resource(resource):
            return resource
        found, value = self._known(name)
        if found:
            return value
        with self._setup_lock(name):
            found, value = self._known(name)  # another thread may have set it up meanwhile
            if found:
                return value
            return self._setup(name, resource)

    def _known(self, name: str) -> tuple[bool, Any]:
        with self._lock:
            if name in self._handles:
                return True, self._handles[name]
            if name in self._failures:
                message, retryable, original, failed_at = self._failures[name]
                if not retryable or self._clock() - failed_at < self._failure_ttl:
                    # A fresh error per step: the runner adds the step's asset to its context.
                    raise ResourceUnavailable(
                        message, context={"resource": name}, retryable=retryable, original=original
                    )
            if self._closed:
                raise ResourceUnavailable(
                    f"resource '{name}' was asked for after its run ended",
                    context={"resource": name},
                    retryable=False,
                )
            return False, None

    def _setup_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._setup_locks.setdefault(name, threading.Lock())

    def _setup(self, name: str, resource: Any) -> Any:
        t0 = time.perf_counter()
        try:
            config, problems = resolve_config(resource, self._environ)
            if problems:
                raise ConfigurationError(
                    "; ".join(f"field '{p.field}': {p.message}" for p in problems),
                    context={"resource": name},
                )
            handle = resource.setup(config)
        except Exception as exc:
            retryable = exc.retryable if isinstance(exc, FlowStoneError) else True
            message = f"resource '{name}' could not be set up: {_error_text(exc)}"
            with self._lock:
                self._failures[name] = (message, retryable, exc, self._clock())
            self._emit(RESOURCE_SETUP, name, t0, ok=False, error=_error_text(exc))
            _log.info("%s", message)  # the steps record it; this is for debugging
            raise ResourceUnavailable(
                message, context={"resource": name}, retryable=retryable, original=exc
            ) from exc
        with self._lock:
            late = self._closed
            self._failures.pop(name, None)
            if not late:
                self._handles[name] = handle
                self._order.append(name)
        self._emit(RESOURCE_SETUP, name, t0, ok=True, error=None)
        if late:  # the run ended while this setup ran: release it at once
            self._release(name, handle)
            raise ResourceUnavailable(
                f"resource '{name}' was set up after its run ended", context={"resource": name}
            )
        return handle

    def check(self, name: str) -> Health:
        """Set ``name`` up if needed and run its ``health_check`` (healthy when it has none).

        A failing setup raises ``ResourceUnavailable``; a health check that raises is unhealthy.
        Emits ``resource.health``.
        """
        handle = self[name]
        resource = self._declared[name]
        probe = getattr(resource, "health_check", None) if is_resource(resource) else None
        t0 = time.perf_counter()
        if not callable(probe):
            health = healthy("set up (no health check)")
        else:
            try:
                health = _as_health(probe(handle))
            except Exception as exc:
                health = unhealthy(f"health check raised {_error_text(exc)}")
        self._emit(RESOURCE_HEALTH, name, t0, ok=health.ok, detail=health.detail)
        return health

    def teardown(self) -> dict[str, BaseException]:
        """Release every handle set up in this run, last first.

        Failures are logged and emitted, never raised (the run's own outcome matters more); they
        are returned by resource name. Later lookups raise ``ResourceUnavailable``.
        """
        with self._lock:
            self._closed = True
            order, self._order = self._order, []
            handles, self._handles = self._handles, {}
        failures: dict[str, BaseException] = {}
        for name in reversed(order):
            error = self._release(name, handles[name])
            if error is not None:
                failures[name] = error
        return failures

    def _release(self, name: str, handle: Any) -> BaseException | None:
        release = getattr(self._declared[name], "teardown", None)
        if not callable(release):
            return None
        t0 = time.perf_counter()
        try:
            release(handle)
        except Exception as exc:
            _log.exception("teardown of resource '%s' failed", name)
            self._emit(RESOURCE_TEARDOWN, name, t0, ok=False, error=_error_text(exc))
            return exc
        self._emit(RESOURCE_TEARDOWN, name, t0, ok=True, error=None)
        return None

    def _emit(self, type_: str, name: str, t0: float, **data: Any) -> None:
        if self._events is None or not self._events.wants(type_):
            return
        duration_ms = round((time.perf_counter() - t0) * 1000, 3)
        self._events.emit(
            Event(
                type_,
                datetime.now(UTC),
                self.run_id,
                data={"resource": name, "duration_ms": duration_ms, **data},
            )
        )


def _as_health(result: Any) -> Health:
    """What a ``health_check`` returned, as a Health: ``None``/``True`` mean healthy."""
    if isinstance(result, Health):
        return result
    if result is None or result is True:
        return healthy()
    if result is False:
        return unhealthy("health check returned False")
    raise TypeError(f"health_check must return a Health (healthy()/unhealthy(reason)), got {result!r}")
