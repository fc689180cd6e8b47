"""What the fsspec-based managers (``parquet``, ``object_store``) share.

Opening a filesystem from a URL, laying values out by a path template with percent-quoted parts,
writing atomically through a stream that hashes what goes out, reading file facts (size, time,
etag) in one shape, and a checksum sidecar for stores that have no content hash of their own.

Atomic writes take one of three routes, picked from the filesystem:

* local files: a temp file in the target directory, ``os.replace`` over the old one (which a
  helper thread deletes afterwards: freeing a large file can take longer than writing it);
* object stores (S3, GCS, Azure): straight to the final key. A single PUT, or a multipart upload's
  completion, is atomic by itself; on failure the upload is discarded (multipart aborted) so the
  old object stays. fsspec files commit on ``close`` even after an exception, so they are never
  used as context managers here;
* any other fsspec filesystem (``memory://``...): a temp name beside the target, then ``mv``.

Usage::

    fs, root = open_filesystem("s3://bucket/data", {"anon": False}, manager="parquet", extra="parquet")
    written = write_atomic(fs, f"{root}/a/value.parquet", lambda out: out.write(b"..."), ctx=ctx)
    written.sha256, written.info.size
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import stat as stat_module
import string
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from flowstone._errors import IOManagerError
from flowstone.io._base import IOContext
from flowstone.io._errors import io_error, is_missing_bucket, missing_extra, not_found

log = logging.getLogger("flowstone.io")

# Protocols whose files are objects: no cheap rename, but a write becomes visible only when whole.
BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss", "r2"})
_HASH_THREAD_AFTER = 4 * 2**20  # hash on a second thread once this many bytes went out
_CHUNK = 4 * 2**20

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------------- opening
def require(module: str, *, extra: str, manager: str) -> Any:
    """Import ``module`` or raise the error naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(extra, module, manager=manager) from None


def open_filesystem(
    url: str, storage_options: Mapping[str, Any] | None, *, manager: str, extra: str
) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the root path inside it (no trailing slash).

    A plain path is a local directory. ``s3://`` needs s3fs, reported as the ``s3`` extra.
    """
    require("fsspec", extra=extra, manager=manager)
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        module = "s3fs" if url.startswith(("s3://", "s3a://")) else (exc.name or str(exc))
        raise missing_extra("s3" if module == "s3fs" else extra, module, manager=manager) from None
    root = str(root).rstrip("/")
    if is_local(fs):
        root = os.path.abspath(root or "/")
    return fs, root


def is_local(fs: Any) -> bool:
    return "file" in _protocols(fs)


def is_bucket_store(fs: Any) -> bool:
    return bool(_protocols(fs) & BUCKET_PROTOCOLS)


def _protocols(fs: Any) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


def full_url(fs: Any, path: str) -> str:
    """``path`` with its protocol, for messages and metadata (``s3://bucket/key``)."""
    if is_local(fs):
        return path
    return str(fs.unstrip_protocol(path))


# ---------------------------------------------------------------------- layout
def quote_part(text: str) -> str:
    """``text`` as one safe path segment: ``/`` and ``..`` can never climb out of a directory.

    Percent-quoting leaves dots alone, so a leading dot is quoted too: no segment is ``.`` or
    ``..``, and no stored file is hidden from dataset readers (they skip dot-files).
    """
    quoted = quote(text, safe="")
    if quoted.startswith("."):
        quoted = "%2E" + quoted[1:]
    return quoted or "%00"


def template_fields(template: str) -> list[str]:
    """The placeholder names in ``template``; ValueError for anything but plain ``{name}``."""
    found: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"placeholder {{{name}{'!' + conversion if conversion else ''}}} is not a name")
        found.append(name)
    return found


def template_problems(key: str, template: Any, allowed: Iterable[str], *, relative: bool = True) -> list[str]:
    """What is wrong with a path template, each message naming ``key``; empty when it is fine."""
    if not isinstance(template, str):
        return [f"'{key}' must be a string template, got {type(template).__name__}"]
    if not template.strip():
        return [f"'{key}' must not be empty"]
    try:
        names = template_fields(template)
    except ValueError as exc:
        return [f"'{key}' template {template!r} is malformed: {exc}"]
    problems = [
        f"'{key}' template {template!r} has unknown placeholder {{{name}}} "
        f"(known: {', '.join('{' + a + '}' for a in sorted(allowed))})"
        for name in dict.fromkeys(names)
        if name not in allowed
    ]
    if relative:
        segments = template.split("/")
        if template.endswith("/"):
            segments.pop()
        if template.startswith("/") or "://" in template or "\\" in template:
            problems.append(f"'{key}' template {template!r} must be a relative path with '/' separators")
        elif any(part in ("", ".", "..") for part in segments):
            problems.append(f"'{key}' template {template!r} must not contain empty, '.' or '..' segments")
    return problems


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill ``template``'s placeholders from ``values`` (no attribute or index access)."""
    out: list[str] = []
    for text, name, _, _ in string.Formatter().parse(template):
        out.append(text)
        if name is not None:
            out.append(values[name])
    return "".join(out)


def layout(
    template: str,
    ctx: IOContext,
    *,
    manager: str,
    extra: Mapping[str, str] | None = None,
    tenant_elsewhere: bool = False,
) -> str:
    """The path of ``ctx``'s value relative to the root, from ``template``.

    Placeholders get quoted parts (``{partition}`` is ``value`` for an unpartitioned asset). A
    template without ``{tenant}`` keeps tenants apart by putting other tenants than ``default``
    under ``tenants/<tenant>/``, unless ``tenant_elsewhere`` (a per-tenant bucket does it).
    """
    values = {
        "asset": quote_part(ctx.asset),
        "partition": "value" if ctx.partition_key is None else quote_part(ctx.partition_key),
        "tenant": quote_part(ctx.tenant),
        **(extra or {}),
    }
    names = template_fields(template)
    if ctx.partition_key is not None and "partition" not in names:
        raise IOManagerError(
            f"asset '{ctx.asset}' is partitioned but its '{manager}' path template {template!r} has no "
            "{partition} placeholder: every partition would overwrite the same file",
            context={"asset": ctx.asset, "partition": ctx.partition_key, "io_manager": manager},
            retryable=False,
        )
    relative = render(template, values)
    if "tenant" not in names and not tenant_elsewhere and ctx.tenant != "default":
        relative = f"tenants/{values['tenant']}/{relative}"
    return relative


def join(root: str, relative: str) -> str:
    return f"{root}/{relative}" if root else relative


def config_problems(
    config: Mapping[str, Any], config_class: type, checks: Mapping[str, Callable[[str, Any], list[str]]]
) -> list[str]:
    """Unknown keys, then each known key's own check (``checks[key](key, value)``)."""
    if not isinstance(config, Mapping):
        return [f"io_config must be a mapping, got {type(config).__name__}"]
    known = [f.name for f in fields(config_class)]
    problems = [f"unknown key '{key}' (known: {', '.join(known)})" for key in config if key not in known]
    for key in known:
        value = config.get(key)
        if value is not None:
            problems.extend(checks[key](key, value))
    return problems


def parse_config(
    config: Mapping[str, Any], config_class: type[T], problems: list[str], *, ctx: IOContext, manager: str
) -> T:
    """``config`` as ``config_class``, or a permanent error listing ``problems``."""
    if problems:
        raise IOManagerError(
            f"asset '{ctx.asset}': io_config for I/O manager '{manager}': {'; '.join(problems)}",
            context={"asset": ctx.asset, "partition": ctx.partition_key, "io_manager": manager},
            retryable=False,
        )
    return config_class(**{k: v for k, v in config.items() if v is not None})


# ---------------------------------------------------------------------- file facts
@dataclass(frozen=True)
class FileInfo:
    """What a store says about a file: size, last change, and a token that changes with each write.

    ``version`` is the etag when the store has one, else inode, mtime and size (local files),
    else the creation time and size. ``etag`` is None where the store keeps no content hash.
    """

    size: int
    updated_at: datetime | None
    version: str
    etag: str | None = None


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            return _as_datetime(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def file_info(fs: Any, path: str) -> FileInfo:
    """Facts about the file at ``path``; FileNotFoundError when there is none."""
    if is_local(fs):
        st = os.stat(path)
        if not stat_module.S_ISREG(st.st_mode):
            raise FileNotFoundError(path)
        return FileInfo(
            size=st.st_size,
            updated_at=datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC),
            version=f"ino={st.st_ino},mtime={st.st_mtime_ns},size={st.st_size}",
        )
    info = fs.info(path)
    if info.get("type") == "directory":
        raise FileNotFoundError(path)
    raw_etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    etag = str(raw_etag).strip('"') if raw_etag else None
    updated = None
    for key in ("LastModified", "last_modified", "mtime", "updated", "created"):
        updated = _as_datetime(info.get(key))
        if updated is not None:
            break
    size = int(info.get("size") or 0)
    stamp = "" if updated is None else updated.isoformat()
    return FileInfo(
        size=size,
        updated_at=updated,
        version=f"etag={etag}" if etag else f"at={stamp},size={size}",
        etag=etag,
    )


def stat(fs: Any, path: str, ctx: IOContext) -> FileInfo | None:
    """``file_info``, or None when nothing is stored; a missing bucket is a permanent error."""
    try:
        return file_info(fs, path)
    except FileNotFoundError as exc:
        if is_missing_bucket(exc):
            raise missing_bucket_error(fs, path, exc, ctx) from exc
        return None
    except Exception as exc:
        raise io_error(f"could not look up {full_url(fs, path)}", exc, **where(ctx, fs, path)) from exc


def where(ctx: IOContext, fs: Any, path: str) -> dict[str, Any]:
    return {"asset": ctx.asset, "partition_key": ctx.partition_key, "path": full_url(fs, path)}


def missing_bucket_error(fs: Any, path: str, exc: BaseException, ctx: IOContext) -> IOManagerError:
    bucket = path.split("/", 1)[0]
    return io_error(
        f"bucket '{bucket}' does not exist (for {full_url(fs, path)}); create it or fix the URL",
        exc,
        retryable=False,
        bucket=bucket,
        **where(ctx, fs, path),
    )


def read_failure(fs: Any, path: str, exc: BaseException, ctx: IOContext) -> Exception:
    """The error for a failed read: not found, a missing bucket, or an ``io_error``."""
    if isinstance(exc, FileNotFoundError) or (isinstance(exc, OSError) and exc.errno == 2):
        if is_missing_bucket(exc):
            return missing_bucket_error(fs, path, exc, ctx)
        return not_found(full_url(fs, path), asset=ctx.asset, partition_key=ctx.partition_key)
    if isinstance(exc, IsADirectoryError):
        return not_found(full_url(fs, path), asset=ctx.asset, partition_key=ctx.partition_key)
    return io_error(f"could not read {full_url(fs, path)}", exc, **where(ctx, fs, path))


def read_bytes(fs: Any, path: str, ctx: IOContext) -> bytes:
    """The whole file in one request (one GET on an object store)."""
    try:
        if is_local(fs):
            with open(path, "rb") as handle:
                return handle.read()
        data = fs.cat_file(path)
    except Exception as exc:
        raise read_failure(fs, path, exc, ctx) from exc
    return bytes(data)


def remove(fs: Any, paths: Iterable[str], ctx: IOContext) -> None:
    """Delete the files at ``paths``; those already gone are fine."""
    for path in paths:
        try:
            if is_local(fs):
                os.unlink(path)
            else:
                fs.rm_file(path)
        except FileNotFoundError as exc:
            if is_missing_bucket(exc):
                raise missing_bucket_error(fs, path, exc, ctx) from exc
        except Exception as exc:
            raise io_error(f"could not delete {full_url(fs, path)}", exc, **where(ctx, fs, path)) from exc
    if not is_local(fs):
        fs.invalidate_cache()


def parallel(fn: Callable[[T], R], items: list[T], *, workers: int = 8) -> list[R]:
    """``[fn(item) ...]`` on up to ``workers`` threads (in order); inline for a single item."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="flowstone-io") as pool:
        return list(pool.map(fn, items))


# ---------------------------------------------------------------------- writing
class HashingWriter:
    """A write-only file that passes bytes to its sink and hashes them with SHA-256 on the way.

    The hash comes for free with the write instead of a second pass over the file. Past a few
    MiB it is computed on a helper thread (hashlib releases the GIL), overlapping the
    serialiser's work. ``error`` keeps the sink's exception, telling a failing store from a value
    that cannot be serialised.
    """

    closed = False

    def __init__(self, sink: Any = None) -> None:
        self.sink = sink
        self._digest = hashlib.sha256()
        self._queue: queue.SimpleQueue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        self.size = 0
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            self.sink.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        self.size += n
        if self._queue is not None:
            self._queue.put(data if isinstance(data, bytes) else bytes(data))
        else:
            self._digest.update(data)
            if self.size > _HASH_THREAD_AFTER:
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._hash_queued, name="flowstone-hash", daemon=True)
                self._thread.start()
        return n

    def _hash_queued(self) -> None:
        assert self._queue is not None
        while (chunk := self._queue.get()) is not None:
            self._digest.update(chunk)

    def hexdigest(self) -> str:
        """The SHA-256 of everything written (waits for the helper thread)."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None
        return self._digest.hexdigest()

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        """Serialisers may close their output; the real file is committed by ``write_atomic``."""


@dataclass(frozen=True)
class Written:
    """What ``write_atomic`` wrote: the hex SHA-256 of the bytes and the file's facts after."""

    path: str
    sha256: str
    info: FileInfo


Produce = Callable[[HashingWriter], None]


class _SerialiseError(Exception):
    """``produce`` failed by itself (not because the store did): the value cannot be written."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


def write_atomic(fs: Any, path: str, produce: Produce, *, ctx: IOContext, fsync: bool = True) -> Written:
    """Write what ``produce(out)`` writes to ``path``, all or nothing.

    Failures of the store become ``io_error`` (retryable when transient); an exception ``produce``
    raises by itself (a value that cannot be serialised) propagates unchanged. Either way the
    previous file stays as it was and no temp file is left behind.
    """
    writer = HashingWriter()
    route = _write_local if is_local(fs) else _write_direct if is_bucket_store(fs) else _write_then_move
    try:
        try:
            route(fs, path, produce, writer, fsync)
        finally:
            sha256 = writer.hexdigest()  # also stops the hashing thread when the write failed
        info = file_info(fs, path)
    except _SerialiseError as exc:
        raise exc.original from None
    except Exception as exc:
        cause = writer.error if isinstance(writer.error, Exception) else exc
        if is_missing_bucket(cause):
            raise missing_bucket_error(fs, path, cause, ctx) from cause
        raise io_error(f"could not write {full_url(fs, path)}", cause, **where(ctx, fs, path)) from cause
    return Written(path=path, sha256=sha256, info=info)


def _produce(produce: Produce, writer: HashingWriter, sink: Any) -> None:
    writer.sink = sink
    try:
        produce(writer)
    except Exception as exc:
        if writer.error is None:
            raise _SerialiseError(exc) from exc
        raise


def _write_local(fs: Any, path: str, produce: Produce, writer: HashingWriter, fsync: bool) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with open(fd, "wb") as handle:
            _produce(produce, writer, handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _quietly(os.unlink, tmp)
        raise


def _write_direct(fs: Any, path: str, produce: Produce, writer: HashingWriter, fsync: bool) -> None:
    handle = fs.open(path, "wb")
    try:
        _produce(produce, writer, handle)
    except BaseException:
        _discard(handle)
        raise
    handle.close()  # the single PUT, or the multipart completion


def _discard(handle: Any) -> None:
    """Throw an unfinished upload away: abort a multipart upload, never complete it."""
    discard = getattr(handle, "discard", None)
    if callable(discard):
        _quietly(discard)
    with contextlib.suppress(AttributeError):
        handle.closed = True  # fsspec files would otherwise commit on close() or garbage collection


def _write_then_move(fs: Any, path: str, produce: Produce, writer: HashingWriter, fsync: bool) -> None:
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}" if parent else f".tmp-{uuid.uuid4().hex}-{name}"
    if parent:
        fs.makedirs(parent, exist_ok=True)
    handle = fs.open(tmp, "wb")
    try:
        try:
            _produce(produce, writer, handle)
        except BaseException:
            _discard(handle)
            raise
        handle.close()
        fs.mv(tmp, path)
    except BaseException:
        _quietly(fs.rm_file, tmp)
        raise


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.debug("cleanup failed: %s", exc)


# ---------------------------------------------------------------------- checksum sidecars
def sidecar_path(path: str) -> str:
    """``<dir>/.<name>.sha256``: a dot-file, so dataset readers (pyarrow, Spark) skip it."""
    parent, _, name = path.rpartition("/")
    return f"{parent}/.{name}.sha256" if parent else f".{name}.sha256"


def save_checksum(fs: Any, path: str, checksum: str, info: FileInfo) -> None:
    """Record ``checksum`` for the file version ``info`` describes (best effort, see ``checksum_of``)."""
    body = json.dumps({"checksum": checksum, "version": info.version}).encode()
    side = sidecar_path(path)
    try:
        if is_local(fs):
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(side), prefix=".tmp-")
            try:
                with open(fd, "wb") as handle:
                    handle.write(body)
                os.replace(tmp, side)
            except BaseException:
                _quietly(os.unlink, tmp)
                raise
        else:
            fs.pipe_file(side, body)
    except Exception as exc:
        log.warning(
            "could not record the checksum of %s (recomputed when asked): %s", full_url(fs, path), exc
        )


def checksum_of(fs: Any, path: str, info: FileInfo, ctx: IOContext) -> str:
    """The ``sha256:`` checksum of the file at ``path`` as ``info`` describes it.

    The sidecar answers when it was written for this very version of the file (same etag, or
    same inode, mtime and size). Otherwise (a crash between the file and its sidecar, a file put
    there by someone else) the file is hashed again and the sidecar repaired.
    """
    try:
        if is_local(fs):
            with open(sidecar_path(path), "rb") as handle:
                recorded = json.loads(handle.read())
        else:
            recorded = json.loads(fs.cat_file(sidecar_path(path)))
        if isinstance(recorded, dict) and recorded.get("version") == info.version:
            return str(recorded["checksum"])
    except Exception as exc:
        log.debug("no usable checksum sidecar for %s: %s", path, exc)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") if is_local(fs) else fs.open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except Exception as exc:
        raise read_failure(fs, path, exc, ctx) from exc
    checksum = "sha256:" + digest.hexdigest()
    save_checksum(fs, path, checksum, info)
    return checksum


def location_from_settings(
    options: Mapping[str, Any],
    *,
    manager: str,
    known: Sequence[str],
    key: str,
    default: Path,
    base_dir: Path,
) -> str | os.PathLike[str]:
    """The location option ``key`` of an ``[io.NAME]`` table (``default`` when absent; a relative
    local path is taken from ``base_dir``), after refusing options the manager does not know."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise TypeError(f"the {manager} I/O manager has no option {names} (known: {', '.join(known)})")
    location = options.get(key, default)
    if isinstance(location, (str, os.PathLike)) and "://" not in os.fspath(location):
        return Path(base_dir) / Path(os.fspath(location)).expanduser()
    return location  # type: ignore[no-any-return]
