"""The duckdb I/O manager on database files under tmp_path, beyond the shared contract: names that
try to inject SQL, the table it creates, exact types back, annotations, fan-in loads, threads,
another process holding the file, a missing extra and a run through the engine."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import flowstone as fs
from flowstone.io._duckdb import DuckDBConfig, DuckDBIOManager
from flowstone.io._registry import create

from .backends_tables import same_arrow, same_pandas

INJECTION = "'); DROP TABLE x; --"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "db" / "values.duckdb"


@pytest.fixture
def manager(path: Path) -> Iterator[DuckDBIOManager]:
    found = DuckDBIOManager(path=path)
    yield found
    found.close()


def ctx(
    asset: str = "sales",
    key: str | None = None,
    *,
    tenant: str = "default",
    config: dict[str, Any] | None = None,
    expected_type: Any = None,
) -> fs.IOContext:
    return fs.IOContext(
        asset=asset,
        partition_key=key,
        tenant=tenant,
        config=config or {},
        run_id="run-1",
        expected_type=expected_type,
    )


def query(manager: DuckDBIOManager, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Plain SQL on the manager's own connection (DuckDB shares one file per process anyway)."""
    with manager._locked() as conn:
        rows: list[tuple[Any, ...]] = conn.execute(sql, params or []).fetchall()
        return rows


# ---------------------------------------------------------------------- names and injection
@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("table", 'x"; DROP TABLE y; --'),
        ("schema", "main; DROP TABLE x"),
        ("partition_column", "p); DELETE FROM x; --"),
        ("table", "a" * 64),
        ("partition_column", "flowstone_tenant"),
    ],
)
def test_unsafe_names_are_refused_by_validation_and_by_store(
    manager: DuckDBIOManager, field: str, bad: str
) -> None:
    problems = DuckDBIOManager.validate_config({field: bad})
    assert problems and field in problems[0]
    with pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(config={field: bad}), pa.table({"a": [1]}))
    assert info.value.retryable is False
    assert query(manager, "SELECT count(*) FROM duckdb_tables()") == [(0,)]


def test_hostile_values_tenants_keys_and_column_names_are_data(manager: DuckDBIOManager) -> None:
    odd = 'we"ird; DROP TABLE sales; --'
    value = pa.table({"text": [INJECTION, "?", "$1"], odd: [1, 2, 3]})
    context = ctx(key=INJECTION, tenant=INJECTION)
    manager.store(context, value)
    assert same_arrow(manager.load(context), value)
    added = value.append_column("'' ? $2 \"", pa.array([4, 5, 6]))  # through ALTER TABLE this time
    manager.store(ctx(key="other"), added)
    assert same_arrow(manager.load(ctx(key="other")), added)
    rows = query(manager, 'SELECT flowstone_tenant, partition_key, "text" FROM sales ORDER BY rowid')
    assert rows[0] == (INJECTION, INJECTION, INJECTION)
    assert sorted(query(manager, "SELECT table_name FROM duckdb_tables()")) == [
        ("flowstone_io_partitions",),
        ("sales",),
    ]


# ---------------------------------------------------------------------- layout and types
def test_first_store_creates_the_table_and_types_come_back_exactly(manager: DuckDBIOManager) -> None:
    value = pa.table(
        {
            "i8": pa.array([1, None], pa.int8()),
            "u64": pa.array([2**64 - 1, 0], pa.uint64()),
            "f32": pa.array([1.5, None], pa.float32()),
            "txt": pa.array(["", None], pa.large_string()),
            "cat": pa.array(["x", "y"]).dictionary_encode(),
            "tstz": pa.array(
                [dt.datetime(2025, 3, 30, 1, 30, tzinfo=dt.UTC), None], pa.timestamp("ns", tz="Europe/Berlin")
            ),
            "day": pa.array([dt.date(2025, 1, 1), None], pa.date32()),
            "money": pa.array([decimal.Decimal("-12.34"), None], pa.decimal128(12, 2)),
            "blob": [b"\x00\xff", None],
            "tags": [["a", None], []],
            "point": [{"x": 1, "y": [2.5]}, None],
            "empty": pa.nulls(2),
        }
    )
    manager.store(ctx(config={"table": "typed"}), value)
    columns = dict(
        query(manager, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'typed'")
    )
    assert columns["flowstone_tenant"] == "VARCHAR" and columns["partition_key"] == "VARCHAR"
    assert columns["u64"] == "UBIGINT" and columns["money"] == "DECIMAL(12,2)"
    assert columns["tags"] == "VARCHAR[]" and columns["point"].startswith("STRUCT(")
    assert same_arrow(manager.load(ctx(config={"table": "typed"})), value)
    manager.store(ctx(key="again", config={"table": "typed"}), value)  # the types it made fit again
    assert same_arrow(manager.load(ctx(key="again", config={"table": "typed"})), value)


def test_a_column_whose_type_changed_is_refused_naming_asset_table_and_column(
    manager: DuckDBIOManager,
) -> None:
    manager.store(ctx(key="a", config={"schema": "mart"}), pa.table({"id": [1], "amount": [10]}))
    with pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(key="b", config={"schema": "mart"}), pa.table({"id": [2], "amount": ["ten"]}))
    message = str(info.value)
    assert "asset 'sales'" in message and "table mart.sales" in message
    assert "column 'amount' is BIGINT in the table but VARCHAR in the value" in message
    assert info.value.retryable is False
    assert not manager.exists(ctx(key="b", config={"schema": "mart"}))
    manager.store(
        ctx(key="c", config={"schema": "mart"}), pa.table({"id": pa.array([3], pa.int16()), "new": [1.5]})
    )
    assert manager.load(ctx(key="a", config={"schema": "mart"})).equals(pa.table({"id": [1], "amount": [10]}))


def test_two_assets_given_one_table_do_not_overwrite_each_other(manager: DuckDBIOManager) -> None:
    shared = {"table": "shared"}
    manager.store(ctx("first", config=shared), pa.table({"v": [1]}))
    with pytest.raises(fs.IOManagerError, match="asset 'first' stored partition None") as info:
        manager.store(ctx("second", config=shared), pa.table({"v": [2]}))
    assert info.value.retryable is False
    assert not manager.exists(ctx("second", config=shared))
    manager.delete(ctx("second", config=shared))  # not its rows: nothing to delete
    assert manager.load(ctx("first", config=shared))["v"].to_pylist() == [1]


def test_names_duckdb_folds_together_are_refused(manager: DuckDBIOManager) -> None:
    for value, problem in [
        (pa.table({"RowID": [1]}), "'RowID' is reserved by the table layout"),
        (pa.table({"Partition_Key": [1]}), "'Partition_Key' is the table's partition column"),
        (pa.table({"id": [1], "ID": [2]}), "'ID' appears twice (ignoring case)"),
    ]:
        with pytest.raises(fs.IOManagerError, match=re.escape(problem)):
            manager.store(ctx(), value)


def test_values_round_trip_exactly(manager: DuckDBIOManager) -> None:
    strings = ["", None, '"', ",", "line\nbreak", "\\N", "NULL", "日本語 ✓ 😀"]
    value = pa.table(
        {
            "s": strings,
            "f": [math.inf, -math.inf, -0.0, None, 1e-300, 1 / 3, 5e-324, 0.1],
            "ts": pa.array([dt.datetime(1, 1, 1)] * 7 + [None], pa.timestamp("us")),
        }
    )
    manager.store(ctx(), value)
    assert same_arrow(manager.load(ctx()), value)
    manager.store(ctx("nan"), pa.table({"f": [math.nan]}))
    assert math.isnan(manager.load(ctx("nan"))["f"][0].as_py())


def test_store_replaces_only_its_own_partition_and_tenant(manager: DuckDBIOManager) -> None:
    for tenant in ("acme", "globex"):
        for key in ("2025-01-01", "2025-01-02", None):
            manager.store(ctx(key=key, tenant=tenant), pa.table({"v": [f"{tenant}/{key}"] * 3}))
    manager.store(ctx(key="2025-01-01", tenant="acme"), pa.table({"v": ["new"]}))
    counts = query(
        manager,
        "SELECT flowstone_tenant, coalesce(partition_key, '-'), count(*) FROM sales "
        "GROUP BY ALL ORDER BY ALL",
    )
    assert counts == [
        ("acme", "-", 3),
        ("acme", "2025-01-01", 1),
        ("acme", "2025-01-02", 3),
        ("globex", "-", 3),
        ("globex", "2025-01-01", 3),
        ("globex", "2025-01-02", 3),
    ]
    manager.delete(ctx(key=None, tenant="acme"))
    assert not manager.exists(ctx(tenant="acme"))
    assert manager.load(ctx(tenant="globex"))["v"].to_pylist() == ["globex/None"] * 3


def test_rows_keep_their_order(manager: DuckDBIOManager) -> None:
    ids = [(i * 7919) % 10_007 for i in range(10_007)]
    manager.store(ctx(key="a"), pa.table({"id": ids}))
    manager.store(ctx(key="b"), pa.table({"id": ids[::-1]}))
    manager.delete(ctx(key="a"))
    manager.store(ctx(key="a"), pa.table({"id": ids[::-1]}))
    assert manager.load(ctx(key="a"))["id"].to_pylist() == ids[::-1]
    assert manager.load(ctx(key="b"))["id"].to_pylist() == ids[::-1]


# ---------------------------------------------------------------------- kinds and many partitions
def test_load_hands_back_the_kind_the_annotation_asks_for(manager: DuckDBIOManager) -> None:
    frame = pl.DataFrame({"id": [1, 2], "name": ["a", None]})
    manager.store(ctx(), frame)
    assert manager.load(ctx()).equals(frame)
    assert same_pandas(
        manager.load(ctx(expected_type=pd.DataFrame)), pd.DataFrame({"id": [1, 2], "name": ["a", None]})
    )
    assert isinstance(manager.load(ctx(expected_type=pa.Table)), pa.Table)
    assert manager.load(ctx(expected_type=list[dict[str, Any]])) == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": None},
    ]


def test_load_many_in_one_query_combined_or_by_key(manager: DuckDBIOManager) -> None:
    keys = ["2025-01-03", "2025-01-01", "2025-01-02"]
    for i, key in enumerate(keys):
        manager.store(ctx(key=key), [{"n": j, "s": key} for j in range(i + 1)])
    context = ctx(expected_type=pl.DataFrame)
    combined = manager.load_many(context, keys)
    assert isinstance(combined, pl.DataFrame)
    assert combined.columns == ["partition_key", "n", "s"]
    assert combined["partition_key"].to_list() == ["2025-01-03", *["2025-01-01"] * 2, *["2025-01-02"] * 3]
    assert context.observed["row_count"] == 6
    by_key = manager.load_many(ctx(), keys)
    assert by_key["2025-01-01"] == [{"n": 0, "s": "2025-01-01"}, {"n": 1, "s": "2025-01-01"}]
    frames = manager.load_many(ctx(expected_type=dict[str, pd.DataFrame]), keys)
    assert all(isinstance(v, pd.DataFrame) for v in frames.values())
    with pytest.raises(fs.ValueNotFound, match="'2025-01-09'"):
        manager.load_many(ctx(), ["2025-01-09", *keys])


# ---------------------------------------------------------------------- failures and concurrency
def test_a_failed_insert_rolls_back_the_table_it_created(manager: DuckDBIOManager) -> None:
    from .backends_tables import duckdb_crash

    with duckdb_crash(manager), pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx("brand_new"), pa.table({"a": list(range(10))}))
    assert info.value.retryable is True  # EIO
    assert query(manager, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'brand_new'") == [(0,)]


def test_threads_share_one_manager_and_managers_share_the_file(path: Path) -> None:
    managers = [DuckDBIOManager(path=path), DuckDBIOManager(path=path)]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            each = managers[i % 2]
            for round_ in range(5):
                each.store(ctx(key=f"k{i % 4}"), pa.table({"v": [i * 100 + round_] * 20}))
                each.load(ctx(key=f"k{i % 4}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        for k in range(4):
            values = managers[0].load(ctx(key=f"k{k}"))["v"].to_pylist()
            assert len(values) == 20 and len(set(values)) == 1
    finally:
        for each in managers:
            each.close()


def test_another_process_holding_the_file_is_a_retryable_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); c.execute('CREATE TABLE t (a INT)');"
            " print('ready', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        manager = DuckDBIOManager(path=path)
        with pytest.raises(fs.IOManagerError) as info:
            manager.store(ctx(), pa.table({"a": [1]}))
        assert info.value.retryable is True
        assert "lock" in str(info.value).lower()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    manager.store(ctx(), pa.table({"a": [1]}))  # once the other process let go
    assert manager.load(ctx())["a"].to_pylist() == [1]
    manager.close()


def test_a_transaction_conflict_is_retryable(manager: DuckDBIOManager) -> None:
    assert manager._transient(duckdb.TransactionException("Conflict on update"))
    assert not manager._transient(duckdb.BinderException("no such column"))


def test_missing_duckdb_names_the_extra(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)
    manager = DuckDBIOManager(path=path)
    with pytest.raises(
        fs.IOManagerError, match=r"needs the 'duckdb' extra.*pip install 'flowstone\[duckdb\]'"
    ) as info:
        manager.store(ctx(), pa.table({"a": [1]}))
    assert info.value.retryable is False
    assert not path.exists()


def test_missing_pyarrow_names_the_extra(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = DuckDBIOManager(path=path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(fs.IOManagerError, match=r"pip install 'flowstone\[duckdb\]'"):
        manager.store(ctx(), [{"a": 1}])


# ---------------------------------------------------------------------- configuration and the engine
def test_settings_resolve_the_path(tmp_path: Path) -> None:
    default = create("duckdb", None, storage_dir=tmp_path / "storage", store_url=None)
    assert isinstance(default, DuckDBIOManager) and default.path == tmp_path / "storage" / "flowstone.duckdb"
    relative = create(
        "lake",
        {"type": "duckdb", "path": "data/x.duckdb"},
        storage_dir=tmp_path,
        store_url=None,
        base_dir=tmp_path / "proj",
    )
    assert isinstance(relative, DuckDBIOManager) and relative.path == tmp_path / "proj" / "data" / "x.duckdb"
    with pytest.raises(fs.ConfigurationError, match="no option"):
        create("duckdb", {"file": "x"}, storage_dir=tmp_path, store_url=None)
    memory = DuckDBIOManager(path=":memory:")
    memory.store(ctx(), pa.table({"a": [1]}))
    assert memory.load(ctx())["a"].to_pylist() == [1]
    memory.close()


def test_a_run_stores_in_duckdb_and_reads_back_by_annotation(tmp_path: Path) -> None:
    pipeline = fs.Pipeline("t")

    @pipeline.asset(io_manager="duckdb", partitioned_by=fs.StaticPartitions(["eu", "us"]))
    def orders(context: fs.Context) -> list[dict[str, Any]]:
        return [
            {"id": i, "region": context.partition_key}
            for i in range(2 if context.partition_key == "eu" else 3)
        ]

    @pipeline.asset(io_manager="duckdb", io_config=DuckDBConfig(table="order_totals"))
    def totals(context: fs.Context, orders: pd.DataFrame) -> pd.DataFrame:
        # the combined input keeps its partition column, a name this table uses itself
        return (
            orders.groupby("partition_key", as_index=False).size().rename(columns={"partition_key": "region"})
        )

    app = fs.FlowStone(pipeline, store=f"sqlite:///{tmp_path}/fs.db", storage_dir=tmp_path / "storage")
    try:
        run = app.materialize(["totals"])
        assert run.success
        assert app.load("totals").to_dict("records") == [
            {"region": "eu", "size": 2},
            {"region": "us", "size": 3},
        ]
        [mat] = app.store.materializations(tenant="default", asset="totals")
        assert mat.io_manager == "duckdb"
        assert mat.metadata["row_count"] == 2
        assert mat.metadata["schema"] == {"region": "large_string", "size": "int64"}
        assert mat.value_hash and mat.value_hash.startswith("sha256:")
    finally:
        app.close()
    assert (tmp_path / "storage" / "flowstone.duckdb").is_file()


@pytest.mark.parametrize(
    ("existing", "new", "fits"),
    [
        ("BIGINT", "INTEGER", True),
        ("INTEGER", "BIGINT", False),
        ("bigint", "INT8", True),
        ("DOUBLE", "FLOAT", True),
        ("double precision", "bigint", True),
        ("REAL", "DOUBLE", False),
        ("UBIGINT", "UINTEGER", True),
        ("BIGINT", "UINTEGER", True),
        ("BIGINT", "UBIGINT", False),
        ("DECIMAL(12,2)", "DECIMAL(10,2)", True),
        ("numeric(12, 2)", "NUMERIC(12,3)", False),
        ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ", True),
        ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", False),
        ("VARCHAR", '"NULL"', True),
        ("VARCHAR", "BIGINT", False),
    ],
)
def test_which_column_types_take_which_values(existing: str, new: str, fits: bool) -> None:
    from flowstone.io._tables import compatible

    assert compatible(existing, new) is fits
