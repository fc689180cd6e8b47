"""The parquet I/O manager beyond the contract: kinds by annotation, fan-in reads, layout,
provenance in the footer, checksums, config validation and errors, and a run through the engine."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import flowstone as fs
from flowstone.io._parquet import ParquetConfig, ParquetIOManager
from flowstone.io._registry import create

from .conftest import S3Server, crash_part_way


def ctx(
    asset: str = "a",
    key: str | None = None,
    *,
    tenant: str = "default",
    expected_type: Any = None,
    config: dict[str, Any] | None = None,
    **more: Any,
) -> fs.IOContext:
    return fs.IOContext(
        asset=asset,
        partition_key=key,
        tenant=tenant,
        expected_type=expected_type,
        config=config or {},
        **more,
    )


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def manager(tmp_path: Path) -> ParquetIOManager:
    return ParquetIOManager(root=tmp_path / "lake")


@pytest.fixture(params=["local", "s3"])
def any_manager(request: pytest.FixtureRequest, tmp_path: Path) -> ParquetIOManager:
    """The manager on a local directory and on moto S3."""
    if request.param == "local":
        return ParquetIOManager(root=tmp_path / "lake")
    server: S3Server = request.getfixturevalue("s3_server")
    return ParquetIOManager(root=f"s3://{server.bucket()}/lake", storage_options=server.storage_options())


TABLE = pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]})
FRAME = pd.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]})
POLARS = pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]})
ROWS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]


# ---------------------------------------------------------------------- kinds
@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (TABLE, pd.DataFrame, pd.DataFrame),
        (FRAME, pl.DataFrame, pl.DataFrame),
        (POLARS, pa.Table, pa.Table),
        (ROWS, pd.DataFrame, pd.DataFrame),
        (TABLE, list[dict[str, Any]], list),
        (TABLE, "pd.DataFrame", pd.DataFrame),  # string annotations, as under `from __future__`
        (FRAME, pd.DataFrame | None, pd.DataFrame),
        # no annotation (or one that names no table): the kind it was stored as
        (TABLE, None, pa.Table),
        (FRAME, None, pd.DataFrame),
        (POLARS, Any, pl.DataFrame),
        (ROWS, None, list),
    ],
    ids=lambda v: getattr(v, "__name__", None) or type(v).__name__,
)
def test_the_annotation_decides_the_kind_loaded(
    manager: ParquetIOManager, value: Any, annotation: Any, expected: type
) -> None:
    manager.store(ctx(), value)
    loaded = manager.load(ctx(expected_type=annotation))
    assert type(loaded) is expected
    as_arrow = loaded if isinstance(loaded, pa.Table) else manager.load(ctx(expected_type=pa.Table))
    assert as_arrow.select(["id", "name"]).to_pylist() == ROWS


def test_a_loaded_table_carries_no_provenance(manager: ParquetIOManager) -> None:
    manager.store(ctx(run_id="r1"), TABLE)
    loaded = manager.load(ctx())
    assert not any(k.startswith(b"flowstone.") for k in (loaded.schema.metadata or {}))


def test_pandas_index_and_dtypes_survive(manager: ParquetIOManager) -> None:
    frame = pd.DataFrame(
        {"when": pd.to_datetime(["2025-01-01", "2025-01-02"], utc=True), "n": pd.array([1, None], "Int64")},
        index=pd.Index(["x", "y"], name="key"),
    )
    manager.store(ctx(), frame)
    pd.testing.assert_frame_equal(manager.load(ctx()), frame)


def test_a_value_that_is_not_a_table_is_a_permanent_error(manager: ParquetIOManager) -> None:
    with pytest.raises(fs.IOManagerError, match="cannot store") as info:
        manager.store(ctx(), {"not": "a table"})
    assert info.value.retryable is False
    assert not manager.exists(ctx())


def test_load_reports_bytes_and_rows_read(manager: ParquetIOManager, tmp_path: Path) -> None:
    manager.store(ctx(), TABLE)
    context = ctx()
    manager.load(context)
    assert context.observed == {
        "size_bytes": (tmp_path / "lake/a/value.parquet").stat().st_size,
        "row_count": 3,
    }


# ---------------------------------------------------------------------- fan-in
def _store_days(manager: ParquetIOManager, days: list[str], **config: Any) -> None:
    for i, day in enumerate(days):
        table = pa.table({"n": list(range(i + 1)), "day_copy": [day] * (i + 1)})
        manager.store(ctx("daily", day, config=config), table)


DAYS = ["2025-01-01", "2025-01-02", "2025-01-03"]


@pytest.mark.parametrize("annotation", [pd.DataFrame, pa.Table, pl.DataFrame])
def test_load_many_into_one_table_adds_the_partition_column(
    any_manager: ParquetIOManager, annotation: Any
) -> None:
    _store_days(any_manager, DAYS)
    context = ctx("daily", expected_type=annotation)
    combined = any_manager.load_many(context, DAYS)
    assert type(combined) is annotation
    table = combined if isinstance(combined, pa.Table) else pa.Table.from_pandas(pd.DataFrame(combined))
    if isinstance(combined, pl.DataFrame):
        table = combined.to_arrow()
    rows = table.select(["partition_key", "day_copy", "n"]).to_pylist()
    assert sorted((r["partition_key"], r["n"]) for r in rows) == [
        (day, n) for i, day in enumerate(DAYS) for n in range(i + 1)
    ]
    assert all(r["partition_key"] == r["day_copy"] for r in rows)
    assert context.observed["row_count"] == 6
    assert context.observed["size_bytes"] > 0


def test_load_many_names_the_column_from_io_config_and_keeps_an_existing_one(
    manager: ParquetIOManager,
) -> None:
    config = dict(partition_column="day_copy")  # the data has it already: not added twice
    _store_days(manager, DAYS, **config)
    combined = manager.load_many(ctx("daily", expected_type=pa.Table, config=config), DAYS)
    assert combined.column_names == ["n", "day_copy"]
    renamed = manager.load_many(
        ctx("daily", expected_type=pa.Table, config={"partition_column": "day"}), DAYS[:2]
    )
    assert renamed.column_names == ["n", "day_copy", "day"]
    assert renamed.column("day").to_pylist() == ["2025-01-01", "2025-01-02", "2025-01-02"]


def test_load_many_unifies_partitions_whose_columns_differ(manager: ParquetIOManager) -> None:
    manager.store(ctx("evolving", "1"), pa.table({"a": [1]}))
    manager.store(ctx("evolving", "2"), pa.table({"a": [2], "b": ["new"]}))
    combined = manager.load_many(ctx("evolving", expected_type=pa.Table), ["1", "2"])
    assert combined.sort_by("a").to_pylist() == [
        {"a": 1, "b": None, "partition_key": "1"},
        {"a": 2, "b": "new", "partition_key": "2"},
    ]


def test_load_many_as_a_dict_of_the_element_kind(any_manager: ParquetIOManager) -> None:
    _store_days(any_manager, DAYS)
    context = ctx("daily", expected_type=dict[str, pl.DataFrame])
    found = any_manager.load_many(context, DAYS)
    assert list(found) == DAYS
    assert all(isinstance(v, pl.DataFrame) for v in found.values())
    assert [found[d].height for d in DAYS] == [1, 2, 3]
    assert "partition_key" not in found[DAYS[0]].columns
    assert context.observed["row_count"] == 6
    # no element annotation: each as stored
    plain = any_manager.load_many(ctx("daily", expected_type=dict), DAYS)
    assert all(isinstance(v, pa.Table) for v in plain.values())


@pytest.mark.parametrize("annotation", [pd.DataFrame, dict[str, pa.Table]])
def test_load_many_names_missing_partitions(any_manager: ParquetIOManager, annotation: Any) -> None:
    _store_days(any_manager, DAYS[:2])
    with pytest.raises(fs.ValueNotFound, match=r"1 of 3 partitions missing: '2025-01-03'") as info:
        any_manager.load_many(ctx("daily", expected_type=annotation), DAYS)
    assert info.value.context["missing"] == ["2025-01-03"]


def test_the_engine_fans_in_with_load_many(tmp_path: Path) -> None:
    pipeline = fs.Pipeline("t")
    regions = fs.StaticPartitions(["eu", "us", "apac"])
    seen: dict[str, Any] = {}

    @pipeline.asset(io_manager="parquet", partitioned_by=regions, code_version="v1")
    def sales(context: fs.Context) -> pa.Table:
        n = {"eu": 3, "us": 2, "apac": 1}[context.partition_key or ""]
        return pa.table({"amount": [10] * n})

    @pipeline.asset(io_manager="parquet", partitioned_by=regions)
    def doubled(context: fs.Context, sales: pd.DataFrame) -> pd.DataFrame:
        seen.setdefault("doubled", []).append(type(sales))
        return sales.assign(amount=sales["amount"] * 2)

    @pipeline.asset(io_manager="parquet", ins={"doubled": fs.In(mapping=fs.AllPartitionsMapping())})
    def total(context: fs.Context, doubled: pa.Table) -> pa.Table:
        seen["total"] = doubled
        return doubled.group_by("partition_key").aggregate([("amount", "sum")]).sort_by("partition_key")

    lake = ParquetIOManager(root=tmp_path / "lake")
    app = fs.FlowStone(
        pipeline,
        store=f"sqlite:///{tmp_path}/fs.db",
        storage_dir=tmp_path / "storage",
        io_managers={"parquet": lake},
    )
    with app:
        run = app.materialize(["total"])
        run.raise_on_failure()
        assert run.success
        assert seen["doubled"] == [pd.DataFrame] * 3  # upstream stored an Arrow table
        assert isinstance(seen["total"], pa.Table) and seen["total"].num_rows == 6
        assert app.load("total").to_pylist() == [
            {"partition_key": "apac", "amount_sum": 20},
            {"partition_key": "eu", "amount_sum": 60},
            {"partition_key": "us", "amount_sum": 40},
        ]
        assert isinstance(app.load("doubled", partition="eu"), pd.DataFrame)

        step = run.steps[("sales", "eu")]
        mat = step.materialization
        assert mat is not None and mat.io_manager == "parquet"
        path = tmp_path / "lake/sales/eu.parquet"
        assert mat.value_size == path.stat().st_size
        assert mat.value_hash == sha256(path)
        assert mat.metadata["row_count"] == 3
        assert mat.metadata["schema"] == {"amount": "int64"}
        assert mat.metadata["uri"] == str(path)

        # the footer tells where the file came from
        footer = pq.read_metadata(tmp_path / "lake/total/value.parquet").metadata
        total_mat = run.steps["total"].materialization
        assert total_mat is not None
        assert footer[b"flowstone.materialization_id"].decode() == total_mat.id
        assert footer[b"flowstone.run_id"].decode() == run.run_id
        upstream = lake.provenance(ctx("total"))["upstream"]
        doubled_ids = {
            run.steps[("doubled", r)].materialization.id  # type: ignore[union-attr]
            for r in ("eu", "us", "apac")
        }
        assert {u["materialization_id"] for u in upstream} == doubled_ids
        assert {u["partition"] for u in upstream} == {"eu", "us", "apac"}


def test_the_builtin_parquet_manager_writes_under_the_storage_dir(tmp_path: Path) -> None:
    pipeline = fs.Pipeline("t")

    @pipeline.asset(io_manager="parquet", io_config=ParquetConfig(compression="zstd"))
    def numbers(context: fs.Context) -> pl.DataFrame:
        return pl.DataFrame({"n": [1, 2]})

    with fs.FlowStone(pipeline, store=f"sqlite:///{tmp_path}/fs.db", storage_dir=tmp_path / "s") as app:
        assert app.materialize(["numbers"]).success
        path = tmp_path / "s/parquet/numbers/value.parquet"
        assert pq.read_metadata(path).row_group(0).column(0).compression == "ZSTD"
        assert app.load("numbers").equals(pl.DataFrame({"n": [1, 2]}))


# ---------------------------------------------------------------------- layout
def test_default_layout_quotes_keys_and_separates_tenants(manager: ParquetIOManager, tmp_path: Path) -> None:
    for context in (ctx(), ctx(key="2025-01-01"), ctx(key="../up/x"), ctx(key="k", tenant="acme/evil")):
        manager.store(context, TABLE)
    assert files(tmp_path / "lake") == [
        "a/%2E.%2Fup%2Fx.parquet",
        "a/.%2E.%2Fup%2Fx.parquet.sha256",
        "a/.2025-01-01.parquet.sha256",
        "a/.value.parquet.sha256",
        "a/2025-01-01.parquet",
        "a/value.parquet",
        "tenants/acme%2Fevil/a/.k.parquet.sha256",
        "tenants/acme%2Fevil/a/k.parquet",
    ]
    assert manager.path_for(ctx(key="../up/x")) == str(tmp_path / "lake/a/%2E.%2Fup%2Fx.parquet")


def test_a_directory_template_writes_a_hive_style_dataset(manager: ParquetIOManager, tmp_path: Path) -> None:
    config = {"path": "{tenant}/tables/{asset}/day={partition}/"}
    for day in DAYS[:2]:
        manager.store(ctx("events", day, config=config), pa.table({"v": [1, 2]}))
    base = tmp_path / "lake/default/tables/events"
    assert files(base) == [
        "day=2025-01-01/.part-0.parquet.sha256",
        "day=2025-01-01/part-0.parquet",
        "day=2025-01-02/.part-0.parquet.sha256",
        "day=2025-01-02/part-0.parquet",
    ]
    # other engines read the directory as one dataset; the dot-file sidecars are skipped
    table = ds.dataset(base, format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("day").to_pylist()) == ["2025-01-01"] * 2 + ["2025-01-02"] * 2
    assert manager.load(ctx("events", DAYS[0], config=config)).column("v").to_pylist() == [1, 2]
    manager.delete(ctx("events", DAYS[0], config=config))
    assert not (base / "day=2025-01-01").exists()
    assert manager.exists(ctx("events", DAYS[1], config=config))


def test_a_template_without_partition_refuses_partitioned_assets(manager: ParquetIOManager) -> None:
    config = {"path": "{asset}.parquet"}
    manager.store(ctx("flat", config=config), TABLE)
    with pytest.raises(fs.IOManagerError, match=r"no \{partition\} placeholder") as info:
        manager.store(ctx("flat", "k", config=config), TABLE)
    assert info.value.retryable is False


def test_a_template_without_tenant_still_separates_tenants(manager: ParquetIOManager, tmp_path: Path) -> None:
    config = {"path": "t/{asset}-{partition}.parquet"}
    manager.store(ctx("x", "1", config=config), TABLE)
    manager.store(ctx("x", "1", config=config, tenant="acme"), TABLE.slice(0, 1))
    assert files(tmp_path / "lake") == [
        "t/.x-1.parquet.sha256",
        "t/x-1.parquet",
        "tenants/acme/t/.x-1.parquet.sha256",
        "tenants/acme/t/x-1.parquet",
    ]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"colour": "red"}, "unknown key 'colour' (known: path, compression, partition_column)"),
        ({"path": 3}, "'path' must be a string template, got int"),
        (
            {"path": "{asset}/{day}.parquet"},
            "'path' template '{asset}/{day}.parquet' has unknown placeholder {day}",
        ),
        ({"path": "{asset.__class__}"}, "'path' template '{asset.__class__}' is malformed"),
        ({"path": "{asset"}, "'path' template '{asset' is malformed"),
        ({"path": "/abs/{asset}"}, "must be a relative path"),
        ({"path": "../{asset}/{partition}"}, "must not contain empty, '.' or '..' segments"),
        ({"path": "a//{partition}"}, "must not contain empty, '.' or '..' segments"),
        ({"compression": "lzma"}, "'compression' must be one of none, snappy, gzip, brotli, lz4, zstd"),
        ({"partition_column": ""}, "'partition_column' must be a non-empty column name"),
    ],
)
def test_validate_config_names_the_field(config: dict[str, Any], message: str) -> None:
    problems = ParquetIOManager.validate_config(config)
    assert len(problems) == 1 and message in problems[0], problems


def test_valid_configs_have_no_problems() -> None:
    for config in (
        {},
        {"path": "{tenant}/{asset}/{partition}.parquet", "compression": "ZSTD", "partition_column": "day"},
        dataclasses.asdict(ParquetConfig(path="x/{partition}/")),
    ):
        assert ParquetIOManager.validate_config(config) == []


def test_pipeline_validation_reports_a_bad_io_config() -> None:
    pipeline = fs.Pipeline("t")

    @pipeline.asset(io_manager="parquet", io_config=ParquetConfig(path="{asset}/{when}.parquet"))
    def a(context: fs.Context) -> pa.Table:
        return TABLE

    [problem] = pipeline.problems()
    assert problem.asset == "a"
    assert "unknown placeholder {when}" in problem.message


def test_a_bad_config_at_run_time_is_a_permanent_error(manager: ParquetIOManager) -> None:
    with pytest.raises(fs.IOManagerError, match="unknown key 'colour'") as info:
        manager.store(ctx(config={"colour": "red"}), TABLE)
    assert info.value.retryable is False


# ---------------------------------------------------------------------- provenance, checksums
def test_provenance_goes_into_the_footer(any_manager: ParquetIOManager) -> None:
    context = ctx(
        "report",
        "2025-01-01",
        tenant="acme",
        run_id="run-1",
        materialization_id="mat-1",
        data_version="dv-7",
        code_version="v3",
        upstream=(fs.io.UpstreamVersion("raw", "2025-01-01", "mat-0", "sha256:abc"),),
    )
    pandas_metadata = pa.Table.from_pandas(FRAME).schema.metadata
    any_manager.store(context, FRAME)
    assert any_manager.provenance(context) == {
        "kind": "pandas",
        "asset": "report",
        "partition": "2025-01-01",
        "tenant": "acme",
        "run_id": "run-1",
        "materialization_id": "mat-1",
        "data_version": "dv-7",
        "code_version": "v3",
        "upstream": [
            {
                "asset": "raw",
                "partition": "2025-01-01",
                "materialization_id": "mat-0",
                "data_version": "sha256:abc",
            }
        ],
    }
    table = any_manager.load(ctx("report", "2025-01-01", tenant="acme", expected_type=pa.Table))
    assert table.schema.metadata == pandas_metadata  # pandas' own entry is kept; flowstone's go
    # passing the loaded table on does not carry the old provenance into the next file
    any_manager.store(ctx("next", run_id="run-2"), table)
    assert any_manager.provenance(ctx("next")) == {
        "kind": "arrow",
        "asset": "next",
        "tenant": "default",
        "run_id": "run-2",
        "upstream": [],
    }


def test_store_and_metadata_describe_the_file(manager: ParquetIOManager, tmp_path: Path) -> None:
    stored = manager.store(ctx(key="k"), FRAME)
    path = tmp_path / "lake/a/k.parquet"
    assert stored.size_bytes == path.stat().st_size
    assert stored.checksum == sha256(path)
    assert stored.row_count == 3
    assert stored.schema == {"id": "int64", "name": "large_string"} or stored.schema == {
        "id": "int64",
        "name": "string",
    }
    assert stored.updated_at == datetime.fromtimestamp(path.stat().st_mtime_ns / 1e9, UTC)
    assert manager.metadata(ctx(key="k")) == stored


def test_a_stale_checksum_sidecar_is_never_trusted(manager: ParquetIOManager, tmp_path: Path) -> None:
    manager.store(ctx(), TABLE)
    path = tmp_path / "lake/a/value.parquet"
    sidecar = tmp_path / "lake/a/.value.parquet.sha256"
    recorded = sidecar.read_bytes()
    # as if the process died between renaming the new file and writing its sidecar
    pq.write_table(pa.table({"other": [1]}), path)
    meta = manager.metadata(ctx())
    assert meta is not None and meta.checksum == sha256(path)
    assert sidecar.read_bytes() != recorded  # repaired for next time
    sidecar.unlink()
    meta = manager.metadata(ctx())
    assert meta is not None and meta.checksum == sha256(path)


def test_a_failed_write_is_retryable_and_leaves_no_temp_file(
    manager: ParquetIOManager, tmp_path: Path
) -> None:
    manager.store(ctx(key="k"), TABLE)
    before = files(tmp_path / "lake")
    with crash_part_way(after_bytes=100), pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(key="k"), pa.table({"id": list(range(10_000))}))
    assert info.value.retryable is True
    assert "connection lost part way" in info.value.message
    assert files(tmp_path / "lake") == before
    assert manager.load(ctx(key="k")).equals(TABLE)


@pytest.mark.parametrize("hard_links", [True, False])
def test_overwrites_leave_only_the_file_and_its_sidecar(
    manager: ParquetIOManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hard_links: bool
) -> None:
    if not hard_links:  # a filesystem without them: the old file is freed by the rename itself

        def no_links(src: str, dst: str) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr("flowstone.io._fsspec.os.link", no_links)
    for n in range(1, 4):
        manager.store(ctx(key="k"), pa.table({"n": list(range(n))}))
    assert files(tmp_path / "lake") == ["a/.k.parquet.sha256", "a/k.parquet"]
    assert manager.load(ctx(key="k")).num_rows == 3


def test_a_full_disk_is_retryable(
    manager: ParquetIOManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("flowstone.io._fsspec.os.fsync", full)
    with pytest.raises(fs.IOManagerError, match="No space left") as info:
        manager.store(ctx(), TABLE)
    assert info.value.retryable is True
    assert files(tmp_path / "lake") == []


def test_an_unreadable_file_is_a_permanent_error(manager: ParquetIOManager, tmp_path: Path) -> None:
    manager.store(ctx(), TABLE)
    (tmp_path / "lake/a/value.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(fs.IOManagerError, match="not a readable Parquet file") as info:
        manager.load(ctx())
    assert info.value.retryable is False and not isinstance(info.value, fs.ValueNotFound)


def test_a_large_table_is_hashed_right_while_written(manager: ParquetIOManager, tmp_path: Path) -> None:
    table = pa.table({"n": pa.array(range(2_000_000), pa.int64()), "f": pa.array([0.5] * 2_000_000)})
    stored = manager.store(ctx(), table)
    path = tmp_path / "lake/a/value.parquet"
    assert path.stat().st_size > 4 * 2**20  # past the size where hashing moves to a helper thread
    assert stored.checksum == sha256(path)
    assert manager.load(ctx()).equals(table)


# ---------------------------------------------------------------------- S3 specifics
def test_on_s3_the_layout_is_the_same_under_the_prefix(s3_server: S3Server) -> None:
    bucket = s3_server.bucket()
    manager = ParquetIOManager(root=f"s3://{bucket}/lake", storage_options=s3_server.storage_options())
    manager.store(ctx(key="2025-01-01"), TABLE)
    manager.store(ctx(tenant="acme"), TABLE)
    assert s3_server.keys(bucket) == [
        "lake/a/.2025-01-01.parquet.sha256",
        "lake/a/2025-01-01.parquet",
        "lake/tenants/acme/a/.value.parquet.sha256",
        "lake/tenants/acme/a/value.parquet",
    ]
    assert manager.path_for(ctx(key="2025-01-01")) == f"s3://{bucket}/lake/a/2025-01-01.parquet"
    body = s3_server.client.get_object(Bucket=bucket, Key="lake/a/2025-01-01.parquet")["Body"].read()
    stored = manager.metadata(ctx(key="2025-01-01"))
    assert stored is not None and stored.checksum == "sha256:" + hashlib.sha256(body).hexdigest()
    manager.delete(ctx(key="2025-01-01"))
    assert s3_server.keys(bucket) == [
        "lake/tenants/acme/a/.value.parquet.sha256",
        "lake/tenants/acme/a/value.parquet",
    ]


def test_on_s3_a_missing_bucket_is_a_permanent_error_not_a_missing_value(s3_server: S3Server) -> None:
    manager = ParquetIOManager(
        root="s3://fs-test-no-such-bucket/lake", storage_options=s3_server.storage_options()
    )
    calls: list[Callable[[], Any]] = [
        lambda: manager.load(ctx()),
        lambda: manager.exists(ctx()),
        lambda: manager.metadata(ctx()),
        lambda: manager.store(ctx(), TABLE),
        lambda: manager.load_many(ctx(expected_type=pa.Table), ["1", "2"]),
    ]
    for call in calls:
        with pytest.raises(fs.IOManagerError, match="bucket 'fs-test-no-such-bucket' does not exist") as info:
            call()
        assert not isinstance(info.value, fs.ValueNotFound)
        assert info.value.retryable is False


# ---------------------------------------------------------------------- settings and extras
def test_from_settings_resolves_a_relative_root_and_rejects_unknown_options(tmp_path: Path) -> None:
    made = create(
        "parquet",
        {"root": "lake", "compression": "gzip"},
        storage_dir=tmp_path / "s",
        store_url=None,
        base_dir=tmp_path,
    )
    assert isinstance(made, ParquetIOManager)
    assert made.root == str(tmp_path / "lake") and made.compression == "gzip"
    default = create("parquet", None, storage_dir=tmp_path / "s", store_url=None, base_dir=tmp_path)
    assert default.root == str(tmp_path / "s/parquet")
    remote = create("parquet", {"root": "s3://b/p"}, storage_dir=tmp_path, store_url=None, base_dir=tmp_path)
    assert remote.root == "s3://b/p"
    with pytest.raises(
        fs.ConfigurationError, match=r"\[io.parquet\]: the parquet I/O manager has no option 'rooot'"
    ):
        create("parquet", {"rooot": "x"}, storage_dir=tmp_path, store_url=None, base_dir=tmp_path)


def test_a_missing_pyarrow_names_the_extra(
    manager: ParquetIOManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    for call in (lambda: manager.store(ctx(), [{"a": 1}]), lambda: manager.load(ctx())):
        with pytest.raises(
            fs.IOManagerError,
            match=r"needs the 'parquet' extra \(module 'pyarrow' is not installed\): "
            r"pip install 'flowstone\[parquet\]'",
        ) as info:
            call()
        assert info.value.retryable is False


def test_a_missing_fsspec_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)
    manager = ParquetIOManager(root=tmp_path)
    with pytest.raises(
        fs.IOManagerError, match=r"module 'fsspec' is not installed\): pip install 'flowstone\[parquet\]'"
    ):
        manager.exists(ctx())


def test_importing_flowstone_stays_light() -> None:
    import subprocess

    code = (
        "import sys, flowstone, flowstone.io._parquet, flowstone.io._object_store; "
        "print(sorted(m for m in ('pyarrow', 'fsspec', 's3fs', 'pandas', 'polars') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
    )
    assert out.stdout.strip() == "[]"
