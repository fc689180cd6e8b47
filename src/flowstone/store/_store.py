"""The metadata store: every write and query FlowStone makes against its database.

One class, one place for the SQL. SQLite (the embedded default, WAL mode) and PostgreSQL run the
same statements; the only dialect-specific one is the upsert of an asset partition's latest state.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from flowstone._errors import ConfigurationError, FlowStoneError, StoreError
from flowstone._records import (
    AssetPartitionState,
    LineageEntry,
    Materialization,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from flowstone.store import _tables as t
from flowstone.store._writer import RunWriter

HOST = socket.gethostname()
# Lineage is acyclic (a materialization only consumes earlier ones), so an unbounded walk ends;
# the cap only guards against pathological histories. Asking for more is an error, not a silent cut.
MAX_LINEAGE_DEPTH = 10_000


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
                details={"selection": selection, "partition": partition_key, "force": force},
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
                t.run_steps.c.status.in_([StepStatus.PENDING.value, StepStatus.RUNNING.value]),
            )
            .values(status=StepStatus.ABANDONED.value, reason=reason, finished_at=now)
        )
        conn.execute(
            t.runs.update()
            .where(t.runs.c.id == run_id)
            .values(status=RunStatus.ABANDONED.value, finished_at=now, error=reason)
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
        self, *, tenant: str, pairs: Iterable[tuple[str, str | None]]
    ) -> dict[tuple[str, str | None], str]:
        """Latest successful materialization id per (asset, partition key) that has one."""
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

    def list_runs(self, *, tenant: str, limit: int = 20, status: str | None = None) -> list[RunRecord]:
        c = t.runs.c
        query = sa.select(t.runs).where(c.tenant_id == tenant)
        if status is not None:
            query = query.where(c.status == status)
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
    )
