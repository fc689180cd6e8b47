"""The built-in I/O managers by name, created only when an asset uses them.

An asset says ``io_manager="parquet"``; unless the pipeline or ``FlowStone(io_managers=...)``
binds that name to an instance, FlowStone creates the built-in one with its defaults (files under
the storage directory, the metadata database for ``postgres``) or with the options of
``[io.<name>]`` in flowstone.toml. A name in that table may also define a second instance of a
built-in type::

    [io.warehouse]
    type = "postgres"
    url = "postgresql://etl@warehouse/analytics"

Heavy libraries are imported by the manager itself when it first runs, never by this module, so
``import flowstone`` stays light and a missing extra is reported by name.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstone._errors import ConfigurationError


@dataclass(frozen=True)
class Builtin:
    name: str
    target: str  # "module:Class"
    extra: str | None  # the pip extra that brings its libraries
    modules: tuple[str, ...]  # importable names the extra provides


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin("memory", "flowstone.io._memory:MemoryIOManager", None, ()),
        Builtin("filesystem", "flowstone.io._filesystem:FilesystemIOManager", None, ()),
        Builtin("parquet", "flowstone.io._parquet:ParquetIOManager", "parquet", ("pyarrow", "fsspec")),
        Builtin(
            "object_store",
            "flowstone.io._object_store:ObjectStoreIOManager",
            "s3",
            ("fsspec", "s3fs"),
        ),
        Builtin("postgres", "flowstone.io._postgres:PostgresIOManager", "postgres", ("psycopg", "pyarrow")),
        Builtin("duckdb", "flowstone.io._duckdb:DuckDBIOManager", "duckdb", ("duckdb", "pyarrow")),
    )
}


def builtin_class(kind: str) -> Any:
    module, _, attr = BUILTINS[kind].target.partition(":")
    return getattr(importlib.import_module(module), attr)


def missing_modules(kind: str) -> list[str]:
    """The modules of ``kind``'s extra that are not installed (s3fs only matters for s3:// URLs)."""
    return [m for m in BUILTINS[kind].modules if importlib.util.find_spec(m) is None]


def configured_type(name: str, options: Mapping[str, Any]) -> str:
    kind = options.get("type", name)
    if kind not in BUILTINS:
        raise ConfigurationError(
            f"[io.{name}]: unknown I/O manager type {kind!r} (built in: {sorted(BUILTINS)})",
            context={"io_manager": name},
        )
    return str(kind)


def create(
    name: str,
    options: Mapping[str, Any] | None,
    *,
    storage_dir: Path,
    store_url: str | None,
    base_dir: Path | None = None,
) -> Any:
    """A new instance of the built-in manager ``name`` (or of ``options["type"]``).

    Each built-in class has ``from_settings(options, storage_dir=, store_url=, base_dir=)``:
    ``storage_dir`` is where its default files go, ``store_url`` the metadata database's URL and
    ``base_dir`` the directory relative paths in ``options`` are taken from.
    """
    options = _with_environment(name, dict(options or {}))
    kind = configured_type(name, options)
    options.pop("type", None)
    cls = builtin_class(kind)
    try:
        return cls.from_settings(
            options, storage_dir=storage_dir, store_url=store_url, base_dir=base_dir or Path.cwd()
        )
    except TypeError as exc:
        raise ConfigurationError(f"[io.{name}]: {exc}", context={"io_manager": name}) from exc


def _with_environment(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``"${VAR}"`` and ``{ env = "VAR", default = ... }`` values read from the environment now
    (managers are made when the app starts); every missing variable is reported at once."""
    import os

    from flowstone.resources._base import EnvVar
    from flowstone.resources._config import env_values

    missing: list[str] = []

    def read(value: Any, key: str) -> Any:
        if isinstance(value, EnvVar):
            if value.name in os.environ:
                return os.environ[value.name]
            if value.required:
                missing.append(f"{key}: environment variable {value.name} is not set")
            return value.default
        if isinstance(value, Mapping):
            return {k: read(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [read(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    resolved = {key: read(env_values(value), key) for key, value in options.items()}
    if missing:
        raise ConfigurationError(
            f"[io.{name}]: " + "; ".join(missing), context={"io_manager": name, "missing": missing}
        )
    return resolved
