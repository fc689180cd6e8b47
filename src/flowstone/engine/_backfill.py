"""Backfills: materialize many partitions of the selected assets as one tracked, cancellable job.

    app.backfill(["daily_report"], start="2025-01-01", end="2025-03-31", parallel=4)
    app.backfill(["daily_report"], partitions=["2025-01-15", "2025-01-16"])
    app.backfill(["daily_report"], all=True, force=True)

The keys are planned into one run: each partition is its own step (and its own materialization),
a downstream partition starts as soon as the upstream partitions it reads are done, and one failed
partition never touches the others. The backfill record in the store keeps the requested keys and
live counts; ``cancel`` asks the running process to stop starting steps (running ones finish);
``resume`` runs again whatever did not succeed. One process at a time claims a backfill
(``requested`` -> ``running``), so it never runs twice at once; when its run dies with its
process, recovery marks the backfill ``abandoned`` too, and it can be resumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowstone._errors import ValidationError
from flowstone._events import (
    RUN_FINISHED,
    STEP_FAILED,
    STEP_RETRYING,
    STEP_SKIPPED,
    STEP_STARTED,
    STEP_SUCCEEDED,
    Event,
)
from flowstone._records import BackfillRecord, BackfillStatus, RunStatus
from flowstone.engine._result import RunResult

if TYPE_CHECKING:
    from flowstone._app import FlowStone

COUNT_WRITE_EVERY_S = 1.0


@dataclass
class BackfillResult:
    backfill: BackfillRecord
    run: RunResult | None

    @property
    def id(self) -> str:
        return self.backfill.id

    @property
    def status(self) -> BackfillStatus:
        return self.backfill.status

    @property
    def counts(self) -> dict[str, int]:
        return self.backfill.counts


def backfill_keys(
    app: FlowStone,
    assets: Iterable[str],
    *,
    start: str | None,
    end: str | None,
    partitions: Sequence[str] | None,
    all_partitions: bool,
) -> tuple[list[str], dict[str, Any]]:
    """The requested keys (in definition order, no duplicates) and how they were chosen."""
    chosen = sum(x for x in (partitions is not None, all_partitions, start is not None or end is not None))
    if chosen != 1:
        raise ValidationError("choose the partitions one way: start/end (--from/--to), partitions, or all")
    resolve = app.resolver()
    definitions = [(a, d) for a in sorted(assets) if (d := resolve(a)) is not None]
    if not definitions:
        raise ValidationError(f"none of {sorted(assets)} is partitioned: nothing to backfill")
    if partitions is not None:
        if isinstance(partitions, str):
            raise ValidationError("partitions must be a collection of keys, not one string")
        keys = list(dict.fromkeys(partitions))
        if not keys:
            raise ValidationError("no partitions given: name at least one key")
        # Every key must be a partition of at least one selected asset: never drop one silently.
        for key in keys:
            if not any(key in definition for _, definition in definitions):
                asset = definitions[0][0]
                where = (
                    f"asset '{asset}'" if len(definitions) == 1 else f"any of {[a for a, _ in definitions]}"
                )
                raise ValidationError(
                    f"partition {key!r} is not valid for {where}",
                    context={"asset": asset, "partition": key},
                )
        return keys, {"partitions": len(keys)}
    seen: dict[str, None] = {}
    for asset, definition in definitions:
        if all_partitions:
            seen.update(dict.fromkeys(definition.keys()))
            continue
        for bound, name in ((start, "from"), (end, "to")):
            if bound is not None and bound not in definition:
                raise ValidationError(
                    f"--{name} {bound!r} is not a partition of asset '{asset}'",
                    context={"asset": asset, "partition": bound},
                )
        if start is not None and end is not None and definition.index_of(start) > definition.index_of(end):
            raise ValidationError(
                f"--from {start!r} comes after --to {end!r}: nothing to backfill",
                context={"asset": asset, "from": start, "to": end},
            )
        seen.update(dict.fromkeys(definition.keys(start, end)))
    keys = list(seen)
    if not keys:
        raise ValidationError(f"no partitions between {start!r} and {end!r}")
    return keys, ({"all": True} if all_partitions else {"from": start, "to": end})


class _Progress:
    """Counts step outcomes of the targets of a backfill as they happen."""

    def __init__(
        self,
        app: FlowStone,
        backfill_id: str,
        counts: dict[str, int],
        targets: set[tuple[str, str | None]],
        on_progress: Callable[[dict[str, int]], None] | None,
    ) -> None:
        self.app = app
        self.backfill_id = backfill_id
        self.targets = targets
        self.on_progress = on_progress
        self.counts = dict(counts)
        self.last_write = time.monotonic()

    def __call__(self, event: Event) -> None:
        key = (event.asset or "", event.partition_key)
        if event.type == RUN_FINISHED:
            return
        if key not in self.targets:
            return
        moves = {
            STEP_STARTED: ("queued", "running"),
            STEP_SUCCEEDED: ("running", "succeeded"),
            STEP_FAILED: ("running", "failed"),
            STEP_SKIPPED: ("queued", "skipped"),
            STEP_RETRYING: ("running", "queued"),
        }
        if event.type not in moves:
            return
        source, target = moves[event.type]
        self.counts[source] = max(0, self.counts.get(source, 0) - 1)
        self.counts[target] = self.counts.get(target, 0) + 1
        if self.on_progress is not None:
            self.on_progress(dict(self.counts))
        now = time.monotonic()
        if now - self.last_write >= COUNT_WRITE_EVERY_S:
            self.last_write = now
            self.app.store.update_backfill_counts(
                tenant=self.app.tenant, backfill_id=self.backfill_id, counts=self.counts
            )


def run_backfill(
    app: FlowStone,
    record: BackfillRecord,
    *,
    force: bool,
    parallel: int,
    actor: str,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[dict[str, int]], None] | None = None,
    executor: str | None = None,
) -> BackfillResult:
    """Plan and execute the backfill ``record`` (new or resumed) and keep its record current."""
    from flowstone.engine._runner import check_executor

    store, tenant = app.store, app.tenant
    # Keys that no selected asset has any more (a dynamic key removed since the backfill was
    # requested) are left out, and said so on the record, instead of failing the whole backfill.
    resolve = app.resolver()
    definitions = [d for a in record.assets if (d := resolve(a)) is not None]
    keys = [k for k in record.partition_keys if any(k in d for d in definitions)]
    dropped = len(record.partition_keys) - len(keys)
    try:
        check_executor(executor)
        if not keys:
            raise ValidationError(
                f"none of the {len(record.partition_keys)} partitions of the backfill exist any more"
            )
        # Without force: exactly the missing and the stale partitions (and what they need).
        plan = app.plan(record.assets, partitions=keys, force=force, stale=not force)
    except BaseException as exc:
        # Recorded only if the backfill is ours to run: never fail one that runs elsewhere.
        if store.start_backfill(tenant=tenant, backfill_id=record.id, counts=record.counts):
            store.finish_backfill(
                tenant=tenant,
                backfill_id=record.id,
                status=BackfillStatus.FAILED if isinstance(exc, Exception) else BackfillStatus.ABANDONED,
                error=f"planning failed: {type(exc).__name__}: {exc}",
            )
        raise
    # The requested pairs: a selected asset at a requested key (or an unpartitioned selected
    # asset), not the upstream partitions a mapping pulls in beyond the requested range.
    wanted = set(record.partition_keys)
    selected = set(record.assets)
    targets = {
        s.key
        for s in plan.steps
        if s.asset in selected and (s.partition_key is None or s.partition_key in wanted)
    }
    up_to_date = [k for k in plan.up_to_date if k[1] is None or k[1] in wanted]
    counts = {
        "total": len(targets) + len(up_to_date),
        "queued": len(targets),
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "skipped": len(up_to_date),
        "up_to_date": len(up_to_date),
    }
    if dropped:
        counts["dropped"] = dropped
    # Claim it (requested -> running) only now, right before its run is created: of two processes
    # starting or resuming it only one runs it, and one killed while planning leaves it
    # ``requested``, so a resume can still take it.
    if not store.start_backfill(tenant=tenant, backfill_id=record.id, counts=counts):
        current = store.get_backfill(tenant=tenant, backfill_id=record.id) or record
        raise ValidationError(
            f"backfill {record.id} is {current.status}, not waiting to run"
            + (
                f": cancel it (`flowstone backfill cancel {record.id[:12]}`) or let it finish"
                if not current.status.finished
                else ""
            ),
            context={"backfill_id": record.id, "status": current.status.value},
        )
    if executor == "queue":
        # Workers run it; the transaction that ends its run ends the backfill too.
        app.submit_plan(plan, actor=actor, backfill_id=record.id)
        queued = store.get_backfill(tenant=tenant, backfill_id=record.id)
        assert queued is not None
        return BackfillResult(queued, None)
    progress = _Progress(app, record.id, counts, targets, on_progress)
    unsubscribe = app.events.subscribe(progress)
    run: RunResult | None = None
    try:
        if on_start is not None:
            on_start(counts["total"], counts["up_to_date"])
        run = app.execute(
            plan,
            parallel=parallel,
            actor=actor,
            backfill_id=record.id,
            cancelled=lambda: store.cancel_requested(tenant=tenant, backfill_id=record.id),
            executor=executor,
        )
    except BaseException as exc:
        store.finish_backfill(
            tenant=tenant,
            backfill_id=record.id,
            status=BackfillStatus.ABANDONED,
            counts=progress.counts,
            error=f"interrupted: {type(exc).__name__}",
        )
        raise
    finally:
        unsubscribe()
    if run.status is RunStatus.CANCELLED:
        status = BackfillStatus.CANCELLED
    elif progress.counts.get("failed", 0) or run.status is RunStatus.FAILED:
        status = BackfillStatus.FAILED
    else:
        status = BackfillStatus.SUCCEEDED
    store.finish_backfill(tenant=tenant, backfill_id=record.id, status=status, counts=progress.counts)
    final = store.get_backfill(tenant=tenant, backfill_id=record.id)
    assert final is not None
    return BackfillResult(final, run)
