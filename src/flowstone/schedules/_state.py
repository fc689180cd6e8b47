"""Schedule/sensor state, ticks and daemon heartbeats in the store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from flowstone.store import _tables as t
from flowstone.store._store import HOST, Store, _utc, utcnow

TICK_KEY_LENGTH = 255  # flowstone_ticks.tick_key


def fit_key(key: str) -> str:
    """``key`` if it fits the tick key column, else its first characters and its SHA-256."""
    if len(key) <= TICK_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{key[: TICK_KEY_LENGTH - len(digest) - 1]}#{digest}"


@dataclass(frozen=True)
class AutomationState:
    kind: str
    name: str
    enabled: bool | None
    cursor: str | None
    last_evaluated_at: datetime | None
    last_error: str | None
    updated_at: datetime | None
    updated_by: str | None


@dataclass(frozen=True)
class Tick:
    id: int
    kind: str
    name: str
    tick_key: str
    tick_at: datetime
    status: str
    run_ids: list[str]
    partitions: list[Any]
    reason: str | None
    daemon_id: str | None
    created_at: datetime


def _tick(r: Any) -> Tick:
    return Tick(
        id=r.id,
        kind=r.kind,
        name=r.name,
        tick_key=r.tick_key,
        tick_at=_utc(r.tick_at) or utcnow(),
        status=r.status,
        run_ids=list(r.run_ids or []),
        partitions=list(r.partitions or []),
        reason=r.reason,
        daemon_id=r.daemon_id,
        created_at=_utc(r.created_at) or utcnow(),
    )


class AutomationStore:
    def __init__(self, store: Store, tenant: str) -> None:
        self.store = store
        self.tenant = tenant
        self.engine = store.engine

    # ------------------------------------------------------------------ state
    def state(self, kind: str, name: str) -> AutomationState:
        c = t.automation_state.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.automation_state).where(
                    c.tenant_id == self.tenant, c.kind == kind, c.name == name
                )
            ).first()
        if row is None:
            return AutomationState(kind, name, None, None, None, None, None, None)
        return AutomationState(
            kind,
            name,
            row.enabled,
            row.cursor,
            _utc(row.last_evaluated_at),
            row.last_error,
            _utc(row.updated_at),
            row.updated_by,
        )

    def _upsert(self, conn: Any, kind: str, name: str, values: dict[str, Any]) -> None:
        c = t.automation_state.c
        now = utcnow()
        updated = conn.execute(
            t.automation_state.update()
            .where(c.tenant_id == self.tenant, c.kind == kind, c.name == name)
            .values(updated_at=now, **values)
        )
        if updated.rowcount == 0:
            try:
                with conn.begin_nested():
                    conn.execute(
                        t.automation_state.insert(),
                        {"tenant_id": self.tenant, "kind": kind, "name": name, "updated_at": now, **values},
                    )
            except sa.exc.IntegrityError:  # inserted meanwhile by another daemon
                conn.execute(
                    t.automation_state.update()
                    .where(c.tenant_id == self.tenant, c.kind == kind, c.name == name)
                    .values(updated_at=now, **values)
                )

    def save(self, kind: str, name: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            self._upsert(conn, kind, name, values)

    def set_enabled(
        self,
        kind: str,
        name: str,
        enabled: bool,
        *,
        actor: str,
        reason: str | None = None,
        at: datetime | None = None,
    ) -> bool | None:
        """Turn a schedule or sensor on or off (persisted and audited); returns the previous
        setting (None: never set, which means on).

        A schedule turned back on starts from ``at`` (now): the ticks of the time it was off are
        not caught up. A sensor keeps its cursor and goes on from there.
        """
        at = (at or utcnow()).astimezone(UTC)
        c = t.automation_state.c
        with self.engine.begin() as conn:
            previous = conn.execute(
                sa.select(c.enabled).where(c.tenant_id == self.tenant, c.kind == kind, c.name == name)
            ).scalar()
            values: dict[str, Any] = {"enabled": enabled, "updated_by": actor}
            if kind == "schedule" and enabled and previous is False:
                values["cursor"] = at.isoformat()
            self._upsert(conn, kind, name, values)
            self.store._audit(
                conn,
                tenant=self.tenant,
                actor=actor,
                action=f"{kind}.{'on' if enabled else 'off'}",
                resource_type=kind,
                resource_id=name,
                reason=reason,
                details={"previous": {None: "default", True: "on", False: "off"}[previous]},
            )
        return cast("bool | None", previous)

    def lease_evaluation(self, kind: str, name: str, *, seen: datetime | None, now: datetime) -> bool:
        """Set ``last_evaluated_at`` to ``now`` if it is still ``seen`` (what this daemon read):
        of several daemons about to evaluate the same thing at once, exactly one gets True."""
        c = t.automation_state.c
        where = [c.tenant_id == self.tenant, c.kind == kind, c.name == name]
        where.append(c.last_evaluated_at.is_(None) if seen is None else c.last_evaluated_at == seen)
        with self.engine.begin() as conn:
            moved = conn.execute(
                t.automation_state.update().where(*where).values(last_evaluated_at=now, updated_at=utcnow())
            )
            if moved.rowcount == 1:
                return True
            if seen is not None:
                return False
            exists = conn.execute(
                sa.select(c.name).where(c.tenant_id == self.tenant, c.kind == kind, c.name == name)
            ).first()
            if exists is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(
                        t.automation_state.insert(),
                        {
                            "tenant_id": self.tenant,
                            "kind": kind,
                            "name": name,
                            "last_evaluated_at": now,
                            "updated_at": utcnow(),
                        },
                    )
            except sa.exc.IntegrityError:  # another daemon's first evaluation
                return False
            return True

    # ------------------------------------------------------------------ ticks
    def claim_tick(
        self,
        kind: str,
        name: str,
        tick_key: str,
        tick_at: datetime,
        *,
        daemon_id: str,
        status: str = "launching",
        reason: str | None = None,
        partitions: Sequence[Any] = (),
    ) -> int | None:
        """Insert the tick's row; None when it exists already (another daemon has it).

        A key longer than the column is shortened the same way every time (a prefix and a hash).
        """
        tick_key = fit_key(tick_key)
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    t.ticks.insert().values(
                        tenant_id=self.tenant,
                        kind=kind,
                        name=name,
                        tick_key=tick_key,
                        tick_at=tick_at,
                        status=status,
                        run_ids=[],
                        partitions=list(partitions),
                        reason=reason,
                        daemon_id=daemon_id,
                        created_at=now,
                        updated_at=now,
                    )
                )
                pk = result.inserted_primary_key
                return int(pk[0]) if pk else None
        except sa.exc.IntegrityError:
            return None

    def take_over_stale(self, kind: str, name: str, *, daemon_id: str, stale_after: timedelta) -> list[Tick]:
        """Ticks left ``launching`` by a daemon that stopped beating: now this daemon's."""
        c = t.ticks.c
        d = t.daemons.c
        cutoff = utcnow() - stale_after
        taken = []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(t.ticks)
                .outerjoin(t.daemons, d.id == c.daemon_id)
                .where(
                    c.tenant_id == self.tenant,
                    c.kind == kind,
                    c.name == name,
                    c.status == "launching",
                    sa.or_(d.id.is_(None), d.heartbeat_at < cutoff, d.stopped_at.is_not(None)),
                    sa.or_(c.daemon_id.is_(None), c.daemon_id != daemon_id),
                )
            ).all()
            for row in rows:
                moved = conn.execute(
                    t.ticks.update()
                    .where(c.id == row.id, c.status == "launching", c.daemon_id == row.daemon_id)
                    .values(daemon_id=daemon_id, updated_at=utcnow())
                )
                if moved.rowcount == 1:
                    taken.append(_tick(row))
        return taken

    def finish_tick(
        self,
        tick_id: int,
        *,
        status: str,
        run_ids: Sequence[str] = (),
        partitions: Sequence[Any] | None = None,
        reason: str | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "status": status,
            "run_ids": list(run_ids),
            "reason": reason,
            "updated_at": utcnow(),
        }
        if partitions is not None:
            values["partitions"] = list(partitions)
        with self.engine.begin() as conn:
            conn.execute(t.ticks.update().where(t.ticks.c.id == tick_id).values(**values))

    def ticks(self, kind: str, name: str, *, limit: int = 50) -> list[Tick]:
        c = t.ticks.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.ticks)
                .where(c.tenant_id == self.tenant, c.kind == kind, c.name == name)
                .order_by(c.tick_at.desc(), c.id.desc())
                .limit(limit)
            ).all()
        return [_tick(r) for r in rows]

    def prune_ticks(self, *, before: datetime, kinds: Sequence[str] = ("schedule", "daemon")) -> int:
        """Delete finished ticks of ``kinds`` older than ``before``.

        Only kinds whose cursor is past them: sensor and automation ticks stay, their keys are what
        keeps a request from running twice.
        """
        c = t.ticks.c
        with self.engine.begin() as conn:
            result = conn.execute(
                t.ticks.delete().where(
                    c.tenant_id == self.tenant,
                    c.kind.in_(list(kinds)),
                    c.tick_at < before,
                    c.status != "launching",
                )
            )
        return int(result.rowcount or 0)

    # ------------------------------------------------------------------ daemons
    def register_daemon(self, daemon_id: str) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                t.daemons.insert(),
                {
                    "id": daemon_id,
                    "tenant_id": self.tenant,
                    "host": HOST,
                    "pid": os.getpid(),
                    "started_at": now,
                    "heartbeat_at": now,
                },
            )

    def heartbeat(self, daemon_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(t.daemons.update().where(t.daemons.c.id == daemon_id).values(heartbeat_at=utcnow()))

    def daemons(self) -> list[dict[str, Any]]:
        """The daemons of this tenant, newest first (``stopped_at`` None: running or crashed)."""
        d = t.daemons.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.daemons).where(d.tenant_id == self.tenant).order_by(d.started_at.desc())
            ).all()
        return [
            {
                **row._asdict(),
                "started_at": _utc(row.started_at),
                "heartbeat_at": _utc(row.heartbeat_at),
                "stopped_at": _utc(row.stopped_at),
            }
            for row in rows
        ]

    def prune_daemons(self, *, before: datetime) -> int:
        """Forget daemons stopped (or silent) since before ``before``."""
        d = t.daemons.c
        with self.engine.begin() as conn:
            result = conn.execute(
                t.daemons.delete().where(
                    d.tenant_id == self.tenant,
                    sa.or_(d.stopped_at < before, d.heartbeat_at < before),
                )
            )
        return int(result.rowcount or 0)

    def stop_daemon(self, daemon_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(t.daemons.update().where(t.daemons.c.id == daemon_id).values(stopped_at=utcnow()))
