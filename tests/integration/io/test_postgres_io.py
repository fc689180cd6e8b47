"""The postgres I/O manager against the real server, beyond the shared contract: names that try to
inject SQL, the table it creates, values CSV gets wrong, annotations, fan-in loads, concurrency,
lost connections and a run through the engine."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone.io._postgres import PostgresConfig, PostgresIOManager
from flowstone.io._registry import create

from .backends_tables import same_arrow, same_pandas

pytestmark = pytest.mark.postgres

INJECTION = "'); DROP TABLE x; --"


@pytest.fixture
def db(pg_url: str) -> Iterator[sa.Engine]:
    """Plain SQL on the test's schema, to see what the manager left there."""
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def manager(pg_url: str) -> Iterator[PostgresIOManager]:
    found = PostgresIOManager(url=pg_url)
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
        materialization_id="mat-1",
        expected_type=expected_type,
    )


def scalar(db: sa.Engine, sql: str, **params: Any) -> Any:
    with db.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


# ---------------------------------------------------------------------- names and injection
@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("table", 'x"; DROP TABLE y; --'),
        ("table", "robert'); DROP TABLE students;--"),
        ("schema", "public; DROP SCHEMA public"),
        ("partition_column", "p) ; DELETE FROM x; --"),
        ("table", "a" * 64),
        ("table", "1starts_with_digit"),
        ("table", "flowstone_io_partitions"),
    ],
)
def test_unsafe_names_are_refused_by_validation_and_by_store(
    manager: PostgresIOManager, db: sa.Engine, field: str, bad: str
) -> None:
    problems = PostgresIOManager.validate_config({field: bad})
    assert problems and field in problems[0]
    with pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(config={field: bad}), pa.table({"a": [1]}))
    assert info.value.retryable is False
    assert field in str(info.value)
    assert scalar(db, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()") == 0


def test_validation_reports_unknown_keys_and_accepts_the_config_dataclass() -> None:
    assert PostgresIOManager.validate_config({"tabel": "x"}) == [
        "unknown key 'tabel' (known: table, schema, partition_column)"
    ]
    assert PostgresIOManager.validate_config({"table": "Orders_2025", "schema": "mart"}) == []
    pipeline = fs.Pipeline("t")

    @pipeline.asset(io_manager="postgres", io_config=PostgresConfig(table="bad name"))
    def orders(context: fs.Context) -> list[dict[str, int]]:
        return []

    with pytest.raises(fs.PipelineInvalid, match="io_config for I/O manager 'postgres': table 'bad name'"):
        pipeline.validate()


def test_hostile_values_tenants_keys_and_column_names_are_data(
    manager: PostgresIOManager, db: sa.Engine
) -> None:
    odd = 'we"ird; DROP TABLE sales; -- %s :x'
    value = pa.table({"text": [INJECTION, "%(x)s", ":name"], odd: [1, 2, 3]})
    context = ctx(key=INJECTION, tenant=INJECTION)
    manager.store(context, value)
    assert same_arrow(manager.load(context), value)
    with db.connect() as conn:
        rows = conn.execute(sa.text('SELECT flowstone_tenant, partition_key, "text" FROM sales')).all()
    assert rows[0] == (INJECTION, INJECTION, INJECTION)
    added = value.append_column("%(y)s :z ''", pa.array([4, 5, 6]))  # through ALTER TABLE this time
    manager.store(ctx(key="other"), added)
    assert same_arrow(manager.load(ctx(key="other")), added)
    assert same_arrow(manager.load(context), value)
    assert scalar(db, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()") == 2


# ---------------------------------------------------------------------- table layout
def test_first_store_creates_the_table_with_mapped_types(manager: PostgresIOManager, db: sa.Engine) -> None:
    value = pa.table(
        {
            "i16": pa.array([1], pa.int16()),
            "i32": pa.array([1], pa.int32()),
            "i64": pa.array([1], pa.int64()),
            "u64": pa.array([2**64 - 1], pa.uint64()),
            "f32": pa.array([1.5], pa.float32()),
            "f64": [1.5],
            "flag": [True],
            "txt": ["x"],
            "big": pa.array(["x"], pa.large_string()),
            "cat": pa.array(["x"]).dictionary_encode(),
            "ts": pa.array([dt.datetime(2025, 1, 1)], pa.timestamp("us")),
            "tstz": pa.array([dt.datetime(2025, 1, 1, tzinfo=dt.UTC)], pa.timestamp("ms", tz="Asia/Tokyo")),
            "day": [dt.date(2025, 1, 1)],
            "clock": pa.array([dt.time(1, 2, 3)], pa.time64("us")),
            "money": pa.array([decimal.Decimal("12.34")], pa.decimal128(12, 2)),
            "blob": [b"\x00\xff"],
            "tags": [["a", "b"]],
            "point": [{"x": 1, "y": 2.5}],
        }
    )
    stored = manager.store(ctx(config={"table": "typed"}), value)
    assert stored.extra == {"table": "typed", "stored_kind": "arrow"}
    with db.connect() as conn:
        columns = dict(
            conn.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'typed'"
                )
            ).all()
        )
        indexes = (
            conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE tablename = 'typed'")).scalars().all()
        )
    assert columns == {
        "flowstone_tenant": "text",
        "partition_key": "text",
        "flowstone_row": "bigint",
        "i16": "smallint",
        "i32": "integer",
        "i64": "bigint",
        "u64": "numeric",
        "f32": "real",
        "f64": "double precision",
        "flag": "boolean",
        "txt": "text",
        "big": "text",
        "cat": "text",
        "ts": "timestamp without time zone",
        "tstz": "timestamp with time zone",
        "day": "date",
        "clock": "time without time zone",
        "money": "numeric",
        "blob": "bytea",
        "tags": "jsonb",
        "point": "jsonb",
    }
    assert any("(flowstone_tenant, partition_key, flowstone_row)" in index for index in indexes)
    assert same_arrow(manager.load(ctx(config={"table": "typed"})), value)
    manager.store(ctx(key="again", config={"table": "typed"}), value)  # the types it made fit again
    assert same_arrow(manager.load(ctx(key="again", config={"table": "typed"})), value)


def test_schema_and_partition_column_from_io_config(manager: PostgresIOManager, db: sa.Engine) -> None:
    schema = f"fs_mart_{uuid.uuid4().hex[:12]}"
    config = {"table": "Daily_Sales", "schema": schema, "partition_column": "day"}
    try:
        manager.store(ctx(key="2025-01-01", config=config), [{"amount": 5}])
        with db.connect() as conn:
            rows = conn.execute(sa.text(f'SELECT day, amount FROM "{schema}"."Daily_Sales"')).all()
            booked = conn.execute(sa.text(f'SELECT table_name FROM "{schema}".flowstone_io_partitions')).all()
        assert rows == [("2025-01-01", 5)]
        assert booked == [("Daily_Sales",)]
        assert manager.load(ctx(key="2025-01-01", config=config)) == [{"amount": 5}]
    finally:
        with db.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def test_a_column_whose_type_changed_is_refused_naming_asset_table_and_column(
    manager: PostgresIOManager,
) -> None:
    manager.store(ctx(key="a"), pa.table({"id": [1], "amount": [10]}))
    with pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(key="b"), pa.table({"id": [2], "amount": ["ten"]}))
    message = str(info.value)
    assert "asset 'sales'" in message and "table sales" in message
    assert "column 'amount' is bigint in the table but text in the value" in message
    assert info.value.retryable is False
    assert info.value.context["columns"] == ["amount"]
    assert not manager.exists(ctx(key="b"))
    assert manager.load(
        ctx(key="a"),
    ).equals(pa.table({"id": [1], "amount": [10]}))


def test_a_table_flowstone_did_not_make_is_refused(manager: PostgresIOManager, db: sa.Engine) -> None:
    with db.begin() as conn:
        conn.execute(sa.text("CREATE TABLE legacy (id bigint)"))
    with pytest.raises(fs.IOManagerError, match="column 'flowstone_tenant' is missing"):
        manager.store(ctx("legacy"), pa.table({"id": [1]}))


def test_columns_widen_only_without_loss_and_older_partitions_load_as_stored(
    manager: PostgresIOManager, db: sa.Engine
) -> None:
    old = pa.table({"id": pa.array([1, 2], pa.int32())})
    manager.store(ctx(key="old"), old)
    wider = pa.table({"id": pa.array([3], pa.int64()), "extra": ["x"]})
    with pytest.raises(fs.IOManagerError, match="'id' is integer in the table but bigint"):
        manager.store(ctx(key="new"), wider)  # int64 values may not fit an integer column
    narrower = pa.table({"id": pa.array([3], pa.int16()), "extra": ["x"]})
    manager.store(ctx(key="new"), narrower)  # int16 fits; "extra" is added
    assert (
        scalar(db, "SELECT data_type FROM information_schema.columns WHERE column_name = 'extra'") == "text"
    )
    assert manager.load(ctx(key="old")).equals(old)  # without the new column, still int32
    assert manager.load(ctx(key="new")).equals(narrower)


def test_two_assets_given_one_table_do_not_overwrite_each_other(manager: PostgresIOManager) -> None:
    shared = {"table": "shared"}
    manager.store(ctx("first", key="k", config=shared), pa.table({"v": [1]}))
    with pytest.raises(fs.IOManagerError, match="asset 'first' stored partition 'k'") as info:
        manager.store(ctx("second", key="k", config=shared), pa.table({"v": [2]}))
    assert info.value.retryable is False
    assert not manager.exists(ctx("second", key="k", config=shared))
    manager.delete(ctx("second", key="k", config=shared))  # not its rows: nothing to delete
    assert manager.load(ctx("first", key="k", config=shared))["v"].to_pylist() == [1]


def test_reserved_and_duplicate_column_names_are_refused(manager: PostgresIOManager) -> None:
    with pytest.raises(fs.IOManagerError, match="'partition_key' is the table's partition column") as info:
        manager.store(ctx(), pa.table({"partition_key": [1]}))
    assert info.value.retryable is False
    manager.store(ctx(config={"partition_column": "part"}), pa.table({"partition_key": [1]}))
    with pytest.raises(fs.IOManagerError, match="'flowstone_row' is reserved by the table layout"):
        manager.store(ctx(), pa.table({"flowstone_row": [1]}))
    duplicated = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    with pytest.raises(fs.IOManagerError, match="appears twice"):
        manager.store(ctx(), duplicated)
    with pytest.raises(fs.IOManagerError, match="column 'wait' has Arrow type duration"):
        manager.store(ctx(), pa.table({"wait": pa.array([1], pa.duration("s"))}))
    with pytest.raises(fs.IOManagerError, match="cannot store"):
        manager.store(ctx(), {"not": "a table"})
    with pytest.raises(fs.IOManagerError, match="could not store asset 'sales'") as info:
        manager.store(ctx(), [{"a": 1}, {"a": "one"}])  # rows that make no table
    assert info.value.retryable is False


# ---------------------------------------------------------------------- values
def test_values_csv_gets_wrong_round_trip_exactly(manager: PostgresIOManager) -> None:
    berlin = pa.timestamp("us", tz="Europe/Berlin")
    strings = [
        "",
        None,
        '"',
        '""',
        ",",
        "a,b",
        "line\nbreak",
        "cr\r\nlf",
        "\\N",
        "\\.",
        " pad ",
        "NULL",
        "日本語 ✓ 😀",
    ]
    n = len(strings)
    value = pa.table(
        {
            "s": strings,
            "f": [
                0.1,
                1e-300,
                -0.0,
                math.inf,
                -math.inf,
                None,
                2.0**53 + 1,
                1 / 3,
                5e-324,
                1.7976931348623157e308,
                0.0,
                1.0,
                -1.5,
            ],
            "b": [True, False, None] * 4 + [True],
            "ts": pa.array(
                [
                    dt.datetime(2024, 3, 31, 1, 59, 59, 999999, tzinfo=dt.UTC) + dt.timedelta(hours=i)
                    for i in range(n)
                ],
                berlin,
            ),
            "ns": pa.array([dt.datetime(1900, 1, 1, 0, 0, 0, 1)] * (n - 1) + [None], pa.timestamp("ns")),
            "d": [dt.date(1, 1, 1), dt.date(9999, 12, 31)] + [None] * (n - 2),
            "dec": pa.array(
                [decimal.Decimal("-0.000000001"), None] + [decimal.Decimal("123456789.987654321")] * (n - 2),
                pa.decimal128(20, 9),
            ),
            "bin": [b"", None, b"\x00\r\n,\"'"] + [b"x"] * (n - 3),
            "nested": [{"a": [1, None], "b": 'q"uote,\n'}, None] + [{"a": [], "b": None}] * (n - 2),
            "empty": pa.nulls(n),
        }
    )
    manager.store(ctx(), value)
    loaded = manager.load(ctx())
    assert loaded.schema == value.schema
    for name in value.column_names:
        assert loaded[name].to_pylist() == value[name].to_pylist(), name
    nan = pa.table({"f": [math.nan, 1.0]})
    manager.store(ctx("nan"), nan)
    assert math.isnan(manager.load(ctx("nan"))["f"][0].as_py())


def test_nan_inside_nested_values_is_a_permanent_error(manager: PostgresIOManager) -> None:
    with pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(), pa.table({"n": [[math.nan]]}))
    assert info.value.retryable is False


def test_empty_tables_round_trip(manager: PostgresIOManager) -> None:
    manager.store(ctx("no_rows"), pa.table({"a": pa.array([], pa.int64())}))
    assert manager.load(ctx("no_rows")).equals(pa.table({"a": pa.array([], pa.int64())}))
    assert manager.metadata(ctx("no_rows")).row_count == 0  # type: ignore[union-attr]
    manager.store(ctx("nothing"), [])
    assert manager.load(ctx("nothing")) == []


def test_load_hands_back_the_kind_the_annotation_asks_for(manager: PostgresIOManager) -> None:
    frame = pd.DataFrame({"id": [1, 2], "name": ["a", None]})
    manager.store(ctx(), frame)
    assert same_pandas(manager.load(ctx()), frame)  # no annotation: the kind stored
    arrow = manager.load(ctx(expected_type=pa.Table))
    assert isinstance(arrow, pa.Table) and arrow.column_names == ["id", "name"]
    polars = manager.load(ctx(expected_type=pl.DataFrame))
    assert isinstance(polars, pl.DataFrame) and polars["name"].to_list() == ["a", None]
    assert manager.load(ctx(expected_type=list[dict[str, Any]])) == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": None},
    ]
    assert same_pandas(manager.load(ctx(expected_type="pd.DataFrame | None")), frame)


def test_load_reports_what_it_read(manager: PostgresIOManager) -> None:
    manager.store(ctx(), pa.table({"a": list(range(100))}))
    context = ctx()
    manager.load(context)
    assert context.observed["row_count"] == 100
    assert context.observed["size_bytes"] > 100


def test_store_replaces_only_its_own_partition_and_tenant(manager: PostgresIOManager, db: sa.Engine) -> None:
    for tenant in ("acme", "globex"):
        for key in ("2025-01-01", "2025-01-02"):
            manager.store(ctx(key=key, tenant=tenant), pa.table({"v": [f"{tenant}/{key}"] * 3}))
    manager.store(ctx(key="2025-01-01", tenant="acme"), pa.table({"v": ["new"]}))
    with db.connect() as conn:
        counts = conn.execute(
            sa.text("SELECT flowstone_tenant, partition_key, count(*) FROM sales GROUP BY 1, 2 ORDER BY 1, 2")
        ).all()
    assert counts == [
        ("acme", "2025-01-01", 1),
        ("acme", "2025-01-02", 3),
        ("globex", "2025-01-01", 3),
        ("globex", "2025-01-02", 3),
    ]
    assert manager.load(ctx(key="2025-01-02", tenant="globex"))["v"].to_pylist() == ["globex/2025-01-02"] * 3


def test_metadata_is_the_bookkeeping_row_and_the_checksum_follows_the_data(
    manager: PostgresIOManager,
) -> None:
    value = pa.table({"a": [1, 2, 3]})
    first = manager.store(ctx(key="k"), value)
    again = manager.store(ctx(key="k"), value)
    other = manager.store(ctx(key="k"), pa.table({"a": [1, 2, 4]}))
    assert first.checksum == again.checksum != other.checksum
    meta = manager.metadata(ctx(key="k"))
    assert meta == other
    assert meta is not None and meta.row_count == 3 and meta.schema == {"a": "int64"}
    assert meta.as_metadata() == {
        "table": "sales",
        "stored_kind": "arrow",
        "row_count": 3,
        "schema": {"a": "int64"},
    }


# ---------------------------------------------------------------------- many partitions
def test_load_many_in_one_query_combined_or_by_key(manager: PostgresIOManager) -> None:
    keys = ["2025-01-03", "2025-01-01", "2025-01-02"]
    for i, key in enumerate(keys):
        manager.store(ctx(key=key), pd.DataFrame({"n": list(range(i + 1)), "s": [key] * (i + 1)}))
    combined = manager.load_many(ctx(expected_type=pd.DataFrame), keys)
    assert isinstance(combined, pd.DataFrame)
    assert list(combined.columns) == ["partition_key", "n", "s"]
    assert combined["partition_key"].tolist() == [
        "2025-01-03",
        "2025-01-01",
        "2025-01-01",
        "2025-01-02",
        "2025-01-02",
        "2025-01-02",
    ]
    assert (combined["partition_key"] == combined["s"]).all()
    by_key = manager.load_many(ctx(expected_type=dict[str, pl.DataFrame]), keys)
    assert list(by_key) == keys
    assert all(isinstance(v, pl.DataFrame) for v in by_key.values())
    assert by_key["2025-01-02"]["n"].to_list() == [0, 1, 2]
    stored_kind = manager.load_many(ctx(), keys[:2])
    assert same_pandas(stored_kind["2025-01-01"], pd.DataFrame({"n": [0, 1], "s": ["2025-01-01"] * 2}))
    with pytest.raises(fs.ValueNotFound, match="'2025-01-09'"):
        manager.load_many(ctx(), [*keys, "2025-01-09"])
    assert manager.load_many(ctx(), []) == {}
    assert manager.load_many(ctx(expected_type=pd.DataFrame), []).empty


def test_load_many_over_partitions_with_different_columns(manager: PostgresIOManager) -> None:
    manager.store(ctx(key="a"), pa.table({"x": pa.array([1], pa.int32())}))
    manager.store(ctx(key="b"), pa.table({"x": pa.array([2], pa.int32()), "y": ["new"]}))
    by_key = manager.load_many(ctx(), ["a", "b"])
    assert by_key["a"].equals(pa.table({"x": pa.array([1], pa.int32())}))
    assert by_key["b"].equals(pa.table({"x": pa.array([2], pa.int32()), "y": ["new"]}))
    combined = manager.load_many(ctx(expected_type=pa.Table), ["a", "b"])
    assert combined.to_pylist() == [
        {"partition_key": "a", "x": 1, "y": None},
        {"partition_key": "b", "x": 2, "y": "new"},
    ]


# ---------------------------------------------------------------------- concurrency and failures
def test_concurrent_stores_of_one_partition_leave_one_whole_value(pg_url: str) -> None:
    managers = [PostgresIOManager(url=pg_url) for _ in range(4)]
    manager = managers[0]
    manager.store(ctx(key="k"), pa.table({"v": [0]}))  # the table exists: only the rows race
    barrier = threading.Barrier(len(managers))
    errors: list[BaseException] = []

    def store(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                managers[i].store(ctx(key="k"), pa.table({"v": [i] * 50}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(len(managers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        values = manager.load(ctx(key="k"))["v"].to_pylist()
        assert len(values) == 50 and len(set(values)) == 1
        assert manager.metadata(ctx(key="k")).row_count == 50  # type: ignore[union-attr]
    finally:
        for each in managers:
            each.close()


def test_a_connection_lost_during_copy_is_retryable_and_keeps_the_old_rows(
    manager: PostgresIOManager, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager.store(ctx(key="k"), pa.table({"v": [1, 2]}))
    real = manager._send
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)

    def send(copy: Any, chunk: memoryview) -> None:
        pid = copy.connection.info.backend_pid
        with admin.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        real(copy, chunk)

    monkeypatch.setattr(manager, "_send", send)
    with pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(key="k"), pa.table({"v": [3] * 10_000}))
    admin.dispose()
    assert info.value.retryable is True
    assert info.value.context["table"] == "sales"
    monkeypatch.undo()
    assert manager.load(ctx(key="k"))["v"].to_pylist() == [1, 2]
    manager.store(ctx(key="k"), pa.table({"v": [4]}))  # the pool replaced the dead connection
    assert manager.load(ctx(key="k"))["v"].to_pylist() == [4]


def test_an_idle_connection_killed_between_stores_is_replaced(
    manager: PostgresIOManager, pg_url: str
) -> None:
    manager.store(ctx(), pa.table({"v": [1]}))
    with manager.engine.connect() as conn:
        pid = conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    admin.dispose()
    manager.store(ctx(), pa.table({"v": [2]}))
    assert manager.load(ctx())["v"].to_pylist() == [2]


def test_bad_data_is_a_permanent_error_and_keeps_the_old_rows(manager: PostgresIOManager) -> None:
    manager.store(ctx(), pa.table({"s": ["ok"]}))
    with pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(), pa.table({"s": ["nul \x00 byte"]}))
    assert info.value.retryable is False
    assert manager.load(ctx())["s"].to_pylist() == ["ok"]


def test_an_unreachable_server_is_retryable() -> None:
    manager = PostgresIOManager(url="postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(), pa.table({"a": [1]}))
    assert info.value.retryable is True
    manager.close()


# ---------------------------------------------------------------------- configuration
def test_settings_use_the_url_or_a_postgres_store(pg_url: str, tmp_path: Path) -> None:
    given = create(
        "warehouse",
        {"type": "postgres", "url": pg_url, "schema": "mart"},
        storage_dir=tmp_path,
        store_url=None,
    )
    assert isinstance(given, PostgresIOManager) and given.schema == "mart"
    from_store = create("postgres", None, storage_dir=tmp_path, store_url=pg_url)
    assert isinstance(from_store, PostgresIOManager) and from_store.schema is None
    with pytest.raises(fs.ConfigurationError, match=r"\[io.postgres\].*url = "):
        create("postgres", None, storage_dir=tmp_path, store_url=f"sqlite:///{tmp_path}/fs.db")
    with pytest.raises(fs.ConfigurationError, match="no option"):
        create("postgres", {"url": pg_url, "tabel": "x"}, storage_dir=tmp_path, store_url=None)
    with pytest.raises(fs.ConfigurationError, match="not a plain SQL identifier"):
        create("postgres", {"url": pg_url, "schema": "a b"}, storage_dir=tmp_path, store_url=None)
    with pytest.raises(TypeError, match="exactly one"):
        PostgresIOManager()
    as_url = PostgresIOManager(url=sa.make_url("postgresql://etl:s3cret@db.example/x"))
    assert "s3cret" not in repr(as_url)
    assert as_url.engine.url.password == "s3cret"  # not lost to the masked rendering
    as_url.close()
    with pytest.raises(ValueError, match="postgresql\\+psycopg"):
        PostgresIOManager(url="mysql://x@y/z")


def test_missing_psycopg_names_the_extra(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    manager = PostgresIOManager(url=pg_url)
    with pytest.raises(fs.IOManagerError, match=r"pip install 'flowstone\[postgres\]'") as info:
        manager.store(ctx(), pa.table({"a": [1]}))
    assert info.value.retryable is False


# ---------------------------------------------------------------------- through the engine
def test_a_run_stores_in_postgres_and_reads_back_by_annotation(
    pg_url: str, tmp_path: Path, db: sa.Engine
) -> None:
    pipeline = fs.Pipeline("t")
    regions = fs.StaticPartitions(["eu", "us"])

    @pipeline.asset(io_manager="postgres", partitioned_by=regions)
    def orders(context: fs.Context) -> pl.DataFrame:
        n = 2 if context.partition_key == "eu" else 3
        return pl.DataFrame({"id": list(range(n)), "region": [context.partition_key] * n})

    @pipeline.asset(io_manager="postgres", io_config=PostgresConfig(table="order_totals"))
    def totals(context: fs.Context, orders: pd.DataFrame) -> pa.Table:
        counts = orders.groupby("partition_key").size()
        return pa.table({"region": list(counts.index), "orders": [int(v) for v in counts]})

    manager = PostgresIOManager(url=pg_url)
    app = fs.FlowStone(
        pipeline,
        store=f"sqlite:///{tmp_path}/fs.db",
        storage_dir=tmp_path / "storage",
        io_managers={"postgres": manager},
    )
    try:
        run = app.materialize(["totals"])
        assert run.success
        assert app.load("totals").to_pylist() == [
            {"region": "eu", "orders": 2},
            {"region": "us", "orders": 3},
        ]
        [mat] = app.store.materializations(tenant="default", asset="totals")
        assert mat.io_manager == "postgres"
        assert mat.metadata["row_count"] == 2
        assert mat.metadata["schema"] == {"region": "string", "orders": "int64"}
        assert mat.metadata["table"] == "order_totals"
        assert mat.value_hash and mat.value_hash.startswith("sha256:")
        assert mat.value_size and mat.value_size > 0
        assert scalar(db, "SELECT count(*) FROM orders") == 5
    finally:
        app.close()


def test_two_named_postgres_managers_write_to_their_own_schemas(
    pg_url: str, tmp_path: Path, db: sa.Engine
) -> None:
    other = f"fs_other_{uuid.uuid4().hex[:12]}"
    pipeline = fs.Pipeline("t")

    @pipeline.asset(io_manager="staging")
    def raw(context: fs.Context) -> list[dict[str, Any]]:
        return [{"x": 1}, {"x": 2}]

    @pipeline.asset(io_manager="warehouse", io_config={"table": "raw"})
    def clean(context: fs.Context, raw: pa.Table) -> pa.Table:
        return raw.append_column("y", pa.array([10, 20]))

    app = fs.FlowStone(
        pipeline,
        store=f"sqlite:///{tmp_path}/fs.db",
        storage_dir=tmp_path / "storage",
        io_managers={
            "staging": PostgresIOManager(url=pg_url),
            "warehouse": PostgresIOManager(url=pg_url, schema=other),
        },
    )
    try:
        assert app.materialize(["clean"]).success
        assert scalar(db, "SELECT count(*) FROM raw") == 2  # the test schema, by search_path
        assert scalar(db, f'SELECT sum(y) FROM "{other}".raw') == 30  # same table name, other schema
        assert app.load("raw") == [{"x": 1}, {"x": 2}]
    finally:
        app.close()
        with db.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{other}" CASCADE'))
