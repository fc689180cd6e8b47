"""Durable distributed execution on PostgreSQL: the run queue and its workers.

Behind this narrow seam sits procrastinate (jobs, LISTEN/NOTIFY, worker heartbeats); what may
run, when, and only once, is decided in FlowStone's own tables in the same transactions (see
``_db``). Users reach it through ``FlowStone.submit`` / ``materialize(executor="queue")``,
``flowstone worker`` and ``flowstone run cancel``::

    app = fs.FlowStone(pipeline, store="postgresql://etl@db/flowstone")
    run_id = app.submit(["daily_report"], partition="2025-01-15")   # returns at once
    app.wait_run(run_id)                                             # or watch `flowstone runs`

    $ flowstone worker --concurrency 4              # on as many hosts as you like
"""

from __future__ import annotations

from flowstone.queue._config import (
    DEFAULT_QUEUE,
    PRIORITY_BACKFILL,
    PRIORITY_INTERACTIVE,
    QueueConfig,
)

__all__ = ["DEFAULT_QUEUE", "PRIORITY_BACKFILL", "PRIORITY_INTERACTIVE", "QueueConfig", "RunQueue", "Worker"]


def __getattr__(name: str) -> object:
    # The worker and the queue's SQL import procrastinate/psycopg: only when asked for.
    if name == "Worker":
        from flowstone.queue._worker import Worker

        return Worker
    if name == "RunQueue":
        from flowstone.queue._run_queue import RunQueue

        return RunQueue
    raise AttributeError(name)
