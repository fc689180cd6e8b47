"""Bring a database to the current schema with Alembic, skipping Alembic when already current.

Checking the version row costs one query; importing Alembic costs far more, so it is only loaded
when there is something to do.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# Every revision this code knows, oldest first; the last is the head (a test checks both).
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006")
HEAD = REVISIONS[-1]
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "flowstone_alembic_version"

# Alembic's ``context`` and ``op`` are process-wide proxies: two upgrades in threads would clash.
_upgrading = threading.Lock()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    with _upgrading, engine.begin() as conn:
        # Two processes starting at once must not both create the tables: hold the database's
        # lock before Alembic reads the current version.
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7426001)"))
        elif engine.dialect.name == "sqlite":
            # pysqlite runs DDL outside any transaction unless one is opened explicitly.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        command.upgrade(alembic_config(conn), revision)


def upgrade_if_needed(engine: Engine) -> None:
    current = current_revision(engine)
    if current == HEAD:
        return
    if current is not None and current not in REVISIONS:
        from flowstone._errors import StoreError

        raise StoreError(
            f"the store's schema is at revision {current!r}, which this FlowStone does not know "
            f"(it knows up to {HEAD!r}); upgrade flowstone before using this store",
            context={"revision": current, "head": HEAD},
        )
    upgrade(engine)
