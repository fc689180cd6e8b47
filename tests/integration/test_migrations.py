"""The Alembic migrations and the SQLAlchemy table definitions describe the same schema."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

import flowstone as fs
from flowstone.store import Store, _migrate
from flowstone.store._store import create_engine
from flowstone.store._tables import metadata

TABLES = {table.name for table in metadata.sorted_tables}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = create_engine(store_url)
    yield engine
    engine.dispose()


def compare_server_default(
    _context: Any,
    _inspected_column: Any,
    _metadata_column: Any,
    inspected_default: str | None,
    _metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    # On SQLite the empty string default reflects as "('')", which Alembic's comparison cannot
    # unquote (its pattern needs one character between the quotes): treat it as equal to "" and
    # let Alembic judge every other default.
    if inspected_default in ("''", "('')") and rendered_metadata_default in ("", "''"):
        return False
    return None


def schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": _migrate.VERSION_TABLE,
                "compare_type": True,
                "compare_server_default": compare_server_default,
            },
        )
        return list(compare_metadata(context, metadata))


def table_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_upgrade_head_creates_exactly_the_table_definitions(engine: Engine) -> None:
    assert _migrate.current_revision(engine) is None

    _migrate.upgrade(engine)

    assert schema_diff(engine) == []
    assert table_names(engine) == TABLES | {_migrate.VERSION_TABLE}
    assert _migrate.current_revision(engine) == _migrate.HEAD


def test_head_is_the_newest_migration_script() -> None:
    script = ScriptDirectory.from_config(_migrate.alembic_config())
    assert script.get_heads() == [_migrate.HEAD]
    assert script.get_current_head() == _migrate.HEAD
    oldest_first = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert list(_migrate.REVISIONS) == oldest_first


def test_a_store_from_a_newer_flowstone_is_refused_clearly(engine: Engine) -> None:
    Store.open(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {_migrate.VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(fs.StoreError, match="revision '9999', which this FlowStone does not know"):
        Store.open(engine)
    with engine.connect() as conn:  # nothing was touched
        assert conn.execute(sa.text(f"SELECT version_num FROM {_migrate.VERSION_TABLE}")).scalar() == "9999"


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    _migrate.upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(_migrate.alembic_config(conn), "base")
    assert table_names(engine) <= {_migrate.VERSION_TABLE}
    assert _migrate.current_revision(engine) is None

    _migrate.upgrade(engine)
    assert schema_diff(engine) == []


def test_upgrade_if_needed_is_idempotent_and_keeps_data(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _migrate.upgrade_if_needed(engine)
    store = Store(engine)
    store.audit(tenant="default", actor="alice", action="test", resource_type="thing", resource_id="1")

    def must_not_run(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("upgrade() called on a database already at head")

    monkeypatch.setattr(_migrate, "upgrade", must_not_run)
    _migrate.upgrade_if_needed(engine)
    Store.open(engine)  # migrates on open: a no-op too

    assert _migrate.current_revision(engine) == _migrate.HEAD
    with engine.connect() as conn:
        versions = conn.execute(sa.text(f"SELECT version_num FROM {_migrate.VERSION_TABLE}")).all()
    assert [tuple(v) for v in versions] == [(_migrate.HEAD,)]
    [row] = store.list_audit(tenant="default")
    assert (row["actor"], row["action"], row["resource_id"]) == ("alice", "test", "1")


def test_upgrade_is_a_no_op_at_head(engine: Engine) -> None:
    _migrate.upgrade(engine)
    Store(engine).audit(tenant="default", actor="system", action="x", resource_type="y", resource_id="z")
    _migrate.upgrade(engine)  # Alembic itself finds nothing to do
    assert len(Store(engine).list_audit(tenant="default")) == 1
    assert schema_diff(engine) == []


def test_concurrent_open_in_threads_on_a_fresh_database(store_url: str) -> None:
    barrier = threading.Barrier(4, timeout=30)
    errors: list[BaseException] = []
    stores: list[Store] = []
    lock = threading.Lock()

    def open_store() -> None:
        try:
            barrier.wait()
            store = Store.open(store_url)
            with lock:
                stores.append(store)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert len(stores) == 4
        assert _migrate.current_revision(stores[0].engine) == _migrate.HEAD
        assert schema_diff(stores[0].engine) == []
    finally:
        for store in stores:
            store.close()


OPEN_SCRIPT = """
import sys
from flowstone.store import Store
print("ready", flush=True)
sys.stdin.readline()
Store.open(sys.argv[1]).close()
print("opened", flush=True)
"""


def test_concurrent_open_in_processes_on_a_fresh_database(store_url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_SCRIPT, store_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        # Release them together, after their imports, so that their migrations really overlap.
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (out, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "opened"
    engine = create_engine(store_url)
    try:
        assert _migrate.current_revision(engine) == _migrate.HEAD
        assert schema_diff(engine) == []
    finally:
        engine.dispose()
