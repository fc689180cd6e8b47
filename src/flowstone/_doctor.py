"""Is everything an app needs there? The store, the I/O managers' extras and every resource.

``flowstone doctor`` prints these rows; ``health(app)`` returns them (``app.doctor()``)::

    for row in health(app):
        print(row.name, row.kind, "ok" if row.ok else "FAIL", row.detail)

Each resource is set up, health-checked and torn down again, as a run would (the events
``resource.setup``, ``resource.health`` and ``resource.teardown`` are emitted on the app's bus).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowstone._errors import ConfigurationError, FlowStoneError
from flowstone._events import EventBus
from flowstone.resources._base import is_resource, resolve_config
from flowstone.resources._runtime import RunResources

if TYPE_CHECKING:
    from flowstone._app import FlowStone
    from flowstone._config import Settings
    from flowstone.store._store import Store

STORE = "store"
IO_MANAGER = "io_manager"
RESOURCE = "resource"
CONFIG = "config"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: what was checked (``name``, ``kind``), whether it passed, and why."""

    name: str
    kind: str
    ok: bool
    detail: str


def health(app: FlowStone, *, environ: Mapping[str, str] | None = None) -> list[CheckResult]:
    """Check ``app``'s store, the I/O managers its assets use and every declared resource."""
    return [
        check_store(app.store),
        *check_io_managers(app),
        *check_resources_health(app.resources, events=app.events, environ=environ),
    ]


def settings_health(settings: Settings, problem: BaseException | None = None) -> list[CheckResult]:
    """What can still be checked when the app itself cannot be built (``problem`` says why).

    The store is opened without migrating it and the resources of flowstone.toml are built and
    checked; a problem those rows do not already explain is a row of its own.
    """
    from flowstone.resources._config import build_resources
    from flowstone.store._store import Store

    rows: list[CheckResult] = []
    try:
        store = Store.open(settings.store_url, migrate=False)
    except FlowStoneError as exc:
        rows.append(CheckResult("store", STORE, False, exc.message))
    else:
        try:
            rows.append(check_store(store))
        finally:
            store.close()
    try:
        resources = build_resources(settings)
    except ConfigurationError as exc:
        rows.append(CheckResult("resources", CONFIG, False, exc.message))
    else:
        rows += check_resources_health(resources)
    explained = isinstance(problem, ConfigurationError) and "resource_problems" in problem.context
    if problem is not None and not explained:
        message = problem.message if isinstance(problem, FlowStoneError) else str(problem)
        rows.insert(0, CheckResult("app", CONFIG, False, f"{type(problem).__name__}: {message}"))
    return rows


def check_store(store: Store) -> CheckResult:
    """The metadata database answers and its schema is at the revision this FlowStone knows."""
    from flowstone.store._migrate import HEAD, current_revision

    where = store.engine.url.render_as_string(hide_password=True)
    try:
        store.ping()
        revision = current_revision(store.engine)
    except Exception as exc:
        message = exc.message if isinstance(exc, FlowStoneError) else f"{type(exc).__name__}: {exc}"
        return CheckResult("store", STORE, False, f"{where}: {message}")
    if revision != HEAD:
        state = "not migrated" if revision is None else f"at revision {revision}"
        return CheckResult(
            "store", STORE, False, f"{where}: schema {state}, expected {HEAD} (FlowStone migrates on open)"
        )
    return CheckResult("store", STORE, True, f"{where}: reachable, schema at revision {HEAD}")


def check_io_managers(app: FlowStone) -> list[CheckResult]:
    """Each I/O manager an asset uses: a built-in one has its extra's libraries installed."""
    from flowstone.io._registry import BUILTINS, builtin_class, missing_modules

    used: dict[str, list[str]] = {}
    for definition in app.pipeline.assets.values():
        used.setdefault(definition.io_manager or app.pipeline.default_io_manager, []).append(definition.name)
    rows: list[CheckResult] = []
    for name in sorted(used):
        manager = app.io_managers.get(name)
        kind = _builtin_kind(name, manager, BUILTINS, builtin_class)
        count = f"{len(used[name])} asset(s)"
        if kind is None:
            what = type(manager).__name__ if manager is not None else "not bound"
            rows.append(CheckResult(name, IO_MANAGER, manager is not None, f"{what}, used by {count}"))
            continue
        missing = missing_modules(kind)
        if missing:
            extra = BUILTINS[kind].extra
            detail = f"needs pip install 'flowstone[{extra}]' (not installed: {', '.join(missing)})"
            rows.append(CheckResult(name, IO_MANAGER, False, detail))
        else:
            rows.append(CheckResult(name, IO_MANAGER, True, f"built-in {kind}, used by {count}"))
    return rows


def _builtin_kind(name: str, manager: Any, builtins: Mapping[str, Any], builtin_class: Any) -> str | None:
    for kind in builtins:
        try:
            cls = builtin_class(kind)
        except ImportError:
            continue
        if manager is not None and type(manager) is cls:
            return kind
    return name if manager is None and name in builtins else None


def check_resources_health(
    declared: Mapping[str, Any],
    *,
    events: EventBus | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[CheckResult]:
    """Set each resource up, run its health check and tear it down; plain objects pass."""
    rows: list[CheckResult] = []
    run = RunResources(declared, events=events, environ=environ)
    try:
        for name, resource in declared.items():
            rows.append(_check_resource(run, name, resource, environ))
    finally:
        failures = run.teardown()
    for index, row in enumerate(rows):
        if row.name in failures:
            exc = failures[row.name]
            rows[index] = CheckResult(
                row.name, RESOURCE, False, f"{row.detail}; teardown failed: {type(exc).__name__}: {exc}"
            )
    return rows


def _check_resource(
    run: RunResources, name: str, resource: Any, environ: Mapping[str, str] | None
) -> CheckResult:
    kind = type(resource).__name__
    if not is_resource(resource):
        return CheckResult(name, RESOURCE, True, f"{kind} (a plain object: nothing to set up)")
    _, problems = resolve_config(resource, environ)
    if problems:
        listed = "; ".join(f"field '{p.field}': {p.message}" for p in problems)
        return CheckResult(name, RESOURCE, False, f"{kind}: {listed}")
    try:
        result = run.check(name)
    except FlowStoneError as exc:
        return CheckResult(name, RESOURCE, False, f"{kind}: {exc.message}")
    detail = f"{kind}: {result.detail}" if result.detail else kind
    return CheckResult(name, RESOURCE, result.ok, detail)
