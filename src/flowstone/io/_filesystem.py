"""Pickled values in files under a root directory, written atomically.

Layout: ``<root>/<asset>/value.pickle`` for unpartitioned assets and
``<root>/<asset>/p=<quoted key>.pickle`` per partition; other tenants than ``default`` live under
``<root>/tenants/<tenant>/``. Keys are percent-quoted so ``/`` or ``..`` in a key can never escape
the asset's directory.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flowstone._errors import IOManagerError, ValueNotFound
from flowstone.io._base import IOContext, StoredValue


class FilesystemIOManager:
    """The default I/O manager: one pickle file per asset partition.

    ``fsync=True`` (the default) flushes the file before the rename, so a power cut cannot leave
    a recorded materialization pointing at an empty file.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def path_for(self, ctx: IOContext) -> Path:
        base = self.root if ctx.tenant == "default" else self.root / "tenants" / quote(ctx.tenant, safe="")
        name = "value" if ctx.partition_key is None else "p=" + quote(ctx.partition_key, safe="")
        return base / ctx.asset / f"{name}.pickle"

    def store(self, ctx: IOContext, value: Any) -> StoredValue:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise IOManagerError(
                f"asset '{ctx.asset}' returned a value that cannot be pickled "
                f"({type(value).__name__}): {exc}",
                context={"asset": ctx.asset, "partition": ctx.partition_key},
                retryable=False,
                original=exc,
            ) from exc
        path = self.path_for(ctx)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pickle")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    if self.fsync:
                        handle.flush()
                        os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise IOManagerError(
                f"could not write {path} for asset '{ctx.asset}': {exc}",
                context={"asset": ctx.asset, "partition": ctx.partition_key, "path": str(path)},
                retryable=True,
                original=exc,
            ) from exc
        return StoredValue(
            size_bytes=len(data),
            checksum="sha256:" + hashlib.sha256(data).hexdigest(),
            updated_at=datetime.now(UTC),
        )

    def load(self, ctx: IOContext) -> Any:
        path = self.path_for(ctx)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueNotFound(
                f"no stored value for asset '{ctx.asset}' partition {ctx.partition_key!r} at {path}",
                context={"asset": ctx.asset, "partition": ctx.partition_key, "path": str(path)},
            ) from None
        except OSError as exc:
            raise IOManagerError(
                f"could not read {path}: {exc}", context={"path": str(path)}, retryable=True, original=exc
            ) from exc
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise IOManagerError(
                f"stored value for asset '{ctx.asset}' at {path} cannot be unpickled: {exc}",
                context={"asset": ctx.asset, "path": str(path)},
                original=exc,
            ) from exc

    def delete(self, ctx: IOContext) -> None:
        self.path_for(ctx).unlink(missing_ok=True)

    def exists(self, ctx: IOContext) -> bool:
        return self.path_for(ctx).is_file()

    def metadata(self, ctx: IOContext) -> StoredValue | None:
        path = self.path_for(ctx)
        try:
            data = path.read_bytes()
            stat = path.stat()
        except FileNotFoundError:
            return None
        return StoredValue(
            size_bytes=stat.st_size,
            checksum="sha256:" + hashlib.sha256(data).hexdigest(),
            updated_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        )
