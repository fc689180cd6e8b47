"""The metadata store: every write and query FlowStone makes against its database.

One class, one place for the SQL. SQLite (the embedded default, WAL mode) and PostgreSQL run the
same statements; the dialect-specific ones are the upsert of an asset partition's latest state
(in the run writer) and the lock a read-then-write transaction takes (``_serialized``).

Questions about many partitions (status counts, missing keys, latest states, invalidation) are
answered in SQL: GROUP BY over indexes, or one ``IN`` query per chunk of ``CHUNK`` keys read
lazily from the caller's iterable, never one query per key or all rows into Python.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from flowstone._errors import ConfigurationError, FlowStoneError, StoreError, ValidationError
from flowstone._ids import new_id
from flowstone._records import (
    BACKFILL_COUNT_NAMES,
    AssetPartitionState,
    BackfillRecord,
    BackfillStatus,
    LineageEntry,
    Materialization,
    PartitionStatus,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from flowstone.io._base import UpstreamVersion
from flowstone.store import _tables as t
from flowstone.store._writer import RunWriter

if TYPE_CHECKING:
    from flowstone._events import Event

T = TypeVar("T")

HOST = socket.gethostname()
# Lineage is acyclic (a materialization only consumes earlier ones), so an unbounded walk ends;
# the cap only guards against pathological histories. Asking for more is an error, not a silent cut.
MAX_LINEAGE_DEPTH = 10_000
# Keys per IN (...) query: far below every driver's parameter limit, large enough that a million
# keys take a thousand round trips.
CHUNK = 1000
# Audit rows name at most this many partition keys (and always the count).
AUDIT_KEYS = 100
MAX_KEY_LENGTH = 1024
MAX_PAGE_SIZE = 10_000


def utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _key_out(key: str) -> str | None:
    return key or None


def _key_in(key: str | None) -> str:
    return key or ""


def _batches(items: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    """Consecutive lists of up to ``size`` items, pulled lazily from ``items``."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _audit_keys(keys: Sequence[str | None]) -> dict[str, Any]:
    return {
        "partitions": [_key_out(_key_in(k)) for k in keys[:AUDIT_KEYS]],
        "count": len(keys),
        "truncated": len(keys) > AUDIT_KEYS,
    }


def _dynamic_keys(keys: Iterable[str]) -> list[str]:
    """The keys once each, in first-seen order; every one a non-empty string that fits."""
    if isinstance(keys, str):
        raise ValidationError("partition keys must be given as a collection of strings, not one string")
    unique: dict[str, None] = {}
    for key in keys:
        if not isinstance(key, str) or not key:
            raise ValidationError(f"a dynamic partition key must be a non-empty string, got {key!r}")
        if len(key) > MAX_KEY_LENGTH:
            raise ValidationError(
                f"partition key {key[:40]!r}... is {len(key)} characters long; at most {MAX_KEY_LENGTH} fit",
                context={"length": len(key)},
            )
        unique[key] = None
    return list(unique)


def _counts(counts: Mapping[str, int] | None) -> dict[str, int]:
    merged = dict.fromkeys(BACKFILL_COUNT_NAMES, 0)
    for name, value in (counts or {}).items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValidationError(f"backfill count {name!r} must be a non-negative integer, got {value!r}")
        merged[name] = value
    return merged


def normalize_url(url: str) -> str:
    """Map bare ``postgresql://`` URLs to the psycopg 3 driver we ship with."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def create_engine(url: str) -> Engine:
    url = normalize_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"store URL {url!r} is not a database URL: {exc}", original=exc) from exc
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(url, pool_pre_ping=True)
    raise ConfigurationError(
        f"store URL {url!r}: only sqlite and postgresql are supported", context={"url": url}
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        # Entering WAL needs an exclusive lock and fails at once (no busy wait) while another
        # connection is creating a fresh database. WAL is a property of the file: that connection,
        # or the next one to connect, sets it; this one follows once it is set.
        if "locked" not in str(exc):
            raise
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@dataclass(frozen=True)
class NewStep:
    id: str
    position: int
    asset: str
    partition_key: str | None
    upstream: list[list[str]]


class Store:
    """Runs, steps, materializations, lineage, events and audit rows, per tenant.

    Build with :meth:`open` (URL or engine); the schema is migrated to the current version on
    first use.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    @classmethod
    def open(cls, target: str | Engine | Store, *, migrate: bool = True) -> Store:
        if isinstance(target, Store):
            return target
        engine = create_engine(target) if isinstance(target, str) else target
        store = cls(engine)
        if migrate:
            store.migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        from flowstone.store._migrate import upgrade_if_needed

        try:
            upgrade_if_needed(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            reason = getattr(exc, "orig", None) or exc
            raise StoreError(
                f"cannot reach or migrate the store at {self.engine.url!r}: {reason}",
                original=exc,
                retryable=True,
            ) from exc

    # ------------------------------------------------------------------ runs: writes
    def create_run(
        self,
        *,
        tenant: str,
        run_id: str,
        pipeline: str,
        selection: list[str],
        partition_key: str | None,
        force: bool,
        actor: str,
        executor: str,
        steps: Sequence[NewStep],
        backfill_id: str | None = None,
    ) -> datetime:
        """Insert the run, all its steps (pending) and the audit row in one transaction."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                t.runs.insert(),
                {
                    "id": run_id,
                    "tenant_id": tenant,
                    "pipeline": pipeline,
                    "status": RunStatus.RUNNING.value,
                    "selection": selection,
                    "partition_key": _key_in(partition_key),
                    "force": force,
                    "actor": actor,
                    "executor": executor,
                    "host": HOST,
                    "pid": os.getpid(),
                    "created_at": now,
                    "started_at": now,
                    "heartbeat_at": now,
                    "step_count": len(steps),
                    "backfill_id": backfill_id,
                },
            )
            if steps:
                conn.execute(
                    t.run_steps.insert(),
                    [
                        {
                            "id": s.id,
                            "tenant_id": tenant,
                            "run_id": run_id,
                            "position": s.position,
                            "asset": s.asset,
                            "partition_key": _key_in(s.partition_key),
                            "status": StepStatus.PENDING.value,
                            "attempt": 0,
                            "upstream": s.upstream,
                        }
                        for s in steps
                    ],
                )
            self._audit(
                conn,
                tenant=tenant,
                actor=actor,
                action="materialize",
                resource_type="run",
                resource_id=run_id,
                details={
                    "selection": selection,
                    "partition": partition_key,
                    "force": force,
                    **({"backfill": backfill_id} if backfill_id else {}),
                },
                at=now,
            )
            self._events(conn, tenant, [{"type": "run.started", "run_id": run_id, "at": now}])
        return now

    def run_writer(self, run_id: str) -> RunWriter:
        """A writer for one run's step transitions (holds one connection until closed)."""
        return RunWriter(self.engine, run_id)

    def finish_run(
        self, *, tenant: str, run_id: str, status: RunStatus, error: str | None = None
    ) -> datetime:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                t.runs.update()
                .where(t.runs.c.id == run_id)
                .values(status=status.value, finished_at=now, heartbeat_at=now, error=error)
            )
            self._events(
                conn,
                tenant,
                [{"type": "run.finished", "run_id": run_id, "at": now, "data": {"status": status.value}}],
            )
        return now

    def reopen_run(self, *, tenant: str, run_id: str) -> bool:
        """A paused run (``waiting_approval``) runs again. Conditional: of two processes
        resuming it at once only one gets True."""
        now = utcnow()
        with self.engine.begin() as conn:
            reopened = conn.execute(
                t.runs.update()
                .where(
                    t.runs.c.id == run_id,
                    t.runs.c.tenant_id == tenant,
                    t.runs.c.status == RunStatus.WAITING_APPROVAL.value,
                )
                .values(
                    status=RunStatus.RUNNING.value,
                    finished_at=None,
                    heartbeat_at=now,
                    host=HOST,
                    pid=os.getpid(),
                )
            )
            if reopened.rowcount != 1:
                return False
            self._events(conn, tenant, [{"type": "run.resumed", "run_id": run_id, "at": now}])
        return True

    def settle_paused_run(self, *, tenant: str, run_id: str) -> RunStatus | None:
        """A paused run with no step left to run or to decide ends: failed when any step did not
        succeed, else succeeded. Returns the new status (None: still paused, or not paused)."""
        c = t.run_steps.c
        now = utcnow()
        with self.engine.begin() as conn:
            statuses = [s for (s,) in conn.execute(sa.select(c.status).where(c.run_id == run_id))]
            if any(s in (StepStatus.PENDING.value, StepStatus.WAITING_APPROVAL.value) for s in statuses):
                return None
            status = (
                RunStatus.FAILED
                if any(s != StepStatus.SUCCEEDED.value for s in statuses)
                else RunStatus.SUCCEEDED
            )
            settled = conn.execute(
                t.runs.update()
                .where(
                    t.runs.c.id == run_id,
                    t.runs.c.tenant_id == tenant,
                    t.runs.c.status == RunStatus.WAITING_APPROVAL.value,
                )
                .values(status=status.value, finished_at=now)
            )
            if settled.rowcount != 1:
                return None
            self._events(
                conn,
                tenant,
                [{"type": "run.finished", "run_id": run_id, "at": now, "data": {"status": status.value}}],
            )
        return status

    def abandon_run(self, *, tenant: str, run_id: str, reason: str) -> None:
        """Mark a run and its unfinished steps abandoned (its process died or was interrupted)."""
        now = utcnow()
        with self.engine.begin() as conn:
            self._abandon(conn, tenant, run_id, reason, now)

    def _abandon(self, conn: Connection, tenant: str, run_id: str, reason: str, now: datetime) -> None:
        conn.execute(
            t.run_steps.update()
            .where(
                t.run_steps.c.run_id == run_id,
                t.run_steps.c.status.in_(
                    [StepStatus.PENDING.value, StepStatus.RUNNING.value, StepStatus.RETRYING.value]
                ),
            )
            .values(status=StepStatus.ABANDONED.value, reason=reason, finished_at=now)
        )
        conn.execute(
            t.runs.update()
            .where(t.runs.c.id == run_id)
            .values(status=RunStatus.ABANDONED.value, finished_at=now, error=reason)
        )
        # A backfill runs as one run: when that run dies, so did the backfill (it stays
        # resumable; without this it would show ``running`` forever).
        b = t.backfills.c
        conn.execute(
            t.backfills.update()
            .where(
                b.tenant_id == tenant,
                b.id == sa.select(t.runs.c.backfill_id).where(t.runs.c.id == run_id).scalar_subquery(),
                b.status.in_([s.value for s in BackfillStatus if not s.finished]),
            )
            .values(status=BackfillStatus.ABANDONED.value, finished_at=now, updated_at=now, error=reason)
        )
        self._events(
            conn, tenant, [{"type": "run.abandoned", "run_id": run_id, "at": now, "data": {"reason": reason}}]
        )

    def recover(
        self,
        *,
        tenant: str,
        skip_run_ids: Iterable[str] = (),
        stale_after: timedelta | None = None,
        now: datetime | None = None,
    ) -> list[str]:
        """Mark runs whose process is gone as abandoned; returns their ids.

        A run is dead when it was started on this host by a process that no longer exists, or
        (with ``stale_after``) when its heartbeat is older than that on any host.
        """
        now = now or utcnow()
        skip = set(skip_run_ids)
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(t.runs.c.id, t.runs.c.host, t.runs.c.pid, t.runs.c.heartbeat_at).where(
                    t.runs.c.tenant_id == tenant,
                    t.runs.c.status.in_([RunStatus.RUNNING.value, RunStatus.QUEUED.value]),
                    # Queue runs belong to no process: workers come and go, the reaper recovers.
                    t.runs.c.executor != "queue",
                )
            ).all()
            dead: list[str] = []
            for run_id, host, pid, heartbeat in rows:
                if run_id in skip:
                    continue
                gone = host == HOST and pid != os.getpid() and not _pid_alive(pid)
                hb = _utc(heartbeat)
                stale = stale_after is not None and (hb is None or hb < now - stale_after)
                if gone or stale:
                    reason = (
                        f"process {pid} on {host} is gone"
                        if gone
                        else f"no heartbeat since {hb.isoformat() if hb else 'ever'}"
                    )
                    self._abandon(conn, tenant, run_id, f"abandoned: {reason}", now)
                    dead.append(run_id)
        return dead

    # ------------------------------------------------------------------ audit and events
    def _audit(
        self,
        conn: Connection,
        *,
        tenant: str,
        actor: str,
        action: str,
        resource_type: str,
        resource_id: str,
        details: Mapping[str, Any] | None = None,
        reason: str | None = None,
        at: datetime | None = None,
    ) -> None:
        actor_type = "system" if actor == "system" else ("api" if actor == "api" else "user")
        conn.execute(
            t.audit_log.insert(),
            {
                "tenant_id": tenant,
                "at": at or utcnow(),
                "actor": actor,
                "actor_type": actor_type,
                "action": action,
                "resource_type": resource_type,
                "resource_id": resource_id,
                "reason": reason,
                "details": dict(details or {}),
            },
        )

    def audit(
        self,
        *,
        tenant: str,
        actor: str,
        action: str,
        resource_type: str,
        resource_id: str,
        details: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            self._audit(
                conn,
                tenant=tenant,
                actor=actor,
                action=action,
                resource_type=resource_type,
                resource_id=resource_id,
                details=details,
                reason=reason,
            )

    @staticmethod
    def _events(conn: Connection, tenant: str, rows: Sequence[Mapping[str, Any]]) -> None:
        conn.execute(
            t.events.insert(),
            [
                {
                    "tenant_id": tenant,
                    "at": r["at"],
                    "type": r["type"],
                    "run_id": r.get("run_id"),
                    "asset": r.get("asset"),
                    "partition_key": r.get("partition_key"),
                    "data": r.get("data"),
                }
                for r in rows
            ],
        )

    def record_events(self, *, tenant: str, events: Sequence[Event]) -> None:
        """Add ``events`` to the event log as they are (time, run, asset, partition, data)."""
        if not events:
            return
        rows = [
            {
                "type": e.type,
                "at": e.at,
                "run_id": e.run_id,
                "asset": e.asset,
                "partition_key": e.partition_key,
                "data": dict(e.data) or None,
            }
            for e in events
        ]
        with self.engine.begin() as conn:
            self._events(conn, tenant, rows)

    def list_events(
        self, *, tenant: str, run_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        query = sa.select(t.events).where(t.events.c.tenant_id == tenant)
        if run_id is not None:
            query = query.where(t.events.c.run_id == run_id)
        query = query.order_by(t.events.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [
                {**row._asdict(), "at": _utc(row.at), "partition_key": _key_out(row.partition_key or "")}
                for row in conn.execute(query)
            ]

    def prune_events(
        self, *, tenant: str, before: datetime, batch: int = 10_000, dry_run: bool = False
    ) -> int:
        """Delete this tenant's events older than ``before``; returns how many (would) go.

        In batches of ``batch`` rows, each its own transaction, so pruning a large log never holds
        a long lock on the table. Audit rows are never pruned (they are the record of who did what).
        """
        c = t.events.c
        old = sa.and_(c.tenant_id == tenant, c.at < before)
        if dry_run:
            with self.engine.connect() as conn:
                return int(
                    conn.execute(sa.select(sa.func.count()).select_from(t.events).where(old)).scalar_one()
                )
        removed = 0
        while True:
            with self.engine.begin() as conn:
                ids = sa.select(c.id).where(old).order_by(c.id).limit(batch).scalar_subquery()
                count = conn.execute(t.events.delete().where(c.id.in_(ids))).rowcount
            removed += count
            if count < batch:
                return removed

    def list_audit(self, *, tenant: str, limit: int = 1000) -> list[dict[str, Any]]:
        query = (
            sa.select(t.audit_log)
            .where(t.audit_log.c.tenant_id == tenant)
            .order_by(t.audit_log.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [{**row._asdict(), "at": _utc(row.at)} for row in conn.execute(query)]

    # ------------------------------------------------------------------ queries
    def latest_success(
        self, *, tenant: str, pairs: Iterable[tuple[str, str | None]], last_succeeded: bool = False
    ) -> dict[tuple[str, str | None], str]:
        """Latest successful materialization id per (asset, partition key) that has one.

        ``last_succeeded=True`` leaves out partitions whose latest attempt failed (the planner
        retries those even though an older success exists)."""
        wanted = {(a, _key_in(k)) for a, k in pairs}
        if not wanted:
            return {}
        assets = sorted({a for a, _ in wanted})
        keys = sorted({k for _, k in wanted})
        c = t.asset_partitions.c
        found: dict[tuple[str, str | None], str] = {}
        with self.engine.connect() as conn:
            for chunk_start in range(0, len(assets), 500):
                chunk = assets[chunk_start : chunk_start + 500]
                query = sa.select(c.asset, c.partition_key, c.success_materialization_id).where(
                    c.tenant_id == tenant,
                    c.asset.in_(chunk),
                    c.success_materialization_id.is_not(None),
                )
                if last_succeeded:
                    query = query.where(c.last_status == "success")
                if len(keys) <= 500:
                    query = query.where(c.partition_key.in_(keys))
                for asset, key, mat_id in conn.execute(query):
                    if (asset, key) in wanted:
                        found[(asset, _key_out(key))] = mat_id
        return found

    def asset_states(self, *, tenant: str, asset: str | None = None) -> list[AssetPartitionState]:
        c = t.asset_partitions.c
        query = sa.select(t.asset_partitions).where(c.tenant_id == tenant)
        if asset is not None:
            query = query.where(c.asset == asset)
        with self.engine.connect() as conn:
            return [_partition_state(r) for r in conn.execute(query.order_by(c.asset, c.partition_key))]

    def partition_state(
        self, *, tenant: str, asset: str, partition_key: str | None
    ) -> AssetPartitionState | None:
        c = t.asset_partitions.c
        query = sa.select(t.asset_partitions).where(
            c.tenant_id == tenant, c.asset == asset, c.partition_key == _key_in(partition_key)
        )
        with self.engine.connect() as conn:
            r = conn.execute(query).first()
        if r is None:
            return None
        return _partition_state(r)

    def get_materialization(self, *, tenant: str, materialization_id: str) -> Materialization | None:
        c = t.materializations.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.materializations).where(c.tenant_id == tenant, c.id == materialization_id)
            ).first()
        return _materialization(row) if row is not None else None

    def data_versions(self, *, tenant: str, materialization_ids: Iterable[str]) -> dict[str, str | None]:
        """Data version per materialization id (those that exist), looked up in chunks."""
        ids = sorted(set(materialization_ids))
        c = t.materializations.c
        found: dict[str, str | None] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = sa.select(c.id, c.data_version).where(
                    c.tenant_id == tenant, c.id.in_(ids[start : start + 500])
                )
                found.update({mat_id: version for mat_id, version in conn.execute(query)})
        return found

    def import_materializations(
        self,
        *,
        tenant: str,
        materializations: Sequence[Materialization],
        lineage: Sequence[tuple[str, UpstreamVersion]],
        actor: str,
        source: str,
    ) -> list[str]:
        """Record successful materializations found outside the store (``catalog rebuild``).

        Ids already present are left alone; a partition's latest state moves to an imported
        success only when it is newer than the success the store knows. One transaction, one
        audit row. Returns the ids actually imported.
        """
        mats = {m.id: m for m in materializations}
        if not mats:
            return []
        c = t.materializations.c
        ap = t.asset_partitions.c
        with self.engine.begin() as conn:
            known: set[str] = set()
            for chunk in _batches(sorted(mats), 500):
                known.update(
                    conn.execute(sa.select(c.id).where(c.tenant_id == tenant, c.id.in_(chunk))).scalars()
                )
            new = [m for m in sorted(mats.values(), key=lambda m: m.finished_at) if m.id not in known]
            if not new:
                return []
            conn.execute(
                t.materializations.insert(),
                [
                    {
                        "id": m.id,
                        "tenant_id": tenant,
                        "run_id": m.run_id,
                        "asset": m.asset,
                        "partition_key": _key_in(m.partition_key),
                        "status": "success",
                        "started_at": m.started_at,
                        "finished_at": m.finished_at,
                        "duration_ms": m.duration_ms,
                        "value_hash": m.value_hash,
                        "value_size": m.value_size,
                        "io_manager": m.io_manager,
                        "code_version": m.code_version,
                        "host": m.host,
                        "pid": m.pid,
                        "attempt": m.attempt,
                        "metadata": dict(m.metadata),
                        "data_version": m.data_version,
                    }
                    for m in new
                ],
            )
            imported = {m.id for m in new}
            links = [(mat_id, up) for mat_id, up in lineage if mat_id in imported and up.materialization_id]
            if links:
                conn.execute(
                    t.lineage.insert(),
                    [
                        {
                            "tenant_id": tenant,
                            "materialization_id": mat_id,
                            "asset": mats[mat_id].asset,
                            "partition_key": _key_in(mats[mat_id].partition_key),
                            "upstream_materialization_id": up.materialization_id,
                            "upstream_asset": up.asset,
                            "upstream_partition_key": _key_in(up.partition_key),
                            "run_id": mats[mat_id].run_id,
                            "created_at": mats[mat_id].finished_at,
                            "upstream_data_version": up.data_version,
                        }
                        for mat_id, up in links
                    ],
                )
            latest: dict[tuple[str, str], Materialization] = {}
            for m in new:  # in finished_at order: the last one per partition wins
                latest[(m.asset, _key_in(m.partition_key))] = m
            # The current success time of every partition touched, a chunk of keys per asset.
            current: dict[tuple[str, str], datetime | None] = {}
            for asset in sorted({a for a, _ in latest}):
                keys = sorted(k for a, k in latest if a == asset)
                for chunk in _batches(keys, 500):
                    query = sa.select(ap.partition_key, ap.success_at).where(
                        ap.tenant_id == tenant, ap.asset == asset, ap.partition_key.in_(chunk)
                    )
                    current.update({(asset, k): _utc(at) for k, at in conn.execute(query)})
            inserts: list[dict[str, Any]] = []
            for (asset, key), m in latest.items():
                values = {
                    "last_status": "success",
                    "last_run_id": m.run_id,
                    "last_materialization_id": m.id,
                    "success_materialization_id": m.id,
                    "success_at": m.finished_at,
                    "updated_at": m.finished_at,
                    "data_version": m.data_version,
                    "code_version": m.code_version,
                    "stale_since": None,
                }
                if (asset, key) not in current:
                    inserts.append({"tenant_id": tenant, "asset": asset, "partition_key": key, **values})
                elif (current[(asset, key)] or m.finished_at) <= m.finished_at:
                    conn.execute(
                        t.asset_partitions.update()
                        .where(ap.tenant_id == tenant, ap.asset == asset, ap.partition_key == key)
                        .values(**values)
                    )
            if inserts:
                conn.execute(t.asset_partitions.insert(), inserts)
            self._audit(
                conn,
                tenant=tenant,
                actor=actor,
                action="catalog.rebuild",
                resource_type="catalog",
                resource_id=source,
                details={"imported": len(new), "already_known": len(known)},
            )
        return [m.id for m in new]

    def materializations(
        self,
        *,
        tenant: str,
        asset: str | None = None,
        run_id: str | None = None,
        partition_key: str | None = None,
        limit: int = 100,
    ) -> list[Materialization]:
        c = t.materializations.c
        query = sa.select(t.materializations).where(c.tenant_id == tenant)
        if asset is not None:
            query = query.where(c.asset == asset)
        if partition_key is not None:
            query = query.where(c.partition_key == partition_key)
        if run_id is not None:
            query = query.where(c.run_id == run_id)
        query = query.order_by(c.finished_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_materialization(r) for r in conn.execute(query)]

    def get_run(self, *, tenant: str, run_id: str) -> RunRecord | None:
        """The run with this id, or the only run whose id starts with it (short ids)."""
        c = t.runs.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.runs).where(c.tenant_id == tenant, c.id == run_id)).first()
            if row is None and 4 <= len(run_id) < 32 and all(ch in "0123456789abcdef" for ch in run_id):
                rows = conn.execute(
                    sa.select(t.runs).where(c.tenant_id == tenant, c.id.startswith(run_id)).limit(2)
                ).all()
                row = rows[0] if len(rows) == 1 else None
        return _run(row) if row is not None else None

    def list_runs(
        self, *, tenant: str, limit: int = 20, status: str | None = None, backfill_id: str | None = None
    ) -> list[RunRecord]:
        c = t.runs.c
        query = sa.select(t.runs).where(c.tenant_id == tenant)
        if status is not None:
            query = query.where(c.status == status)
        if backfill_id is not None:
            query = query.where(c.backfill_id == backfill_id)
        query = query.order_by(c.created_at.desc(), c.id).limit(limit)
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(query)]

    def run_steps(self, *, tenant: str, run_id: str) -> list[StepRecord]:
        c = t.run_steps.c
        query = sa.select(t.run_steps).where(c.tenant_id == tenant, c.run_id == run_id).order_by(c.position)
        with self.engine.connect() as conn:
            return [
                StepRecord(
                    id=r.id,
                    run_id=r.run_id,
                    position=r.position,
                    asset=r.asset,
                    partition_key=_key_out(r.partition_key),
                    status=StepStatus(r.status),
                    attempt=r.attempt,
                    upstream=r.upstream,
                    started_at=_utc(r.started_at),
                    finished_at=_utc(r.finished_at),
                    duration_ms=r.duration_ms,
                    materialization_id=r.materialization_id,
                    reason=r.reason,
                    error_type=r.error_type,
                    error_message=r.error_message,
                )
                for r in conn.execute(query)
            ]

    # ------------------------------------------------------------------ lineage
    def lineage_upstream(
        self, *, tenant: str, materialization_id: str, depth: int | None = None
    ) -> list[LineageEntry]:
        """Every materialization this one consumed, directly or transitively (recursive SQL)."""
        limit = _depth(depth)
        lin = t.lineage.c
        anchor = sa.select(
            lin.upstream_materialization_id.label("mat_id"),
            lin.upstream_asset.label("asset"),
            lin.upstream_partition_key.label("partition_key"),
            sa.literal(1).label("depth"),
        ).where(lin.tenant_id == tenant, lin.materialization_id == materialization_id)
        up = anchor.cte("up", recursive=True)
        step = (
            sa.select(
                lin.upstream_materialization_id,
                lin.upstream_asset,
                lin.upstream_partition_key,
                (up.c.depth + 1),
            )
            .join_from(t.lineage, up, lin.materialization_id == up.c.mat_id)
            .where(lin.tenant_id == tenant, up.c.depth < limit)
        )
        up = up.union(step)
        return self._lineage_rows(tenant, up)

    def lineage_downstream(
        self,
        *,
        tenant: str,
        materialization_ids: Sequence[str] | None = None,
        asset: str | None = None,
        partition_key: str | None = None,
        depth: int | None = None,
    ) -> list[LineageEntry]:
        """Every materialization that consumed one of these, directly or transitively.

        Start from ``materialization_ids``, or from ``asset`` (and ``partition_key``): then every
        materialization of that asset partition ever consumed counts, found through the index on
        the upstream side of the lineage table rather than a list of ids.
        """
        limit = _depth(depth)
        lin = t.lineage.c
        start: sa.ColumnElement[bool]
        if materialization_ids is not None:
            if not materialization_ids:
                return []
            start = lin.upstream_materialization_id.in_(list(materialization_ids))
        elif asset is not None:
            start = sa.and_(lin.upstream_asset == asset, lin.upstream_partition_key == _key_in(partition_key))
        else:
            raise ValueError("give materialization_ids or asset")
        anchor = sa.select(
            lin.materialization_id.label("mat_id"),
            lin.asset.label("asset"),
            lin.partition_key.label("partition_key"),
            sa.literal(1).label("depth"),
        ).where(lin.tenant_id == tenant, start)
        down = anchor.cte("down", recursive=True)
        step = (
            sa.select(lin.materialization_id, lin.asset, lin.partition_key, (down.c.depth + 1))
            .join_from(t.lineage, down, lin.upstream_materialization_id == down.c.mat_id)
            .where(lin.tenant_id == tenant, down.c.depth < limit)
        )
        down = down.union(step)
        return self._lineage_rows(tenant, down)

    def _lineage_rows(self, tenant: str, cte: Any) -> list[LineageEntry]:
        m = t.materializations.c
        best = (
            sa.select(cte.c.mat_id, cte.c.asset, cte.c.partition_key, sa.func.min(cte.c.depth).label("depth"))
            .group_by(cte.c.mat_id, cte.c.asset, cte.c.partition_key)
            .subquery()
        )
        query = (
            sa.select(best, m.run_id, m.status, m.finished_at)
            .join_from(
                best, t.materializations, sa.and_(m.id == best.c.mat_id, m.tenant_id == tenant), isouter=True
            )
            .order_by(best.c.depth, best.c.asset, best.c.partition_key, m.finished_at.desc())
        )
        with self.engine.connect() as conn:
            return [
                LineageEntry(
                    asset=r.asset,
                    partition_key=_key_out(r.partition_key),
                    materialization_id=r.mat_id,
                    depth=int(r.depth),
                    run_id=r.run_id,
                    status=r.status,
                    finished_at=_utc(r.finished_at),
                )
                for r in conn.execute(query)
            ]

    # ------------------------------------------------------------------ partitions: state at scale
    def partition_status(
        self, *, tenant: str, asset: str, total: int | None = None, page: int = 0, page_size: int = 100
    ) -> PartitionStatus:
        """Counts per latest status, stale and fresh counts, and one page of failed keys.

        Three indexed queries, whatever the number of partitions: a GROUP BY over the status
        index (which holds every column it reads), a GROUP BY over the partial index of stale
        partitions, and the requested page of failed keys in key order from the status index.
        ``total`` is the number of keys of the asset's partition definition, if known: then
        ``missing`` counts those with no record at all.
        """
        if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
            raise ValidationError(f"total must be a non-negative integer, got {total!r}")
        if not isinstance(page, int) or isinstance(page, bool) or page < 0:
            raise ValidationError(f"page must be a non-negative integer, got {page!r}")
        if (
            not isinstance(page_size, int)
            or isinstance(page_size, bool)
            or not 1 <= page_size <= MAX_PAGE_SIZE
        ):
            raise ValidationError(
                f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {page_size!r}"
            )
        c = t.asset_partitions.c
        mine = (c.tenant_id == tenant, c.asset == asset)
        per_status = sa.select(c.last_status, sa.func.count()).where(*mine).group_by(c.last_status)
        stale_per_status = (
            sa.select(c.last_status, sa.func.count())
            .where(*mine, c.stale_since.is_not(None))
            .group_by(c.last_status)
        )
        failed_page = (
            sa.select(c.partition_key)
            .where(*mine, c.last_status == "failed")
            .order_by(c.partition_key)
            .limit(page_size)
            .offset(page * page_size)
        )
        with self.engine.connect() as conn:
            counts = {status: int(n) for status, n in conn.execute(per_status)}
            stale = {status: int(n) for status, n in conn.execute(stale_per_status)}
            failed_keys = list(conn.execute(failed_page).scalars())
        recorded = sum(counts.values())
        return PartitionStatus(
            asset=asset,
            counts=counts,
            stale=sum(stale.values()),
            fresh=counts.get("success", 0) - stale.get("success", 0),
            total=total,
            missing=None if total is None else max(total - recorded, 0),
            failed_keys=failed_keys,
            page=page,
            page_size=page_size,
        )

    def version_stale_keys(self, *, tenant: str, asset: str, code_version: str | None) -> set[str | None]:
        """Successful partitions of ``asset`` stale by their own record: invalidated, built by
        other code, or built from an upstream version that is no longer the upstream's latest.
        (Staleness inherited from a stale upstream is the engine's to add.)"""
        ap = t.asset_partitions.c
        up = t.asset_partitions.alias("up")
        lin = t.lineage.c
        mine = (ap.tenant_id == tenant, ap.asset == asset, ap.last_status == "success")
        own = sa.select(ap.partition_key).where(
            *mine,
            sa.or_(ap.stale_since.is_not(None), ap.code_version.is_distinct_from(code_version)),
        )
        upstream_moved = (
            sa.select(ap.partition_key)
            .join(t.lineage, lin.materialization_id == ap.success_materialization_id)
            .join(
                up,
                sa.and_(
                    up.c.tenant_id == lin.tenant_id,
                    up.c.asset == lin.upstream_asset,
                    up.c.partition_key == lin.upstream_partition_key,
                ),
            )
            .where(*mine, up.c.data_version.is_distinct_from(lin.upstream_data_version))
        )
        with self.engine.connect() as conn:
            keys = set(conn.execute(own).scalars()) | set(conn.execute(upstream_moved).scalars())
        return {_key_out(k) for k in keys}

    def keys_consuming(
        self, *, tenant: str, asset: str, upstream_asset: str, upstream_keys: Iterable[str | None]
    ) -> set[str | None]:
        """Partitions of ``asset`` whose latest success consumed one of these upstream partitions."""
        ap = t.asset_partitions.c
        lin = t.lineage.c
        found: set[str | None] = set()
        with self.engine.connect() as conn:
            for chunk in _batches(upstream_keys):
                query = (
                    sa.select(ap.partition_key)
                    .join(t.lineage, lin.materialization_id == ap.success_materialization_id)
                    .where(
                        ap.tenant_id == tenant,
                        ap.asset == asset,
                        lin.upstream_asset == upstream_asset,
                        lin.upstream_partition_key.in_([_key_in(k) for k in chunk]),
                    )
                    .distinct()
                )
                found.update(_key_out(k) for k in conn.execute(query).scalars())
        return found

    def missing_keys(
        self,
        *,
        tenant: str,
        asset: str,
        candidate_keys: Iterable[str],
        limit: int | None = None,
        chunk_size: int = CHUNK,
    ) -> list[str]:
        """The candidates (in their order) that have no successful materialization.

        ``candidate_keys`` may be a generator over a partition definition of any size: it is read
        ``chunk_size`` keys at a time, one ``IN`` query each, and reading stops as soon as
        ``limit`` keys were found.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size!r}")
        if limit is not None and limit <= 0:
            return []
        c = t.asset_partitions.c
        missing: list[str] = []
        with self.engine.connect() as conn:
            for chunk in _batches(candidate_keys, chunk_size):
                done = set(
                    conn.execute(
                        sa.select(c.partition_key).where(
                            c.tenant_id == tenant,
                            c.asset == asset,
                            c.partition_key.in_([_key_in(k) for k in chunk]),
                            c.success_materialization_id.is_not(None),
                        )
                    ).scalars()
                )
                for key in chunk:
                    if _key_in(key) not in done:
                        missing.append(key)
                        if limit is not None and len(missing) >= limit:
                            return missing
        return missing

    def latest_states(
        self, *, tenant: str, asset: str, keys: Iterable[str | None]
    ) -> dict[str | None, AssetPartitionState]:
        """The latest state of each of these partitions of ``asset`` that has one (chunked IN)."""
        c = t.asset_partitions.c
        found: dict[str | None, AssetPartitionState] = {}
        with self.engine.connect() as conn:
            for chunk in _batches(keys):
                query = sa.select(t.asset_partitions).where(
                    c.tenant_id == tenant, c.asset == asset, c.partition_key.in_([_key_in(k) for k in chunk])
                )
                for row in conn.execute(query):
                    state = _partition_state(row)
                    found[state.partition_key] = state
        return found

    def stale_keys(
        self, *, tenant: str, asset: str, after: str | None = None, limit: int = 1000
    ) -> list[str | None]:
        """Keys of the partitions of ``asset`` marked stale, in key order, from after ``after``."""
        c = t.asset_partitions.c
        query = sa.select(c.partition_key).where(
            c.tenant_id == tenant, c.asset == asset, c.stale_since.is_not(None)
        )
        if after is not None:
            query = query.where(c.partition_key > after)
        with self.engine.connect() as conn:
            keys = conn.execute(query.order_by(c.partition_key).limit(limit)).scalars()
            return [_key_out(k) for k in keys]

    def mark_stale(
        self,
        *,
        tenant: str,
        actor: str,
        pairs: Iterable[tuple[str, str | None]] | None = None,
        asset: str | None = None,
        keys: Iterable[str | None] | None = None,
        all_partitions: bool = False,
        reason: str | None = None,
    ) -> int:
        """Mark partitions stale on purpose; returns how many were not stale yet.

        Give ``pairs`` of (asset, key), or ``asset`` with ``keys`` (``None`` is the key of an
        unpartitioned asset), or ``asset`` with ``all_partitions=True``. Only partitions with a
        record can be stale (one never materialized is missing); one already stale keeps the
        time it became so. The next success of a partition clears its mark (the run writer does).
        Writes one audit row ``invalidate`` per asset, in the same transaction.
        """
        stream: Iterable[tuple[str, str | None]] | None
        if pairs is not None:
            if asset is not None or keys is not None or all_partitions:
                raise ValueError("give pairs, or asset with keys or all_partitions, not both")
            stream = pairs
        elif asset is None:
            raise ValueError("give pairs, or asset with keys or all_partitions")
        elif all_partitions:
            if keys is not None:
                raise ValueError("give keys or all_partitions, not both")
            stream = None
        elif keys is None:
            raise ValueError("give the keys to invalidate, or all_partitions=True")
        else:
            stream = ((asset, key) for key in keys)
        now = utcnow()
        c = t.asset_partitions.c
        mark = t.asset_partitions.update().values(stale_since=now)
        with self.engine.begin() as conn:
            if stream is None:
                assert asset is not None
                marked = conn.execute(
                    mark.where(c.tenant_id == tenant, c.asset == asset, c.stale_since.is_(None))
                ).rowcount
                self._audit(
                    conn,
                    tenant=tenant,
                    actor=actor,
                    action="invalidate",
                    resource_type="asset",
                    resource_id=asset,
                    details={"all_partitions": True, "marked": marked},
                    reason=reason,
                    at=now,
                )
                return marked
            # Per asset, for its audit row: the first keys, how many were asked for and marked.
            named: dict[str, list[str | None]] = {}
            asked: dict[str, int] = {}
            marked_per_asset: dict[str, int] = {}
            for chunk in _batches(stream):
                by_asset: dict[str, list[str]] = {}
                for pair_asset, key in chunk:
                    by_asset.setdefault(pair_asset, []).append(_key_in(key))
                for name, chunk_keys in by_asset.items():
                    result = conn.execute(
                        mark.where(
                            c.tenant_id == tenant,
                            c.asset == name,
                            c.partition_key.in_(chunk_keys),
                            c.stale_since.is_(None),
                        )
                    )
                    first = named.setdefault(name, [])
                    first.extend(_key_out(k) for k in chunk_keys[: AUDIT_KEYS - len(first)])
                    asked[name] = asked.get(name, 0) + len(chunk_keys)
                    marked_per_asset[name] = marked_per_asset.get(name, 0) + result.rowcount
            for name, first in named.items():
                self._audit(
                    conn,
                    tenant=tenant,
                    actor=actor,
                    action="invalidate",
                    resource_type="asset",
                    resource_id=name,
                    details={
                        "partitions": first,
                        "count": asked[name],
                        "truncated": asked[name] > len(first),
                        "marked": marked_per_asset[name],
                    },
                    reason=reason,
                    at=now,
                )
        return sum(marked_per_asset.values())

    def consumed_versions(
        self, *, tenant: str, materialization_ids: Iterable[str]
    ) -> dict[str, list[tuple[str, str | None, str, str | None]]]:
        """What each materialization consumed: (upstream asset, key, materialization id, data version).

        Every id asked for is in the answer (with ``[]`` when it consumed nothing), in one
        ``IN`` query per chunk of ids.
        """
        lin = t.lineage.c
        consumed: dict[str, list[tuple[str, str | None, str, str | None]]] = {}
        with self.engine.connect() as conn:
            for chunk in _batches(materialization_ids):
                for mat_id in chunk:
                    consumed[mat_id] = []
                query = (
                    sa.select(
                        lin.materialization_id,
                        lin.upstream_asset,
                        lin.upstream_partition_key,
                        lin.upstream_materialization_id,
                        lin.upstream_data_version,
                    )
                    .where(lin.tenant_id == tenant, lin.materialization_id.in_(chunk))
                    .order_by(lin.materialization_id, lin.upstream_asset, lin.upstream_partition_key)
                )
                for mat_id, up_asset, up_key, up_id, up_version in conn.execute(query):
                    consumed[mat_id].append((up_asset, _key_out(up_key), up_id, up_version))
        return consumed

    # ------------------------------------------------------------------ dynamic partitions
    @contextmanager
    def _serialized(self, lock_name: str) -> Iterator[Connection]:
        """A write transaction that holds a lock on ``lock_name`` from its first statement.

        For read-then-write sequences: SQLite takes the database's write lock at once (a deferred
        transaction could not upgrade after another wrote); PostgreSQL a transaction-scoped
        advisory lock on the name.
        """
        with self.engine.begin() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif self.dialect == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(7426002, hashtext(:name))"), {"name": lock_name}
                )
            yield conn

    def add_dynamic_partitions(
        self, *, tenant: str, name: str, keys: Iterable[str], actor: str = "system"
    ) -> list[str]:
        """Add keys to the dynamic partition definition ``name``; returns the new ones, in order.

        Idempotent: a key already there is left alone and keeps its position. New keys go after
        every existing one, in the order given. One audit row ``add_partitions`` (when any key
        was new), in the same transaction.
        """
        wanted = _dynamic_keys(keys)
        if not wanted:
            return []
        c = t.dynamic_partitions.c
        now = utcnow()
        with self._serialized(f"{tenant}/{name}") as conn:
            existing: set[str] = set()
            for chunk in _batches(wanted):
                existing.update(
                    conn.execute(
                        sa.select(c.partition_key).where(
                            c.tenant_id == tenant, c.name == name, c.partition_key.in_(chunk)
                        )
                    ).scalars()
                )
            added = [k for k in wanted if k not in existing]
            if not added:
                return []
            last = conn.execute(
                sa.select(sa.func.max(c.position)).where(c.tenant_id == tenant, c.name == name)
            ).scalar()
            start = 0 if last is None else int(last) + 1
            for offset, chunk in enumerate(_batches(added, 10_000)):
                conn.execute(
                    t.dynamic_partitions.insert(),
                    [
                        {
                            "tenant_id": tenant,
                            "name": name,
                            "partition_key": key,
                            "position": start + offset * 10_000 + i,
                            "added_at": now,
                            "added_by": actor,
                        }
                        for i, key in enumerate(chunk)
                    ],
                )
            self._audit(
                conn,
                tenant=tenant,
                actor=actor,
                action="add_partitions",
                resource_type="dynamic_partitions",
                resource_id=name,
                details=_audit_keys(added),
                at=now,
            )
        return added

    def remove_dynamic_partitions(
        self, *, tenant: str, name: str, keys: Iterable[str], actor: str = "system", reason: str | None = None
    ) -> list[str]:
        """Remove keys from ``name``; returns those that were there, in the order given.

        What was materialized for them stays in the store. One audit row ``remove_partitions``
        (when any key was there), in the same transaction.
        """
        wanted = _dynamic_keys(keys)
        if not wanted:
            return []
        c = t.dynamic_partitions.c
        now = utcnow()
        with self._serialized(f"{tenant}/{name}") as conn:
            present: set[str] = set()
            for chunk in _batches(wanted):
                mine = (c.tenant_id == tenant, c.name == name, c.partition_key.in_(chunk))
                present.update(conn.execute(sa.select(c.partition_key).where(*mine)).scalars())
                conn.execute(t.dynamic_partitions.delete().where(*mine))
            removed = [k for k in wanted if k in present]
            if removed:
                self._audit(
                    conn,
                    tenant=tenant,
                    actor=actor,
                    action="remove_partitions",
                    resource_type="dynamic_partitions",
                    resource_id=name,
                    details=_audit_keys(removed),
                    reason=reason,
                    at=now,
                )
        return removed

    def dynamic_partition_keys(
        self, *, tenant: str, name: str, offset: int = 0, limit: int | None = None
    ) -> list[str]:
        """The keys of ``name`` in the order they were added (a page of them with offset/limit)."""
        c = t.dynamic_partitions.c
        query = (
            sa.select(c.partition_key)
            .where(c.tenant_id == tenant, c.name == name)
            .order_by(c.position, c.partition_key)
            .offset(offset)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def dynamic_partition_count(self, *, tenant: str, name: str) -> int:
        c = t.dynamic_partitions.c
        query = sa.select(sa.func.count()).where(c.tenant_id == tenant, c.name == name)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def existing_dynamic_partitions(self, *, tenant: str, name: str, keys: Iterable[str]) -> set[str]:
        """Which of these keys ``name`` has (one IN query per chunk)."""
        c = t.dynamic_partitions.c
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _batches(keys):
                query = sa.select(c.partition_key).where(
                    c.tenant_id == tenant, c.name == name, c.partition_key.in_(chunk)
                )
                found.update(conn.execute(query).scalars())
        return found

    # ------------------------------------------------------------------ backfills
    def create_backfill(
        self,
        *,
        tenant: str,
        pipeline: str,
        assets: Sequence[str],
        spec: Mapping[str, Any],
        partition_keys: Sequence[str],
        force: bool = False,
        parallel: int = 1,
        actor: str = "system",
        backfill_id: str | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> BackfillRecord:
        """Record a requested backfill (status ``requested``) and its audit row ``backfill``.

        ``counts`` defaults to every (asset, partition) pair queued.
        """
        if isinstance(assets, str) or isinstance(partition_keys, str):
            raise ValidationError("assets and partition_keys must be sequences of strings")
        if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
            raise ValidationError(f"parallel must be a positive integer, got {parallel!r}")
        backfill_id = backfill_id or new_id()
        now = utcnow()
        row = {
            "id": backfill_id,
            "tenant_id": tenant,
            "pipeline": pipeline,
            "assets": list(assets),
            "spec": dict(spec),
            "partition_keys": list(partition_keys),
            "force": bool(force),
            "parallel": parallel,
            "status": BackfillStatus.REQUESTED.value,
            "counts": _counts(counts or {"queued": len(assets) * len(partition_keys)}),
            "cancel_requested": False,
            "actor": actor,
            "created_at": now,
            "updated_at": now,
        }
        with self.engine.begin() as conn:
            conn.execute(t.backfills.insert(), row)
            self._audit(
                conn,
                tenant=tenant,
                actor=actor,
                action="backfill",
                resource_type="backfill",
                resource_id=backfill_id,
                details={
                    "pipeline": pipeline,
                    "assets": list(assets),
                    "spec": dict(spec),
                    "partitions": len(partition_keys),
                    "force": bool(force),
                    "parallel": parallel,
                },
                at=now,
            )
        record = self.get_backfill(tenant=tenant, backfill_id=backfill_id)
        assert record is not None
        return record

    def get_backfill(self, *, tenant: str, backfill_id: str) -> BackfillRecord | None:
        """The backfill with this id, or the only one whose id starts with it (short ids)."""
        c = t.backfills.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.backfills).where(c.tenant_id == tenant, c.id == backfill_id)
            ).first()
            if (
                row is None
                and 4 <= len(backfill_id) < 32
                and all(ch in "0123456789abcdef" for ch in backfill_id)
            ):
                rows = conn.execute(
                    sa.select(t.backfills).where(c.tenant_id == tenant, c.id.startswith(backfill_id)).limit(2)
                ).all()
                row = rows[0] if len(rows) == 1 else None
        return _backfill(row) if row is not None else None

    def list_backfills(
        self, *, tenant: str, limit: int = 20, status: str | None = None
    ) -> list[BackfillRecord]:
        """Newest first."""
        c = t.backfills.c
        query = sa.select(t.backfills).where(c.tenant_id == tenant)
        if status is not None:
            query = query.where(c.status == BackfillStatus(status).value)
        query = query.order_by(c.created_at.desc(), c.id).limit(limit)
        with self.engine.connect() as conn:
            return [_backfill(r) for r in conn.execute(query)]

    def update_backfill_counts(
        self,
        *,
        tenant: str,
        backfill_id: str,
        counts: Mapping[str, int],
        status: BackfillStatus | str | None = None,
    ) -> bool:
        """Replace the counts (names not given become 0), and the status if given.

        The first move to ``running`` sets ``started_at``; a finished status sets
        ``finished_at``. Returns False when there is no such backfill.
        """
        c = t.backfills.c
        now = utcnow()
        values: dict[str, Any] = {"counts": _counts(counts), "updated_at": now}
        if status is not None:
            new_status = BackfillStatus(status)
            values["status"] = new_status.value
            if new_status is BackfillStatus.RUNNING:
                values["started_at"] = sa.func.coalesce(c.started_at, now)
            if new_status.finished:
                values["finished_at"] = now
        with self.engine.begin() as conn:
            result = conn.execute(
                t.backfills.update().where(c.tenant_id == tenant, c.id == backfill_id).values(values)
            )
        return bool(result.rowcount)

    def start_backfill(self, *, tenant: str, backfill_id: str, counts: Mapping[str, int]) -> bool:
        """Claim a ``requested`` backfill for this process: it becomes ``running`` (the first start
        sets ``started_at``) with ``counts``.

        One conditional update, so of two processes starting or resuming the same backfill only
        one gets True; False (nothing changed) when the backfill is not ``requested``: running
        elsewhere, finished, or missing.
        """
        c = t.backfills.c
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                t.backfills.update()
                .where(
                    c.tenant_id == tenant,
                    c.id == backfill_id,
                    c.status == BackfillStatus.REQUESTED.value,
                )
                .values(
                    status=BackfillStatus.RUNNING.value,
                    counts=_counts(counts),
                    started_at=sa.func.coalesce(c.started_at, now),
                    updated_at=now,
                )
            )
        return bool(result.rowcount)

    def request_cancel(
        self, *, tenant: str, backfill_id: str, actor: str = "system", reason: str | None = None
    ) -> bool:
        """Ask a backfill that has not finished to stop (its runner polls for this).

        Returns False, and records nothing, when the backfill does not exist or has finished.
        Otherwise writes the audit row ``cancel`` in the same transaction.
        """
        c = t.backfills.c
        unfinished = [s.value for s in BackfillStatus if not s.finished]
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                t.backfills.update()
                .where(c.tenant_id == tenant, c.id == backfill_id, c.status.in_(unfinished))
                .values(cancel_requested=True, updated_at=now)
            )
            if not result.rowcount:
                return False
            self._audit(
                conn,
                tenant=tenant,
                actor=actor,
                action="cancel",
                resource_type="backfill",
                resource_id=backfill_id,
                reason=reason,
                at=now,
            )
        return True

    def cancel_requested(self, *, tenant: str, backfill_id: str) -> bool:
        """Whether someone asked this backfill to stop (one indexed read; for polling)."""
        c = t.backfills.c
        query = sa.select(c.cancel_requested).where(c.tenant_id == tenant, c.id == backfill_id)
        with self.engine.connect() as conn:
            return bool(conn.execute(query).scalar())

    def resume_backfill(self, *, tenant: str, backfill_id: str, actor: str = "system") -> bool:
        """Make a finished backfill ``requested`` again (a resume retries what did not succeed).

        Clears the cancel request, ``finished_at`` and the error; the counts stay until the
        runner replaces them. Returns False when there is no such finished backfill; otherwise
        writes the audit row ``resume``.
        """
        c = t.backfills.c
        finished = [s.value for s in BackfillStatus if s.finished]
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                t.backfills.update()
                .where(c.tenant_id == tenant, c.id == backfill_id, c.status.in_(finished))
                .values(
                    status=BackfillStatus.REQUESTED.value,
                    cancel_requested=False,
                    finished_at=None,
                    error=None,
                    updated_at=now,
                )
            )
            if not result.rowcount:
                return False
            self._audit(
                conn,
                tenant=tenant,
                actor=actor,
                action="resume",
                resource_type="backfill",
                resource_id=backfill_id,
                at=now,
            )
        return True

    def finish_backfill(
        self,
        *,
        tenant: str,
        backfill_id: str,
        status: BackfillStatus | str,
        counts: Mapping[str, int] | None = None,
        error: str | None = None,
    ) -> bool:
        """Record the end of a backfill: a finished status, optionally its final counts and error."""
        final = BackfillStatus(status)
        if not final.finished:
            raise ValueError(f"finish_backfill needs a finished status, not {final.value!r}")
        c = t.backfills.c
        now = utcnow()
        values: dict[str, Any] = {
            "status": final.value,
            "finished_at": now,
            "updated_at": now,
            "error": error,
        }
        if counts is not None:
            values["counts"] = _counts(counts)
        with self.engine.begin() as conn:
            result = conn.execute(
                t.backfills.update().where(c.tenant_id == tenant, c.id == backfill_id).values(values)
            )
        return bool(result.rowcount)

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"store unreachable: {exc}", original=exc, retryable=True) from exc


def _depth(depth: int | None) -> int:
    if depth is None:
        return MAX_LINEAGE_DEPTH
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_LINEAGE_DEPTH:
        raise FlowStoneError(f"depth must be an integer from 1 to {MAX_LINEAGE_DEPTH}, got {depth!r}")
    return depth


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _partition_state(r: Any) -> AssetPartitionState:
    return AssetPartitionState(
        asset=r.asset,
        partition_key=_key_out(r.partition_key),
        last_status=r.last_status,
        last_run_id=r.last_run_id,
        last_materialization_id=r.last_materialization_id,
        success_materialization_id=r.success_materialization_id,
        success_at=_utc(r.success_at),
        updated_at=_utc(r.updated_at) or utcnow(),
        data_version=r.data_version,
        code_version=r.code_version,
        stale_since=_utc(r.stale_since),
    )


def _materialization(r: Any) -> Materialization:
    return Materialization(
        id=r.id,
        run_id=r.run_id,
        asset=r.asset,
        partition_key=_key_out(r.partition_key),
        status=r.status,
        started_at=_utc(r.started_at) or utcnow(),
        finished_at=_utc(r.finished_at) or utcnow(),
        duration_ms=r.duration_ms,
        value_hash=r.value_hash,
        value_size=r.value_size,
        io_manager=r.io_manager,
        code_version=r.code_version,
        host=r.host,
        pid=r.pid,
        attempt=r.attempt,
        metadata=r.metadata or {},
        error_type=r.error_type,
        error_message=r.error_message,
        error_traceback=r.error_traceback,
        retryable=r.retryable,
        tenant=r.tenant_id,
        data_version=r.data_version,
    )


def _run(r: Any) -> RunRecord:
    return RunRecord(
        id=r.id,
        pipeline=r.pipeline,
        status=RunStatus(r.status),
        selection=list(r.selection),
        partition_key=_key_out(r.partition_key),
        force=bool(r.force),
        actor=r.actor,
        executor=r.executor,
        host=r.host,
        pid=r.pid,
        created_at=_utc(r.created_at) or utcnow(),
        started_at=_utc(r.started_at),
        finished_at=_utc(r.finished_at),
        heartbeat_at=_utc(r.heartbeat_at),
        step_count=r.step_count,
        error=r.error,
        tenant=r.tenant_id,
        backfill_id=r.backfill_id,
    )


def _backfill(r: Any) -> BackfillRecord:
    return BackfillRecord(
        id=r.id,
        pipeline=r.pipeline,
        assets=list(r.assets),
        spec=dict(r.spec),
        partition_keys=list(r.partition_keys),
        force=bool(r.force),
        parallel=r.parallel,
        status=BackfillStatus(r.status),
        counts=dict(r.counts),
        cancel_requested=bool(r.cancel_requested),
        actor=r.actor,
        created_at=_utc(r.created_at) or utcnow(),
        started_at=_utc(r.started_at),
        finished_at=_utc(r.finished_at),
        updated_at=_utc(r.updated_at) or utcnow(),
        error=r.error,
        tenant=r.tenant_id,
    )
