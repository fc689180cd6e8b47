"""the run queue: step hand-off counters, step dependencies and running-step claims

Queue runs count each step's unfinished upstream steps (``waiting``) and the run's unfinished
steps (``steps_left``); ``flowstone_run_step_deps`` says who waits for whom; a row in
``flowstone_step_claims`` is the database's guarantee that one (tenant, asset, partition) runs
at most once at a time. New columns have server defaults or are nullable.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flowstone_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("steps_left", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))

    with op.batch_alter_table("flowstone_run_steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waiting", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("spec", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("coalesced_into", sa.String(length=32), nullable=True))
        batch_op.create_index(
            "ix_flowstone_run_steps_coalesced",
            ["coalesced_into"],
            unique=False,
            sqlite_where=sa.text("coalesced_into IS NOT NULL"),
            postgresql_where=sa.text("coalesced_into IS NOT NULL"),
        )

    op.create_table(
        "flowstone_run_step_deps",
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("upstream_step_id", sa.String(length=32), nullable=False),
        sa.Column("step_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["flowstone_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("upstream_step_id", "step_id", name="pk_flowstone_run_step_deps"),
    )
    with op.batch_alter_table("flowstone_run_step_deps", schema=None) as batch_op:
        batch_op.create_index("ix_flowstone_run_step_deps_run", ["run_id"], unique=False)
        batch_op.create_index("ix_flowstone_run_step_deps_step", ["step_id"], unique=False)

    op.create_table(
        "flowstone_step_claims",
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("asset", sa.String(length=255), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("step_id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("pool", sa.String(length=128), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "asset", "partition_key", name="pk_flowstone_step_claims"),
    )
    with op.batch_alter_table("flowstone_step_claims", schema=None) as batch_op:
        batch_op.create_index("ix_flowstone_step_claims_pool", ["pool"], unique=False)
        batch_op.create_index("ix_flowstone_step_claims_queue", ["queue"], unique=False)
        batch_op.create_index("ix_flowstone_step_claims_job", ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("flowstone_step_claims", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_step_claims_job")
        batch_op.drop_index("ix_flowstone_step_claims_queue")
        batch_op.drop_index("ix_flowstone_step_claims_pool")
    op.drop_table("flowstone_step_claims")

    with op.batch_alter_table("flowstone_run_step_deps", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_run_step_deps_step")
        batch_op.drop_index("ix_flowstone_run_step_deps_run")
    op.drop_table("flowstone_run_step_deps")

    with op.batch_alter_table("flowstone_run_steps", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_run_steps_coalesced")
        batch_op.drop_column("coalesced_into")
        batch_op.drop_column("job_id")
        batch_op.drop_column("spec")
        batch_op.drop_column("waiting")

    with op.batch_alter_table("flowstone_runs", schema=None) as batch_op:
        batch_op.drop_column("priority")
        batch_op.drop_column("cancel_requested")
        batch_op.drop_column("steps_left")
