"""SQLDatabase on real databases (PostgreSQL via ``pg_url``, SQLite files), through real runs.

Setup connects, the health check runs ``SELECT 1``, an asset queries through the handle, and the
run's teardown disposes the engine: on PostgreSQL the server itself shows the connection gone.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone._doctor import health
from flowstone._records import StepStatus
from flowstone.resources import EnvVar, SQLDatabase, check_resources

DEADLINE_S = 15.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.02)


def with_app_name(url: str, name: str) -> str:
    """``url`` as a bare ``postgresql://`` URL whose connections carry ``application_name``."""
    parsed = sa.make_url(url)
    return (
        parsed.set(drivername="postgresql")
        .update_query_dict({"application_name": name})
        .render_as_string(hide_password=False)
    )


def connections_named(admin: sa.Engine, name: str) -> int:
    with admin.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"), {"n": name}
            ).scalar_one()
        )


@pytest.fixture
def app_factory(tmp_path: Path) -> Any:
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline, **kwargs: Any) -> fs.FlowStone:
        kwargs.setdefault("store", f"sqlite:///{tmp_path}/meta.db")
        kwargs.setdefault("storage_dir", tmp_path / "storage")
        app = fs.FlowStone(pipeline, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.mark.postgres
def test_postgres_setup_query_health_and_teardown(pg_url: str, app_factory: Any) -> None:
    name = f"fs_res_{uuid.uuid4().hex[:12]}"
    url = with_app_name(pg_url, name)
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id int, amount numeric)"))
        conn.execute(sa.text("INSERT INTO orders VALUES (1, 10.5), (2, 4.5)"))

    pipeline = fs.Pipeline("sql_resources")
    seen: dict[str, Any] = {}

    @pipeline.asset(requires=["warehouse"])
    def revenue(context: fs.Context) -> float:
        engine: sa.Engine = context.resources.warehouse
        seen["driver"] = engine.dialect.driver
        with engine.connect() as conn:
            total = conn.execute(sa.text("SELECT sum(amount) FROM orders")).scalar_one()
        seen["open_during_run"] = connections_named(admin, name)
        return float(total)

    warehouse = SQLDatabase(url=url, pool_size=2)
    app = app_factory(pipeline, resources={"warehouse": warehouse})
    run = app.materialize("revenue", values=True)
    assert run.steps["revenue"].value == 15.0
    assert seen["driver"] == "psycopg"  # bare postgresql:// uses psycopg 3
    assert seen["open_during_run"] >= 1  # the pooled connection stays open while the run lasts
    wait_until(lambda: connections_named(admin, name) == 0, "the disposed pool's connections to close")

    rows = {row.name: row for row in health(app)}
    assert rows["warehouse"].ok and "SELECT 1 on postgresql+psycopg://" in rows["warehouse"].detail
    wait_until(lambda: connections_named(admin, name) == 0, "doctor's connections to close")
    admin.dispose()


@pytest.mark.postgres
def test_postgres_url_from_an_environment_variable(
    pg_url: str, app_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FS_TEST_WAREHOUSE_URL", pg_url)
    pipeline = fs.Pipeline("sql_env")

    @pipeline.asset(requires=["warehouse"])
    def schema(context: fs.Context) -> str:
        with context.resources.warehouse.connect() as conn:
            return str(conn.execute(sa.text("SELECT current_schema()")).scalar_one())

    declared = {"warehouse": SQLDatabase(url=EnvVar("FS_TEST_WAREHOUSE_URL"))}
    check_resources(declared)
    run = app_factory(pipeline, resources=declared).materialize("schema", values=True)
    assert str(run.steps["schema"].value).startswith("fs_test_")  # the per-test schema of pg_url


def test_an_unreachable_database_fails_only_its_steps(app_factory: Any) -> None:
    pipeline = fs.Pipeline("sql_down")

    @pipeline.asset(requires=["warehouse"])
    def orders(context: fs.Context) -> int:
        return 1

    @pipeline.asset()
    def unrelated(context: fs.Context) -> int:
        return 2

    down = SQLDatabase(url="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    app = app_factory(pipeline, resources={"warehouse": down})
    run = app.materialize("*")
    step = run.steps["orders"]
    assert step.status is StepStatus.FAILED
    assert isinstance(step.error, fs.ResourceUnavailable) and step.error.retryable is True
    assert "resource 'warehouse' could not be set up: OperationalError" in step.error.message
    assert run.steps["unrelated"].status is StepStatus.SUCCEEDED
    rows = {row.name: row for row in health(app)}
    assert not rows["warehouse"].ok and "could not be set up" in rows["warehouse"].detail


def test_sqlite_setup_query_health_and_teardown(tmp_path: Path, app_factory: Any) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    pipeline = fs.Pipeline("sqlite_resources")
    seen: dict[str, Any] = {}

    @pipeline.asset(requires=["warehouse"])
    def loaded(context: fs.Context) -> int:
        engine: sa.Engine = context.resources.warehouse
        seen["engine"], seen["pool"] = engine, engine.pool
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS events (id integer)"))
            conn.execute(sa.text("INSERT INTO events VALUES (1), (2), (3)"))
        seen["checked_in"] = engine.pool.checkedin()
        return 3

    @pipeline.asset(requires=["warehouse"])
    def counted(context: fs.Context, loaded: int) -> int:
        seen["same_engine"] = context.resources.warehouse is seen["engine"]
        with context.resources.warehouse.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one())

    warehouse = SQLDatabase(url=url, echo=False)
    app = app_factory(pipeline, resources={"warehouse": warehouse})
    run = app.materialize("counted", values=True)
    assert run.steps["counted"].value == 3
    assert seen["same_engine"] is True  # one setup for both steps
    assert seen["checked_in"] >= 1  # connections were pooled during the run ...
    engine: sa.Engine = seen["engine"]
    assert engine.pool is not seen["pool"]  # ... and teardown disposed that pool
    assert engine.pool.checkedin() == 0

    handle = warehouse.setup(warehouse.config)
    try:
        result = warehouse.health_check(handle)
        assert result.ok and result.detail == f"SELECT 1 on {url}"
    finally:
        warehouse.teardown(handle)


def test_a_bad_url_is_a_configuration_error(tmp_path: Path) -> None:
    bad = SQLDatabase(url="not a url")
    with pytest.raises(fs.ConfigurationError, match="SQLDatabase url") as info:
        bad.setup(bad.config)
    assert info.value.retryable is False
    unknown = SQLDatabase(url="nosuchdb://host/x")
    with pytest.raises(fs.ConfigurationError):
        unknown.setup(unknown.config)


def test_the_password_is_not_shown(tmp_path: Path) -> None:
    db = SQLDatabase(url="postgresql://etl:hunter2@warehouse/analytics")
    assert "hunter2" not in repr(db) and "***" in repr(db)
    assert "EnvVar('WAREHOUSE_URL')" in repr(SQLDatabase(url=EnvVar("WAREHOUSE_URL")))


@pytest.mark.postgres
def test_doctor_checks_a_postgres_store(pg_url: str, tmp_path: Path) -> None:
    pipeline = fs.Pipeline("pg_doctor")

    @pipeline.asset()
    def a(context: fs.Context) -> int:
        return 1

    with fs.FlowStone(pipeline, store=pg_url, storage_dir=tmp_path / "storage") as app:
        row = next(r for r in health(app) if r.name == "store")
    assert row.ok and row.kind == "store" and "postgresql+psycopg://" in row.detail
