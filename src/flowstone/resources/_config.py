"""Resources declared in flowstone.toml, built into objects for ``FlowStone(resources=...)``.

    [resources.warehouse]
    type = "sql"                                  # built in: "sql" (SQLDatabase), "http" (HttpClient)
    url = "${WAREHOUSE_URL}"                      # an environment variable (EnvVar)
    pool_size = { env = "POOL_SIZE", default = 5 }

    [resources.crm]
    class = "analytics.resources:CrmClient"       # your own class; the other keys are its fields
    token = "${CRM_TOKEN}"

A string that is exactly ``"${NAME}"``, or a table ``{ env = "NAME" }`` (optionally with
``default``), anywhere in a resource's table becomes ``EnvVar("NAME")``. Relative SQLite URLs of a
``sql`` resource are taken from the project directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowstone._errors import ConfigurationError
from flowstone.resources._base import EnvVar

if TYPE_CHECKING:
    from flowstone._config import Settings

BUILTIN_TYPES: dict[str, str] = {
    "sql": "flowstone.resources._sql:SQLDatabase",
    "http": "flowstone.resources._http:HttpClient",
}
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def check_resource_tables(where: str, value: Any) -> None:
    """Validate the shape of ``[resources]`` (one table per resource, with ``type`` or ``class``)."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigurationError(
            f'{where}: [resources] must hold one table per resource, e.g. [resources.db] type = "sql"'
        )
    for name, table in value.items():
        kind, target = table.get("type"), table.get("class")
        if (kind is None) == (target is None):
            raise ConfigurationError(
                f"{where}: [resources.{name}] needs either type = {' | '.join(map(repr, BUILTIN_TYPES))} "
                "or class = 'module:Attribute' (exactly one)",
                context={"resource": name},
            )
        if kind is not None and kind not in BUILTIN_TYPES:
            raise ConfigurationError(
                f"{where}: [resources.{name}] has unknown type {kind!r} (built in: {sorted(BUILTIN_TYPES)}; "
                "use class = 'module:Attribute' for your own)",
                context={"resource": name},
            )
        if target is not None and (not isinstance(target, str) or ":" not in target):
            raise ConfigurationError(
                f"{where}: [resources.{name}] class must look like 'package.module:Class', got {target!r}",
                context={"resource": name},
            )


def env_values(value: Any) -> Any:
    """``value`` with ``"${NAME}"`` strings and ``{env = "NAME", default = ...}`` tables as EnvVar."""
    if isinstance(value, str):
        match = _ENV_REF.match(value)
        return EnvVar(match.group(1)) if match else value
    if isinstance(value, Mapping):
        if "env" in value and set(value) <= {"env", "default"} and isinstance(value["env"], str):
            return EnvVar(value["env"], **({"default": value["default"]} if "default" in value else {}))
        return {k: env_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [env_values(v) for v in value]
    return value


def build_resources(settings: Settings) -> dict[str, Any]:
    """Every ``[resources.NAME]`` of ``settings`` as an object, ready for ``FlowStone(resources=...)``.

    Environment variables are not read here: ``FlowStone`` checks them when it is built and each
    run reads them at setup.
    """
    where = str(settings.config_file) if settings.config_file else "settings"
    return {
        name: build_resource(name, table, base_dir=settings.project_dir, where=where)
        for name, table in settings.resources.items()
    }


def build_resource(name: str, table: Mapping[str, Any], *, base_dir: Path, where: str = "settings") -> Any:
    """One resource from its table: ``type``/``class`` picks the class, the rest are its fields."""
    check_resource_tables(where, {name: dict(table)})
    fields = {k: env_values(v) for k, v in table.items() if k not in ("type", "class")}
    kind = table.get("type")
    target = BUILTIN_TYPES[kind] if kind is not None else str(table["class"])
    cls = _import(target, name, base_dir, where)
    if kind == "sql" and isinstance(fields.get("url"), str):
        from flowstone._config import resolve_store_url

        fields["url"] = resolve_store_url(fields["url"], base_dir)
    _check_fields(cls, fields, name, where)
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{where}: [resources.{name}]: {exc}", context={"resource": name}, original=exc
        ) from exc


def _import(target: str, name: str, base_dir: Path, where: str) -> Any:
    module_name, _, attr = target.partition(":")
    entry = str(base_dir.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)  # a resources module next to flowstone.toml imports uninstalled
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"{where}: [resources.{name}] cannot load class {target!r}: {exc}",
            context={"resource": name},
            original=exc,
        ) from exc
    if not callable(obj):
        raise ConfigurationError(f"{where}: [resources.{name}] {target!r} is not a class")
    return obj


def _check_fields(cls: Any, fields: Mapping[str, Any], name: str, where: str) -> None:
    """For dataclasses: name unknown, runtime-only and missing fields before calling the class."""
    if not dataclasses.is_dataclass(cls):
        return
    settable = {
        f.name for f in dataclasses.fields(cls) if f.init and f.metadata.get("flowstone_config", True)
    }
    problems: list[str] = []
    for key in fields:
        if key not in settable:
            guesses = difflib.get_close_matches(key, sorted(settable), n=1, cutoff=0.6)
            hint = f" (did you mean {guesses[0]!r}?)" if guesses else ""
            problems.append(f"unknown field {key!r}{hint}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in fields
    ]
    problems += [f"missing field {key!r}" for key in required]
    if problems:
        raise ConfigurationError(
            f"{where}: [resources.{name}] ({getattr(cls, '__name__', cls)}): {'; '.join(problems)} "
            f"(fields: {sorted(settable)})",
            context={"resource": name},
        )
