"""Rebuild the metadata store's record of stored values from the ``_asset.json`` sidecars.

The filesystem I/O manager writes a sidecar beside every value it stores, so the files alone
say which asset, partition, run and upstream versions a value came from. When the metadata
database is lost (or a fresh one is pointed at old storage), ``flowstone catalog rebuild``
reads them back::

    report = app.rebuild_catalog()          # or: flowstone catalog rebuild [--dry-run]
    report.imported, report.skipped

A sidecar is imported only when its value file is there and still has the checksum the sidecar
recorded; one whose value changed since (a run that died between its two renames, or a file
edited by hand) is skipped and reported, never recorded as a success it cannot vouch for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowstone._errors import ValidationError
from flowstone._records import Materialization
from flowstone.engine._planner import typed_partition
from flowstone.io._base import UpstreamVersion
from flowstone.io._filesystem import SIDECAR_SUFFIX, FilesystemIOManager, read_sidecar

if TYPE_CHECKING:
    from flowstone._app import FlowStone
    from flowstone.engine._planner import Resolve


@dataclass(frozen=True)
class CatalogEntry:
    """What became of one sidecar: ``imported``, ``known`` (already in the store) or ``skipped``."""

    path: Path
    outcome: str
    asset: str | None = None
    partition_key: str | None = None
    reason: str | None = None


@dataclass
class CatalogReport:
    entries: list[CatalogEntry] = field(default_factory=list)
    dry_run: bool = False

    def _count(self, outcome: str) -> int:
        return sum(1 for e in self.entries if e.outcome == outcome)

    @property
    def imported(self) -> int:
        return self._count("imported")

    @property
    def known(self) -> int:
        return self._count("known")

    @property
    def skipped(self) -> int:
        return self._count("skipped")


def _sidecars(manager: FilesystemIOManager, tenant: str) -> Iterator[Path]:
    base = manager.tenant_root(tenant)
    others = manager.root / "tenants"
    for path in sorted(base.rglob("*" + SIDECAR_SUFFIX)):
        if tenant == "default" and path.is_relative_to(others):
            continue  # another tenant's files
        yield path


def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _read(
    app: FlowStone, path: Path, io_manager: str, resolve: Resolve
) -> tuple[CatalogEntry, Materialization | None, list[UpstreamVersion]]:
    sidecar = read_sidecar(path)
    if sidecar is None:
        return CatalogEntry(path, "skipped", reason="not a readable FlowStone sidecar"), None, []
    asset, key = sidecar.get("asset"), sidecar.get("partition_key")

    def skip(reason: str) -> tuple[CatalogEntry, None, list[UpstreamVersion]]:
        return CatalogEntry(path, "skipped", asset, key, reason), None, []

    missing = [
        name
        for name in ("asset", "materialization_id", "checksum", "value_file", "created_at")
        if not sidecar.get(name)
    ]
    if missing:
        return skip(f"sidecar lacks {', '.join(missing)}")
    if sidecar.get("tenant", "default") != app.tenant:
        return skip(f"belongs to tenant {sidecar.get('tenant')!r}, not {app.tenant!r}")
    definition = app.pipeline.assets.get(str(asset))
    if definition is None:
        return skip(f"asset '{asset}' is not in pipeline '{app.pipeline.name}'")
    if (definition.partitioned_by is None) != (key is None):
        return skip(f"partition key {key!r} does not fit asset '{asset}' (partitioned or not)")
    if key is not None:
        try:
            typed_partition(resolve(str(asset)), str(asset), str(key))
        except ValidationError as exc:
            return skip(exc.message)
    value = path.parent / str(sidecar["value_file"])
    if not value.is_file():
        return skip(f"value file {value.name} is missing")
    if _checksum(value) != sidecar["checksum"]:
        return skip(f"{value.name} changed since its sidecar was written (checksum mismatch)")
    try:
        created = datetime.fromisoformat(str(sidecar["created_at"]))
    except ValueError:
        return skip(f"created_at {sidecar['created_at']!r} is not an ISO timestamp")
    mat = Materialization(
        id=str(sidecar["materialization_id"]),
        run_id=str(sidecar.get("run_id") or "catalog-rebuild"),
        asset=str(asset),
        partition_key=None if key is None else str(key),
        status="success",
        started_at=created,
        finished_at=created,
        duration_ms=0.0,
        value_hash=str(sidecar["checksum"]),
        value_size=value.stat().st_size,
        io_manager=io_manager,
        code_version=sidecar.get("code_version"),
        metadata={"path": str(value), "imported_from": str(path)},
        tenant=app.tenant,
        data_version=sidecar.get("data_version") or str(sidecar["checksum"]),
    )
    upstream = [_upstream(u) for u in sidecar.get("upstream") or [] if isinstance(u, dict)]
    return CatalogEntry(path, "imported", mat.asset, mat.partition_key), mat, upstream


def _upstream(raw: dict[str, Any]) -> UpstreamVersion:
    return UpstreamVersion(
        str(raw.get("asset")),
        raw.get("partition_key"),
        raw.get("materialization_id"),
        raw.get("data_version"),
    )


def rebuild_catalog(app: FlowStone, *, dry_run: bool = False, actor: str = "api") -> CatalogReport:
    """Import every sidecar under the app's filesystem I/O managers (for the app's tenant)."""
    report = CatalogReport(dry_run=dry_run)
    found: list[tuple[CatalogEntry, Materialization, list[UpstreamVersion]]] = []
    seen_roots: set[Path] = set()
    resolve = app.resolver()
    for name, manager in sorted(app.io_managers.items()):
        if not isinstance(manager, FilesystemIOManager) or not manager.sidecars:
            continue
        root = manager.root.resolve()
        if root in seen_roots:
            continue
        seen_roots.add(root)
        for path in _sidecars(manager, app.tenant):
            entry, mat, upstream = _read(app, path, name, resolve)
            if mat is None:
                report.entries.append(entry)
            else:
                found.append((entry, mat, upstream))
    known = set(app.store.data_versions(tenant=app.tenant, materialization_ids=[m.id for _, m, _ in found]))
    for entry, mat, _ in found:
        outcome = "known" if mat.id in known else "imported"
        report.entries.append(CatalogEntry(entry.path, outcome, entry.asset, entry.partition_key))
    if not dry_run:
        fresh = [(m, up) for _, m, up in found if m.id not in known]
        app.store.import_materializations(
            tenant=app.tenant,
            materializations=[m for m, _ in fresh],
            lineage=[(m.id, u) for m, ups in fresh for u in ups],
            actor=actor,
            source=", ".join(str(r) for r in sorted(seen_roots)),
        )
    report.entries.sort(key=lambda e: str(e.path))
    return report
