"""approval requests of checkpoints

One row per (run, checkpoint, partition) request, its state (pending, escalated, approved,
modified, rejected, expired), its decision and its timeout.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flowstone_approvals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("step_id", sa.String(length=32), nullable=False),
        sa.Column("checkpoint", sa.String(length=255), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("materialization_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("approval_type", sa.String(length=32), server_default="manual", nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("context", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("timeout_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=255), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("modifications", sa.JSON(), nullable=True),
        sa.Column("escalated_to", sa.JSON(), nullable=True),
        sa.Column("escalation_count", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "checkpoint", "partition_key", name="uq_flowstone_approvals_step"),
    )
    with op.batch_alter_table("flowstone_approvals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_flowstone_approvals_status", ["tenant_id", "status", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_flowstone_approvals_checkpoint", ["tenant_id", "checkpoint", "partition_key"], unique=False
        )
        batch_op.create_index(
            "ix_flowstone_approvals_timeout",
            ["timeout_at"],
            unique=False,
            sqlite_where=sa.text("status IN ('pending', 'escalated')"),
            postgresql_where=sa.text("status IN ('pending', 'escalated')"),
        )


def downgrade() -> None:
    with op.batch_alter_table("flowstone_approvals", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_approvals_timeout")
        batch_op.drop_index("ix_flowstone_approvals_checkpoint")
        batch_op.drop_index("ix_flowstone_approvals_status")
    op.drop_table("flowstone_approvals")
