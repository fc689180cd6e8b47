"""Tables as Parquet files on a local disk or any fsspec filesystem (S3, GCS, ``memory://``...).

Layout under the root: ``<asset>/value.parquet`` for an unpartitioned asset and
``<asset>/<quoted key>.parquet`` per partition; tenants other than ``default`` live under
``tenants/<quoted tenant>/``. Keys are percent-quoted (a leading dot too), so ``/`` or ``..`` in a
key can never leave the asset's directory. ``io_config={"path": "{asset}/date={partition}/"}``
lays files out by a template instead; a template ending in ``/`` makes each partition a directory
holding ``part-0.parquet`` (hive style, for engines that read the directory).

Each file carries its provenance in the Parquet key-value metadata (``flowstone.asset``,
``.partition``, ``.tenant``, ``.run_id``, ``.materialization_id``, ``.data_version``,
``.code_version``, ``.upstream`` as JSON) and the kind of table it came as
(``flowstone.kind``), so ``load`` hands back that kind unless the parameter's annotation asks
for another.

Checksums: ``store`` hashes the bytes while they are written (no second read) and records
``sha256:<hex>`` in a sidecar ``.<file>.sha256`` beside the file, tagged with the file's version
(etag on object stores, inode+mtime+size locally). ``metadata`` trusts the sidecar only for that
exact version; otherwise it hashes the file again. So a crash between writing the file and its
sidecar costs a re-read, never a wrong checksum.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flowstone._errors import IOManagerError
from flowstone.io._base import IOContext, StoredValue
from flowstone.io._errors import io_error, is_missing_bucket, not_found
from flowstone.io._frames import (
    element_annotation,
    from_arrow,
    output_kind,
    require_pyarrow,
    schema_of,
    stored_kind,
    to_arrow,
    wants_combined,
)
from flowstone.io._fsspec import (
    checksum_of,
    config_problems,
    full_url,
    is_local,
    join,
    layout,
    location_from_settings,
    missing_bucket_error,
    open_filesystem,
    parallel,
    parse_config,
    read_bytes,
    read_failure,
    remove,
    require,
    save_checksum,
    sidecar_path,
    stat,
    template_problems,
    where,
    write_atomic,
)

MANAGER = "parquet"
PLACEHOLDERS = ("asset", "partition", "tenant")
DEFAULT_PATH = "{asset}/{partition}.parquet"
DIRECTORY_FILE = "part-0.parquet"
COMPRESSIONS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")
_KIND_KEY = b"flowstone.kind"
_PREFIX = b"flowstone."


@dataclass(frozen=True)
class ParquetConfig:
    """Per-asset options: ``io_config=ParquetConfig(path="{asset}/date={partition}/")``.

    ``path`` is a template relative to the manager's root (placeholders ``{asset}``,
    ``{partition}``, ``{tenant}``; a trailing ``/`` makes a directory per partition).
    ``compression`` overrides the manager's codec. ``partition_column`` names the column a
    fan-in read into one table adds with each row's partition key (default ``partition_key``).
    """

    path: str | None = None
    compression: str | None = None
    partition_column: str | None = None


def _compression_problems(key: str, value: Any) -> list[str]:
    if not isinstance(value, str) or value.lower() not in COMPRESSIONS:
        return [f"'{key}' must be one of {', '.join(COMPRESSIONS)}, got {value!r}"]
    return []


def _column_problems(key: str, value: Any) -> list[str]:
    if not isinstance(value, str) or not value:
        return [f"'{key}' must be a non-empty column name, got {value!r}"]
    return []


_CHECKS = {
    "path": lambda key, value: template_problems(key, value, PLACEHOLDERS),
    "compression": _compression_problems,
    "partition_column": _column_problems,
}


class ParquetIOManager:
    """One Parquet file per asset partition, written atomically, read back as the kind asked for.

    Usage::

        ParquetIOManager(root="s3://lake/flowstone", storage_options={"profile": "etl"})
        ParquetIOManager(root="/data/parquet", compression="zstd")

    ``fsync=True`` (the default) flushes local files to disk before the rename.
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        compression: str | None = None,
        fsync: bool = True,
    ) -> None:
        if compression is not None and (
            not isinstance(compression, str) or compression.lower() not in COMPRESSIONS
        ):
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        self.root = os.fspath(root)
        self.storage_options = dict(storage_options or {})
        self.compression = compression
        self.fsync = fsync
        self._opened: tuple[Any, str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, options: Mapping[str, Any], *, storage_dir: Path, store_url: str | None, base_dir: Path
    ) -> ParquetIOManager:
        """Built from ``[io.parquet]``: ``root`` (default ``<storage_dir>/parquet``; a relative
        local path is taken from ``base_dir``), ``storage_options``, ``compression``, ``fsync``."""
        root = location_from_settings(
            options,
            manager="parquet",
            known=("root", "storage_options", "compression", "fsync"),
            key="root",
            default=storage_dir / "parquet",
            base_dir=base_dir,
        )
        try:
            return cls(
                root=root,
                storage_options=options.get("storage_options"),
                compression=options.get("compression"),
                fsync=bool(options.get("fsync", True)),
            )
        except ValueError as exc:  # the registry reports TypeError as a configuration error
            raise TypeError(str(exc)) from exc

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> list[str]:
        """Problems with an asset's ``io_config``, each naming the field."""
        return config_problems(config, ParquetConfig, _CHECKS)

    def __repr__(self) -> str:
        return f"ParquetIOManager(root={self.root!r})"

    # ------------------------------------------------------------------ layout
    def _filesystem(self) -> tuple[Any, str]:
        with self._lock:
            if self._opened is None:
                self._opened = open_filesystem(
                    self.root, self.storage_options, manager=MANAGER, extra="parquet"
                )
            return self._opened

    def _config(self, ctx: IOContext) -> ParquetConfig:
        problems = self.validate_config(ctx.config)
        return parse_config(ctx.config, ParquetConfig, problems, ctx=ctx, manager=MANAGER)

    def path_for(self, ctx: IOContext) -> str:
        """Where ``ctx``'s value lives, as a URL (a plain path on the local disk)."""
        fs, root = self._filesystem()
        return full_url(fs, self._path(root, ctx, self._config(ctx)))

    @staticmethod
    def _path(root: str, ctx: IOContext, config: ParquetConfig) -> str:
        relative = layout(config.path or DEFAULT_PATH, ctx, manager=MANAGER)
        if relative.endswith("/"):
            relative += DIRECTORY_FILE
        return join(root, relative)

    # ------------------------------------------------------------------ the protocol
    def store(self, ctx: IOContext, value: Any) -> StoredValue:
        require_pyarrow(MANAGER)
        pq = require("pyarrow.parquet", extra="parquet", manager=MANAGER)
        config = self._config(ctx)
        fs, root = self._filesystem()
        table, _ = to_arrow(value, manager=MANAGER, asset=ctx.asset)
        table = table.replace_schema_metadata(table_footer(table, ctx))
        path = self._path(root, ctx, config)
        options: dict[str, Any] = {}
        compression = config.compression or self.compression
        if compression is not None:
            options["compression"] = compression
        try:
            written = write_atomic(
                fs, path, lambda out: pq.write_table(table, out, **options), ctx=ctx, fsync=self.fsync
            )
        except IOManagerError:
            raise
        except Exception as exc:
            raise IOManagerError(
                f"asset '{ctx.asset}' returned a table Parquet cannot hold: {type(exc).__name__}: {exc}",
                context={"asset": ctx.asset, "partition": ctx.partition_key, "io_manager": MANAGER},
                retryable=False,
                original=exc,
            ) from exc
        checksum = "sha256:" + written.sha256
        save_checksum(fs, path, checksum, written.info)
        return StoredValue(
            size_bytes=written.info.size,
            checksum=checksum,
            updated_at=written.info.updated_at,
            row_count=table.num_rows,
            schema=schema_of(table),
            extra={"uri": full_url(fs, path)},
        )

    def load(self, ctx: IOContext) -> Any:
        require_pyarrow(MANAGER)
        fs, root = self._filesystem()
        path = self._path(root, ctx, self._config(ctx))
        table, size = _read(fs, path, ctx)
        ctx.observe(size_bytes=size, row_count=table.num_rows)
        return table_as(table, ctx.expected_type)

    def load_many(self, ctx: IOContext, keys: Sequence[str]) -> Any:
        """Many partitions at once: one table (with a partition column) or ``{key: value}``.

        The annotation decides: ``pd.DataFrame`` (or a pyarrow/polars table) gets every row in one
        table, read as one multi-threaded pyarrow dataset, plus a string column (``partition_key``
        or ``io_config["partition_column"]``) unless the data has that column already.
        ``dict[str, X]`` gets one ``X`` per key, files read in parallel.
        """
        require_pyarrow(MANAGER)
        config = self._config(ctx)
        fs, root = self._filesystem()
        keys = list(keys)
        paths = {key: self._path(root, replace(ctx, partition_key=key), config) for key in keys}
        sizes = _sizes(fs, paths, ctx)
        if wants_combined(ctx.expected_type):
            table = _read_combined(fs, paths, sizes, config.partition_column or "partition_key", ctx)
            ctx.observe(size_bytes=sum(sizes.values()), row_count=table.num_rows)
            return table_as(table, ctx.expected_type)
        element = element_annotation(ctx.expected_type)
        tables = parallel(lambda key: _read(fs, paths[key], replace(ctx, partition_key=key))[0], keys)
        ctx.observe(size_bytes=sum(sizes.values()), row_count=sum(t.num_rows for t in tables))
        return {key: table_as(table, element) for key, table in zip(keys, tables, strict=True)}

    def delete(self, ctx: IOContext) -> None:
        fs, root = self._filesystem()
        path = self._path(root, ctx, self._config(ctx))
        remove(fs, [path, sidecar_path(path)], ctx)
        if is_local(fs) and path.endswith("/" + DIRECTORY_FILE):
            with contextlib.suppress(OSError):  # not empty: someone else's files live there too
                os.rmdir(os.path.dirname(path))

    def exists(self, ctx: IOContext) -> bool:
        fs, root = self._filesystem()
        return stat(fs, self._path(root, ctx, self._config(ctx)), ctx) is not None

    def metadata(self, ctx: IOContext) -> StoredValue | None:
        fs, root = self._filesystem()
        path = self._path(root, ctx, self._config(ctx))
        info = stat(fs, path, ctx)
        if info is None:
            return None
        footer = _read_footer(fs, path, ctx)
        schema = footer.schema.to_arrow_schema()
        return StoredValue(
            size_bytes=info.size,
            checksum=checksum_of(fs, path, info, ctx),
            updated_at=info.updated_at,
            row_count=footer.num_rows,
            schema={field.name: str(field.type) for field in schema},
            extra={"uri": full_url(fs, path)},
        )

    def provenance(self, ctx: IOContext) -> dict[str, Any]:
        """The ``flowstone.*`` entries of the file's footer (``upstream`` parsed from JSON)."""
        fs, root = self._filesystem()
        path = self._path(root, ctx, self._config(ctx))
        if stat(fs, path, ctx) is None:
            raise not_found(full_url(fs, path), asset=ctx.asset, partition_key=ctx.partition_key)
        found: dict[str, Any] = {}
        for key, value in (_read_footer(fs, path, ctx).metadata or {}).items():
            if key.startswith(_PREFIX):
                name = key[len(_PREFIX) :].decode()
                found[name] = json.loads(value) if name == "upstream" else value.decode()
        return found


# ---------------------------------------------------------------------- helpers
def table_footer(table: Any, ctx: IOContext) -> dict[bytes, bytes]:
    """The table's schema metadata with this store's provenance (replacing any it came with).

    Arrow schema metadata becomes the Parquet footer's key-value metadata, so this costs no pass
    over the data: ``pq.write_table(table.replace_schema_metadata(table_footer(table, ctx)), f)``.
    """
    metadata = {
        key: value
        for key, value in (table.schema.metadata or {}).items()
        if not key.startswith(_PREFIX) or key == _KIND_KEY
    }
    facts = {
        "asset": ctx.asset,
        "partition": ctx.partition_key,
        "tenant": ctx.tenant,
        "run_id": ctx.run_id,
        "materialization_id": ctx.materialization_id,
        "data_version": ctx.data_version,
        "code_version": ctx.code_version,
    }
    for name, value in facts.items():
        if value is not None:
            metadata[_PREFIX + name.encode()] = str(value).encode()
    upstream = [
        {
            "asset": u.asset,
            "partition": u.partition_key,
            "materialization_id": u.materialization_id,
            "data_version": u.data_version,
        }
        for u in ctx.upstream
    ]
    metadata[_PREFIX + b"upstream"] = json.dumps(upstream).encode()
    return metadata


def table_as(table: Any, expected: Any) -> Any:
    """A table read back, as the kind ``expected`` asks for (else the kind it was stored as).

    flowstone's footer entries are dropped, so a table passed on downstream does not carry its
    upstream's provenance into the next file.
    """
    kind = stored_kind(table)
    metadata = {
        key: value
        for key, value in (table.schema.metadata or {}).items()
        if not key.startswith(_PREFIX) or key == _KIND_KEY
    }
    return from_arrow(table.replace_schema_metadata(metadata or None), output_kind(expected, kind))


def _read(fs: Any, path: str, ctx: IOContext) -> tuple[Any, int]:
    """The table at ``path`` and the bytes read: natively on a local disk, one GET elsewhere."""
    if is_local(fs):
        pq = require("pyarrow.parquet", extra="parquet", manager=MANAGER)
        try:
            size = os.stat(path).st_size
            return pq.read_table(path), size
        except Exception as exc:
            raise _bad_file(fs, path, exc, ctx) from exc
    data = read_bytes(fs, path, ctx)
    return table_from_bytes(data, fs, path, ctx), len(data)


def table_from_bytes(data: bytes, fs: Any, path: str, ctx: IOContext) -> Any:
    """The Arrow table in a Parquet file's bytes; a permanent error when they are no Parquet."""
    pa = require_pyarrow(MANAGER)
    pq = require("pyarrow.parquet", extra="parquet", manager=MANAGER)
    try:
        return pq.read_table(pa.BufferReader(data))
    except Exception as exc:
        raise _bad_file(fs, path, exc, ctx) from exc


def _bad_file(fs: Any, path: str, exc: Exception, ctx: IOContext) -> Exception:
    """A failed read (not found, or transient or not) apart from a file that is no Parquet."""
    if isinstance(exc, IOManagerError):
        return exc
    if isinstance(exc, OSError):
        return read_failure(fs, path, exc, ctx)
    return io_error(
        f"{full_url(fs, path)} is not a readable Parquet file", exc, retryable=False, **where(ctx, fs, path)
    )


def _read_footer(fs: Any, path: str, ctx: IOContext) -> Any:
    pq = require("pyarrow.parquet", extra="parquet", manager=MANAGER)
    try:
        if is_local(fs):
            return pq.read_metadata(path)
        with fs.open(path, "rb") as handle:
            return pq.read_metadata(handle)
    except Exception as exc:
        raise _bad_file(fs, path, exc, ctx) from exc


def _sizes(fs: Any, paths: Mapping[str, str], ctx: IOContext) -> dict[str, int]:
    """Each key's file size; ``not_found`` naming every key that has no file.

    On an object store one listing per directory answers for all the partitions in it.
    """
    sizes: dict[str, int] = {}
    if is_local(fs):
        for key, path in paths.items():
            try:
                sizes[key] = os.stat(path).st_size
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise io_error(f"could not look up {path}", exc, **where(ctx, fs, path)) from exc
    else:
        by_parent: dict[str, dict[str, str]] = {}
        for key, path in paths.items():
            by_parent.setdefault(path.rpartition("/")[0], {})[fs._strip_protocol(path)] = key

        def listing(parent: str) -> dict[str, int]:
            try:
                entries = fs.ls(parent, detail=True, refresh=True)
            except FileNotFoundError as exc:
                if is_missing_bucket(exc):
                    raise missing_bucket_error(fs, parent, exc, ctx) from exc
                return {}
            except Exception as exc:
                raise io_error(
                    f"could not list {full_url(fs, parent)}", exc, **where(ctx, fs, parent)
                ) from exc
            return {
                fs._strip_protocol(e["name"]): int(e.get("size") or 0)
                for e in entries
                if e.get("type") == "file"
            }

        parents = list(by_parent)
        for parent, found in zip(parents, parallel(listing, parents), strict=True):
            for name, key in by_parent[parent].items():
                if name in found:
                    sizes[key] = found[name]
    missing = [key for key in paths if key not in sizes]
    if missing:
        shown = ", ".join(repr(k) for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise not_found(
            f"{len(missing)} of {len(paths)} partitions missing: {shown}",
            asset=ctx.asset,
            partition_key=missing[0],
            missing=missing,
        )
    return sizes


def _read_combined(
    fs: Any, paths: Mapping[str, str], sizes: Mapping[str, int], column: str, ctx: IOContext
) -> Any:
    """All partitions as one table, scanned as one pyarrow dataset on all cores."""
    pa = require_pyarrow(MANAGER)
    ds = require("pyarrow.dataset", extra="parquet", manager=MANAGER)
    if not paths:
        return pa.table({column: pa.array([], pa.string())})
    pafs = require("pyarrow.fs", extra="parquet", manager=MANAGER)
    filesystem = pafs.LocalFileSystem() if is_local(fs) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    fmt = ds.ParquetFileFormat()
    key_of = {path: key for key, path in paths.items()}
    here: dict[str, Any] = {"asset": ctx.asset, "partition_key": None, "partitions": len(paths)}
    try:
        fragments = [
            fmt.make_fragment(path, filesystem=filesystem, file_size=sizes[key])
            for key, path in paths.items()
        ]
        schemas = parallel(lambda fragment: fragment.physical_schema, fragments)
        schema = pa.unify_schemas(schemas)
        dataset = ds.FileSystemDataset(fragments, schema, fmt, filesystem)
        batches: dict[str, list[Any]] = {key: [] for key in paths}
        for tagged in dataset.scanner(use_threads=True).scan_batches():
            batches[key_of[tagged.fragment.path]].append(tagged.record_batch)
    except OSError as exc:
        raise io_error(f"could not read the partitions of '{ctx.asset}'", exc, **here) from exc
    except Exception as exc:
        message = f"the partitions of '{ctx.asset}' cannot be read as one table"
        raise io_error(message, exc, retryable=False, **here) from exc
    add = column not in schema.names
    out_schema = schema.append(pa.field(column, pa.string())) if add else schema
    chunks = []
    for key, found in batches.items():
        for batch in found:
            if add:
                batch = batch.append_column(column, pa.repeat(pa.scalar(key, pa.string()), batch.num_rows))
            chunks.append(batch)
    return pa.Table.from_batches(chunks, schema=out_schema)
