"""``app.approvals``: decide approval requests, resume what waits for them, enforce timeouts.

    app.approvals.pending()                                   # open requests
    app.approvals.approve(request_id, by="ana", reason="numbers checked")
    app.approvals.modify(request_id, {"limit": 10}, by="ana", reason="cap it")
    app.approvals.reject(request_id, by="ana", reason="wrong source file")
    app.approvals.process_timeouts()                          # the daemon/worker loop calls this

A decision commits together with what it means for the run: approve/modify record the gate's
materialization (the value under review, or the reviewer's value stored first) and its lineage;
reject records the gate failed (``checkpoint_rejected``) and skips its downstream steps. Then the
run's waiting steps resume: in this process for local runs (``resume=False`` leaves that to
``app.resume_run``), through the queue's jobs for queue runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from flowstone._errors import CheckpointRejected, ValidationError, _json_safe
from flowstone._events import Event
from flowstone._ids import new_id
from flowstone._records import Materialization, RunStatus, StepStatus
from flowstone.checkpoints._definition import Extend
from flowstone.checkpoints._state import Action, ApprovalStatus, IllegalTransition
from flowstone.checkpoints._store import ApprovalRecord, ApprovalStore
from flowstone.store import _tables as t
from flowstone.store._store import HOST, _key_in, _utc, utcnow
from flowstone.store._writer import StepOutcome, StepRows

if TYPE_CHECKING:
    from flowstone._app import FlowStone
    from flowstone._assets import AssetDefinition
    from flowstone.engine._runner import RunEnv, _Computed

_log = logging.getLogger("flowstone.checkpoints")


class Notifier(Protocol):
    """Told about approval requests: ``event`` is requested, escalated, decided or timed_out;
    ``targets`` are the gate's ``escalate_to`` names when escalating."""

    def notify(self, event: str, approval: ApprovalRecord, *, targets: Sequence[str] = ()) -> None: ...


class LogNotifier:
    """The built-in notifier: one log line per notification (logger ``flowstone.checkpoints``)."""

    def notify(self, event: str, approval: ApprovalRecord, *, targets: Sequence[str] = ()) -> None:
        where = f" [{approval.partition_key}]" if approval.partition_key else ""
        to = f" -> {', '.join(targets)}" if targets else ""
        _log.warning(
            "approval %s %s: checkpoint '%s'%s is %s%s: %s",
            approval.id[:12],
            event,
            approval.checkpoint,
            where,
            approval.status.value,
            to,
            approval.message or "",
        )


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _notify(notifier: Any, event: str, approval: ApprovalRecord, targets: Sequence[str] = ()) -> None:
    try:
        (notifier or LogNotifier()).notify(event, approval, targets=targets)
    except Exception:  # a failing notifier never blocks a decision
        _log.exception("notifier failed on %s of approval %s", event, approval.id)


@dataclass(frozen=True)
class RequestFields:
    """What a new approval request holds besides its ids (built where the gate ran)."""

    message: str
    context: dict[str, Any]
    timeout_at: datetime | None
    approval_type: str
    now: datetime


def request_fields(
    env: RunEnv,
    asset: AssetDefinition[..., Any],
    *,
    run_id: str,
    partition_key: str | None,
    computed: _Computed,
    lineage: list[list[Any]],
    attempt: int,
) -> RequestFields:
    spec = asset.checkpoint
    assert spec is not None and computed.waiting is not None
    stored = computed.stored
    context = {
        "run_id": run_id,
        "partition": partition_key,
        "summary": computed.waiting.get("summary"),
        "stored": _json_safe(stored.as_metadata()) if stored else None,
        "checksum": stored.checksum if stored else None,
        "size_bytes": stored.size_bytes if stored else None,
        "metadata": _json_safe(computed.metadata or {}),
        "data_version": computed.data_version,
        "lineage": lineage,
        "started_at": computed.started_at.isoformat() if computed.started_at else None,
        "duration_ms": computed.duration_ms,
        "attempt": attempt,
        "io_manager": env.io_manager_name(asset),
    }
    now = env.clock.now()
    return RequestFields(
        message=str(computed.waiting.get("message") or ""),
        context=context,
        timeout_at=now + timedelta(seconds=spec.timeout) if spec.timeout is not None else None,
        approval_type=spec.approval_type,
        now=now,
    )


def open_request(
    env: RunEnv,
    asset: AssetDefinition[..., Any],
    *,
    run_id: str,
    step_id: str,
    partition_key: str | None,
    materialization_id: str,
    computed: _Computed,
    lineage: list[list[Any]],
    attempt: int,
    conn: Connection | None = None,
) -> ApprovalRecord:
    """Persist the request of a checkpoint step whose value is stored and waits for a person."""
    fields = request_fields(
        env,
        asset,
        run_id=run_id,
        partition_key=partition_key,
        computed=computed,
        lineage=lineage,
        attempt=attempt,
    )
    record = ApprovalStore(env.store).request(
        tenant=env.tenant,
        approval_id=new_id(),
        run_id=run_id,
        step_id=step_id,
        checkpoint=asset.name,
        partition_key=partition_key,
        materialization_id=materialization_id,
        message=fields.message,
        context=fields.context,
        timeout_at=fields.timeout_at,
        approval_type=fields.approval_type,
        conn=conn,
        now=fields.now,
    )
    _notify(getattr(env, "notifier", None), "requested", record)
    return record


class Approvals:
    """Approval requests of one app (``app.approvals``); see the module docstring."""

    def __init__(self, app: FlowStone) -> None:
        self.app = app
        self.store = ApprovalStore(app.store)

    # ------------------------------------------------------------------ reading
    def pending(self, checkpoint: str | None = None) -> list[ApprovalRecord]:
        """Open requests (pending or escalated), oldest first."""
        return self.find(statuses=["pending", "escalated"], checkpoint=checkpoint)

    def find(
        self,
        *,
        statuses: Sequence[str] | None = None,
        checkpoint: str | None = None,
        partitions: Sequence[str] | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]:
        return self.store.find(
            tenant=self.app.tenant,
            statuses=statuses,
            checkpoint=checkpoint,
            partitions=partitions,
            run_id=run_id,
        )

    def get(self, approval_id: str) -> ApprovalRecord:
        found = self.store.get(tenant=self.app.tenant, approval_id=approval_id)
        if found is None:
            raise ValidationError(
                f"no approval {approval_id!r} (give its id or a unique prefix of at least 4 characters; "
                "see `flowstone approvals list`)",
                context={"approval_id": approval_id},
            )
        return found

    def history(self, checkpoint: str, *, partition: str | None = None) -> list[dict[str, Any]]:
        """Who decided what about ``checkpoint`` (oldest first): the audit rows of its requests."""
        self._checkpoint(checkpoint)
        ids = {
            r.id: r
            for r in self.store.find(
                tenant=self.app.tenant,
                checkpoint=checkpoint,
                partitions=[partition] if partition is not None else None,
                limit=1_000_000,
            )
        }
        a = t.audit_log.c
        rows: list[dict[str, Any]] = []
        with self.app.store.engine.connect() as conn:
            for chunk in _chunks(sorted(ids)):
                query = sa.select(t.audit_log).where(
                    a.tenant_id == self.app.tenant,
                    a.resource_type == "checkpoint",
                    a.resource_id.in_(chunk),
                )
                rows.extend({**r._asdict(), "at": _utc(r.at)} for r in conn.execute(query))
        rows.sort(key=lambda row: row["id"])
        for row in rows:
            request = ids[row["resource_id"]]
            row["partition"] = request.partition_key
            row["run_id"] = request.run_id
            row["status"] = request.status.value
        return rows

    # ------------------------------------------------------------------ deciding
    def approve(
        self, approval_id: str, *, by: str, reason: str | None = None, resume: bool = True
    ) -> ApprovalRecord:
        """Pass the value under review on; the run's waiting downstream steps resume."""
        return self._pass(approval_id, Action.APPROVE, by=by, reason=reason, resume=resume)

    def modify(
        self, approval_id: str, value: Any, *, by: str, reason: str | None = None, resume: bool = True
    ) -> ApprovalRecord:
        """Pass ``value`` (JSON-safe, of the type the gate expects) on instead; the run resumes."""
        return self._pass(approval_id, Action.MODIFY, by=by, reason=reason, value=value, resume=resume)

    def reject(self, approval_id: str, *, by: str, reason: str) -> ApprovalRecord:
        """Fail the gate with ``checkpoint_rejected``; its downstream steps are skipped."""
        if not reason or not str(reason).strip():
            raise ValidationError(
                "a rejection needs a reason (--reason)", context={"approval_id": approval_id}
            )
        return self._fail(approval_id, Action.REJECT, by=by, reason=reason)

    def bulk(
        self,
        action: str,
        *,
        checkpoint: str,
        by: str,
        reason: str | None = None,
        partitions: Sequence[str] | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]:
        """Approve or reject every open request of ``checkpoint`` matching the filter (a backfill's
        requests, some partitions); runs resume once, after all decisions."""
        if action not in ("approve", "reject"):
            raise ValidationError(f"bulk action must be approve or reject, got {action!r}")
        if action == "reject" and (not reason or not str(reason).strip()):
            raise ValidationError("a rejection needs a reason (--reason)", context={"checkpoint": checkpoint})
        self._checkpoint(checkpoint)
        chosen = self.store.find(
            tenant=self.app.tenant,
            statuses=["pending", "escalated"],
            checkpoint=checkpoint,
            partitions=partitions,
            run_id=run_id,
            limit=1_000_000,  # a backfill's requests: all of them, not the first page
        )
        decided: list[ApprovalRecord] = []
        try:
            for request in chosen:
                try:
                    if action == "approve":
                        decided.append(self.approve(request.id, by=by, reason=reason, resume=False))
                    else:
                        decided.append(self.reject(request.id, by=by, reason=reason or ""))
                except IllegalTransition as exc:  # decided meanwhile by someone else: theirs stands
                    _log.info("bulk %s skipped approval %s: %s", action, request.id, exc.message)
        finally:  # the runs of what was approved resume even when a later decision failed
            for run in sorted({r.run_id for r in decided if r.status is ApprovalStatus.APPROVED}):
                self._resume(run)
        return decided

    def _checkpoint(self, name: str) -> AssetDefinition[..., Any]:
        definition = self.app.pipeline.get(name)  # unknown names raise AssetNotFound with hints
        if definition.checkpoint is None:
            raise ValidationError(
                f"'{name}' is an asset, not a checkpoint "
                f"(checkpoints: {sorted(self.app.pipeline.checkpoints)})",
                context={"checkpoint": name},
            )
        return definition

    def _definition(self, record: ApprovalRecord) -> AssetDefinition[..., Any]:
        definition = self.app.pipeline.assets.get(record.checkpoint)
        if definition is None or definition.checkpoint is None:
            raise ValidationError(
                f"approval {record.id} is for checkpoint '{record.checkpoint}', which this pipeline "
                f"'{self.app.pipeline.name}' does not define",
                context={"approval_id": record.id, "checkpoint": record.checkpoint},
            )
        return definition

    def _check_modification(self, definition: AssetDefinition[..., Any], value: Any) -> None:
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"checkpoint '{definition.name}': the modified value must be JSON ({exc})",
                context={"checkpoint": definition.name},
            ) from None
        spec = definition.checkpoint
        assert spec is not None
        expected = spec.value_type
        if expected is not None:
            ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ValidationError(
                    f"checkpoint '{definition.name}' passes on a {expected.__name__}; the modified "
                    f"value is a {type(value).__name__}",
                    context={"checkpoint": definition.name, "expected": expected.__name__},
                )

    def _pass(
        self,
        approval_id: str,
        action: Action,
        *,
        by: str,
        reason: str | None,
        resume: bool,
        value: Any = None,
    ) -> ApprovalRecord:
        record = self.get(approval_id)
        definition = self._definition(record)
        if not record.status.open:
            self._refuse(record, action, by)
        app = self.app
        mat_id = record.materialization_id or new_id()
        stored = None
        if action is Action.MODIFY:
            self._check_modification(definition, value)
        else:
            self._check_unchanged(definition, record)
        approval_context = record.context
        with app.store.engine.begin() as conn:
            # The conditional UPDATE first: of two reviewers deciding at once only the winner goes
            # on (a losing modify must not overwrite the value the winner approved).
            _before, after = self.store.transition(
                conn,
                tenant=app.tenant,
                approval_id=record.id,
                action=action,
                actor=by,
                reason=reason,
                modifications=value if action is Action.MODIFY else None,
                now=app.clock.now(),
            )
            if action is Action.MODIFY:
                # Record after store: the reviewer's value is written before the commit that says
                # so (a failing store rolls the decision back; the request stays open).
                mat_id = new_id()
                stored = self._store_value(definition, record, value, mat_id)
            mat = self._materialization(definition, record, approval_context, mat_id, stored, action, by)
            lineage = [tuple(link) for link in approval_context.get("lineage", [])]
            event = Event(
                "step.succeeded",
                utcnow(),
                record.run_id,
                record.checkpoint,
                record.partition_key,
                {"checkpoint": after.status.value, "decided_by": by},
            )
            rows = StepRows(app.store.dialect)
            rows.finish_step(tenant=app.tenant, outcome=StepOutcome(record.step_id, mat, lineage, event))
            rows.calls.append(("event", [rows._event(app.tenant, self._decision_event(after))]))
            cursor = conn.connection.cursor()
            try:
                rows.apply(cursor)
                if self._is_queue_run(conn, record.run_id):
                    self._queue_db().settle_gate(
                        cursor,
                        app.tenant,
                        record.step_id,
                        record.run_id,
                        success=True,
                        materialization_id=mat.id,
                    )
            finally:
                cursor.close()
        app.events.emit(self._decision_event(after))
        _notify(app.notifier, "decided", after)
        self._hook(definition, after, value)
        if resume:
            self._resume(record.run_id)
        return after

    def _fail(self, approval_id: str, action: Action, *, by: str, reason: str) -> ApprovalRecord:
        record = self.get(approval_id)
        definition = self._definition(record)
        if not record.status.open:
            self._refuse(record, action, by)
        app = self.app
        with app.store.engine.begin() as conn:
            _before, after = self.store.transition(
                conn,
                tenant=app.tenant,
                approval_id=record.id,
                action=action,
                actor=by,
                reason=reason,
                now=app.clock.now(),
            )
            what = "rejected" if action is Action.REJECT else "not decided in time (expired)"
            error = CheckpointRejected(
                f"checkpoint '{record.checkpoint}' was {what} by {by}: {reason}",
                context={"checkpoint": record.checkpoint, "approval_id": record.id, "decided_by": by},
            )
            self._record_failure(conn, definition, record, after, error)
        app.events.emit(self._decision_event(after))
        _notify(app.notifier, "decided", after)
        self._hook(definition, after, None)
        return after

    def _refuse(self, record: ApprovalRecord, action: Action, by: str) -> None:
        from flowstone.checkpoints._state import next_status

        next_status(record.status, action, approval_id=record.id, by=record.decided_by)

    def _hook(self, definition: AssetDefinition[..., Any], record: ApprovalRecord, value: Any) -> None:
        spec = definition.checkpoint
        assert spec is not None
        hook = {
            ApprovalStatus.APPROVED: spec.on_approve,
            ApprovalStatus.MODIFIED: spec.on_modify,
            ApprovalStatus.REJECTED: spec.on_reject,
            ApprovalStatus.EXPIRED: spec.on_reject,
        }.get(record.status)
        if hook is None:
            return
        try:
            if record.status is ApprovalStatus.MODIFIED:
                hook(record, value)
            else:
                hook(record)
        except Exception:  # the decision stands; the hook's failure is logged
            _log.exception("checkpoint '%s': its %s hook failed", record.checkpoint, record.status.value)

    def _timeout_event(self, record: ApprovalRecord, *, extended_until: datetime | None) -> Event:
        """checkpoint.timed_out of a request given more time (on_timeout=extend(...))."""
        return Event(
            "checkpoint.timed_out",
            utcnow(),
            record.run_id,
            record.checkpoint,
            record.partition_key,
            {
                "approval_id": record.id,
                "status": record.status.value,
                "extended_until": extended_until.isoformat() if extended_until else None,
            },
        )

    @staticmethod
    def _event_row(event: Event) -> dict[str, Any]:
        return {
            "type": event.type,
            "run_id": event.run_id,
            "asset": event.asset,
            "partition_key": event.partition_key,
            "at": event.at,
            "data": event.data,
        }

    def _decision_event(self, record: ApprovalRecord) -> Event:
        kind = {
            ApprovalStatus.APPROVED: "checkpoint.approved",
            ApprovalStatus.MODIFIED: "checkpoint.approved",
            ApprovalStatus.REJECTED: "checkpoint.rejected",
            ApprovalStatus.EXPIRED: "checkpoint.timed_out",
            ApprovalStatus.ESCALATED: "checkpoint.escalated",
        }.get(record.status, "checkpoint.updated")
        return Event(
            kind,
            utcnow(),
            record.run_id,
            record.checkpoint,
            record.partition_key,
            {
                "approval_id": record.id,
                "status": record.status.value,
                "decided_by": record.decided_by,
                "reason": record.reason,
            },
        )

    def _io(self, definition: AssetDefinition[..., Any], record: ApprovalRecord, mat_id: str | None) -> Any:
        from flowstone.engine._planner import typed_partition
        from flowstone.io._base import IOContext

        app = self.app
        resolve = app.resolver()
        return IOContext(
            asset=definition.name,
            partition_key=record.partition_key,
            partition=typed_partition(resolve(definition.name), definition.name, record.partition_key),
            tenant=app.tenant,
            run_id=record.run_id,
            config=definition.io_config,
            materialization_id=mat_id,
            code_version=definition.code_version,
        )

    def _check_unchanged(self, definition: AssetDefinition[..., Any], record: ApprovalRecord) -> None:
        """Refuse to approve a value that is no longer the one under review: another run stored
        the same partition of the gate since (storage paths are per partition, not per run)."""
        expected = record.context.get("checksum")
        if not expected:
            return
        manager = self.app.io_managers[definition.io_manager or self.app.pipeline.default_io_manager]
        try:
            current = manager.metadata(self._io(definition, record, record.materialization_id))
        except Exception:  # a manager that cannot tell: nothing to compare
            return
        if current is not None and current.checksum and current.checksum != expected:
            raise ValidationError(
                f"approval {record.id}: the value of '{record.checkpoint}'"
                + (f" [{record.partition_key}]" if record.partition_key else "")
                + " under review was replaced since the request (another run stored it again); "
                "decide the newer request, or modify this one with the value to pass on",
                context={"approval_id": record.id, "expected": expected, "found": current.checksum},
            )

    def _store_value(
        self, definition: AssetDefinition[..., Any], record: ApprovalRecord, value: Any, mat_id: str
    ) -> Any:

        app = self.app
        manager = app.io_managers[definition.io_manager or app.pipeline.default_io_manager]
        return manager.store(self._io(definition, record, mat_id), value)

    def _materialization(
        self,
        definition: AssetDefinition[..., Any],
        record: ApprovalRecord,
        context: Mapping[str, Any],
        mat_id: str,
        stored: Any,
        action: Action,
        by: str,
    ) -> Materialization:
        checksum = stored.checksum if stored is not None else context.get("checksum")
        size = stored.size_bytes if stored is not None else context.get("size_bytes")
        extra = dict(stored.as_metadata()) if stored is not None else dict(context.get("stored") or {})
        started = context.get("started_at")
        return Materialization(
            id=mat_id,
            data_version=(context.get("data_version") if stored is None else None) or checksum or mat_id,
            run_id=record.run_id,
            asset=record.checkpoint,
            partition_key=record.partition_key,
            status="success",
            started_at=datetime.fromisoformat(started) if isinstance(started, str) else utcnow(),
            finished_at=utcnow(),
            duration_ms=float(context.get("duration_ms") or 0.0),
            value_hash=checksum,
            value_size=size,
            io_manager=str(
                context.get("io_manager") or definition.io_manager or self.app.pipeline.default_io_manager
            ),
            code_version=definition.code_version,
            host=HOST,
            pid=0,
            attempt=int(context.get("attempt") or 1),
            metadata={
                **extra,
                **dict(context.get("metadata") or {}),
                "checkpoint": "modified" if action is Action.MODIFY else "approved",
                "approval_id": record.id,
                "decided_by": by,
            },
            tenant=self.app.tenant,
        )

    def _record_failure(
        self,
        conn: Connection,
        definition: AssetDefinition[..., Any],
        record: ApprovalRecord,
        after: ApprovalRecord,
        error: CheckpointRejected,
    ) -> None:
        app = self.app
        context = record.context
        started = context.get("started_at")
        mat = Materialization(
            id=new_id(),
            data_version=None,
            run_id=record.run_id,
            asset=record.checkpoint,
            partition_key=record.partition_key,
            status="failed",
            started_at=datetime.fromisoformat(started) if isinstance(started, str) else utcnow(),
            finished_at=utcnow(),
            duration_ms=float(context.get("duration_ms") or 0.0),
            value_hash=None,
            value_size=None,
            io_manager=str(context.get("io_manager") or app.pipeline.default_io_manager),
            code_version=definition.code_version,
            host=HOST,
            pid=0,
            attempt=int(context.get("attempt") or 1),
            metadata={"checkpoint": after.status.value, "approval_id": record.id},
            error_type=error.type,
            error_message=error.message,
            retryable=False,
            tenant=app.tenant,
        )
        event = Event(
            "step.failed",
            utcnow(),
            record.run_id,
            record.checkpoint,
            record.partition_key,
            {"error": error.to_dict()},
        )
        rows = StepRows(app.store.dialect)
        rows.finish_step(tenant=app.tenant, outcome=StepOutcome(record.step_id, mat, (), event))
        rows.calls.append(("event", [rows._event(app.tenant, self._decision_event(after))]))
        cursor = conn.connection.cursor()
        try:
            rows.apply(cursor)
            if self._is_queue_run(conn, record.run_id):
                self._queue_db().settle_gate(
                    cursor, app.tenant, record.step_id, record.run_id, success=False, error=error
                )
                return
        finally:
            cursor.close()
        self._skip_local_downstream(conn, record, error)
        self._settle_local_run(conn, record.run_id)

    # ------------------------------------------------------------------ runs
    def _is_queue_run(self, conn: Connection, run_id: str) -> bool:
        executor = conn.execute(sa.select(t.runs.c.executor).where(t.runs.c.id == run_id)).scalar()
        return executor == "queue"

    def _queue_db(self) -> Any:
        return self.app.run_queue().db

    def _skip_local_downstream(
        self, conn: Connection, record: ApprovalRecord, error: CheckpointRejected
    ) -> None:
        c = t.run_steps.c
        steps = conn.execute(
            sa.select(c.id, c.asset, c.partition_key, c.upstream, c.status).where(c.run_id == record.run_id)
        ).all()
        by_input: dict[tuple[str, str], list[Any]] = {}
        for step in steps:
            for asset, key in step.upstream or []:
                by_input.setdefault((asset, key or ""), []).append(step)
        frontier = [(record.checkpoint, _key_in(record.partition_key))]
        seen: set[str] = set()
        skipped: list[Any] = []
        while frontier:
            for step in by_input.get(frontier.pop(), []):
                if step.id in seen:
                    continue
                seen.add(step.id)
                if step.status == StepStatus.PENDING.value:
                    skipped.append(step)
                frontier.append((step.asset, step.partition_key))
        if not skipped:
            return
        now = utcnow()
        reason = f"upstream {error.message}"
        conn.execute(
            t.run_steps.update()
            .where(c.id.in_([s.id for s in skipped]), c.status == StepStatus.PENDING.value)
            .values(
                status=StepStatus.SKIPPED.value,
                reason=reason,
                error_type="dependency_failed",
                finished_at=now,
            )
        )
        self.app.store._events(
            conn,
            self.app.tenant,
            [
                {
                    "type": "step.skipped",
                    "run_id": record.run_id,
                    "asset": s.asset,
                    "partition_key": s.partition_key,
                    "at": now,
                    "data": {"reason": reason},
                }
                for s in skipped
            ],
        )

    def _settle_local_run(self, conn: Connection, run_id: str) -> None:
        """A paused local run with nothing left to run or decide ends (failed or succeeded)."""
        c = t.run_steps.c
        statuses = [s for (s,) in conn.execute(sa.select(c.status).where(c.run_id == run_id))]
        if any(s in (StepStatus.PENDING.value, StepStatus.WAITING_APPROVAL.value) for s in statuses):
            return
        bad = any(s != StepStatus.SUCCEEDED.value for s in statuses)
        status = RunStatus.FAILED if bad else RunStatus.SUCCEEDED
        now = utcnow()
        conn.execute(
            t.runs.update()
            .where(t.runs.c.id == run_id, t.runs.c.status == RunStatus.WAITING_APPROVAL.value)
            .values(status=status.value, finished_at=now)
        )
        self.app.store._events(
            conn,
            self.app.tenant,
            [{"type": "run.finished", "run_id": run_id, "at": now, "data": {"status": status.value}}],
        )

    def _resume(self, run_id: str) -> None:
        found = self.app.store.get_run(tenant=self.app.tenant, run_id=run_id)
        if found is None or found.executor == "queue":
            return  # queue runs resume through the jobs the decision enqueued
        self.app.resume_run(run_id)

    # ------------------------------------------------------------------ timeouts
    def process_timeouts(self, *, now: datetime | None = None) -> list[tuple[str, str]]:
        """Apply each overdue request's ``on_timeout``: escalate (a second timeout expires it),
        auto-approve, auto-reject or extend (once; then it expires). Returns (id, what happened)."""
        app = self.app
        now = now or app.clock.now()
        done: list[tuple[str, str]] = []
        for record in self.store.due(tenant=app.tenant, now=now):
            definition = app.pipeline.assets.get(record.checkpoint)
            spec = definition.checkpoint if definition is not None else None
            policy: Any = spec.on_timeout if spec is not None else "expire"
            try:
                outcome = self._time_out(
                    record, policy, spec.timeout if spec else None, spec.escalate_to if spec else (), now
                )
            except ValidationError as exc:  # decided meanwhile by someone: nothing to do
                _log.info("timeout of approval %s skipped: %s", record.id, exc.message)
                continue
            done.append((record.id, outcome))
        return done

    def _time_out(
        self,
        record: ApprovalRecord,
        policy: Any,
        timeout: float | None,
        targets: Iterable[str],
        now: datetime,
    ) -> str:
        app = self.app
        by = "system:timeout"
        if record.status is ApprovalStatus.ESCALATED or policy == "expire":
            after = self._fail(record.id, Action.EXPIRE, by=by, reason="nobody decided before the timeout")
            _notify(app.notifier, "timed_out", after)
            return "expired"
        if policy == "auto_approve":
            after = self.approve(record.id, by=by, reason="approved automatically on timeout")
            _notify(app.notifier, "timed_out", after)
            return "auto_approved"
        if policy == "auto_reject":
            after = self.reject(record.id, by=by, reason="rejected automatically on timeout")
            _notify(app.notifier, "timed_out", after)
            return "auto_rejected"
        if isinstance(policy, Extend):
            if record.context.get("extended"):
                after = self._fail(
                    record.id, Action.EXPIRE, by=by, reason="nobody decided within the extension"
                )
                _notify(app.notifier, "timed_out", after)
                return "expired"
            with app.store.engine.begin() as conn:
                _b, after = self.store.transition(
                    conn,
                    tenant=app.tenant,
                    approval_id=record.id,
                    action=Action.EXTEND,
                    actor=by,
                    timeout_at=now + timedelta(seconds=policy.seconds),
                    context={"extended": True},
                    now=now,
                )
                event = self._timeout_event(after, extended_until=after.timeout_at)
                app.store._events(conn, app.tenant, [self._event_row(event)])
            app.events.emit(event)
            _notify(app.notifier, "timed_out", after)
            return "extended"
        # escalate
        names = list(targets)
        with app.store.engine.begin() as conn:
            _b, after = self.store.transition(
                conn,
                tenant=app.tenant,
                approval_id=record.id,
                action=Action.ESCALATE,
                actor=by,
                timeout_at=now + timedelta(seconds=timeout) if timeout else None,
                escalated_to=names,
                now=now,
            )
            app.store._events(
                conn,
                app.tenant,
                [
                    {
                        "type": "checkpoint.escalated",
                        "run_id": after.run_id,
                        "asset": after.checkpoint,
                        "partition_key": after.partition_key,
                        "at": utcnow(),
                        "data": {
                            "approval_id": after.id,
                            "escalated_to": names,
                            "count": after.escalation_count,
                        },
                    }
                ],
            )
        app.events.emit(self._decision_event(after))
        _notify(app.notifier, "escalated", after, names)
        return "escalated"
