"""The queue's bookkeeping on PostgreSQL: every state change of a queue run is one transaction.

Jobs live in procrastinate's job table and move through its own SQL functions (defer, fetch,
finish, cancel, worker registration); everything that decides *what* may run lives in our tables
and changes together with the job table, in the same transaction:

- **submit**: the run, its steps, their dependencies, its count-down buckets and the jobs of the
  steps that can start commit together (a crash in between leaves neither);
- **fetch and claim**: procrastinate's fetch takes the highest-priority ready job and, in the
  same transaction, the worker starts its step by inserting its row in ``flowstone_step_claims``
  (primary key tenant, asset, partition: at most one running anywhere), after checking the pool,
  queue and tenant limits under advisory locks when there are any;
- **finish**: the materialization, lineage, step status, the claim's release, the end of the job,
  the hand-off to the downstream steps that became ready (their jobs are deferred here), the
  retry's job or the skipping of the downstream, and the end of the run all commit together,
  usually with the thread's next fetch and claim (``finish_and_fetch``): one transaction per
  step. Only the job that owns the step (``run_steps.job_id``) may record its outcome, so a
  worker presumed dead that comes back cannot record a second success.

A run's finished steps are counted down in buckets (``flowstone_run_buckets``), the run's own
row only when a bucket empties: with one counter on the run row, every finish of a wide run
queued behind the previous one's commit.

SQL is written for PostgreSQL and run on the driver connection: per step these few statements
(about seven, most of them CTEs doing several writes) are the whole cost of the queue, so
nothing is built per call.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from flowstone._errors import DependencyFailed, ExecutionError, FlowStoneError, StoreError, ValidationError
from flowstone._pipeline import Pipeline
from flowstone._records import RunStatus, StepStatus
from flowstone.engine._planner import InputGroup, Plan, PlannedStep, StepKey
from flowstone.queue._code import code_versions
from flowstone.queue._config import DEFAULT_QUEUE, TASK_NAME, QueueConfig
from flowstone.store._store import HOST, utcnow
from flowstone.store._writer import StepRows

T = TypeVar("T")

# Submitting at least this many steps refreshes the job table's statistics.
_ANALYZE_AFTER = 500

_QUEUED = StepStatus.QUEUED.value
_RETRYING = StepStatus.RETRYING.value
_PENDING = StepStatus.PENDING.value
_RUNNING = StepStatus.RUNNING.value
_SKIPPED = StepStatus.SKIPPED.value
_SUCCEEDED = StepStatus.SUCCEEDED.value
_FAILED = StepStatus.FAILED.value


@dataclass(frozen=True)
class JobArgs:
    """A job's payload: names and keys only, JSON as it is stored in the job table."""

    tenant: str
    run: str
    asset: str
    partition: str | None
    attempt: int
    code: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "tenant": self.tenant,
                "run": self.run,
                "asset": self.asset,
                "partition": self.partition,
                "attempt": self.attempt,
                "code": self.code,
            }
        )

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> JobArgs:
        return cls(
            tenant=str(kwargs["tenant"]),
            run=str(kwargs["run"]),
            asset=str(kwargs["asset"]),
            partition=None if kwargs.get("partition") is None else str(kwargs["partition"]),
            attempt=int(kwargs["attempt"]),
            code=str(kwargs.get("code", "")),
        )


@dataclass(frozen=True)
class _ToEnqueue:
    step_id: str
    run_id: str
    asset: str
    partition_key: str  # '' for unpartitioned
    attempt: int
    priority: int
    queue: str
    delay: float = 0.0
    # The code version the run was submitted with (None: the caller's ``codes`` decide).
    code: str | None = None


@dataclass
class Claimed:
    """A step this worker now runs: what it needs to compute and record it."""

    step_id: str
    args: JobArgs
    job_id: int
    step: PlannedStep
    # In-run inputs: their materialization id and data version (outside ones come from the spec).
    upstream: dict[StepKey, tuple[str | None, str | None]]
    started_at: datetime
    run_created_at: datetime


class WorkerGone(Exception):
    """This worker's row is gone from procrastinate's worker table: it was presumed dead.
    ``recorded``: whether the outcome recorded along with the failed fetch was."""

    def __init__(self, worker_id: int, *, recorded: bool = False) -> None:
        super().__init__(worker_id)
        self.worker_id = worker_id
        self.recorded = recorded


@dataclass(frozen=True)
class Later:
    """The step cannot start now (a limit is full or its partition runs elsewhere)."""

    reason: str
    delay: float


@dataclass
class Finish:
    """How an attempt ended, for :meth:`QueueDB.finish`."""

    rows: StepRows
    success: bool
    error: FlowStoneError | None = None
    retry_delay: float | None = None
    # dependency_not_ready: try again after this many seconds, the same attempt.
    not_ready_delay: float | None = None
    materialization_id: str | None = None
    # A checkpoint whose condition holds: the request to open (the step then waits for it).
    approval: ApprovalToOpen | None = None


@dataclass(frozen=True)
class ApprovalToOpen:
    approval_id: str
    checkpoint: str
    partition_key: str | None
    materialization_id: str
    message: str
    context: dict[str, Any]
    timeout_at: datetime | None
    approval_type: str
    now: datetime


def _key(partition: str | None) -> str:
    return partition if partition is not None else ""


def _out(key: str) -> str | None:
    return key if key != "" else None


def conninfo(url: str, *, options: str = "") -> tuple[str, dict[str, Any]]:
    """A libpq connection string for a SQLAlchemy PostgreSQL URL, and connect() keyword
    arguments carrying its ``options`` plus ``options`` given here."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    query = dict(parsed.query)
    given = query.pop("options", "")
    merged = " ".join(str(o) for o in (given if isinstance(given, tuple) else (given,)) if o)
    merged = f"{merged} {options}".strip()
    bare = parsed.set(drivername="postgresql", query=query)
    return str(bare.render_as_string(hide_password=False)), ({"options": merged} if merged else {})


def _claimed(
    step_id: str,
    args: JobArgs,
    job_id: int,
    spec: Any,
    upstream_rows: Sequence[Sequence[Any]],
    now: datetime,
    run_created_at: datetime,
) -> Claimed:
    """What a worker needs to run a claimed step: its inputs' groups (from the step's spec) and
    the materializations it reads (in-run upstream rows, plus those outside the run)."""
    upstream: dict[StepKey, tuple[str | None, str | None]] = {
        (a, _out(k)): (mat, version) for a, k, mat, version in upstream_rows
    }
    spec = spec if isinstance(spec, dict) else json.loads(spec or "{}")
    for a, k, mat in spec.get("existing", []):
        upstream.setdefault((a, k), (mat, None))
    groups = tuple(
        InputGroup(
            g["asset"],
            tuple(g["keys"]),
            bool(g["many"]),
            tuple(g.get("missing", ())),
            g.get("policy", "fail"),
        )
        for g in spec.get("groups", [])
    )
    planned = PlannedStep(args.asset, args.partition, groups)
    return Claimed(step_id, args, job_id, planned, upstream, now, run_created_at)


# Claim a fetched job's step in one statement: the common case (no limits to check). Whatever was
# not claimed (a stale job, a cancelled run, the partition running elsewhere) is told apart from
# the returned row and settled afterwards. Not one statement with the fetch: procrastinate's fetch
# function sees jobs committed after the calling statement's snapshot, whose reads of the
# upstream steps would then miss what the hand-off that deferred the job had recorded.
_CLAIM = """
WITH step AS (
    SELECT s.id, s.status, s.job_id, s.spec, s.run_id, r.cancel_requested, r.created_at
    FROM flowstone_run_steps s JOIN flowstone_runs r ON r.id = s.run_id
    WHERE s.run_id = %(run)s AND s.asset = %(asset)s AND s.partition_key = %(key)s
    FOR UPDATE OF s
), claim AS (
    INSERT INTO flowstone_step_claims (tenant_id, asset, partition_key, run_id, step_id, job_id,
        attempt, worker, queue, pool, claimed_at)
    SELECT %(tenant)s, %(asset)s, %(key)s, step.run_id, step.id, %(job)s, %(attempt)s, %(worker)s,
        %(queue)s, %(pool)s, %(now)s
    FROM step WHERE step.job_id = %(job)s AND step.status IN ('queued', 'retrying')
        AND NOT step.cancel_requested
    ON CONFLICT DO NOTHING
    RETURNING step_id
), started AS (
    UPDATE flowstone_run_steps s SET status = 'running', started_at = %(now)s
    FROM claim WHERE s.id = claim.step_id
), run AS (
    UPDATE flowstone_runs r SET status = 'running', started_at = COALESCE(r.started_at, %(now)s)
    WHERE r.id = %(run)s AND r.status IN ('queued', 'waiting_approval') AND EXISTS (SELECT 1 FROM claim)
), event AS (
    INSERT INTO flowstone_events (tenant_id, at, type, run_id, asset, partition_key, data)
    SELECT %(tenant)s, %(now)s, 'step.started', %(run)s, %(asset)s, %(key)s, %(data)s::json FROM claim
)
SELECT step.id, step.status, step.job_id, step.spec, step.cancel_requested, step.created_at,
    EXISTS (SELECT 1 FROM claim),
    (SELECT coalesce(json_agg(json_build_array(u.asset, u.partition_key, u.materialization_id,
        m.data_version)), '[]')
     FROM flowstone_run_step_deps d JOIN flowstone_run_steps u ON u.id = d.upstream_step_id
     LEFT JOIN flowstone_materializations m ON m.id = u.materialization_id WHERE d.step_id = step.id)
FROM step
"""


# Finish's first statement: lock the step and check that this job still owns it; if it does,
# release its claim and end its job (the job ends with its step's record: a retry or a hand-off is
# a new job). Also locks and returns the steps of other runs that joined it.
_FENCE = """
WITH step AS (
    SELECT s.id, s.status, s.job_id, r.cancel_requested, r.priority
    FROM flowstone_run_steps s JOIN flowstone_runs r ON r.id = s.run_id
    WHERE s.id = %(step)s FOR UPDATE OF s
), owned AS (
    SELECT id FROM step WHERE status = 'running' AND job_id = %(job)s
), released AS (
    DELETE FROM flowstone_step_claims c USING owned WHERE c.tenant_id = %(tenant)s
        AND c.asset = %(asset)s AND c.partition_key = %(key)s AND c.step_id = owned.id
), ended AS (
    DELETE FROM procrastinate_jobs j USING owned
    WHERE j.id = %(job)s AND j.status IN ('todo', 'doing')
), followers AS MATERIALIZED (
    SELECT f.id, f.run_id, f.asset, f.partition_key FROM flowstone_run_steps f, owned
    WHERE f.coalesced_into = owned.id AND f.status = 'queued' ORDER BY f.id FOR UPDATE OF f
)
SELECT step.status, step.job_id, step.cancel_requested, step.priority,
    (SELECT coalesce(json_agg(json_build_array(id, run_id, asset, partition_key)), '[]') FROM followers)
FROM step
"""

# Count down the steps waiting for the given (finished) steps, locked in id order; returns each
# with its new count, its run's cancel flag and priority, and whether another run has a queued
# step for the same partition it might join.
_RELEASE = """
WITH d AS (
    SELECT step_id, count(*) AS n FROM flowstone_run_step_deps WHERE upstream_step_id = ANY(%s)
    GROUP BY step_id
), locked AS MATERIALIZED (
    SELECT s.id FROM flowstone_run_steps s
    WHERE s.id IN (SELECT step_id FROM flowstone_run_step_deps WHERE upstream_step_id = ANY(%s))
    ORDER BY s.id FOR UPDATE
)
UPDATE flowstone_run_steps s SET waiting = s.waiting - d.n
FROM d, locked, flowstone_runs r
WHERE s.id = d.step_id AND locked.id = s.id AND r.id = s.run_id
RETURNING s.id, s.run_id, s.asset, s.partition_key, s.waiting, s.status, s.spec->>'code',
    r.cancel_requested, r.priority,
    s.waiting <= 0 AND EXISTS (SELECT 1 FROM flowstone_run_steps o WHERE o.tenant_id = %s
        AND o.asset = s.asset AND o.partition_key = s.partition_key AND o.status = 'queued'
        AND o.run_id <> s.run_id)
"""


# A run's steps are counted down in this many buckets (by position), each a row of
# flowstone_run_buckets; the run's own steps_left drops by a bucket's size when it empties.
_BUCKETS = 64

_COUNT_DOWN = """
WITH done AS (
    SELECT s.run_id, s.position %% %s AS bucket, count(*) AS n
    FROM flowstone_run_steps s WHERE s.id = ANY(%s) GROUP BY 1, 2
), counted AS (
    UPDATE flowstone_run_buckets b SET steps_left = b.steps_left - done.n FROM done
    WHERE b.run_id = done.run_id AND b.bucket = done.bucket
    RETURNING b.run_id, b.size, b.steps_left
)
SELECT c.run_id, coalesce(sum(c.size) FILTER (WHERE c.steps_left = 0), 0),
    EXISTS (SELECT 1 FROM flowstone_approvals a WHERE a.run_id = c.run_id
        AND a.status IN ('pending', 'escalated'))
FROM counted c GROUP BY c.run_id ORDER BY c.run_id
"""


class QueueDB:
    """Transactions of the run queue. One per process; thread-safe (a connection per call)."""

    def __init__(
        self, engine: Any, pipeline: Pipeline, *, config: QueueConfig, own_connections: bool = False
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ValidationError(
                'the queue executor needs a PostgreSQL store (store = "postgresql://..."); '
                f"this store is {engine.dialect.name}. Without a queue, use --executor threads "
                "or processes",
                context={"store": engine.dialect.name},
            )
        self.engine = engine
        self.config = config
        self.pipeline = pipeline
        self._pool_limits = {**pipeline.pool_limits, **config.pool_limits}
        self._codes = code_versions(pipeline)
        # own_connections (a worker's): each thread keeps a connection of its own (the worker's
        # threads live as long as it does), used unchecked: a dead one fails its transaction,
        # which ``_retrying`` runs again on a new one. Otherwise the store engine's pool, which
        # pings each connection before handing it out.
        self._own = own_connections
        self._local = threading.local()
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()
        # Limits to check at claim time: claims then take the longer path (advisory locks, counts).
        self._limited = bool(
            self._pool_limits
            or config.queue_limits
            or config.tenant_limit is not None
            or config.tenant_limits
        )

    @property
    def codes(self) -> Mapping[str, str]:
        """Each asset's code version as this process sees it (see ``_code``)."""
        return self._codes

    # ------------------------------------------------------------------ plumbing
    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg

            info, kwargs = conninfo(self.engine.url.render_as_string(hide_password=False))
            conn = psycopg.connect(info, **kwargs)
            self._local.conn = conn
            with self._opened_lock:
                self._opened = [c for c in self._opened if not c.closed]
                self._opened.append(conn)
        return conn

    def close(self) -> None:
        """Close this QueueDB's own connections (the store engine's stay with the store)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """A driver cursor inside one transaction: committed on success, rolled back otherwise."""
        if self._own:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    yield cur
                conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.rollback()
                if conn.broken:
                    with contextlib.suppress(Exception):
                        conn.close()
                raise
            return
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                yield cur
                raw.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    raw.rollback()
                raise
            finally:
                with contextlib.suppress(Exception):
                    cur.close()
        finally:
            raw.close()

    def _retrying(self, fn: Callable[[Any], T], *, what: str) -> T:
        """Run ``fn(cursor)`` in a transaction, again on deadlock, serialization failure or a
        dropped connection (then on a new one)."""
        import psycopg

        last: Exception | None = None
        for attempt in range(6):
            try:
                with self._tx() as cur:
                    return fn(cur)
            except (
                psycopg.errors.DeadlockDetected,
                psycopg.errors.SerializationFailure,
                psycopg.OperationalError,
            ) as exc:
                last = exc
                if isinstance(exc, psycopg.OperationalError) and not self._own:
                    self.engine.pool.dispose()  # its other connections most likely died with this one
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))  # back off: not a test wait
        raise StoreError(f"{what} failed: {last}", original=last, retryable=True)

    def ensure_schema(self) -> None:
        """Create procrastinate's tables on first use (under a lock, so workers starting
        together do not race)."""
        from procrastinate import schema

        def apply(cur: Any) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(7426002)")
            cur.execute("SELECT to_regclass('procrastinate_jobs')")
            if cur.fetchone()[0] is None:
                cur.execute(schema.SchemaManager.get_schema())

        self._retrying(apply, what="creating the queue's tables")

    # ------------------------------------------------------------------ submit
    def submit(
        self,
        plan: Plan,
        *,
        run_id: str,
        tenant: str,
        pipeline: str,
        actor: str,
        priority: int,
        step_ids: Mapping[StepKey, str],
        backfill_id: str | None = None,
        fail_after_run_insert: Callable[[], None] | None = None,
    ) -> None:
        """Insert the run, its steps and their dependencies, and defer the jobs of the steps
        with no upstream in the run: one transaction."""
        now = utcnow()
        steps = plan.steps
        in_run = {s.key for s in steps}

        def write(cur: Any) -> None:
            cur.execute(
                "INSERT INTO flowstone_runs (id, tenant_id, pipeline, status, selection, partition_key,"
                " force, actor, executor, host, pid, created_at, step_count, backfill_id, steps_left,"
                " priority) VALUES (%s, %s, %s, %s, %s::json, %s, %s, %s, 'queue', %s, %s, %s, %s, %s,"
                " %s, %s)",
                (
                    run_id,
                    tenant,
                    pipeline,
                    RunStatus.QUEUED.value if steps else RunStatus.SUCCEEDED.value,
                    json.dumps(plan.selection),
                    _key(plan.partition_key),
                    plan.force,
                    actor,
                    HOST,
                    os.getpid(),
                    now,
                    len(steps),
                    backfill_id,
                    len(steps),
                    priority,
                ),
            )
            if fail_after_run_insert is not None:
                fail_after_run_insert()
            rows = []
            deps: list[tuple[str, str, str, str]] = []
            ready: list[_ToEnqueue] = []
            for position, s in enumerate(steps):
                sid = step_ids[s.key]
                ups = [i for i in dict.fromkeys(s.inputs) if i in in_run]
                spec = {
                    "groups": [
                        {
                            "asset": g.asset,
                            "keys": list(g.keys),
                            "many": g.many,
                            "missing": list(g.missing),
                            "policy": g.policy,
                        }
                        for g in s.groups
                    ],
                    "existing": [
                        [a, k, plan.existing[(a, k)]] for a, k in s.inputs if (a, k) in plan.existing
                    ],
                    # Its downstream steps are deferred later by workers: they carry this.
                    "code": self._codes.get(s.asset, ""),
                }
                rows.append(
                    (
                        sid,
                        tenant,
                        run_id,
                        position,
                        s.asset,
                        _key(s.partition_key),
                        _PENDING,
                        json.dumps([[a, k or ""] for a, k in s.inputs]),
                        len(ups),
                        json.dumps(spec),
                    )
                )
                deps.extend((tenant, run_id, step_ids[u], sid) for u in ups)
                if not ups:
                    ready.append(
                        _ToEnqueue(
                            sid, run_id, s.asset, _key(s.partition_key), 1, priority, self._queue_of(s.asset)
                        )
                    )
            if rows:
                cur.executemany(
                    "INSERT INTO flowstone_run_steps (id, tenant_id, run_id, position, asset,"
                    " partition_key, status, attempt, upstream, waiting, spec) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, 0, %s::json, %s, %s::json)",
                    rows,
                )
            if deps:
                cur.executemany(
                    "INSERT INTO flowstone_run_step_deps (tenant_id, run_id, upstream_step_id, step_id)"
                    " VALUES (%s, %s, %s, %s)",
                    deps,
                )
            cur.execute(
                "INSERT INTO flowstone_run_buckets (tenant_id, run_id, bucket, size, steps_left)"
                " SELECT %s, run_id, position %% %s, count(*), count(*) FROM flowstone_run_steps"
                " WHERE run_id = %s GROUP BY 2, 3",
                (tenant, _BUCKETS, run_id),
            )
            cur.execute(
                "INSERT INTO flowstone_audit_log (tenant_id, at, actor, actor_type, action,"
                " resource_type, resource_id, details) VALUES (%s, %s, %s, %s, 'materialize', 'run',"
                " %s, %s::json)",
                (
                    tenant,
                    now,
                    actor,
                    "system" if actor == "system" else ("api" if actor == "api" else "user"),
                    run_id,
                    json.dumps(
                        {
                            "selection": plan.selection,
                            "partition": plan.partition_key,
                            "force": plan.force,
                            "executor": "queue",
                            **({"backfill": backfill_id} if backfill_id else {}),
                        }
                    ),
                ),
            )
            self._event(cur, tenant, "run.queued", run_id, None, None, {"steps": len(steps)}, now)
            if not steps:
                cur.execute(
                    "UPDATE flowstone_runs SET started_at = %s, finished_at = %s WHERE id = %s",
                    (now, now, run_id),
                )
            self._enqueue(cur, tenant, ready, self._codes)

        with self._tx() as cur:  # not retried: a half-known outcome must not insert twice
            write(cur)
        if len(steps) >= _ANALYZE_AFTER:
            # A burst of jobs into a job table the planner believes small or empty makes it
            # fetch by sorting every waiting job (a bitmap scan, then a sort: milliseconds per
            # fetch, growing with the backlog) until autovacuum gets round to analyzing it; the
            # priority index is the plan once the statistics know the backlog.
            with contextlib.suppress(Exception), self._tx() as cur:
                cur.execute("ANALYZE procrastinate_jobs")

    def _event(
        self,
        cur: Any,
        tenant: str,
        type_: str,
        run_id: str | None,
        asset: str | None,
        key: str | None,
        data: Mapping[str, Any] | None,
        at: datetime | None = None,
    ) -> None:
        cur.execute(
            "INSERT INTO flowstone_events (tenant_id, at, type, run_id, asset, partition_key, data)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::json)",
            (
                tenant,
                at or utcnow(),
                type_,
                run_id,
                asset,
                key or "",
                json.dumps(dict(data)) if data else None,
            ),
        )

    def _enqueue(
        self,
        cur: Any,
        tenant: str,
        items: Sequence[_ToEnqueue],
        codes: Mapping[str, str],
        *,
        joinable: bool = True,
    ) -> None:
        """Give each step a job, or join it to the same partition's queued step of another run
        (``joinable``: False when the caller knows there is none)."""
        if not items:
            return
        if not joinable and len({(i.asset, i.partition_key) for i in items}) == len(items):
            self._defer(cur, tenant, items, codes)
            return
        # Coalesce: a queued (not yet started) step of another run for the same partition will
        # produce what this one would; the lock keeps it from starting while we join it.
        cur.execute(
            "SELECT x.n, s.id, s.job_id FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY"
            " AS x(run_id, asset, pkey, n)"
            " JOIN LATERAL (SELECT id, job_id FROM flowstone_run_steps s WHERE s.tenant_id = %s"
            " AND s.asset = x.asset AND s.partition_key = x.pkey AND s.status = 'queued'"
            " AND s.coalesced_into IS NULL AND s.run_id <> x.run_id AND s.job_id IS NOT NULL"
            " ORDER BY s.id LIMIT 1 FOR UPDATE) s ON true",
            ([i.run_id for i in items], [i.asset for i in items], [i.partition_key for i in items], tenant),
        )
        found = cur.fetchall()
        leaders = {int(n) - 1: sid for n, sid, _job in found}
        if leaders:
            cur.executemany(
                "UPDATE flowstone_run_steps SET status = 'queued', attempt = 1, coalesced_into = %s"
                " WHERE id = %s",
                [(leader, items[i].step_id) for i, leader in leaders.items()],
            )
            # The shared step goes at the higher of the runs' priorities: an interactive run
            # that joins a backfill's step does not wait behind the rest of the backfill.
            cur.executemany(
                "UPDATE procrastinate_jobs SET priority = %s WHERE id = %s AND status = 'todo'"
                " AND priority < %s",
                [(items[int(n) - 1].priority, job, items[int(n) - 1].priority) for n, _sid, job in found],
            )
        # Steps of several runs for one partition made ready together (a shared step's
        # downstream in each run): the first gets the job, at their highest priority, and the
        # others join it.
        firsts: dict[tuple[str, str], _ToEnqueue] = {}
        joined: list[tuple[str, str]] = []
        for i, item in enumerate(items):
            if i in leaders:
                continue
            first = firsts.setdefault((item.asset, item.partition_key), item)
            if first is not item:
                joined.append((first.step_id, item.step_id))
                if item.priority > first.priority:
                    firsts[(item.asset, item.partition_key)] = replace(first, priority=item.priority)
        self._defer(cur, tenant, list(firsts.values()), codes)
        if joined:
            cur.executemany(
                "UPDATE flowstone_run_steps SET status = 'queued', attempt = 1, coalesced_into = %s"
                " WHERE id = %s",
                joined,
            )

    def _defer(self, cur: Any, tenant: str, items: Sequence[_ToEnqueue], codes: Mapping[str, str]) -> None:
        if not items:
            return
        now = utcnow()
        args = [
            JobArgs(
                tenant,
                i.run_id,
                i.asset,
                _out(i.partition_key),
                i.attempt,
                i.code if i.code is not None else codes.get(i.asset, ""),
            ).to_json()
            for i in items
        ]
        if len(items) == 1:
            # One job (a hand-off to one downstream step, a retry): deferred and given to its
            # step in one statement (the function runs once, as an init plan).
            (item,) = items
            cur.execute(
                "UPDATE flowstone_run_steps SET job_id = (SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW(%s,"
                " %s, %s, NULL, NULL, %s::jsonb, %s)::procrastinate_job_to_defer_v1]))[1]), attempt = %s,"
                " status = CASE WHEN status = 'retrying' THEN 'retrying' ELSE 'queued' END WHERE id = %s",
                (
                    item.queue,
                    TASK_NAME,
                    item.priority,
                    args[0],
                    now + timedelta(seconds=item.delay) if item.delay > 0 else None,
                    item.attempt,
                    item.step_id,
                ),
            )
            return
        cur.execute(
            "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY(SELECT ROW(x.queue, %s, x.priority,"
            " NULL, NULL, x.args::jsonb, x.at)::procrastinate_job_to_defer_v1 FROM unnest(%s::text[],"
            " %s::int[], %s::text[], %s::timestamptz[]) WITH ORDINALITY AS x(queue, priority, args, at, n)"
            " ORDER BY x.n)))",
            (
                TASK_NAME,
                [i.queue for i in items],
                [i.priority for i in items],
                args,
                [now + timedelta(seconds=i.delay) if i.delay > 0 else None for i in items],
            ),
        )
        job_ids = [row[0] for row in cur.fetchall()]
        # Which job is whose: matched on the payload's names (never on the order of returned ids).
        cur.execute(
            "UPDATE flowstone_run_steps s SET job_id = j.id, attempt = (j.args->>'attempt')::int,"
            " status = CASE WHEN s.status = 'retrying' THEN 'retrying' ELSE 'queued' END"
            " FROM procrastinate_jobs j WHERE j.id = ANY(%s) AND s.run_id = j.args->>'run'"
            " AND s.asset = j.args->>'asset' AND s.partition_key = COALESCE(j.args->>'partition', '')",
            (job_ids,),
        )

    # ------------------------------------------------------------------ claim
    def fetch(self, *, worker_id: int, queues: Sequence[str] | None, worker: str) -> Claimed | bool:
        """Take the next ready job (procrastinate's own fetch, highest priority first) and start
        its step, in one transaction. ``Claimed``: run it. True: a job was taken and settled here
        (stale, its run cancelled, or deferred again because it must wait). False: none ready.

        Raises ``WorkerGone`` when ``worker_id`` is no longer registered (presumed dead)."""
        return self._retrying(
            lambda cur: self._fetch_in(cur, worker_id, queues, worker), what="fetching a step"
        )

    def _fetch_in(
        self, cur: Any, worker_id: int, queues: Sequence[str] | None, worker: str
    ) -> Claimed | bool:
        import psycopg

        try:
            cur.execute(
                "SELECT id, args, queue_name FROM procrastinate_fetch_job_v2(%s::varchar[], %s)",
                (list(queues) if queues else None, worker_id),
            )
        except psycopg.errors.ForeignKeyViolation as exc:
            raise WorkerGone(worker_id) from exc
        row = cur.fetchone()
        if row is None or row[0] is None:
            return False
        job_id, raw, queue = int(row[0]), row[1], row[2]
        args = JobArgs.from_kwargs(raw if isinstance(raw, dict) else json.loads(raw))
        outcome: Claimed | Later | None
        if self._limited:
            outcome = self._claim(cur, job_id, args, worker)
        else:
            outcome = self._claim_fast(cur, job_id, args, worker, queue)
        if isinstance(outcome, Claimed):
            return outcome
        if isinstance(outcome, Later):
            self._defer_again(cur, job_id, args, outcome.delay)
        cur.execute("SELECT procrastinate_finish_job_v1(%s, 'succeeded', true)", (job_id,))
        return True

    def _claim_fast(
        self, cur: Any, job_id: int, args: JobArgs, worker: str, queue: str
    ) -> Claimed | Later | None:
        """``_claim`` in one statement (``_CLAIM``) when there are no limits to check."""
        now = utcnow()
        key = _key(args.partition)
        cur.execute(
            _CLAIM,
            {
                "run": args.run,
                "asset": args.asset,
                "key": key,
                "tenant": args.tenant,
                "job": job_id,
                "attempt": args.attempt,
                "worker": worker,
                "queue": queue,
                "pool": self._pool_of(args.asset),
                "now": now,
                "data": json.dumps({"attempt": args.attempt}) if args.attempt > 1 else None,
            },
        )
        row = cur.fetchone()
        if row is None:
            return None
        step_id, status, owner, spec, cancel, created_at, claimed, upstream = row
        if claimed:
            rows = upstream if isinstance(upstream, list) else json.loads(upstream)
            return _claimed(step_id, args, job_id, spec, rows, now, created_at)
        if step_id is None or owner != job_id or status not in (_QUEUED, _RETRYING):
            return None  # a stale job: the step moved on without it
        if cancel:
            self._skip(cur, args.tenant, [step_id], "cancelled before it started", "cancelled", now)
            self._unjoin([step_id], cur, args.tenant)
            self._count_down(cur, args.tenant, [step_id], now)
            return None
        return Later(f"'{args.asset}' [{args.partition}] is running in another run", self.config.backoff)

    def register_worker(self) -> int:
        """A new row in procrastinate's worker table: the id jobs are fetched under."""

        def work(cur: Any) -> int:
            cur.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
            return int(cur.fetchone()[0])

        return self._retrying(work, what="registering the worker")

    def heartbeat(self, worker_id: int) -> bool:
        """Tell the others this worker lives; False when its row is gone (it was presumed dead)."""

        def work(cur: Any) -> bool:
            cur.execute(
                "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = %s RETURNING id",
                (worker_id,),
            )
            return cur.fetchone() is not None

        return self._retrying(work, what="sending the heartbeat")

    def unregister_worker(self, worker_id: int) -> None:
        """Remove the worker's row: jobs it still holds lose their worker and are reaped."""
        self._retrying(
            lambda cur: cur.execute("SELECT procrastinate_unregister_worker_v1(%s)", (worker_id,)),
            what="unregistering the worker",
        )

    def abort_requested(self, job_ids: Sequence[int]) -> set[int]:
        """Which of these running jobs were asked to stop (their run was cancelled)."""
        if not job_ids:
            return set()

        def work(cur: Any) -> set[int]:
            cur.execute(
                "SELECT id FROM procrastinate_jobs WHERE id = ANY(%s) AND abort_requested", (list(job_ids),)
            )
            return {int(r[0]) for r in cur.fetchall()}

        return self._retrying(work, what="looking for cancelled steps")

    def _claim(self, cur: Any, job_id: int, args: JobArgs, worker: str) -> Claimed | Later | None:
        cur.execute(
            "SELECT s.id, s.status, s.job_id, s.spec, r.cancel_requested, r.created_at"
            " FROM flowstone_run_steps s JOIN flowstone_runs r ON r.id = s.run_id"
            " WHERE s.run_id = %s AND s.asset = %s AND s.partition_key = %s FOR UPDATE OF s",
            (args.run, args.asset, _key(args.partition)),
        )
        row = cur.fetchone()
        if row is None:
            return None
        step_id, status, owner, spec, cancel, created_at = row
        if owner != job_id or status not in (_QUEUED, _RETRYING):
            return None  # a stale job: the step moved on without it
        now = utcnow()
        if cancel:
            self._skip(cur, args.tenant, [step_id], "cancelled before it started", "cancelled", now)
            self._unjoin([step_id], cur, args.tenant)
            self._count_down(cur, args.tenant, [step_id], now)
            return None
        queue = self._queue_of(args.asset)
        pool = self._pool_of(args.asset)
        full = self._limits_full(cur, args.tenant, queue, pool)
        if full is not None:
            return Later(full, self.config.backoff)
        cur.execute(
            "INSERT INTO flowstone_step_claims (tenant_id, asset, partition_key, run_id, step_id,"
            " job_id, attempt, worker, queue, pool, claimed_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                args.tenant,
                args.asset,
                _key(args.partition),
                args.run,
                step_id,
                job_id,
                args.attempt,
                worker,
                queue,
                pool,
                now,
            ),
        )
        if cur.rowcount == 0:
            return Later(f"'{args.asset}' [{args.partition}] is running in another run", self.config.backoff)
        cur.execute(
            "UPDATE flowstone_run_steps SET status = 'running', started_at = %s WHERE id = %s",
            (now, step_id),
        )
        cur.execute(
            "UPDATE flowstone_runs SET status = 'running', started_at = COALESCE(started_at, %s)"
            " WHERE id = %s AND status IN ('queued', 'waiting_approval')",
            (now, args.run),
        )
        cur.execute(
            "SELECT u.asset, u.partition_key, u.materialization_id, m.data_version"
            " FROM flowstone_run_step_deps d JOIN flowstone_run_steps u ON u.id = d.upstream_step_id"
            " LEFT JOIN flowstone_materializations m ON m.id = u.materialization_id"
            " WHERE d.step_id = %s",
            (step_id,),
        )
        upstream = cur.fetchall()
        data = {"attempt": args.attempt} if args.attempt > 1 else None
        self._event(cur, args.tenant, "step.started", args.run, args.asset, args.partition, data, now)
        return _claimed(step_id, args, job_id, spec, upstream, now, created_at)

    def _queue_of(self, asset: str) -> str:
        definition = self.pipeline.assets.get(asset)
        return (definition.queue if definition is not None else None) or DEFAULT_QUEUE

    def _pool_of(self, asset: str) -> str | None:
        definition = self.pipeline.assets.get(asset)
        return definition.pool if definition is not None else None

    def _limits_full(self, cur: Any, tenant: str, queue: str, pool: str | None) -> str | None:
        checks: list[tuple[str, str, str, int]] = []
        pool_limit = self._pool_limits.get(pool) if pool else None
        if pool is not None and pool_limit is not None:
            checks.append(("pool", "pool = %s", pool, pool_limit))
        queue_limit = self.config.queue_limits.get(queue)
        if queue_limit is not None:
            checks.append(("queue", "queue = %s", queue, queue_limit))
        tenant_limit = self.config.tenant_limit_for(tenant)
        if tenant_limit is not None:
            checks.append(("tenant", "tenant_id = %s", tenant, tenant_limit))
        # Serialize the count-then-insert per limit, always in the same order (no deadlocks).
        for kind, where, name, limit in sorted(checks):
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"flowstone-limit:{kind}:{name}",))
            cur.execute(f"SELECT count(*) FROM flowstone_step_claims WHERE {where}", (name,))
            if cur.fetchone()[0] >= limit:
                return f"{kind} '{name}' is at its limit of {limit} running step(s)"
        return None

    def defer_again(self, job_id: int, args: JobArgs, delay: float, *, attempt: int | None = None) -> bool:
        """Hand the step to a new job ``delay`` seconds from now (same attempt unless given)."""

        return self._retrying(
            lambda cur: self._defer_again(cur, job_id, args, delay, attempt=attempt),
            what=f"deferring '{args.asset}' again",
        )

    def _defer_again(
        self, cur: Any, job_id: int, args: JobArgs, delay: float, *, attempt: int | None = None
    ) -> bool:
        # Only a step still waiting for this job: one cancelled meanwhile stays cancelled.
        cur.execute(
            "SELECT s.id, r.priority FROM flowstone_run_steps s JOIN flowstone_runs r ON r.id = s.run_id"
            " WHERE s.run_id = %s AND s.asset = %s AND s.partition_key = %s AND s.job_id = %s"
            " AND s.status IN ('queued', 'retrying') FOR UPDATE OF s",
            (args.run, args.asset, _key(args.partition), job_id),
        )
        row = cur.fetchone()
        if row is None:
            return False
        step_id, priority = row
        jitter = delay * (0.75 + random.random() / 2)
        item = _ToEnqueue(
            step_id,
            args.run,
            args.asset,
            _key(args.partition),
            attempt or args.attempt,
            priority,
            self._queue_of(args.asset),
            jitter,
        )
        self._defer(cur, args.tenant, [item], {args.asset: args.code})
        return True

    # ------------------------------------------------------------------ finish
    def finish(self, claimed: Claimed, outcome: Finish) -> bool:
        """Record how the attempt ended and hand off; False when this job no longer owns the
        step (it was presumed dead and the step given to another job): nothing is recorded."""
        return self._retrying(
            lambda cur: self._finish_in(cur, claimed, outcome), what=f"recording '{claimed.args.asset}'"
        )

    def finish_and_fetch(
        self, claimed: Claimed, outcome: Finish, *, worker_id: int, queues: Sequence[str] | None, worker: str
    ) -> tuple[bool, Claimed | bool]:
        """``finish``, then ``fetch`` in the same transaction: one transaction per step. Raises
        ``WorkerGone`` (with whether the outcome was recorded) when the fetch finds this worker
        presumed dead."""

        def work(cur: Any) -> tuple[bool, Claimed | bool]:
            recorded = self._finish_in(cur, claimed, outcome)
            return recorded, self._fetch_in(cur, worker_id, queues, worker)

        try:
            return self._retrying(work, what=f"recording '{claimed.args.asset}'")
        except WorkerGone:
            # The failed fetch took the outcome's transaction with it: record it alone.
            raise WorkerGone(worker_id, recorded=self.finish(claimed, outcome)) from None

    def _finish_in(self, cur: Any, claimed: Claimed, outcome: Finish) -> bool:
        args = claimed.args
        cur.execute(
            _FENCE,
            {
                "step": claimed.step_id,
                "job": claimed.job_id,
                "tenant": args.tenant,
                "asset": args.asset,
                "key": _key(args.partition),
            },
        )
        row = cur.fetchone()
        if row is None or row[0] != _RUNNING or row[1] != claimed.job_id:
            return False
        _status, _owner, cancel, priority, followers = row
        now = utcnow()
        if outcome.not_ready_delay is not None and not cancel:
            # Not an attempt: the step goes back to waiting for its upstream.
            cur.execute("UPDATE flowstone_run_steps SET status = 'queued' WHERE id = %s", (claimed.step_id,))
            outcome.rows.apply(cur, combined=True)
            item = _ToEnqueue(
                claimed.step_id,
                args.run,
                args.asset,
                _key(args.partition),
                args.attempt,
                priority,
                self._queue_of(args.asset),
                outcome.not_ready_delay,
            )
            self._defer(cur, args.tenant, [item], {args.asset: args.code})
            return True
        outcome.rows.apply(cur, combined=True)
        if outcome.approval is not None and not cancel:
            # The gate's value is stored; the step waits for a person, holding no worker.
            self._open_approval(cur, args, claimed.step_id, outcome.approval)
            self._maybe_pause(cur, args.run)
            return True
        if outcome.retry_delay is not None and not cancel:
            item = _ToEnqueue(
                claimed.step_id,
                args.run,
                args.asset,
                _key(args.partition),
                args.attempt + 1,
                priority,
                self._queue_of(args.asset),
                outcome.retry_delay,
            )
            self._defer(cur, args.tenant, [item], {args.asset: args.code})
            return True
        if cancel and not outcome.success:
            # Stopped (or failed) after its run was cancelled: the step ends cancelled, like
            # the run's steps that had not started, and the runs that joined it go on alone.
            retrying = outcome.retry_delay is not None
            reason = "cancelled while waiting to retry" if retrying else "cancelled while running"
            cur.execute(
                "UPDATE flowstone_run_steps SET status = 'skipped', reason = %s,"
                " error_type = 'cancelled', finished_at = %s WHERE id = %s",
                (reason, now, claimed.step_id),
            )
            self._event(
                cur,
                args.tenant,
                "step.skipped",
                args.run,
                args.asset,
                args.partition,
                {"reason": reason},
                now,
            )
            self._unjoin([claimed.step_id], cur, args.tenant)
            self._count_down(cur, args.tenant, [claimed.step_id], now)
            return True
        self._settled(
            cur,
            args.tenant,
            claimed.step_id,
            args.run,
            success=outcome.success,
            materialization_id=outcome.materialization_id,
            error=outcome.error,
            now=now,
            followers=followers if isinstance(followers, list) else json.loads(followers),
        )
        return True

    def _open_approval(self, cur: Any, args: JobArgs, step_id: str, request: ApprovalToOpen) -> None:
        cur.execute("UPDATE flowstone_run_steps SET status = 'waiting_approval' WHERE id = %s", (step_id,))
        cur.execute(
            "INSERT INTO flowstone_approvals (id, tenant_id, run_id, step_id, checkpoint, partition_key,"
            " materialization_id, status, approval_type, message, context, created_at, updated_at,"
            " timeout_at, escalation_count) VALUES (%s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s,"
            " %s::json, %s, %s, %s, 0)",
            (
                request.approval_id,
                args.tenant,
                args.run,
                step_id,
                request.checkpoint,
                _key(request.partition_key),
                request.materialization_id,
                request.approval_type,
                request.message,
                json.dumps(request.context),
                request.now,
                request.now,
                request.timeout_at,
            ),
        )
        cur.execute(
            "INSERT INTO flowstone_audit_log (tenant_id, at, actor, actor_type, action, resource_type,"
            " resource_id, details) VALUES (%s, %s, 'system', 'system', 'checkpoint.requested',"
            " 'checkpoint', %s, %s::json)",
            (
                args.tenant,
                request.now,
                request.approval_id,
                json.dumps(
                    {"checkpoint": request.checkpoint, "partition": request.partition_key, "run_id": args.run}
                ),
            ),
        )
        self._event(
            cur,
            args.tenant,
            "checkpoint.requested",
            args.run,
            args.asset,
            args.partition,
            {"approval_id": request.approval_id, "message": request.message},
            request.now,
        )

    def _maybe_pause(self, cur: Any, run_id: str) -> None:
        """A run whose only unfinished steps wait behind open approval requests shows
        ``waiting_approval`` (the first job it starts again makes it ``running``)."""
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM flowstone_approvals WHERE run_id = %s"
            " AND status IN ('pending', 'escalated'))",
            (run_id,),
        )
        if not cur.fetchone()[0]:
            return
        cur.execute(
            "UPDATE flowstone_runs SET status = 'waiting_approval' WHERE id = %s"
            " AND status IN ('queued', 'running') AND NOT EXISTS (SELECT 1 FROM flowstone_run_steps"
            " WHERE run_id = %s AND status IN ('queued', 'running', 'retrying'))",
            (run_id, run_id),
        )

    def settle_gate(
        self,
        cur: Any,
        tenant: str,
        step_id: str,
        run_id: str,
        *,
        success: bool,
        materialization_id: str | None = None,
        error: FlowStoneError | None = None,
    ) -> None:
        """A checkpoint of a queue run was decided (its step is recorded already, in the
        caller's transaction): hand off to its downstream, or skip it, and count the run down."""
        cur.execute(
            "UPDATE flowstone_runs SET status = 'running' WHERE id = %s AND status = 'waiting_approval'",
            (run_id,),
        )
        self._settled(
            cur,
            tenant,
            step_id,
            run_id,
            success=success,
            materialization_id=materialization_id,
            error=error,
            now=utcnow(),
        )

    def _settled(
        self,
        cur: Any,
        tenant: str,
        step_id: str,
        run_id: str,
        *,
        success: bool,
        materialization_id: str | None,
        error: FlowStoneError | None,
        now: datetime,
        followers: Sequence[Sequence[Any]] | None = None,
    ) -> None:
        """A step reached its final state: settle its followers (the steps of other runs that
        joined it; locked already when given), release or skip what waits for it, and count the
        runs down."""
        if followers is None:
            cur.execute(
                "SELECT id, run_id, asset, partition_key FROM flowstone_run_steps WHERE coalesced_into = %s"
                " AND status = 'queued' ORDER BY id FOR UPDATE",
                (step_id,),
            )
            followers = cur.fetchall()
        settled = [step_id, *(f[0] for f in followers)]
        done = list(settled)  # steps that reached a final state here
        if followers:
            status = _SUCCEEDED if success else _FAILED
            cur.executemany(
                "UPDATE flowstone_run_steps SET status = %s, started_at = %s, finished_at = %s,"
                " materialization_id = %s, reason = %s, error_type = %s, error_message = %s WHERE id = %s",
                [
                    (
                        status,
                        now,
                        now,
                        materialization_id,
                        f"coalesced into the same partition's step of run {run_id}",
                        error.type if error else None,
                        error.message if error else None,
                        f[0],
                    )
                    for f in followers
                ],
            )
            for f in followers:
                self._event(
                    cur,
                    tenant,
                    "step.succeeded" if success else "step.failed",
                    f[1],
                    f[2],
                    f[3],
                    {"coalesced_into_run": run_id},
                    now,
                )
        if success:
            self._release(cur, tenant, settled, done, now)
        else:
            assert error is not None
            done.extend(self._skip_downstream(cur, tenant, settled, error, now))
        self._count_down(cur, tenant, done, now)

    def _release(self, cur: Any, tenant: str, finished: list[str], done: list[str], now: datetime) -> None:
        """Count down the steps waiting for ``finished``; enqueue those that reach 0 (those of a
        cancelled run are skipped and added to ``done``)."""
        cur.execute(_RELEASE, (finished, finished, tenant))
        ready = [r for r in cur.fetchall() if r[4] <= 0 and r[5] == _PENDING]
        if not ready:
            return
        runs = {r[1]: (r[7], r[8]) for r in ready}
        cancelled = [r for r in ready if runs[r[1]][0]]
        if cancelled:
            self._skip(
                cur, tenant, [r[0] for r in cancelled], "cancelled before it started", "cancelled", now
            )
            done.extend(r[0] for r in cancelled)
        # One above the run's own: a step whose upstream just finished goes before the run's
        # steps that have waited in the queue since submit (depth first, so the hand-off does
        # not wait behind a wide layer), never before a run of a higher class.
        items = [
            _ToEnqueue(r[0], r[1], r[2], r[3], 1, runs[r[1]][1] + 1, self._queue_of(r[2]), code=r[6])
            for r in ready
            if not runs[r[1]][0]
        ]
        # r[9]: another run's step for the same partition is queued (there may be one to join).
        self._enqueue(cur, tenant, items, self._codes, joinable=any(r[9] for r in ready))

    def _skip(
        self, cur: Any, tenant: str, step_ids: Sequence[str], reason: str, error_type: str, now: datetime
    ) -> list[tuple[str, str, str, str]]:
        cur.execute(
            "UPDATE flowstone_run_steps SET status = 'skipped', reason = %s, error_type = %s,"
            " finished_at = %s WHERE id = ANY(%s) AND status IN ('pending', 'queued', 'retrying')"
            " RETURNING id, run_id, asset, partition_key",
            (reason, error_type, now, list(step_ids)),
        )
        rows: list[tuple[str, str, str, str]] = cur.fetchall()
        for _sid, run_id, asset, key in rows:
            self._event(cur, tenant, "step.skipped", run_id, asset, key, {"reason": reason}, now)
        return rows

    def _unjoin(self, step_ids: Sequence[str], cur: Any, tenant: str) -> None:
        """Steps of other runs that joined these (cancelled) steps run on their own again: a
        run's cancel never ends the runs that shared its steps."""
        if not step_ids:
            return
        cur.execute(
            "SELECT s.id, s.run_id, s.asset, s.partition_key, r.priority, s.spec->>'code'"
            " FROM flowstone_run_steps s JOIN flowstone_runs r ON r.id = s.run_id"
            " WHERE s.coalesced_into = ANY(%s) AND s.status = 'queued' ORDER BY s.id FOR UPDATE OF s",
            (list(step_ids),),
        )
        orphans = cur.fetchall()
        if not orphans:
            return
        cur.execute(
            "UPDATE flowstone_run_steps SET coalesced_into = NULL WHERE id = ANY(%s)",
            ([o[0] for o in orphans],),
        )
        self._enqueue(
            cur,
            tenant,
            [_ToEnqueue(o[0], o[1], o[2], o[3], 1, o[4], self._queue_of(o[2]), code=o[5]) for o in orphans],
            self._codes,
        )

    def _skip_downstream(
        self, cur: Any, tenant: str, failed: list[str], error: FlowStoneError, now: datetime
    ) -> list[str]:
        """Skip every step downstream of ``failed`` (with dependency_failed); their ids."""
        cur.execute(
            "WITH RECURSIVE down(id) AS (SELECT step_id FROM flowstone_run_step_deps WHERE"
            " upstream_step_id = ANY(%s) UNION SELECT d.step_id FROM flowstone_run_step_deps d"
            " JOIN down ON d.upstream_step_id = down.id) SELECT s.id, s.asset FROM flowstone_run_steps s"
            " JOIN down ON s.id = down.id WHERE s.status = 'pending' ORDER BY s.id FOR UPDATE OF s",
            (failed,),
        )
        down = cur.fetchall()
        if not down:
            return []
        cur.execute("SELECT asset FROM flowstone_run_steps WHERE id = %s", (failed[0],))
        upstream = cur.fetchone()[0]
        reason = f"upstream '{upstream}' failed"
        rows = self._skip(cur, tenant, [d[0] for d in down], reason, DependencyFailed.type, now)
        return [r[0] for r in rows]

    def _count_down(self, cur: Any, tenant: str, step_ids: Sequence[str], now: datetime) -> None:
        """These steps reached a final state; a run whose last step did ends.

        Counted in the run's buckets (``_COUNT_DOWN``), the run itself only when one of them
        empties: concurrent finishes of one run then rarely wait for each other's commit."""
        if not step_ids:
            return
        cur.execute(_COUNT_DOWN, (_BUCKETS, list(step_ids)))
        for run_id, emptied, gated in cur.fetchall():
            if not emptied:
                if gated:
                    self._maybe_pause(cur, run_id)
                continue
            cur.execute(
                "UPDATE flowstone_runs SET steps_left = steps_left - %s WHERE id = %s RETURNING steps_left,"
                " backfill_id",
                (emptied, run_id),
            )
            row = cur.fetchone()
            if row is None:
                continue
            if row[0] > 0:
                if gated:
                    self._maybe_pause(cur, run_id)
                continue
            cur.execute(
                "SELECT count(*) FILTER (WHERE status = 'failed'),"
                " count(*) FILTER (WHERE status = 'skipped' AND error_type = 'cancelled'),"
                " count(*) FILTER (WHERE status = 'skipped' AND error_type <> 'cancelled')"
                " FROM flowstone_run_steps WHERE run_id = %s",
                (run_id,),
            )
            failed, cancelled, skipped = cur.fetchone()
            if cancelled:
                status = RunStatus.CANCELLED
            elif failed or skipped:
                status = RunStatus.FAILED
            else:
                status = RunStatus.SUCCEEDED
            cur.execute(
                "UPDATE flowstone_runs SET status = %s, finished_at = %s, heartbeat_at = %s WHERE id = %s",
                (status.value, now, now, run_id),
            )
            self._event(cur, tenant, "run.finished", run_id, None, None, {"status": status.value}, now)
            if row[1] is not None:
                self._finish_backfill(cur, tenant, row[1], run_id, status, now)

    def _finish_backfill(
        self, cur: Any, tenant: str, backfill_id: str, run_id: str, status: RunStatus, now: datetime
    ) -> None:
        cur.execute("SELECT counts, assets FROM flowstone_backfills WHERE id = %s FOR UPDATE", (backfill_id,))
        found = cur.fetchone()
        if found is None:
            return
        counts, assets = (v if not isinstance(v, str) else json.loads(v) for v in found)
        counts = dict(counts)
        # The requested assets' steps only, as a local backfill counts (not the upstream it needed).
        cur.execute(
            "SELECT status, count(*) FROM flowstone_run_steps WHERE run_id = %s AND asset = ANY(%s)"
            " GROUP BY status",
            (run_id, list(assets)),
        )
        by_status = dict(cur.fetchall())
        counts.update(
            queued=0,
            running=0,
            succeeded=by_status.get(_SUCCEEDED, 0),
            failed=by_status.get(_FAILED, 0),
            skipped=by_status.get(_SKIPPED, 0) + int(counts.get("up_to_date", 0)),
        )
        backfill_status = {RunStatus.SUCCEEDED: "succeeded", RunStatus.CANCELLED: "cancelled"}.get(
            status, "failed"
        )
        cur.execute(
            "UPDATE flowstone_backfills SET status = %s, counts = %s::json, finished_at = %s,"
            " updated_at = %s WHERE id = %s AND tenant_id = %s",
            (backfill_status, json.dumps(counts), now, now, backfill_id, tenant),
        )

    # ------------------------------------------------------------------ cancel
    def cancel(self, *, tenant: str, run_id: str, actor: str, reason: str | None) -> bool:
        """Skip the run's steps that have not started (their jobs are removed) and ask the
        running ones to stop. False when the run is unknown or already finished."""

        def flag(cur: Any) -> bool:
            cur.execute(
                "UPDATE flowstone_runs SET cancel_requested = true WHERE id = %s AND tenant_id = %s"
                " AND status IN ('queued', 'running') RETURNING id",
                (run_id, tenant),
            )
            if cur.fetchone() is None:
                return False
            cur.execute(
                "INSERT INTO flowstone_audit_log (tenant_id, at, actor, actor_type, action,"
                " resource_type, resource_id, reason, details) VALUES (%s, %s, %s, %s, 'cancel',"
                " 'run', %s, %s, %s::json)",
                (
                    tenant,
                    utcnow(),
                    actor,
                    "system" if actor == "system" else ("api" if actor == "api" else "user"),
                    run_id,
                    reason,
                    json.dumps({"executor": "queue"}),
                ),
            )
            return True

        if not self._retrying(flag, what="cancelling a run"):
            return False

        def sweep(cur: Any) -> None:
            now = utcnow()
            cur.execute(
                "SELECT id, status, job_id FROM flowstone_run_steps WHERE run_id = %s AND status IN"
                " ('pending', 'queued', 'retrying', 'running') ORDER BY id FOR UPDATE",
                (run_id,),
            )
            rows = cur.fetchall()
            waiting = [r for r in rows if r[1] != _RUNNING]
            for _sid, _status, job in waiting:
                if job is not None:
                    cur.execute("SELECT procrastinate_cancel_job_v1(%s, false, true)", (job,))
            for _sid, _status, job in rows:
                if _status == _RUNNING and job is not None:
                    cur.execute("SELECT procrastinate_cancel_job_v1(%s, true, false)", (job,))
            skipped = self._skip(
                cur, tenant, [r[0] for r in waiting], "cancelled before it started", "cancelled", now
            )
            self._unjoin([r[0] for r in skipped], cur, tenant)
            if skipped:
                self._count_down(cur, tenant, [r[0] for r in skipped], now)

        self._retrying(sweep, what="cancelling a run's steps")
        return True

    # ------------------------------------------------------------------ housekeeping
    def reap(
        self, *, stalled_after: float, max_attempts: Callable[[str], int]
    ) -> list[tuple[str, str | None]]:
        """Steps of workers that stopped sending heartbeats run again (or fail once they used up
        their attempts); returns the (asset, partition) steps handed on."""

        def work(cur: Any) -> list[tuple[str, str | None]]:
            if not self._try_lock(cur, 7426003):
                return []  # another worker is reaping right now
            cur.execute(
                "DELETE FROM procrastinate_workers WHERE last_heartbeat < now() - make_interval(secs => %s)",
                (stalled_after,),
            )
            cur.execute(
                "SELECT j.id, j.args FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w"
                " ON w.id = j.worker_id WHERE j.status = 'doing' AND j.task_name = %s"
                " AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => %s))"
                " ORDER BY j.id",
                (TASK_NAME, stalled_after),
            )
            handed: list[tuple[str, str | None]] = []
            now = utcnow()
            for job_id, raw_args in cur.fetchall():
                args = JobArgs.from_kwargs(raw_args if isinstance(raw_args, dict) else json.loads(raw_args))
                cur.execute("SELECT procrastinate_finish_job_v1(%s, 'failed', false)", (job_id,))
                cur.execute(
                    "SELECT s.id, s.status, r.priority, r.cancel_requested FROM flowstone_run_steps s"
                    " JOIN flowstone_runs r ON r.id = s.run_id WHERE s.run_id = %s AND s.asset = %s"
                    " AND s.partition_key = %s AND s.job_id = %s"
                    " AND s.status IN ('queued', 'retrying', 'running') FOR UPDATE OF s",
                    (args.run, args.asset, _key(args.partition), job_id),
                )
                row = cur.fetchone()
                if row is None:
                    continue  # the job had already recorded its outcome (or its run's cancel did)
                step_id, status, priority, cancel = row
                cur.execute(
                    "DELETE FROM flowstone_step_claims WHERE tenant_id = %s AND asset = %s"
                    " AND partition_key = %s AND step_id = %s",
                    (args.tenant, args.asset, _key(args.partition), step_id),
                )
                worker_lost = status == _RUNNING
                attempt = args.attempt + 1 if worker_lost else args.attempt
                message = (
                    f"the worker running '{args.asset}' stopped sending heartbeats for {stalled_after:g}s"
                    f" (attempt {args.attempt})"
                )
                self._event(
                    cur,
                    args.tenant,
                    "step.abandoned",
                    args.run,
                    args.asset,
                    args.partition,
                    {"job_id": job_id, "attempt": args.attempt, "reason": message},
                    now,
                )
                if cancel:
                    cur.execute("UPDATE flowstone_run_steps SET status = 'queued' WHERE id = %s", (step_id,))
                    self._skip(cur, args.tenant, [step_id], "cancelled", "cancelled", now)
                    self._unjoin([step_id], cur, args.tenant)
                    self._count_down(cur, args.tenant, [step_id], now)
                    continue
                if worker_lost and args.attempt >= max_attempts(args.asset):
                    error = ExecutionError(message + "; no attempts left")
                    cur.execute(
                        "UPDATE flowstone_run_steps SET status = 'failed', finished_at = %s,"
                        " error_type = %s, error_message = %s WHERE id = %s",
                        (now, error.type, error.message, step_id),
                    )
                    self._settled(
                        cur,
                        args.tenant,
                        step_id,
                        args.run,
                        success=False,
                        materialization_id=None,
                        error=error,
                        now=now,
                    )
                    continue
                cur.execute("UPDATE flowstone_run_steps SET status = 'queued' WHERE id = %s", (step_id,))
                item = _ToEnqueue(
                    step_id,
                    args.run,
                    args.asset,
                    _key(args.partition),
                    attempt,
                    priority,
                    self._queue_of(args.asset),
                )
                self._defer(cur, args.tenant, [item], {args.asset: args.code})
                handed.append((args.asset, args.partition))
            return handed

        return self._retrying(work, what="reaping stalled steps")

    def pause_gated_runs(self) -> int:
        """Runs whose only unfinished steps wait behind open approval requests show
        ``waiting_approval``. Normally set by the transaction that opens the request or finishes
        the last other step; when those two commit at once neither sees the other, and this
        (in every worker's housekeeping) settles it. Returns how many runs it paused."""

        def work(cur: Any) -> int:
            cur.execute(
                "UPDATE flowstone_runs r SET status = 'waiting_approval'"
                " WHERE r.status IN ('queued', 'running') AND r.executor = 'queue'"
                " AND EXISTS (SELECT 1 FROM flowstone_approvals a WHERE a.run_id = r.id"
                " AND a.status IN ('pending', 'escalated')) AND NOT EXISTS (SELECT 1 FROM"
                " flowstone_run_steps s WHERE s.run_id = r.id"
                " AND s.status IN ('queued', 'running', 'retrying'))"
            )
            return int(cur.rowcount)

        return self._retrying(work, what="pausing runs at their gates")

    @staticmethod
    def _try_lock(cur: Any, key: int) -> bool:
        cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,))
        return bool(cur.fetchone()[0])

    def prune_jobs(self, *, older_than: float) -> int:
        """Delete finished jobs older than ``older_than`` seconds; returns how many."""

        def work(cur: Any) -> int:
            if not self._try_lock(cur, 7426004):
                return 0
            cur.execute(
                "DELETE FROM procrastinate_jobs j WHERE j.status IN ('succeeded', 'failed', 'cancelled',"
                " 'aborted') AND NOT EXISTS (SELECT 1 FROM procrastinate_events e WHERE e.job_id = j.id"
                " AND e.at > now() - make_interval(secs => %s))",
                (older_than,),
            )
            return int(cur.rowcount)

        return self._retrying(work, what="pruning finished jobs")

    # ------------------------------------------------------------------ progress
    def progress(self, *, tenant: str, run_id: str) -> tuple[str, dict[str, int]] | None:
        with self._tx() as cur:
            cur.execute(
                "SELECT status FROM flowstone_runs WHERE id = %s AND tenant_id = %s", (run_id, tenant)
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                "SELECT status, count(*) FROM flowstone_run_steps WHERE run_id = %s GROUP BY status",
                (run_id,),
            )
            return str(row[0]), {str(s): int(n) for s, n in cur.fetchall()}
