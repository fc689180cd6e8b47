"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "flowstone_asset_partitions",
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("asset", sa.String(length=255), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("last_status", sa.String(length=32), nullable=False),
        sa.Column("last_run_id", sa.String(length=32), nullable=False),
        sa.Column("last_materialization_id", sa.String(length=32), nullable=False),
        sa.Column("success_materialization_id", sa.String(length=32), nullable=True),
        sa.Column("success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "asset", "partition_key", name="pk_flowstone_asset_partitions"),
    )
    op.create_table(
        "flowstone_audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("actor_type", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flowstone_audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_flowstone_audit_log_at", ["at"], unique=False)
        batch_op.create_index(
            "ix_flowstone_audit_log_resource", ["resource_type", "resource_id"], unique=False
        )

    op.create_table(
        "flowstone_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("asset", sa.String(length=255), nullable=True),
        sa.Column("partition_key", sa.String(length=1024), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flowstone_events", schema=None) as batch_op:
        batch_op.create_index("ix_flowstone_events_at", ["at"], unique=False)
        batch_op.create_index("ix_flowstone_events_run", ["run_id"], unique=False)

    op.create_table(
        "flowstone_lineage",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("materialization_id", sa.String(length=32), nullable=False),
        sa.Column("asset", sa.String(length=255), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("upstream_materialization_id", sa.String(length=32), nullable=False),
        sa.Column("upstream_asset", sa.String(length=255), nullable=False),
        sa.Column("upstream_partition_key", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flowstone_lineage", schema=None) as batch_op:
        batch_op.create_index("ix_flowstone_lineage_materialization", ["materialization_id"], unique=False)
        batch_op.create_index("ix_flowstone_lineage_upstream", ["upstream_materialization_id"], unique=False)
        batch_op.create_index(
            "ix_flowstone_lineage_upstream_asset",
            ["tenant_id", "upstream_asset", "upstream_partition_key"],
            unique=False,
        )

    op.create_table(
        "flowstone_materializations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("step_id", sa.String(length=32), nullable=True),
        sa.Column("asset", sa.String(length=255), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("value_hash", sa.String(length=128), nullable=True),
        sa.Column("value_size", sa.BigInteger(), nullable=True),
        sa.Column("io_manager", sa.String(length=64), nullable=True),
        sa.Column("code_version", sa.String(length=255), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_traceback", sa.Text(), nullable=True),
        sa.Column("retryable", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flowstone_materializations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_flowstone_materializations_asset",
            ["tenant_id", "asset", "partition_key", "finished_at"],
            unique=False,
        )
        batch_op.create_index("ix_flowstone_materializations_run", ["run_id"], unique=False)

    op.create_table(
        "flowstone_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("pipeline", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("force", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("actor", sa.String(length=255), server_default="system", nullable=False),
        sa.Column("executor", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("step_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flowstone_runs", schema=None) as batch_op:
        batch_op.create_index("ix_flowstone_runs_status", ["status"], unique=False)
        batch_op.create_index("ix_flowstone_runs_tenant_created", ["tenant_id", "created_at"], unique=False)

    op.create_table(
        "flowstone_run_steps",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(length=255), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("upstream", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("materialization_id", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["flowstone_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "asset", "partition_key", name="uq_flowstone_run_steps_identity"),
    )
    with op.batch_alter_table("flowstone_run_steps", schema=None) as batch_op:
        batch_op.create_index(
            "ix_flowstone_run_steps_asset", ["tenant_id", "asset", "partition_key"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("flowstone_run_steps", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_run_steps_asset")

    op.drop_table("flowstone_run_steps")
    with op.batch_alter_table("flowstone_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_runs_tenant_created")
        batch_op.drop_index("ix_flowstone_runs_status")

    op.drop_table("flowstone_runs")
    with op.batch_alter_table("flowstone_materializations", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_materializations_run")
        batch_op.drop_index("ix_flowstone_materializations_asset")

    op.drop_table("flowstone_materializations")
    with op.batch_alter_table("flowstone_lineage", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_lineage_upstream_asset")
        batch_op.drop_index("ix_flowstone_lineage_upstream")
        batch_op.drop_index("ix_flowstone_lineage_materialization")

    op.drop_table("flowstone_lineage")
    with op.batch_alter_table("flowstone_events", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_events_run")
        batch_op.drop_index("ix_flowstone_events_at")

    op.drop_table("flowstone_events")
    with op.batch_alter_table("flowstone_audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_audit_log_resource")
        batch_op.drop_index("ix_flowstone_audit_log_at")

    op.drop_table("flowstone_audit_log")
    op.drop_table("flowstone_asset_partitions")
