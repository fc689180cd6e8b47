"""Values in local files (pickle or JSON), each with an ``_asset.json`` sidecar telling its provenance.

Layout under the root: ``<asset>/value.<ext>`` for unpartitioned assets and
``<asset>/p=<quoted key>.<ext>`` per partition; tenants other than ``default`` live under
``tenants/<tenant>/``. Keys are percent-quoted so ``/`` or ``..`` in a key can never escape the
asset's directory. ``io_config={"path": "reports/{partition}.json"}`` lays files out by a template
instead (placeholders ``{asset}``, ``{partition}``, ``{tenant}``).

Beside each value ``<name>.<ext>`` sits ``<name>._asset.json``: asset, partition, tenant, run,
materialization id, data and code version, the upstream materializations and their versions,
created_at, size and checksum. The files alone tell where a value came from, and
``flowstone catalog rebuild`` re-imports them into an empty (or lost) metadata store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flowstone._errors import IOManagerError
from flowstone.io._base import IOContext, StoredValue
from flowstone.io._errors import io_error, not_found

FORMATS = {"pickle": "pickle", "json": "json"}  # format -> file extension
SIDECAR_SUFFIX = "._asset.json"
SIDECAR_VERSION = 1
_PLACEHOLDER = re.compile(r"{([^{}]*)}")
_PLACEHOLDERS = {"asset", "partition", "tenant"}


@dataclass(frozen=True)
class FilesystemConfig:
    """Per-asset options: ``io_config=FilesystemConfig(format="json")``."""

    format: str | None = None
    path: str | None = None


def _encode(fmt: str, value: Any, ctx: IOContext) -> bytes:
    if fmt == "json":
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise IOManagerError(
                f"asset '{ctx.asset}' returned a value that is not JSON ({type(value).__name__}: {exc}); "
                "return lists, dicts, strings, numbers, booleans or None, or use format='pickle'",
                context={"asset": ctx.asset, "partition": ctx.partition_key, "format": fmt},
                retryable=False,
                original=exc,
            ) from exc
    import pickle

    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise IOManagerError(
            f"asset '{ctx.asset}' returned a value that cannot be pickled ({type(value).__name__}): {exc}",
            context={"asset": ctx.asset, "partition": ctx.partition_key, "format": fmt},
            retryable=False,
            original=exc,
        ) from exc


def _decode(fmt: str, data: bytes) -> Any:
    if fmt == "json":
        return json.loads(data)
    import pickle

    return pickle.loads(data)


def _write_atomically(path: Path, data: bytes, *, fsync: bool) -> int:
    """Write ``data`` to a temp file beside ``path`` and rename it over; returns the new inode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
            inode = os.fstat(handle.fileno()).st_ino
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return inode


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """A sidecar's content, or None when it is missing or unreadable."""
    try:
        found = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("flowstone_sidecar") else None


class FilesystemIOManager:
    """The default I/O manager: one file per asset partition, pickle (default) or JSON.

    ``fsync=True`` (the default) flushes the file before the rename, so a power cut cannot leave
    a recorded materialization pointing at an empty file. ``sidecars=False`` skips the
    ``_asset.json`` files (and with them ``catalog rebuild``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        format: str = "pickle",
        sidecars: bool = True,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
        self.root = Path(root)
        self.fsync = fsync
        self.format = format
        self.sidecars = sidecars

    def __repr__(self) -> str:
        return f"FilesystemIOManager({str(self.root)!r}, format={self.format!r})"

    @classmethod
    def from_settings(
        cls, options: Mapping[str, Any], *, storage_dir: Path, base_dir: Path, **_: Any
    ) -> FilesystemIOManager:
        options = dict(options)
        root = Path(options.pop("root", storage_dir))
        return cls(root if root.is_absolute() else base_dir / root, **options)

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> list[str]:
        problems = [
            f"unknown option {key!r} (known: format, path)" for key in config if key not in ("format", "path")
        ]
        fmt = config.get("format")
        if fmt is not None and fmt not in FORMATS:
            problems.append(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        template = config.get("path")
        if template is not None:
            problems.extend(_template_problems(template))
        return problems

    # ------------------------------------------------------------------ paths
    def _format(self, ctx: IOContext) -> str:
        return str(ctx.config.get("format") or self.format)

    def tenant_root(self, tenant: str) -> Path:
        return self.root if tenant == "default" else self.root / "tenants" / quote(tenant, safe="")

    def path_for(self, ctx: IOContext) -> Path:
        ext = FORMATS[self._format(ctx)]
        base = self.tenant_root(ctx.tenant)
        template = ctx.config.get("path")
        if template:
            key = "value" if ctx.partition_key is None else quote(ctx.partition_key, safe="")
            relative = str(template).format(asset=ctx.asset, partition=key, tenant=quote(ctx.tenant, safe=""))
            return base / relative
        name = "value" if ctx.partition_key is None else "p=" + quote(ctx.partition_key, safe="")
        return base / ctx.asset / f"{name}.{ext}"

    @staticmethod
    def sidecar_for(path: Path) -> Path:
        return path.with_name(path.stem + SIDECAR_SUFFIX)

    # ------------------------------------------------------------------ protocol
    def store(self, ctx: IOContext, value: Any) -> StoredValue:
        fmt = self._format(ctx)
        data = _encode(fmt, value, ctx)
        path = self.path_for(ctx)
        now = datetime.now(UTC)
        checksum = _sha256(data)
        try:
            inode = _write_atomically(path, data, fsync=self.fsync)
            if self.sidecars:
                sidecar = _sidecar(ctx, fmt, path, checksum, len(data), now, inode)
                _write_atomically(self.sidecar_for(path), sidecar, fsync=False)
        except OSError as exc:
            raise io_error(
                f"could not write {path} for asset '{ctx.asset}'",
                exc,
                asset=ctx.asset,
                partition_key=ctx.partition_key,
                path=str(path),
            ) from exc
        return StoredValue(size_bytes=len(data), checksum=checksum, updated_at=now, extra={"path": str(path)})

    def load(self, ctx: IOContext) -> Any:
        path = self.path_for(ctx)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise not_found(f"no file at {path}", asset=ctx.asset, partition_key=ctx.partition_key) from None
        except OSError as exc:
            raise io_error(
                f"could not read {path}",
                exc,
                asset=ctx.asset,
                partition_key=ctx.partition_key,
                path=str(path),
            ) from exc
        ctx.observe(size_bytes=len(data))
        try:
            return _decode(self._format(ctx), data)
        except Exception as exc:
            raise IOManagerError(
                f"stored value for asset '{ctx.asset}' at {path} cannot be decoded as "
                f"{self._format(ctx)}: {exc}",
                context={"asset": ctx.asset, "partition": ctx.partition_key, "path": str(path)},
                retryable=False,
                original=exc,
            ) from exc

    def delete(self, ctx: IOContext) -> None:
        path = self.path_for(ctx)
        try:
            path.unlink(missing_ok=True)
            self.sidecar_for(path).unlink(missing_ok=True)
        except OSError as exc:
            raise io_error(
                f"could not delete {path}", exc, asset=ctx.asset, partition_key=ctx.partition_key
            ) from exc

    def exists(self, ctx: IOContext) -> bool:
        return self.path_for(ctx).is_file()

    def metadata(self, ctx: IOContext) -> StoredValue | None:
        path = self.path_for(ctx)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        sidecar = read_sidecar(self.sidecar_for(path)) if self.sidecars else None
        # The sidecar describes this very file only if it names the file's inode and size: a
        # crash between the two renames leaves a sidecar of the previous value.
        if (
            sidecar
            and sidecar.get("value_inode") == stat.st_ino
            and sidecar.get("size_bytes") == stat.st_size
        ):
            checksum = str(sidecar["checksum"])
        else:
            try:
                checksum = _sha256(path.read_bytes())
            except FileNotFoundError:
                return None
        return StoredValue(
            size_bytes=stat.st_size,
            checksum=checksum,
            updated_at=datetime.fromtimestamp(stat.st_mtime, UTC),
            extra={"path": str(path)},
        )


def _template_problems(template: Any) -> list[str]:
    if not isinstance(template, str) or not template.strip():
        return [f"path must be a non-empty string template, got {template!r}"]
    problems = [
        f"path {template!r} uses unknown placeholder {{{name}}} (known: {{asset}}, {{partition}}, {{tenant}})"
        for name in _PLACEHOLDER.findall(template)
        if name not in _PLACEHOLDERS
    ]
    parts = Path(template).parts
    if Path(template).is_absolute() or ".." in parts:
        problems.append(f"path {template!r} must be relative to the root and must not contain '..'")
    if template.endswith(SIDECAR_SUFFIX):
        problems.append(f"path {template!r} must not end in {SIDECAR_SUFFIX!r} (reserved for sidecars)")
    return problems


def _sidecar(
    ctx: IOContext, fmt: str, path: Path, checksum: str, size: int, now: datetime, inode: int
) -> bytes:
    return json.dumps(
        {
            "flowstone_sidecar": SIDECAR_VERSION,
            "asset": ctx.asset,
            "partition_key": ctx.partition_key,
            "tenant": ctx.tenant,
            "run_id": ctx.run_id,
            "materialization_id": ctx.materialization_id,
            "data_version": ctx.data_version or checksum,
            "code_version": ctx.code_version,
            "upstream": [
                {
                    "asset": u.asset,
                    "partition_key": u.partition_key,
                    "materialization_id": u.materialization_id,
                    "data_version": u.data_version,
                }
                for u in ctx.upstream
            ],
            "created_at": now.isoformat(),
            "format": fmt,
            "value_file": path.name,
            "size_bytes": size,
            "checksum": checksum,
            "value_inode": inode,
        },
        indent=2,
    ).encode()
