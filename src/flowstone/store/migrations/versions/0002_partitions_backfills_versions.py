"""partitions at scale, backfills, data versions

Data versions on materializations and lineage; the latest success's data and code version and an
invalidation mark on asset partitions, with the indexes partition status queries use; dynamic
partition keys; backfill records, and the backfill a run belongs to.

Every new column is nullable (or has a server default), so existing rows need no rewrite and
SQLite adds the columns in place.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flowstone_materializations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data_version", sa.String(length=128), nullable=True))

    with op.batch_alter_table("flowstone_lineage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_data_version", sa.String(length=128), nullable=True))

    with op.batch_alter_table("flowstone_asset_partitions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data_version", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("code_version", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("stale_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_flowstone_asset_partitions_status",
            ["tenant_id", "asset", "last_status", "partition_key"],
            unique=False,
        )
        batch_op.create_index(
            "ix_flowstone_asset_partitions_stale",
            ["tenant_id", "asset", "last_status"],
            unique=False,
            sqlite_where=sa.text("stale_since IS NOT NULL"),
            postgresql_where=sa.text("stale_since IS NOT NULL"),
        )

    with op.batch_alter_table("flowstone_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backfill_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_flowstone_runs_backfill", ["backfill_id"], unique=False)

    op.create_table(
        "flowstone_dynamic_partitions",
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(length=255), server_default="system", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "name", "partition_key", name="pk_flowstone_dynamic_partitions"),
    )
    with op.batch_alter_table("flowstone_dynamic_partitions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_flowstone_dynamic_partitions_position", ["tenant_id", "name", "position"], unique=False
        )

    op.create_table(
        "flowstone_backfills",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("pipeline", sa.String(length=255), nullable=False),
        sa.Column("assets", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("partition_keys", sa.JSON(), nullable=False),
        sa.Column("force", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("parallel", sa.Integer(), server_default="1", nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("actor", sa.String(length=255), server_default="system", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flowstone_backfills", schema=None) as batch_op:
        batch_op.create_index(
            "ix_flowstone_backfills_tenant_created", ["tenant_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("flowstone_backfills", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_backfills_tenant_created")
    op.drop_table("flowstone_backfills")

    with op.batch_alter_table("flowstone_dynamic_partitions", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_dynamic_partitions_position")
    op.drop_table("flowstone_dynamic_partitions")

    with op.batch_alter_table("flowstone_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_runs_backfill")
        batch_op.drop_column("backfill_id")

    with op.batch_alter_table("flowstone_asset_partitions", schema=None) as batch_op:
        batch_op.drop_index("ix_flowstone_asset_partitions_stale")
        batch_op.drop_index("ix_flowstone_asset_partitions_status")
        batch_op.drop_column("stale_since")
        batch_op.drop_column("code_version")
        batch_op.drop_column("data_version")

    with op.batch_alter_table("flowstone_lineage", schema=None) as batch_op:
        batch_op.drop_column("upstream_data_version")

    with op.batch_alter_table("flowstone_materializations", schema=None) as batch_op:
        batch_op.drop_column("data_version")
