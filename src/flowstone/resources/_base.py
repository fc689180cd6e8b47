"""The Resource protocol, health values, environment-variable settings and a dataclass base.

A resource is any object with ``setup(config) -> handle``; ``teardown(handle)`` and
``health_check(handle)`` are optional. The easiest way to write one is a frozen dataclass whose
fields are its settings::

    @dataclass(frozen=True)
    class Warehouse(fs.ConfigurableResource):
        url: str | fs.EnvVar
        pool_size: int | fs.EnvVar = 5

        def setup(self, config: Mapping[str, Any]) -> Engine:
            return sqlalchemy.create_engine(config["url"], pool_size=config["pool_size"])

    fs.FlowStone(pipeline, resources={"warehouse": Warehouse(url=fs.EnvVar("WAREHOUSE_URL"))})

``config`` is the fields with every :class:`EnvVar` replaced by its variable's value (converted to
the field's ``int``/``float``/``bool`` type when the annotation asks for one).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Any, Protocol, runtime_checkable

from flowstone._errors import ConfigurationError

# Field metadata for dataclass fields that are not settings (an injected sleep function, say):
# they are left out of ``config`` and cannot be set from flowstone.toml.
RUNTIME_FIELD: Mapping[str, Any] = {"flowstone_config": False}


@runtime_checkable
class Resource(Protocol):
    """Something set up once per run and shared by the steps that require it.

    ``setup(config)`` returns the handle assets receive; ``config`` holds the resource's settings
    with environment variables already resolved. Optional methods, called when present:
    ``teardown(handle)`` releases the handle at the run's end, and ``health_check(handle)``
    returns a :class:`Health` (``flowstone doctor``).
    """

    def setup(self, config: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Health:
    """The outcome of a health check: ``ok`` and a short human ``detail`` (the reason if not ok).

    Build with :func:`healthy` / :func:`unhealthy`; truthy when healthy.
    """

    ok: bool
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok


def healthy(detail: str = "") -> Health:
    """A passing health check: ``return healthy("SELECT 1 ok")``."""
    return Health(True, detail)


def unhealthy(reason: str) -> Health:
    """A failing health check with the reason a person should read: ``unhealthy("HTTP 503")``."""
    return Health(False, reason)


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


@dataclass(frozen=True)
class EnvVar:
    """A setting read from an environment variable when the resource is set up.

    ``EnvVar("WAREHOUSE_URL")`` is required: a missing variable is reported when ``FlowStone`` is
    built, naming the resource and field. ``EnvVar("POOL_SIZE", default=5)`` falls back instead.
    In flowstone.toml write ``"${WAREHOUSE_URL}"`` or ``{ env = "POOL_SIZE", default = 5 }``.
    """

    name: str
    default: Any = _UNSET

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"EnvVar needs a variable name, got {self.name!r}")

    def __repr__(self) -> str:
        extra = "" if self.default is _UNSET else f", default={self.default!r}"
        return f"EnvVar({self.name!r}{extra})"

    @property
    def required(self) -> bool:
        return self.default is _UNSET


@dataclass(frozen=True)
class ConfigProblem:
    """One setting of one resource that cannot be resolved (a missing variable, a bad value)."""

    field: str
    message: str
    variable: str | None = None


def is_resource(obj: Any) -> bool:
    """True for objects FlowStone sets up and tears down; anything else is handed over as is.

    Classes (rather than instances) and ``unittest.mock`` objects, which answer to every
    attribute, are plain objects: tests pass mocks as fakes.
    """
    if isinstance(obj, type):
        return False
    mock = sys.modules.get("unittest.mock")
    if mock is not None and isinstance(obj, mock.NonCallableMock):
        return False
    return callable(getattr(obj, "setup", None))


def resolve_config(
    resource: Any, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], list[ConfigProblem]]:
    """``resource``'s settings with every :class:`EnvVar` read from ``environ`` (default:
    ``os.environ``), and the problems found: every missing variable and unconvertible value."""
    environ = os.environ if environ is None else environ
    raw = config_fields(resource)
    hints = _field_types(resource)
    resolved: dict[str, Any] = {}
    problems: list[ConfigProblem] = []
    for key, value in raw.items():
        resolved[key] = _resolve(value, environ, key, hints.get(key), problems)
    return resolved, problems


def config_fields(resource: Any) -> dict[str, Any]:
    """The unresolved settings of ``resource``: its dataclass fields, or its ``config`` mapping."""
    if isinstance(resource, ConfigurableResource):
        if not dataclasses.is_dataclass(resource):
            raise TypeError(
                f"{type(resource).__name__} subclasses ConfigurableResource but is not a dataclass: "
                "decorate it with @dataclass(frozen=True)"
            )
        return {
            f.name: getattr(resource, f.name)
            for f in dataclasses.fields(resource)
            if f.metadata.get("flowstone_config", True)
        }
    # Any other resource may expose ``config`` (a plain mapping, or a property that returns one).
    try:
        config = getattr(resource, "config", None)
    except Exception:
        return {}
    return dict(config) if isinstance(config, Mapping) else {}


def _field_types(resource: Any) -> dict[str, Any]:
    if not (isinstance(resource, ConfigurableResource) and dataclasses.is_dataclass(resource)):
        return {}
    try:
        return typing.get_type_hints(type(resource))
    except Exception:  # an annotation that does not resolve: no conversion, values stay strings
        return {}


def _resolve(
    value: Any, environ: Mapping[str, str], key: str, hint: Any, problems: list[ConfigProblem]
) -> Any:
    if isinstance(value, EnvVar):
        if value.name in environ:
            return _convert(environ[value.name], hint, key, value.name, problems)
        if value.required:
            problems.append(ConfigProblem(key, f"environment variable {value.name} is not set", value.name))
            return None
        return value.default
    if isinstance(value, Mapping):
        return {k: _resolve(v, environ, f"{key}.{k}", None, problems) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_resolve(v, environ, f"{key}[{i}]", None, problems) for i, v in enumerate(value)]
        return type(value)(items) if isinstance(value, tuple) else items
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert(text: str, hint: Any, key: str, variable: str, problems: list[ConfigProblem]) -> Any:
    """An environment variable's text as the field's scalar type (when it is not ``str``)."""
    options = _scalar_types(hint)
    if not options or str in options:
        return text
    for kind in options:
        try:
            if kind is bool:
                lowered = text.strip().lower()
                if lowered in _TRUE or lowered in _FALSE:
                    return lowered in _TRUE
                continue
            return kind(text.strip())
        except ValueError:
            continue
    names = " or ".join(k.__name__ for k in options)
    problems.append(
        ConfigProblem(key, f"environment variable {variable}={text!r} is not a valid {names}", variable)
    )
    return None


def _scalar_types(hint: Any) -> list[type]:
    if hint is None or hint is Any:
        return []
    args = typing.get_args(hint) if isinstance(hint, UnionType) or _is_union(hint) else (hint,)
    found: list[type] = []
    for arg in args:
        if arg in (str, bool, int, float):
            found.append(arg)
        elif arg is Any:
            return []
    return found


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Union


class ConfigurableResource:
    """Base for resources written as frozen dataclasses whose fields are their settings.

    Subclass, decorate with ``@dataclass(frozen=True)`` and implement ``setup(config)``; override
    ``teardown`` / ``health_check`` when there is something to release or probe. Fields may
    hold :class:`EnvVar` values; ``config`` is the fields resolved. Swap one field in tests with
    ``dataclasses.replace(resource, url="sqlite://")``.
    """

    @property
    def config(self) -> dict[str, Any]:
        """The fields with environment variables resolved (ConfigurationError if one is missing)."""
        resolved, problems = resolve_config(self)
        if problems:
            lines = "; ".join(f"field '{p.field}': {p.message}" for p in problems)
            raise ConfigurationError(
                f"{type(self).__name__}: {lines}",
                context={"resource_class": type(self).__name__, "fields": [p.field for p in problems]},
            )
        return resolved

    def setup(self, config: Mapping[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement setup(config)")

    def teardown(self, handle: Any) -> None:
        """Release the handle ``setup`` returned (nothing to do by default)."""

    def health_check(self, handle: Any) -> Health:
        """Probe the handle (healthy by default: ``setup`` succeeding is the check)."""
        return healthy()
