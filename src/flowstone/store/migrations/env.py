"""Alembic environment: always run with a connection handed in by flowstone.store._migrate."""

from __future__ import annotations

from alembic import context

from flowstone.store._migrate import VERSION_TABLE
from flowstone.store._tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by a misconfigured alembic call
    raise RuntimeError("run FlowStone migrations through flowstone.store._migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
context.run_migrations()
