"""``flowstone approvals``: list, show and decide checkpoint approval requests.

    $ flowstone approvals list [--status pending] [--checkpoint report_review]
    $ flowstone approvals show 1e48
    $ flowstone approvals approve 1e48 --reason "numbers checked"
    $ flowstone approvals modify 1e48 --value '{"limit": 10}' --reason "cap it"
    $ flowstone approvals reject 1e48 --reason "wrong source file"
    $ flowstone approvals approve --checkpoint report_review --partitions 2025-01-01,2025-01-02
    $ flowstone approvals history report_review [--partition 2025-01-15]
    $ flowstone approvals timeouts            # apply overdue requests' on_timeout now

Registered on the main group by ``flowstone.cli``.
"""

from __future__ import annotations

import getpass
import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flowstone.checkpoints._store import ApprovalRecord
    from flowstone.cli import _State


def _actor(by: str | None) -> str:
    return by or f"user:{getpass.getuser()}"


def _when(value: Any) -> str:
    from flowstone.cli import _when as when

    return when(value)


@click.group("approvals")
def approvals() -> None:
    """Approval requests of the pipeline's checkpoints."""


@approvals.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["pending", "escalated", "approved", "modified", "rejected", "expired", "open", "all"]),
    help="Only these states (default: open = pending and escalated).",
)
@click.option("--checkpoint", help="Only this checkpoint's requests.")
@click.pass_obj
def approvals_list(state: _State, statuses: tuple[str, ...], checkpoint: str | None) -> None:
    """Requests, oldest first."""
    from rich.markup import escape
    from rich.table import Table

    from flowstone.cli import _console, _errors, _status

    with _errors(state):
        app = state.app()
        chosen = set(statuses or ("open",))
        wanted: list[str] | None
        if "all" in chosen:
            wanted = None
        else:
            wanted = sorted((chosen - {"open"}) | ({"pending", "escalated"} if "open" in chosen else set()))
        found = app.approvals.find(statuses=wanted, checkpoint=checkpoint)
        table = Table(title="approvals")
        for col in (
            "approval",
            "checkpoint",
            "partition",
            "status",
            "requested",
            "timeout",
            "run",
            "message",
        ):
            table.add_column(col)
        for r in found:
            table.add_row(
                r.id[:12],
                r.checkpoint,
                escape(r.partition_key or "-"),
                _status(r.status.value),
                _when(r.created_at),
                _when(r.timeout_at),
                r.run_id[:12],
                escape(r.message or ""),
            )
        _console().print(table)


@approvals.command("show")
@click.argument("approval_id")
@click.pass_obj
def approvals_show(state: _State, approval_id: str) -> None:
    """One request: its message, what is under review and its decision."""
    from flowstone.cli import _console, _errors

    with _errors(state):
        app = state.app()
        _print(app.approvals.get(approval_id), _console())


def _print(r: ApprovalRecord, out: Any) -> None:
    where = f" [{r.partition_key}]" if r.partition_key else ""
    out.print(f"approval {r.id}  {r.status.value}  checkpoint {r.checkpoint}{where}", markup=False)
    out.print(
        f"run {r.run_id}   requested {_when(r.created_at)}   timeout {_when(r.timeout_at)}", markup=False
    )
    if r.message:
        out.print(f"message: {r.message}", markup=False)
    summary = r.context.get("summary") or {}
    if summary:
        out.print(f"value: {json.dumps(summary)}", markup=False)
    if r.escalation_count:
        out.print(f"escalated {r.escalation_count}x to {', '.join(r.escalated_to) or '-'}", markup=False)
    if r.decided_by:
        out.print(f"decided by {r.decided_by} at {_when(r.decided_at)}: {r.reason or ''}", markup=False)
    if r.modifications is not None:
        out.print(f"modifications: {json.dumps(r.modifications)}", markup=False)


def _decide(
    state: _State,
    action: str,
    approval_id: str | None,
    checkpoint: str | None,
    partition_list: str | None,
    run_id: str | None,
    reason: str | None,
    by: str | None,
) -> None:
    from flowstone._errors import ValidationError
    from flowstone.cli import _console, _errors, _split_keys

    with _errors(state):
        if approval_id is not None and (checkpoint or partition_list or run_id):
            raise ValidationError(
                f"give an approval id, or --checkpoint (with --partitions/--run) to {action} in bulk; "
                "not both"
            )
        app = state.app()
        out = _console()
        if approval_id is None:
            if checkpoint is None:
                raise ValidationError(
                    f"give an approval id, or --checkpoint (with --partitions/--run) to {action} in bulk"
                )
            decided = app.approvals.bulk(
                action,
                checkpoint=checkpoint,
                partitions=_split_keys(partition_list),
                run_id=run_id,
                by=_actor(by),
                reason=reason,
            )
            done = {"approve": "approved", "reject": "rejected"}[action]
            out.print(f"{len(decided)} request(s) of '{checkpoint}' {done}", markup=False)
            return
        if action == "approve":
            record = app.approvals.approve(approval_id, by=_actor(by), reason=reason)
        else:
            record = app.approvals.reject(approval_id, by=_actor(by), reason=reason or "")
        _print(record, out)
        _run_status(app, record.run_id, out)


def _run_status(app: Any, run_id: str, out: Any) -> None:
    found = app.store.get_run(tenant=app.tenant, run_id=run_id)
    if found is not None:
        out.print(f"run {run_id} {found.status.value}", markup=False)


_BULK = [
    click.option("--checkpoint", help="Decide every open request of this checkpoint (bulk)."),
    click.option("--partitions", "partition_list", help="Bulk: only these partitions, comma-separated."),
    click.option("--run", "run_id", help="Bulk: only this run's (or backfill run's) requests."),
    click.option("--by", help="Who decides (default: user:<login>)."),
]


def _bulk_options(fn: Any) -> Any:
    for option in reversed(_BULK):
        fn = option(fn)
    return fn


@approvals.command("approve")
@click.argument("approval_id", required=False)
@click.option("--reason", help="Why (kept in the audit log).")
@_bulk_options
@click.pass_obj
def approvals_approve(
    state: _State,
    approval_id: str | None,
    reason: str | None,
    checkpoint: str | None,
    partition_list: str | None,
    run_id: str | None,
    by: str | None,
) -> None:
    """Approve APPROVAL_ID (or, with --checkpoint, every open request matching): the value under
    review passes on and the waiting downstream steps run."""
    _decide(state, "approve", approval_id, checkpoint, partition_list, run_id, reason, by)


@approvals.command("reject")
@click.argument("approval_id", required=False)
@click.option("--reason", required=True, help="Why (required; kept in the audit log).")
@_bulk_options
@click.pass_obj
def approvals_reject(
    state: _State,
    approval_id: str | None,
    reason: str,
    checkpoint: str | None,
    partition_list: str | None,
    run_id: str | None,
    by: str | None,
) -> None:
    """Reject APPROVAL_ID (or, with --checkpoint, every open request matching): the gate fails
    with checkpoint_rejected and its downstream steps are skipped."""
    _decide(state, "reject", approval_id, checkpoint, partition_list, run_id, reason, by)


@approvals.command("modify")
@click.argument("approval_id")
@click.option("--value", "value_json", required=True, help="The value to pass on instead, as JSON.")
@click.option("--reason", help="Why (kept in the audit log).")
@click.option("--by", help="Who decides (default: user:<login>).")
@click.pass_obj
def approvals_modify(
    state: _State, approval_id: str, value_json: str, reason: str | None, by: str | None
) -> None:
    """Pass a corrected value on instead of the one under review; the run resumes with it."""
    from flowstone._errors import ValidationError
    from flowstone.cli import _console, _errors

    with _errors(state):
        try:
            value = json.loads(value_json)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"--value is not valid JSON: {exc}", context={"field": "--value"}) from None
        app = state.app()
        record = app.approvals.modify(approval_id, value, by=_actor(by), reason=reason)
        out = _console()
        _print(record, out)
        _run_status(app, record.run_id, out)


@approvals.command("history")
@click.argument("checkpoint")
@click.option("--partition", help="Only this partition's requests.")
@click.pass_obj
def approvals_history(state: _State, checkpoint: str, partition: str | None) -> None:
    """Who approved what data of CHECKPOINT, when and why (from the audit log)."""
    from rich.markup import escape
    from rich.table import Table

    from flowstone.cli import _console, _errors

    with _errors(state):
        app = state.app()
        table = Table(title=f"history of {checkpoint}")
        for col in ("at", "partition", "action", "by", "reason", "approval", "run"):
            table.add_column(col)
        for row in app.approvals.history(checkpoint, partition=partition):
            table.add_row(
                _when(row["at"]),
                escape(row.get("partition") or "-"),
                row["action"].removeprefix("checkpoint."),
                escape(row["actor"]),
                escape(row.get("reason") or ""),
                row["resource_id"][:12],
                str(row.get("run_id", ""))[:12],
            )
        _console().print(table)


@approvals.command("timeouts")
@click.pass_obj
def approvals_timeouts(state: _State) -> None:
    """Apply each overdue request's on_timeout now (the worker and daemon loops do this too)."""
    from flowstone.cli import _console, _errors

    with _errors(state):
        done = state.app().approvals.process_timeouts()
        for approval_id, what in done:
            _console().print(f"approval {approval_id[:12]}: {what}", markup=False)
        if not done:
            _console().print("no request is overdue")
