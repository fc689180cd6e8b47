"""schedules, sensors and the daemon: automation state, ticks and daemon heartbeats

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flowstone_automation_state",
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=True),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("last_evaluated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=255), server_default="system", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "name", name="pk_flowstone_automation_state"),
    )
    op.create_table(
        "flowstone_ticks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("tick_key", sa.String(length=255), nullable=False),
        sa.Column("tick_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("run_ids", sa.JSON(), nullable=False),
        sa.Column("partitions", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("daemon_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "kind", "name", "tick_key", name="uq_flowstone_ticks_key"),
    )
    with op.batch_alter_table("flowstone_ticks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_flowstone_ticks_name_at", ["tenant_id", "kind", "name", "tick_at"], unique=False
        )
    op.create_table(
        "flowstone_daemons",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("flowstone_daemons")
    with op.batch_alter_table("flowstone_ticks", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_ticks_name_at")
    op.drop_table("flowstone_ticks")
    op.drop_table("flowstone_automation_state")
