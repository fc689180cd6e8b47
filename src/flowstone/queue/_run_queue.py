"""``RunQueue``: what the rest of FlowStone knows of the queue — submit, cancel, follow.

The enqueuing side of the seam. It never imports procrastinate (deferring is plain SQL through
procrastinate's own database function), so enqueuing needs only psycopg.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flowstone._clock import Clock, SystemClock
from flowstone._ids import new_id
from flowstone._records import RunStatus
from flowstone.engine._planner import Plan
from flowstone.queue._config import PRIORITY_INTERACTIVE, QueueConfig
from flowstone.queue._db import QueueDB

if TYPE_CHECKING:
    from flowstone._pipeline import Pipeline
    from flowstone.store._store import Store

Progress = Callable[[str, dict[str, int]], None]


class RunQueue:
    """Submit plans as queue runs, cancel them and wait for them, on one PostgreSQL store."""

    def __init__(self, store: Store, pipeline: Pipeline, *, config: QueueConfig | None = None) -> None:
        self.store = store
        self.db = QueueDB(store.engine, pipeline, config=config or QueueConfig())
        self.pipeline = pipeline
        self._schema_ready = False

    def _ready(self) -> None:
        if not self._schema_ready:
            self.db.ensure_schema()
            self._schema_ready = True

    def submit(
        self,
        plan: Plan,
        *,
        tenant: str,
        actor: str = "api",
        priority: int = PRIORITY_INTERACTIVE,
        backfill_id: str | None = None,
    ) -> str:
        """Create the run and enqueue the steps that can start; returns the run id at once."""
        self._ready()
        run_id = new_id()
        step_ids = {s.key: new_id() for s in plan.steps}
        self.db.submit(
            plan,
            run_id=run_id,
            tenant=tenant,
            pipeline=self.pipeline.name,
            actor=actor,
            priority=priority,
            step_ids=step_ids,
            backfill_id=backfill_id,
        )
        return run_id

    def cancel(self, *, tenant: str, run_id: str, actor: str = "api", reason: str | None = None) -> bool:
        self._ready()
        return self.db.cancel(tenant=tenant, run_id=run_id, actor=actor, reason=reason)

    def wait(
        self,
        *,
        tenant: str,
        run_id: str,
        timeout: float | None = None,
        poll: float = 0.2,
        on_progress: Progress | None = None,
        clock: Clock | None = None,
    ) -> str:
        """Poll the run until it ends (or ``timeout`` seconds pass); returns its status."""
        clock = clock or SystemClock()
        deadline = None if timeout is None else clock.monotonic() + timeout
        while True:
            found = self.db.progress(tenant=tenant, run_id=run_id)
            if found is None:
                raise LookupError(f"no run {run_id!r}")
            status, counts = found
            if on_progress is not None:
                on_progress(status, counts)
            if RunStatus(status).finished or status == RunStatus.WAITING_APPROVAL.value:
                return status
            if deadline is not None and clock.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} is still {status} after {timeout:g}s")
            clock.sleep(poll)
