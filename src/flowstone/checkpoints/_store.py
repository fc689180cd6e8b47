"""Approval requests in the store: open one, move it through the state machine, list them.

Every change is one transaction with its audit row and event. A decision is a conditional
UPDATE on the state it was taken from, so of two reviewers deciding at once exactly one wins;
the other is told who did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from flowstone._errors import ValidationError
from flowstone.checkpoints._state import TRANSITIONS, Action, ApprovalStatus, IllegalTransition, next_status
from flowstone.store import _tables as t
from flowstone.store._store import Store, _key_in, _key_out, _utc, utcnow


@dataclass(frozen=True)
class ApprovalRecord:
    id: str
    run_id: str
    step_id: str
    checkpoint: str
    partition_key: str | None
    materialization_id: str | None
    status: ApprovalStatus
    approval_type: str
    message: str | None
    context: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    timeout_at: datetime | None
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    modifications: Any
    escalated_to: list[str]
    escalation_count: int
    tenant: str = "default"


def _record(r: Any) -> ApprovalRecord:
    return ApprovalRecord(
        id=r.id,
        run_id=r.run_id,
        step_id=r.step_id,
        checkpoint=r.checkpoint,
        partition_key=_key_out(r.partition_key),
        materialization_id=r.materialization_id,
        status=ApprovalStatus(r.status),
        approval_type=r.approval_type,
        message=r.message,
        context=dict(r.context or {}),
        created_at=_utc(r.created_at) or utcnow(),
        updated_at=_utc(r.updated_at) or utcnow(),
        timeout_at=_utc(r.timeout_at),
        decided_by=r.decided_by,
        decided_at=_utc(r.decided_at),
        reason=r.reason,
        modifications=r.modifications,
        escalated_to=list(r.escalated_to or []),
        escalation_count=int(r.escalation_count or 0),
        tenant=r.tenant_id,
    )


class ApprovalStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def request(
        self,
        *,
        tenant: str,
        approval_id: str,
        run_id: str,
        step_id: str,
        checkpoint: str,
        partition_key: str | None,
        materialization_id: str,
        message: str,
        context: Mapping[str, Any],
        timeout_at: datetime | None,
        approval_type: str = "manual",
        conn: Connection | None = None,
        now: datetime | None = None,
    ) -> ApprovalRecord:
        """Open a request (status pending), with its audit row and event; ``now`` is the app's
        clock (the one ``timeout_at`` was computed on)."""
        now = now or utcnow()
        row = {
            "id": approval_id,
            "tenant_id": tenant,
            "run_id": run_id,
            "step_id": step_id,
            "checkpoint": checkpoint,
            "partition_key": _key_in(partition_key),
            "materialization_id": materialization_id,
            "status": ApprovalStatus.PENDING.value,
            "approval_type": approval_type,
            "message": message,
            "context": dict(context),
            "created_at": now,
            "updated_at": now,
            "timeout_at": timeout_at,
            "escalation_count": 0,
        }

        def write(c: Connection) -> None:
            c.execute(t.approvals.insert(), row)
            self.store._audit(
                c,
                tenant=tenant,
                actor="system",
                action="checkpoint.requested",
                resource_type="checkpoint",
                resource_id=approval_id,
                details={"checkpoint": checkpoint, "partition": partition_key, "run_id": run_id},
                at=now,
            )
            self.store._events(
                c,
                tenant,
                [
                    {
                        "type": "checkpoint.requested",
                        "run_id": run_id,
                        "asset": checkpoint,
                        "partition_key": partition_key,
                        "at": now,
                        "data": {"approval_id": approval_id, "message": message},
                    }
                ],
            )

        if conn is not None:
            write(conn)
        else:
            with self.store.engine.begin() as c:
                write(c)
        found = self.get(tenant=tenant, approval_id=approval_id)
        assert found is not None
        return found

    # ------------------------------------------------------------------ reading
    def get(self, *, tenant: str, approval_id: str, conn: Connection | None = None) -> ApprovalRecord | None:
        """By id or a unique prefix of at least 4 characters."""
        c = t.approvals.c
        if len(approval_id) < 4:
            return None
        query = sa.select(t.approvals).where(c.tenant_id == tenant)
        query = (
            query.where(c.id == approval_id)
            if len(approval_id) == 32
            else query.where(c.id.startswith(approval_id, autoescape=True))
        )
        if conn is not None:
            rows = conn.execute(query.limit(2)).all()
        else:
            with self.store.engine.connect() as cx:
                rows = cx.execute(query.limit(2)).all()
        if len(rows) != 1:
            return None
        return _record(rows[0])

    def find(
        self,
        *,
        tenant: str,
        statuses: Sequence[str] | None = None,
        checkpoint: str | None = None,
        partitions: Sequence[str] | None = None,
        run_id: str | None = None,
        limit: int = 1000,
    ) -> list[ApprovalRecord]:
        c = t.approvals.c
        query = sa.select(t.approvals).where(c.tenant_id == tenant)
        if statuses:
            query = query.where(c.status.in_(list(statuses)))
        if checkpoint is not None:
            query = query.where(c.checkpoint == checkpoint)
        if partitions is not None:
            query = query.where(c.partition_key.in_([_key_in(p) for p in partitions]))
        if run_id is not None:
            query = query.where(c.run_id == run_id)
        query = query.order_by(c.created_at, c.id).limit(limit)
        with self.store.engine.connect() as cx:
            return [_record(r) for r in cx.execute(query)]

    def due(self, *, tenant: str, now: datetime) -> list[ApprovalRecord]:
        """Open requests whose timeout has passed."""
        c = t.approvals.c
        query = (
            sa.select(t.approvals)
            .where(
                c.tenant_id == tenant,
                c.status.in_([ApprovalStatus.PENDING.value, ApprovalStatus.ESCALATED.value]),
                c.timeout_at.is_not(None),
                c.timeout_at <= now,
            )
            .order_by(c.timeout_at, c.id)
        )
        with self.store.engine.connect() as cx:
            return [_record(r) for r in cx.execute(query)]

    # ------------------------------------------------------------------ deciding
    def transition(
        self,
        conn: Connection,
        *,
        tenant: str,
        approval_id: str,
        action: Action,
        actor: str,
        reason: str | None = None,
        modifications: Any = None,
        timeout_at: datetime | None = None,
        escalated_to: Sequence[str] | None = None,
        context: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> tuple[ApprovalRecord, ApprovalRecord]:
        """Apply ``action`` inside ``conn``'s transaction; returns (before, after).

        Raises :class:`IllegalTransition` when the current state does not allow it, naming who
        decided when someone else got there first.
        """
        before = self.get(tenant=tenant, approval_id=approval_id, conn=conn)
        if before is None:
            raise ValidationError(
                f"no approval {approval_id!r} (see `flowstone approvals list`)",
                context={"approval_id": approval_id},
            )
        target = next_status(before.status, action, approval_id=before.id, by=before.decided_by)
        now = now or utcnow()
        values: dict[str, Any] = {"status": target.value, "updated_at": now}
        if action in (Action.APPROVE, Action.MODIFY, Action.REJECT, Action.EXPIRE):
            values.update(decided_by=actor, decided_at=now, reason=reason)
        if action is Action.MODIFY:
            values["modifications"] = modifications
        if action in (Action.ESCALATE, Action.EXTEND):
            values["timeout_at"] = timeout_at
        if context is not None:
            values["context"] = {**before.context, **context}
        if action is Action.ESCALATE:
            values["escalation_count"] = t.approvals.c.escalation_count + 1
            values["escalated_to"] = list(escalated_to or [])
        sources = [s.value for s in TRANSITIONS[action][0]]
        c = t.approvals.c
        updated = conn.execute(
            t.approvals.update()
            .where(
                c.id == before.id,
                c.tenant_id == tenant,
                c.status.in_(sources),
                c.status == before.status.value,
            )
            .values(values)
        )
        if updated.rowcount != 1:  # someone else decided between our read and our write
            current = self.get(tenant=tenant, approval_id=before.id, conn=conn)
            assert current is not None
            who = f" by {current.decided_by}" if current.decided_by else ""
            raise IllegalTransition(
                f"approval {before.id} was already {current.status.value}{who}",
                context={
                    "approval_id": before.id,
                    "status": current.status.value,
                    "decided_by": current.decided_by,
                },
            )
        self.store._audit(
            conn,
            tenant=tenant,
            actor=actor,
            action=f"checkpoint.{action.value}",
            resource_type="checkpoint",
            resource_id=before.id,
            reason=reason,
            details={
                "checkpoint": before.checkpoint,
                "partition": before.partition_key,
                "run_id": before.run_id,
                "from": before.status.value,
                "to": target.value,
                **({"modifications": modifications} if action is Action.MODIFY else {}),
            },
            at=now,
        )
        after = self.get(tenant=tenant, approval_id=before.id, conn=conn)
        assert after is not None
        return before, after
