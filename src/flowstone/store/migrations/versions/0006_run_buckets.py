"""queue runs count their finished steps in buckets: concurrent finishes of one run no longer
all wait on the run's row

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flowstone_run_buckets",
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("steps_left", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["flowstone_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "bucket", name="pk_flowstone_run_buckets"),
    )
    # Queue runs submitted before this revision count down in one bucket of their remaining steps.
    op.execute(
        "INSERT INTO flowstone_run_buckets (tenant_id, run_id, bucket, size, steps_left)"
        " SELECT tenant_id, id, 0, steps_left, steps_left FROM flowstone_runs"
        " WHERE executor = 'queue' AND steps_left > 0"
    )


def downgrade() -> None:
    op.drop_table("flowstone_run_buckets")
