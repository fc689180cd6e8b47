"""Settings from ``flowstone.toml`` (or ``[tool.flowstone]`` in pyproject.toml), env and flags.

Precedence, lowest first: file, ``FLOWSTONE_*`` environment variables, CLI flags. The project
directory is the one holding the config file (or the current directory); relative paths, and
relative SQLite URLs, are taken from there::

    # flowstone.toml
    pipeline = "analytics.pipeline:pipeline"
    store = "sqlite:///.flowstone/flowstone.db"    # or postgresql://user@host/db
    storage = ".flowstone/storage"                 # filesystem I/O manager root
    event_retention = "30d"                        # run events older than this are pruned

    [io.parquet]                                   # options of a built-in I/O manager
    root = "s3://lake/parquet"
    [io.warehouse]                                 # a second, named instance of one
    type = "postgres"
    url = "postgresql://etl@warehouse/analytics"

    [resources.warehouse]                          # a resource (see flowstone.resources._config)
    type = "sql"
    url = "${WAREHOUSE_URL}"

    [queue]                                        # queue workers (flowstone.queue._config)
    tenant_limit = 8

    [profiles.test]                                # --profile test / FLOWSTONE_PROFILE=test
    store = "sqlite:///.flowstone/test.db"
    [profiles.test.resources.warehouse]
    url = "sqlite:///test-warehouse.db"

A profile overrides any setting of the file: tables merge key by key, other values are replaced
(a profile's resource table that names a ``type`` or ``class`` replaces the resource's table
whole). Precedence, lowest first: file, selected profile, ``FLOWSTONE_*`` variables, CLI flags.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowstone._errors import ConfigurationError
from flowstone.resources._config import build_resources, check_resource_tables

__all__ = ["ENV", "KEYS", "PROFILE_ENV", "Settings", "build_resources", "find_config", "load_settings"]

KEYS = {"pipeline", "store", "storage", "tenant", "event_retention", "io", "resources", "profiles", "queue"}
TABLES = {"io", "resources", "profiles", "queue"}
PROFILE_ENV = "FLOWSTONE_PROFILE"
ENV = {
    "pipeline": "FLOWSTONE_PIPELINE",
    "store": "FLOWSTONE_STORE_URL",
    "storage": "FLOWSTONE_STORAGE_DIR",
    "tenant": "FLOWSTONE_TENANT",
    "event_retention": "FLOWSTONE_EVENT_RETENTION",
}
DEFAULT_EVENT_RETENTION = "30d"


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    config_file: Path | None
    pipeline: str | None
    store_url: str
    storage_dir: Path
    tenant: str
    io: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # [resources.NAME] tables as written (``"${VAR}"`` still text); build_resources() makes objects.
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    profile: str | None = None  # the profile applied, if any
    # [queue] as written: limits and timings of queue workers (flowstone.queue.QueueConfig).
    queue: Mapping[str, Any] = field(default_factory=dict)
    # How long run events are kept (``flowstone store prune``, workers and the daemon prune).
    event_retention: str | float = DEFAULT_EVENT_RETENTION


def find_config(start: Path) -> tuple[Path | None, dict[str, Any]]:
    for directory in [start, *start.parents]:
        candidate = directory / "flowstone.toml"
        if candidate.is_file():
            return candidate, _read(candidate, None)
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            section = _read(pyproject, "tool.flowstone")
            if section is not None:
                return pyproject, section
    return None, {}


def _read(path: Path, section: str | None) -> Any:
    try:
        data: Any = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read config: {exc}", original=exc) from exc
    if section is None:
        return data
    for part in section.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def resolve_store_url(url: str, project_dir: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////"):
        rest = url[len(prefix) :]
        if rest and rest != ":memory:" and not rest.startswith("file:"):
            return prefix + str((project_dir / rest).resolve())
    return url


def load_settings(
    *,
    start: Path | None = None,
    config_file: Path | None = None,
    overrides: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    environ = os.environ if environ is None else environ
    if config_file is not None:
        path: Path | None = config_file.resolve()
        assert path is not None
        if not path.is_file():
            raise ConfigurationError(f"config file {path} does not exist")
        values = _read(path, "tool.flowstone" if path.name == "pyproject.toml" else None) or {}
    else:
        path, values = find_config((start or Path.cwd()).resolve())
    if not isinstance(values, dict):
        raise ConfigurationError(f"{path}: flowstone settings must be a table")
    _check_values(path, values, where="")
    profiles = values.pop("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ConfigurationError(f"{path}: [profiles] must hold one table per profile, e.g. [profiles.test]")
    for name, table in profiles.items():  # every profile, so a typo shows before it is selected
        if "profiles" in table:
            raise ConfigurationError(f"{path}: [profiles.{name}] cannot hold profiles of its own")
        _check_values(path, table, where=f"[profiles.{name}]: ", partial=True)
    profile = (overrides or {}).get("profile") or environ.get(PROFILE_ENV) or None
    if profile is not None:
        if profile not in profiles:
            guesses = difflib.get_close_matches(profile, sorted(profiles), n=1, cutoff=0.6)
            hint = f"; did you mean {guesses[0]!r}?" if guesses else ""
            raise ConfigurationError(
                f"{path or 'settings'}: unknown profile {profile!r}{hint} "
                f"(known profiles: {sorted(profiles) or 'none defined'})",
                context={"profile": profile, "known": sorted(profiles)},
            )
        values = _apply_profile(values, profiles[profile])
        check_resource_tables(f"{path}: (with profile {profile!r})", values.get("resources", {}))
    io = values.pop("io", {})
    resources = values.pop("resources", {})
    queue = values.pop("queue", {})
    merged: dict[str, str] = dict(values)
    for key, var in ENV.items():
        if environ.get(var):
            merged[key] = environ[var]
    for key, value in (overrides or {}).items():
        if value is not None and key != "profile":
            merged[key] = value
    project_dir = path.parent if path is not None else (start or Path.cwd()).resolve()
    store_url = resolve_store_url(merged.get("store", "sqlite:///.flowstone/flowstone.db"), project_dir)
    storage = Path(merged.get("storage", ".flowstone/storage"))
    retention: str | float = merged.get("event_retention", DEFAULT_EVENT_RETENTION)
    if "event_retention" in merged:  # from the file (checked already), a profile or the environment
        _check_duration(path, "event_retention", retention, where="")
    return Settings(
        project_dir=project_dir,
        config_file=path,
        pipeline=merged.get("pipeline"),
        store_url=store_url,
        storage_dir=storage if storage.is_absolute() else project_dir / storage,
        tenant=merged.get("tenant", "default"),
        io=io,
        resources=resources,
        profile=profile,
        queue=queue,
        event_retention=retention,
    )


def _check_values(path: Path | None, values: Mapping[str, Any], *, where: str, partial: bool = False) -> None:
    """Known keys and value shapes; a profile's resource tables (``partial``) may omit type/class."""
    for key, value in values.items():
        if key not in KEYS:
            guesses = difflib.get_close_matches(str(key), sorted(KEYS), n=1, cutoff=0.6)
            hint = f"; did you mean {guesses[0]!r}?" if guesses else ""
            raise ConfigurationError(f"{path}: {where}unknown setting {key!r}{hint} (known: {sorted(KEYS)})")
        if key == "io":
            _check_io_table(path, value)
        elif key == "event_retention":
            _check_duration(path, key, value, where=where)
        elif key == "resources" and partial:
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigurationError(f"{path}: {where}[resources] must hold one table per resource")
        elif key == "resources":
            check_resource_tables(f"{path}: {where}".rstrip(": "), value)
        elif key == "queue":
            from flowstone.queue._config import QueueConfig

            if not isinstance(value, dict):
                raise ConfigurationError(f"{path}: {where}[queue] must be a table")
            try:
                QueueConfig.from_table(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{path}: {where}{exc.message}", context=exc.context) from None
        elif key not in TABLES and not isinstance(value, str):
            raise ConfigurationError(f"{path}: {where}setting {key!r} must be a string, got {value!r}")


def _apply_profile(values: Mapping[str, Any], profile: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with ``profile`` laid over them: tables merge, other values are replaced."""
    merged = dict(values)
    for key, value in profile.items():
        if key == "resources":
            tables = {name: dict(table) for name, table in merged.get("resources", {}).items()}
            for name, table in value.items():
                replaces = "type" in table or "class" in table or name not in tables
                tables[name] = dict(table) if replaces else _merge(tables[name], table)
            merged["resources"] = tables
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _check_io_table(path: Path | None, value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigurationError(
            f'{path}: [io] must hold one table per I/O manager, e.g. [io.parquet] root = "lake"'
        )


def _check_duration(path: Path | None, key: str, value: Any, *, where: str) -> None:
    """``value`` is a duration as ``parse_duration`` reads it ("30d", "12h", seconds)."""
    from flowstone._durations import parse_duration

    try:
        parse_duration(value)
    except ValueError as exc:
        raise ConfigurationError(
            f"{path or 'settings'}: {where}{key}: {exc}", context={"field": key, "value": value}
        ) from None
