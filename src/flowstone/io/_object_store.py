"""Values as objects in S3, or in any fsspec filesystem: pickle, JSON or Parquet.

Layout under the URL's prefix: ``<asset>/<quoted key>.<ext>`` (``<asset>/value.<ext>`` when
unpartitioned); tenants other than ``default`` live under ``tenants/<quoted tenant>/``. Per asset,
``io_config`` may name another ``key`` template (relative to the prefix; placeholders
``{asset}``, ``{partition}``, ``{tenant}``, ``{ext}``) and a ``bucket`` template such as
``"acme-{tenant}"``: one bucket per tenant, which then keeps tenants apart by itself.

``metadata`` is one HEAD request: size, last-modified and the etag as checksum
(``etag:<value>``); ``store`` does the HEAD after its PUT, so both report the same. Filesystems
without etags (``file://``, ``memory://``) get a ``sha256:`` checksum hashed during the write
and kept in a sidecar, as the parquet manager does.

Errors: a missing object is ``ValueNotFound``; a missing bucket a permanent ``io_error``; 5xx,
429, timeouts and lost connections are retryable, 403 and other 4xx are not.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstone._errors import IOManagerError
from flowstone.io._base import IOContext, StoredValue
from flowstone.io._errors import io_error
from flowstone.io._frames import require_pyarrow, schema_of, to_arrow
from flowstone.io._fsspec import (
    FileInfo,
    HashingWriter,
    Written,
    checksum_of,
    config_problems,
    full_url,
    is_bucket_store,
    join,
    layout,
    location_from_settings,
    open_filesystem,
    parse_config,
    quote_part,
    read_bytes,
    remove,
    render,
    require,
    save_checksum,
    sidecar_path,
    stat,
    template_fields,
    template_problems,
    where,
    write_atomic,
)
from flowstone.io._parquet import table_as, table_footer, table_from_bytes

MANAGER = "object_store"
FORMATS = {"pickle": "pickle", "json": "json", "parquet": "parquet"}  # format -> extension
KEY_PLACEHOLDERS = ("asset", "partition", "tenant", "ext")
BUCKET_PLACEHOLDERS = ("tenant",)
DEFAULT_KEY = "{asset}/{partition}.{ext}"


@dataclass(frozen=True)
class ObjectStoreConfig:
    """Per-asset options: ``io_config=ObjectStoreConfig(bucket="lake-{tenant}", format="json")``.

    ``bucket`` replaces the URL's bucket (``{tenant}`` gives each tenant its own), ``key`` is the
    object key template below the URL's prefix, ``format`` overrides the manager's format.
    """

    bucket: str | None = None
    key: str | None = None
    format: str | None = None


def _format_problems(key: str, value: Any) -> list[str]:
    if value not in FORMATS:
        return [f"'{key}' must be one of {', '.join(FORMATS)}, got {value!r}"]
    return []


def _key_problems(key: str, value: Any) -> list[str]:
    problems = template_problems(key, value, KEY_PLACEHOLDERS)
    if not problems and value.endswith("/"):
        problems.append(f"'{key}' template {value!r} must name an object, not end with '/'")
    return problems


def _bucket_problems(key: str, value: Any) -> list[str]:
    problems = template_problems(key, value, BUCKET_PLACEHOLDERS, relative=False)
    if not problems and ("/" in value or ":" in value):
        problems.append(f"'{key}' template {value!r} must be a bucket name only (no '/' or scheme)")
    return problems


_CHECKS = {"bucket": _bucket_problems, "key": _key_problems, "format": _format_problems}


class ObjectStoreIOManager:
    """Each asset partition one object, written atomically, described by a HEAD request.

    Usage::

        ObjectStoreIOManager(
            url="s3://lake/flowstone",
            storage_options={"client_kwargs": {"endpoint_url": "http://minio:9000"}},
            format="pickle",
        )

    ``storage_options`` go to fsspec (for S3, s3fs: ``key``, ``secret``, ``client_kwargs``,
    ``config_kwargs={"retries": ...}``, ``default_block_size`` for multipart parts).
    """

    def __init__(
        self,
        *,
        url: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        format: str = "pickle",
        fsync: bool = True,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.url = os.fspath(url)
        self.storage_options = dict(storage_options or {})
        self.format = format
        self.fsync = fsync
        self._opened: tuple[Any, str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, options: Mapping[str, Any], *, storage_dir: Path, store_url: str | None, base_dir: Path
    ) -> ObjectStoreIOManager:
        """Built from ``[io.object_store]``: ``url`` (default ``<storage_dir>/objects``; a relative
        local path is taken from ``base_dir``), ``storage_options``, ``format``, ``fsync``."""
        url = location_from_settings(
            options,
            manager="object_store",
            known=("url", "storage_options", "format", "fsync"),
            key="url",
            default=storage_dir / "objects",
            base_dir=base_dir,
        )
        try:
            return cls(
                url=url,
                storage_options=options.get("storage_options"),
                format=str(options.get("format", "pickle")),
                fsync=bool(options.get("fsync", True)),
            )
        except ValueError as exc:  # the registry reports TypeError as a configuration error
            raise TypeError(str(exc)) from exc

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> list[str]:
        """Problems with an asset's ``io_config``, each naming the field."""
        return config_problems(config, ObjectStoreConfig, _CHECKS)

    def __repr__(self) -> str:
        return f"ObjectStoreIOManager(url={self.url!r}, format={self.format!r})"

    # ------------------------------------------------------------------ layout
    def _filesystem(self) -> tuple[Any, str]:
        with self._lock:
            if self._opened is None:
                self._opened = open_filesystem(self.url, self.storage_options, manager=MANAGER, extra="s3")
            return self._opened

    def _locate(self, ctx: IOContext) -> tuple[Any, str, str]:
        """The filesystem, the object's path in it and the format to use."""
        config = parse_config(
            ctx.config, ObjectStoreConfig, self.validate_config(ctx.config), ctx=ctx, manager=MANAGER
        )
        fs, root = self._filesystem()
        fmt = config.format or self.format
        tenant_elsewhere = False
        if config.bucket is not None:
            if not is_bucket_store(fs):
                raise IOManagerError(
                    f"asset '{ctx.asset}': io_config 'bucket' needs a bucket store (s3://, gs://...), "
                    f"not {self.url!r}",
                    context={"asset": ctx.asset, "io_manager": MANAGER},
                    retryable=False,
                )
            bucket = render(config.bucket, {"tenant": quote_part(ctx.tenant)})
            prefix = root.partition("/")[2]
            root = join(bucket, prefix) if prefix else bucket
            tenant_elsewhere = "tenant" in template_fields(config.bucket)
        relative = layout(
            config.key or DEFAULT_KEY,
            ctx,
            manager=MANAGER,
            extra={"ext": FORMATS[fmt]},
            tenant_elsewhere=tenant_elsewhere,
        )
        return fs, join(root, relative), fmt

    def path_for(self, ctx: IOContext) -> str:
        """The URL of ``ctx``'s object (``s3://bucket/prefix/asset/key.pickle``)."""
        fs, path, _ = self._locate(ctx)
        return full_url(fs, path)

    # ------------------------------------------------------------------ the protocol
    def store(self, ctx: IOContext, value: Any) -> StoredValue:
        fs, path, fmt = self._locate(ctx)
        table = None
        if fmt == "parquet":
            require_pyarrow(MANAGER)
            pq = require("pyarrow.parquet", extra="parquet", manager=MANAGER)
            table, _ = to_arrow(value, manager=MANAGER, asset=ctx.asset)
            table = table.replace_schema_metadata(table_footer(table, ctx))

            def produce(out: HashingWriter) -> None:
                pq.write_table(table, out)

        elif fmt == "json":
            data = _json_bytes(value, ctx)

            def produce(out: HashingWriter) -> None:
                out.write(data)

        else:

            def produce(out: HashingWriter) -> None:
                pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)

        try:
            written = write_atomic(fs, path, produce, ctx=ctx, fsync=self.fsync)
        except IOManagerError:
            raise
        except Exception as exc:
            raise IOManagerError(
                f"asset '{ctx.asset}' returned a value that cannot be written as {fmt} "
                f"({type(value).__name__}): {type(exc).__name__}: {exc}",
                context={"asset": ctx.asset, "partition": ctx.partition_key, "format": fmt},
                retryable=False,
                original=exc,
            ) from exc
        return StoredValue(
            size_bytes=written.info.size,
            checksum=_checksum_after_write(fs, written),
            updated_at=written.info.updated_at,
            row_count=None if table is None else table.num_rows,
            schema=None if table is None else schema_of(table),
            extra={"uri": full_url(fs, path)},
        )

    def load(self, ctx: IOContext) -> Any:
        fs, path, fmt = self._locate(ctx)
        data = read_bytes(fs, path, ctx)
        ctx.observe(size_bytes=len(data))
        if fmt == "parquet":
            require_pyarrow(MANAGER)
            table = table_from_bytes(data, fs, path, ctx)
            ctx.observe(row_count=table.num_rows)
            return table_as(table, ctx.expected_type)
        try:
            return json.loads(data) if fmt == "json" else pickle.loads(data)
        except Exception as exc:
            raise io_error(
                f"{full_url(fs, path)} cannot be read as {fmt}", exc, retryable=False, **where(ctx, fs, path)
            ) from exc

    def delete(self, ctx: IOContext) -> None:
        fs, path, _ = self._locate(ctx)
        remove(fs, [path] if is_bucket_store(fs) else [path, sidecar_path(path)], ctx)

    def exists(self, ctx: IOContext) -> bool:
        fs, path, _ = self._locate(ctx)
        return stat(fs, path, ctx) is not None

    def metadata(self, ctx: IOContext) -> StoredValue | None:
        fs, path, _ = self._locate(ctx)
        info = stat(fs, path, ctx)
        if info is None:
            return None
        return StoredValue(
            size_bytes=info.size,
            checksum=_etag(info) or checksum_of(fs, path, info, ctx),
            updated_at=info.updated_at,
            extra={"uri": full_url(fs, path)},
        )


def _etag(info: FileInfo) -> str | None:
    return None if info.etag is None else f"etag:{info.etag}"


def _checksum_after_write(fs: Any, written: Written) -> str:
    """The store's etag, or (without one) the SHA-256 hashed while writing, kept in a sidecar."""
    etag = _etag(written.info)
    if etag is not None:
        return etag
    checksum = "sha256:" + written.sha256
    save_checksum(fs, written.path, checksum, written.info)
    return checksum


def _json_bytes(value: Any, ctx: IOContext) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise IOManagerError(
            f"asset '{ctx.asset}' returned a value that is not JSON ({type(value).__name__}: {exc}); "
            "return lists, dicts, strings, numbers, booleans or None, or use format='pickle'",
            context={"asset": ctx.asset, "partition": ctx.partition_key, "format": "json"},
            retryable=False,
            original=exc,
        ) from exc
