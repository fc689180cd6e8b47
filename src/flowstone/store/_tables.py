"""The metadata schema, as SQLAlchemy Core tables. Alembic migrations must match it (a test diffs them).

Every table carries ``tenant_id`` (``'default'`` until multi-tenancy) so that isolation by
row-level security never needs a data migration. Unpartitioned assets use the partition key ``''``
so that unique indexes behave the same on SQLite and PostgreSQL (NULLs are never equal).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

_ID = 32  # uuid4().hex

Timestamp = sa.DateTime(timezone=True)


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant_id", sa.String(64), nullable=False, server_default="default")


runs = sa.Table(
    "flowstone_runs",
    metadata,
    sa.Column("id", sa.String(_ID), primary_key=True),
    _tenant(),
    sa.Column("pipeline", sa.String(255), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("selection", sa.JSON, nullable=False),
    sa.Column("partition_key", sa.String(1024), nullable=False, server_default=""),
    sa.Column("force", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("actor", sa.String(255), nullable=False, server_default="system"),
    sa.Column("executor", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("started_at", Timestamp),
    sa.Column("finished_at", Timestamp),
    sa.Column("heartbeat_at", Timestamp),
    sa.Column("step_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    # The backfill that launched this run, if any (a backfill runs as one or more runs).
    sa.Column("backfill_id", sa.String(_ID)),
    # Queue runs (executor "queue"): steps not yet finished, counted down by the workers' finish
    # transactions; the one that reaches 0 ends the run. Cancel asks workers to stop.
    sa.Column("steps_left", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_flowstone_runs_tenant_created", "tenant_id", "created_at"),
    sa.Index("ix_flowstone_runs_status", "status"),
    sa.Index("ix_flowstone_runs_backfill", "backfill_id"),
)

run_steps = sa.Table(
    "flowstone_run_steps",
    metadata,
    sa.Column("id", sa.String(_ID), primary_key=True),
    _tenant(),
    sa.Column(
        "run_id", sa.String(_ID), sa.ForeignKey("flowstone_runs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("asset", sa.String(255), nullable=False),
    sa.Column("partition_key", sa.String(1024), nullable=False, server_default=""),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("upstream", sa.JSON, nullable=False),
    sa.Column("started_at", Timestamp),
    sa.Column("finished_at", Timestamp),
    sa.Column("duration_ms", sa.Float),
    sa.Column("materialization_id", sa.String(_ID)),
    sa.Column("reason", sa.Text),
    sa.Column("error_type", sa.String(64)),
    sa.Column("error_message", sa.Text),
    # Queue runs only. ``waiting``: upstream steps of this run not succeeded yet (the transaction
    # that takes it to 0 enqueues the step). ``spec``: what the worker needs to run the step
    # (its input groups and the materializations it reads from outside the run). ``job_id``:
    # the queue job that currently owns the step (a stale job finds another id and does nothing).
    # ``coalesced_into``: the queued step of another run this request joined instead of running.
    sa.Column("waiting", sa.Integer, nullable=False, server_default="0"),
    sa.Column("spec", sa.JSON),
    sa.Column("job_id", sa.BigInteger),
    sa.Column("coalesced_into", sa.String(_ID)),
    sa.UniqueConstraint("run_id", "asset", "partition_key", name="uq_flowstone_run_steps_identity"),
    sa.Index("ix_flowstone_run_steps_asset", "tenant_id", "asset", "partition_key"),
)
_coalesced = run_steps.c.coalesced_into.is_not(None)
sa.Index(
    "ix_flowstone_run_steps_coalesced",
    run_steps.c.coalesced_into,
    sqlite_where=_coalesced,
    postgresql_where=_coalesced,
)

# Queue runs: which step of a run waits for which (the graph the workers hand off along).
run_step_deps = sa.Table(
    "flowstone_run_step_deps",
    metadata,
    _tenant(),
    sa.Column(
        "run_id", sa.String(_ID), sa.ForeignKey("flowstone_runs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("upstream_step_id", sa.String(_ID), nullable=False),
    sa.Column("step_id", sa.String(_ID), nullable=False),
    sa.PrimaryKeyConstraint("upstream_step_id", "step_id", name="pk_flowstone_run_step_deps"),
    sa.Index("ix_flowstone_run_step_deps_run", "run_id"),
    sa.Index("ix_flowstone_run_step_deps_step", "step_id"),
)

# Queue runs: finished steps are counted down in buckets (by position), so that concurrent
# finishes of one run rarely lock the same row; the run's steps_left drops by a bucket's size
# when the bucket empties, and the run ends when that reaches 0.
run_buckets = sa.Table(
    "flowstone_run_buckets",
    metadata,
    _tenant(),
    sa.Column(
        "run_id", sa.String(_ID), sa.ForeignKey("flowstone_runs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("bucket", sa.Integer, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("steps_left", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("run_id", "bucket", name="pk_flowstone_run_buckets"),
)

# At most one running materialization per (tenant, asset, partition), whoever runs it: a worker
# inserts its claim in the transaction that starts the step and deletes it in the one that
# records the outcome. The primary key is the guarantee; the reaper frees claims of dead workers.
step_claims = sa.Table(
    "flowstone_step_claims",
    metadata,
    _tenant(),
    sa.Column("asset", sa.String(255), nullable=False),
    sa.Column("partition_key", sa.String(1024), nullable=False, server_default=""),
    sa.Column("run_id", sa.String(_ID), nullable=False),
    sa.Column("step_id", sa.String(_ID), nullable=False),
    sa.Column("job_id", sa.BigInteger),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(255), nullable=False),
    sa.Column("queue", sa.String(128), nullable=False),
    sa.Column("pool", sa.String(128)),
    sa.Column("claimed_at", Timestamp, nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "asset", "partition_key", name="pk_flowstone_step_claims"),
    sa.Index("ix_flowstone_step_claims_pool", "pool"),
    sa.Index("ix_flowstone_step_claims_queue", "queue"),
    sa.Index("ix_flowstone_step_claims_job", "job_id"),
)

materializations = sa.Table(
    "flowstone_materializations",
    metadata,
    sa.Column("id", sa.String(_ID), primary_key=True),
    _tenant(),
    sa.Column("run_id", sa.String(_ID), nullable=False),
    sa.Column("step_id", sa.String(_ID)),
    sa.Column("asset", sa.String(255), nullable=False),
    sa.Column("partition_key", sa.String(1024), nullable=False, server_default=""),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("value_hash", sa.String(128)),
    sa.Column("value_size", sa.BigInteger),
    sa.Column("io_manager", sa.String(64)),
    sa.Column("code_version", sa.String(255)),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
    sa.Column("metadata", sa.JSON),
    sa.Column("error_type", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("error_traceback", sa.Text),
    sa.Column("retryable", sa.Boolean),
    # The version of the stored data: one the asset returned, else the stored value's checksum.
    sa.Column("data_version", sa.String(128)),
    sa.Index("ix_flowstone_materializations_asset", "tenant_id", "asset", "partition_key", "finished_at"),
    sa.Index("ix_flowstone_materializations_run", "run_id"),
)

# The latest outcome per (tenant, asset, partition): answers "is it materialized?" in one
# indexed lookup however many partitions and materializations an asset has.
asset_partitions = sa.Table(
    "flowstone_asset_partitions",
    metadata,
    _tenant(),
    sa.Column("asset", sa.String(255), nullable=False),
    sa.Column("partition_key", sa.String(1024), nullable=False, server_default=""),
    sa.Column("last_status", sa.String(32), nullable=False),
    sa.Column("last_run_id", sa.String(_ID), nullable=False),
    sa.Column("last_materialization_id", sa.String(_ID), nullable=False),
    sa.Column("success_materialization_id", sa.String(_ID)),
    sa.Column("success_at", Timestamp),
    sa.Column("updated_at", Timestamp, nullable=False),
    # Data and code version of the latest success (NULL until one).
    sa.Column("data_version", sa.String(128)),
    sa.Column("code_version", sa.String(255)),
    # Set when someone invalidates the partition on purpose; the next success clears it.
    sa.Column("stale_since", Timestamp),
    sa.PrimaryKeyConstraint("tenant_id", "asset", "partition_key", name="pk_flowstone_asset_partitions"),
    # Status counts and the failed keys of one asset, in key order, come from this index alone.
    sa.Index("ix_flowstone_asset_partitions_status", "tenant_id", "asset", "last_status", "partition_key"),
)
# Partial: only stale rows have an entry, so it costs the run writer nothing until something is
# invalidated, and counting stale partitions never reads the others.
_stale = asset_partitions.c.stale_since.is_not(None)
sa.Index(
    "ix_flowstone_asset_partitions_stale",
    asset_partitions.c.tenant_id,
    asset_partitions.c.asset,
    asset_partitions.c.last_status,
    sqlite_where=_stale,
    postgresql_where=_stale,
)

lineage = sa.Table(
    "flowstone_lineage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("materialization_id", sa.String(_ID), nullable=False),
    sa.Column("asset", sa.String(255), nullable=False),
    sa.Column("partition_key", sa.String(1024), nullable=False, server_default=""),
    sa.Column("upstream_materialization_id", sa.String(_ID), nullable=False),
    sa.Column("upstream_asset", sa.String(255), nullable=False),
    sa.Column("upstream_partition_key", sa.String(1024), nullable=False, server_default=""),
    sa.Column("run_id", sa.String(_ID), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    # The upstream materialization's data version when it was consumed.
    sa.Column("upstream_data_version", sa.String(128)),
    sa.Index("ix_flowstone_lineage_materialization", "materialization_id"),
    sa.Index("ix_flowstone_lineage_upstream", "upstream_materialization_id"),
    sa.Index("ix_flowstone_lineage_upstream_asset", "tenant_id", "upstream_asset", "upstream_partition_key"),
)

events = sa.Table(
    "flowstone_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(_ID)),
    sa.Column("asset", sa.String(255)),
    sa.Column("partition_key", sa.String(1024)),
    sa.Column("data", sa.JSON),
    sa.Index("ix_flowstone_events_run", "run_id"),
    sa.Index("ix_flowstone_events_at", "at"),
)

# Append-only: what a person (or the API on their behalf) did. Never updated or deleted.
audit_log = sa.Table(
    "flowstone_audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("actor_type", sa.String(32), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("resource_id", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("details", sa.JSON),
    sa.Index("ix_flowstone_audit_log_resource", "resource_type", "resource_id"),
    sa.Index("ix_flowstone_audit_log_at", "at"),
)


# Keys of dynamic partition definitions, added and removed at run time. ``position`` keeps the
# order keys were first added in (a key added again keeps its place).
dynamic_partitions = sa.Table(
    "flowstone_dynamic_partitions",
    metadata,
    _tenant(),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("partition_key", sa.String(1024), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("added_at", Timestamp, nullable=False),
    sa.Column("added_by", sa.String(255), nullable=False, server_default="system"),
    sa.PrimaryKeyConstraint("tenant_id", "name", "partition_key", name="pk_flowstone_dynamic_partitions"),
    sa.Index("ix_flowstone_dynamic_partitions_position", "tenant_id", "name", "position"),
)

# One backfill: which partitions of which assets were asked for, and how far it got.
backfills = sa.Table(
    "flowstone_backfills",
    metadata,
    sa.Column("id", sa.String(_ID), primary_key=True),
    _tenant(),
    sa.Column("pipeline", sa.String(255), nullable=False),
    sa.Column("assets", sa.JSON, nullable=False),
    # How the keys were chosen: {"from": .., "to": ..}, {"partitions": [..]} or {"all": true}.
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("partition_keys", sa.JSON, nullable=False),
    sa.Column("force", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("parallel", sa.Integer, nullable=False, server_default="1"),
    # requested | running | succeeded | failed | cancelled | abandoned
    sa.Column("status", sa.String(32), nullable=False),
    # {"queued": n, "running": n, "succeeded": n, "failed": n, "skipped": n}
    sa.Column("counts", sa.JSON, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("actor", sa.String(255), nullable=False, server_default="system"),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("started_at", Timestamp),
    sa.Column("finished_at", Timestamp),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("error", sa.Text),
    sa.Index("ix_flowstone_backfills_tenant_created", "tenant_id", "created_at"),
)

# Approval requests of checkpoints (human gates), one per (run, checkpoint, partition). Status
# follows flowstone.checkpoints._state; every request and decision also writes an audit row.
approvals = sa.Table(
    "flowstone_approvals",
    metadata,
    sa.Column("id", sa.String(_ID), primary_key=True),
    _tenant(),
    sa.Column("run_id", sa.String(_ID), nullable=False),
    sa.Column("step_id", sa.String(_ID), nullable=False),
    sa.Column("checkpoint", sa.String(255), nullable=False),
    sa.Column("partition_key", sa.String(1024), nullable=False, server_default=""),
    # The materialization holding the value under review (what passes on when approved).
    sa.Column("materialization_id", sa.String(_ID)),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("approval_type", sa.String(32), nullable=False, server_default="manual"),
    sa.Column("message", sa.Text),
    sa.Column("context", sa.JSON),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("timeout_at", Timestamp),
    sa.Column("decided_by", sa.String(255)),
    sa.Column("decided_at", Timestamp),
    sa.Column("reason", sa.Text),
    sa.Column("modifications", sa.JSON),
    sa.Column("escalated_to", sa.JSON),
    sa.Column("escalation_count", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("run_id", "checkpoint", "partition_key", name="uq_flowstone_approvals_step"),
    sa.Index("ix_flowstone_approvals_status", "tenant_id", "status", "created_at"),
    sa.Index("ix_flowstone_approvals_checkpoint", "tenant_id", "checkpoint", "partition_key"),
)
_open_approval = approvals.c.status.in_(["pending", "escalated"])
sa.Index(
    "ix_flowstone_approvals_timeout",
    approvals.c.timeout_at,
    sqlite_where=_open_approval,
    postgresql_where=_open_approval,
)

# Schedules, sensors and automation conditions: whether each is on (NULL: its default) and
# where its evaluation got to (a schedule's last evaluated tick, a sensor's cursor).
automation_state = sa.Table(
    "flowstone_automation_state",
    metadata,
    _tenant(),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("enabled", sa.Boolean),
    sa.Column("cursor", sa.Text),
    sa.Column("last_evaluated_at", Timestamp),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("updated_by", sa.String(255), nullable=False, server_default="system"),
    sa.PrimaryKeyConstraint("tenant_id", "kind", "name", name="pk_flowstone_automation_state"),
)

# One row per schedule tick or sensor evaluation that asked for runs (or was skipped). The
# unique key is inserted before anything is launched: a tick fires once however many daemons run.
ticks = sa.Table(
    "flowstone_ticks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("tick_key", sa.String(255), nullable=False),
    sa.Column("tick_at", Timestamp, nullable=False),
    # launching | launched | skipped | failed
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("run_ids", sa.JSON, nullable=False),
    sa.Column("partitions", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("daemon_id", sa.String(_ID)),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant_id", "kind", "name", "tick_key", name="uq_flowstone_ticks_key"),
    sa.Index("ix_flowstone_ticks_name_at", "tenant_id", "kind", "name", "tick_at"),
)

# Running daemons, with a heartbeat: a tick left ``launching`` by a daemon whose heartbeat stopped
# is taken over by another.
daemons = sa.Table(
    "flowstone_daemons",
    metadata,
    sa.Column("id", sa.String(_ID), primary_key=True),
    _tenant(),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("heartbeat_at", Timestamp, nullable=False),
    sa.Column("stopped_at", Timestamp),
)
