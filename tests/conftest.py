"""Shared fixtures: database URLs for the store, isolated per test.

``pg_url`` gives each test its own PostgreSQL schema (dropped afterwards); ``store_url`` runs a test
once on SQLite and once on PostgreSQL. PostgreSQL is looked for once per session at
``FLOWSTONE_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``). When it is not
reachable the PostgreSQL tests skip, except under ``CI=true`` where they fail: CI must never go
green by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

_pg_problem: list[str | None] = []  # computed once per session: None when reachable


def pg_base_url() -> sa.URL:
    """The PostgreSQL server the tests use, always with the psycopg 3 driver."""
    url = sa.make_url(os.environ.get("FLOWSTONE_TEST_PG_URL") or DEFAULT_PG_URL)
    return url.set(drivername="postgresql+psycopg")


def _render(url: sa.URL) -> str:
    return url.render_as_string(hide_password=False)


def _pg_unreachable() -> str | None:
    if not _pg_problem:
        base = pg_base_url()
        engine = sa.create_engine(_render(base), connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            _pg_problem.append(None)
        except Exception as exc:
            where = f"{base.host or 'localhost'}:{base.port or 5432}"
            first_line = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            _pg_problem.append(f"PostgreSQL not reachable at {where}: {first_line}")
        finally:
            engine.dispose()
    return _pg_problem[0]


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unreachable; fail it instead under ``CI=true``."""
    problem = _pg_unreachable()
    if problem is None:
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{problem} (CI=true: PostgreSQL tests must run, not skip)", pytrace=False)
    pytest.skip(problem)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose connections live in a fresh schema of their own (via search_path)."""
    require_postgres()
    base = pg_base_url()
    schema = f"fs_test_{uuid.uuid4().hex}"
    admin = sa.create_engine(_render(base), poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _render(base.update_query_dict({"options": f"-csearch_path={schema}"}))
    finally:
        with admin.begin() as conn:
            # A connection a test left inside a transaction would block the drop forever.
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flowstone.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """The store URL of a fresh, empty database: once on SQLite, once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url
