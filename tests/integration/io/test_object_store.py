"""The object_store I/O manager beyond the contract, against moto S3 (and a server that fails):
layout and templates, per-tenant buckets, HEAD metadata, formats, multipart atomicity, error
classification, settings, and a run through the engine."""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
import socket
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

import flowstone as fs
from flowstone.io._object_store import ObjectStoreConfig, ObjectStoreIOManager
from flowstone.io._registry import create

from .conftest import ErrorServer, S3Server, crash_part_way


def ctx(
    asset: str = "a",
    key: str | None = None,
    *,
    tenant: str = "default",
    expected_type: Any = None,
    config: dict[str, Any] | None = None,
) -> fs.IOContext:
    return fs.IOContext(
        asset=asset, partition_key=key, tenant=tenant, expected_type=expected_type, config=config or {}
    )


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.bucket()


@pytest.fixture
def manager(s3_server: S3Server, bucket: str) -> ObjectStoreIOManager:
    return ObjectStoreIOManager(url=f"s3://{bucket}/values", storage_options=s3_server.storage_options())


# ---------------------------------------------------------------------- layout
def test_keys_are_laid_out_under_the_prefix(
    manager: ObjectStoreIOManager, s3_server: S3Server, bucket: str
) -> None:
    manager.store(ctx(), 1)
    manager.store(ctx(key="2025-01-01"), 2)
    manager.store(ctx(key="../a/b"), 3)
    manager.store(ctx(key="k", tenant="acme"), 4)
    manager.store(ctx("j", config={"format": "json"}), [5])
    assert s3_server.keys(bucket) == [
        "values/a/%2E.%2Fa%2Fb.pickle",
        "values/a/2025-01-01.pickle",
        "values/a/value.pickle",
        "values/j/value.json",
        "values/tenants/acme/a/k.pickle",
    ]  # no checksum sidecars: S3 has etags
    assert manager.path_for(ctx(key="2025-01-01")) == f"s3://{bucket}/values/a/2025-01-01.pickle"
    raw = s3_server.client.get_object(Bucket=bucket, Key="values/j/value.json")["Body"].read()
    assert raw == b"[5]"


def test_a_key_template(manager: ObjectStoreIOManager, s3_server: S3Server, bucket: str) -> None:
    config = {"key": "{tenant}/{asset}/part={partition}/data.{ext}", "format": "json"}
    manager.store(ctx("events", "2025-01-01", config=config), {"n": 1})
    manager.store(ctx("events", "2025-01-01", config=config, tenant="acme"), {"n": 2})
    assert s3_server.keys(bucket) == [
        "values/acme/events/part=2025-01-01/data.json",
        "values/default/events/part=2025-01-01/data.json",
    ]
    assert manager.load(ctx("events", "2025-01-01", config=config, tenant="acme")) == {"n": 2}


def test_a_bucket_per_tenant(s3_server: S3Server) -> None:
    suffix = os.urandom(4).hex()
    buckets = {t: s3_server.bucket(f"fs-{t}-{suffix}") for t in ("acme", "globex")}
    manager = ObjectStoreIOManager(url="s3://unused/data", storage_options=s3_server.storage_options())
    config = dict(ObjectStoreConfig(bucket="fs-{tenant}-" + suffix).__dict__)
    config = {k: v for k, v in config.items() if v is not None}
    for tenant in buckets:
        manager.store(ctx("shared", "k", tenant=tenant, config=config), f"value of {tenant}")
    for tenant, name in buckets.items():
        assert s3_server.keys(name) == ["data/shared/k.pickle"]  # the bucket keeps tenants apart
        assert manager.load(ctx("shared", "k", tenant=tenant, config=config)) == f"value of {tenant}"
    assert manager.path_for(ctx("shared", "k", tenant="acme", config=config)) == (
        f"s3://fs-acme-{suffix}/data/shared/k.pickle"
    )
    # a tenant whose bucket was never made: a loud permanent error, not "nothing stored"
    for call in (
        lambda: manager.load(ctx("shared", "k", tenant="initech", config=config)),
        lambda: manager.exists(ctx("shared", "k", tenant="initech", config=config)),
        lambda: manager.store(ctx("shared", "k", tenant="initech", config=config), 1),
    ):
        with pytest.raises(fs.IOManagerError, match=f"bucket 'fs-initech-{suffix}' does not exist") as info:
            call()
        assert info.value.retryable is False and not isinstance(info.value, fs.ValueNotFound)


def test_a_bucket_template_needs_a_bucket_store(tmp_path: Path) -> None:
    manager = ObjectStoreIOManager(url=tmp_path)
    with pytest.raises(fs.IOManagerError, match="'bucket' needs a bucket store") as info:
        manager.store(ctx(config={"bucket": "b-{tenant}"}), 1)
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"colour": "red"}, "unknown key 'colour' (known: bucket, key, format)"),
        ({"format": "csv"}, "'format' must be one of pickle, json, parquet, got 'csv'"),
        ({"key": "{asset}/{when}.{ext}"}, "has unknown placeholder {when}"),
        ({"key": "{asset}/"}, "must name an object, not end with '/'"),
        ({"key": "../{asset}"}, "must not contain empty, '.' or '..' segments"),
        ({"key": 5}, "'key' must be a string template, got int"),
        ({"bucket": "b-{asset}"}, "'bucket' template 'b-{asset}' has unknown placeholder {asset}"),
        ({"bucket": "s3://b"}, "must be a bucket name only"),
    ],
)
def test_validate_config_names_the_field(config: dict[str, Any], message: str) -> None:
    problems = ObjectStoreIOManager.validate_config(config)
    assert len(problems) == 1 and message in problems[0], problems


def test_valid_configs_have_no_problems() -> None:
    assert ObjectStoreIOManager.validate_config({}) == []
    assert (
        ObjectStoreIOManager.validate_config(
            {"bucket": "lake-{tenant}", "key": "{asset}/{partition}.{ext}", "format": "parquet"}
        )
        == []
    )


# ---------------------------------------------------------------------- metadata and checksums
def test_metadata_comes_from_head(manager: ObjectStoreIOManager, s3_server: S3Server, bucket: str) -> None:
    stored = manager.store(ctx(key="k"), {"x": 1})
    head = s3_server.client.head_object(Bucket=bucket, Key="values/a/k.pickle")
    meta = manager.metadata(ctx(key="k"))
    assert meta is not None
    assert meta.checksum == stored.checksum == "etag:" + head["ETag"].strip('"')
    assert meta.size_bytes == stored.size_bytes == head["ContentLength"]
    assert meta.size_bytes == len(pickle.dumps({"x": 1}, protocol=pickle.HIGHEST_PROTOCOL))
    assert meta.updated_at == stored.updated_at == head["LastModified"]
    assert meta.extra == {"uri": f"s3://{bucket}/values/a/k.pickle"}
    # a single PUT's etag is the MD5 of the bytes
    assert head["ETag"].strip('"') == hashlib.md5(pickle.dumps({"x": 1}, protocol=5)).hexdigest()
    manager.store(ctx(key="k"), {"x": 2})
    changed = manager.metadata(ctx(key="k"))
    assert changed is not None and changed.checksum != meta.checksum


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_without_etags_the_checksum_is_a_sha256_kept_in_a_sidecar(scheme: str, tmp_path: Path) -> None:
    import fsspec

    url = f"memory://fs-test-{os.urandom(6).hex()}" if scheme == "memory" else f"file://{tmp_path}/objects"
    manager = ObjectStoreIOManager(url=url)
    stored = manager.store(ctx(), [1, 2, 3])
    data = pickle.dumps([1, 2, 3], protocol=pickle.HIGHEST_PROTOCOL)
    assert stored.checksum == "sha256:" + hashlib.sha256(data).hexdigest()
    assert manager.metadata(ctx()) == stored
    filesystem, root = fsspec.core.url_to_fs(url)
    names = sorted(p.rsplit("/", 1)[1] for p in filesystem.find(root))
    assert names == [".value.pickle.sha256", "value.pickle"]
    manager.delete(ctx())
    assert filesystem.find(root) == []
    if scheme == "memory":
        filesystem.rm(root, recursive=True) if filesystem.exists(root) else None


# ---------------------------------------------------------------------- formats
def test_parquet_objects_load_as_the_annotation_asks(manager: ObjectStoreIOManager) -> None:
    config = {"format": "parquet"}
    stored = manager.store(ctx(config=config), pa.table({"n": [1, 2]}))
    assert stored.row_count == 2 and stored.schema == {"n": "int64"}
    frame = manager.load(ctx(config=config, expected_type=pd.DataFrame))
    pd.testing.assert_frame_equal(frame, pd.DataFrame({"n": [1, 2]}))
    context = ctx(config=config)
    assert isinstance(manager.load(context), pa.Table)
    assert context.observed == {"size_bytes": stored.size_bytes, "row_count": 2}


def test_json_of_a_value_that_is_not_json_suggests_pickle(manager: ObjectStoreIOManager) -> None:
    with pytest.raises(fs.IOManagerError, match=r"is not JSON .* or use format='pickle'") as info:
        manager.store(ctx(config={"format": "json"}), {1, 2})
    assert info.value.retryable is False
    assert not manager.exists(ctx(config={"format": "json"}))


def test_a_value_that_cannot_be_pickled_is_permanent(manager: ObjectStoreIOManager) -> None:
    with pytest.raises(fs.IOManagerError, match="cannot be written as pickle") as info:
        manager.store(ctx(), lambda: 1)
    assert info.value.retryable is False
    assert not manager.exists(ctx())


def test_a_stored_object_in_another_format_is_a_permanent_read_error(manager: ObjectStoreIOManager) -> None:
    manager.store(ctx(config={"key": "{asset}.bin", "format": "pickle"}), {"x": 1})
    with pytest.raises(fs.IOManagerError, match="cannot be read as json") as info:
        manager.load(ctx(config={"key": "{asset}.bin", "format": "json"}))
    assert info.value.retryable is False


# ---------------------------------------------------------------------- atomic multipart uploads
def test_large_values_go_up_in_parts(s3_server: S3Server, bucket: str) -> None:
    manager = ObjectStoreIOManager(
        url=f"s3://{bucket}/big", storage_options=s3_server.storage_options(default_block_size=5 * 2**20)
    )
    value = [os.urandom(3 * 2**20) for _ in range(4)]  # 12 MiB: three parts of 5 MiB blocks
    stored = manager.store(ctx(), value)
    assert stored.checksum is not None and stored.checksum.endswith("-3")  # a multipart etag
    assert manager.load(ctx()) == value


def test_a_multipart_upload_that_fails_is_aborted_not_completed(s3_server: S3Server, bucket: str) -> None:
    manager = ObjectStoreIOManager(
        url=f"s3://{bucket}/big", storage_options=s3_server.storage_options(default_block_size=5 * 2**20)
    )
    manager.store(ctx(key="k"), "previous")
    before = manager.metadata(ctx(key="k"))
    uploads_at_crash: list[list[str]] = []
    crash = crash_part_way(
        after_bytes=11 * 2**20, before_raising=lambda: uploads_at_crash.append(s3_server.open_uploads(bucket))
    )
    with crash, pytest.raises(fs.IOManagerError) as info:
        manager.store(ctx(key="k"), [os.urandom(3 * 2**20) for _ in range(4)])
    gc.collect()  # an fsspec file left open would complete the upload when collected
    assert uploads_at_crash == [["big/a/k.pickle"]]  # parts had gone up when the write failed
    assert s3_server.open_uploads(bucket) == []  # and the upload was aborted
    assert info.value.retryable is True
    assert manager.load(ctx(key="k")) == "previous"
    assert manager.metadata(ctx(key="k")) == before
    with crash_part_way(after_bytes=11 * 2**20), pytest.raises(fs.IOManagerError):
        manager.store(ctx(key="fresh"), [os.urandom(3 * 2**20) for _ in range(4)])
    gc.collect()
    assert not manager.exists(ctx(key="fresh"))
    assert s3_server.keys(bucket) == ["big/a/k.pickle"]


# ---------------------------------------------------------------------- errors
def test_missing_object_and_missing_bucket(manager: ObjectStoreIOManager, s3_server: S3Server) -> None:
    with pytest.raises(fs.ValueNotFound, match="no stored value for asset 'nothing' partition 'k'"):
        manager.load(ctx("nothing", "k"))
    assert manager.metadata(ctx("nothing", "k")) is None
    manager.delete(ctx("nothing", "k"))  # fine
    gone = ObjectStoreIOManager(
        url="s3://fs-test-no-such-bucket/x", storage_options=s3_server.storage_options()
    )
    for call in (
        lambda: gone.load(ctx()),
        lambda: gone.metadata(ctx()),
        lambda: gone.store(ctx(), 1),
        lambda: gone.delete(ctx()),
    ):
        with pytest.raises(fs.IOManagerError, match="bucket 'fs-test-no-such-bucket' does not exist") as info:
            call()
        assert info.value.retryable is False and not isinstance(info.value, fs.ValueNotFound)


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (503, "ServiceUnavailable", True),
        (500, "InternalError", True),
        (429, "TooManyRequests", True),
        (403, "AccessDenied", False),
        (400, "InvalidRequest", False),
        # a code s3fs does not know becomes OSError(EIO): the 400 underneath must still win
        (400, "BadRequest", False),
    ],
)
def test_http_failures_are_classified(
    error_server: ErrorServer, status: int, code: str, retryable: bool
) -> None:
    error_server.status, error_server.code = status, code
    manager = ObjectStoreIOManager(url="s3://bucket/prefix", storage_options=error_server.storage_options())
    for operation, call in (
        ("GET", lambda: manager.load(ctx())),  # an error document with the code
        ("HEAD", lambda: manager.exists(ctx())),  # only the status: HEAD has no body
        ("PUT", lambda: manager.store(ctx(), {"x": 1})),
    ):
        with pytest.raises(fs.IOManagerError) as info:
            call()
        assert not isinstance(info.value, fs.ValueNotFound), operation
        assert info.value.retryable is retryable, f"{operation}: {info.value}"
        assert info.value.type == "io_error"
    # each operation reached the object (a 400 also makes botocore HEAD the bucket for its region)
    on_object = [
        r.split(" ")[0] for r in error_server.requests if r.endswith(" /bucket/prefix/a/value.pickle")
    ]
    assert set(on_object) == {"GET", "HEAD", "PUT"}, error_server.requests


def test_an_unreachable_endpoint_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 2},
        "skip_instance_cache": True,
    }
    manager = ObjectStoreIOManager(url="s3://bucket/prefix", storage_options=options)
    with pytest.raises(fs.IOManagerError) as info:
        manager.load(ctx())
    assert info.value.retryable is True


# ---------------------------------------------------------------------- settings and extras
def test_from_settings(tmp_path: Path) -> None:
    made = create(
        "object_store",
        {"url": "objs", "format": "json"},
        storage_dir=tmp_path / "s",
        store_url=None,
        base_dir=tmp_path,
    )
    assert isinstance(made, ObjectStoreIOManager)
    assert (made.url, made.format) == (str(tmp_path / "objs"), "json")
    default = create("object_store", None, storage_dir=tmp_path / "s", store_url=None, base_dir=tmp_path)
    assert default.url == str(tmp_path / "s/objects")
    default.store(ctx(), {"a": 1})
    assert (tmp_path / "s/objects/a/value.pickle").is_file()
    with pytest.raises(fs.ConfigurationError, match="has no option 'bucket'"):
        create("object_store", {"bucket": "x"}, storage_dir=tmp_path, store_url=None, base_dir=tmp_path)
    with pytest.raises(fs.ConfigurationError, match="format must be one of"):
        create("object_store", {"format": "csv"}, storage_dir=tmp_path, store_url=None, base_dir=tmp_path)


def test_a_missing_s3fs_names_the_s3_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    registry = sys.modules["fsspec.registry"]._registry  # `fsspec.registry` is a read-only view
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(registry, "s3", raising=False)  # fsspec keeps the class once imported
    assert fsspec is not None
    manager = ObjectStoreIOManager(url="s3://bucket/prefix")
    with pytest.raises(
        fs.IOManagerError, match=r"module 's3fs' is not installed\): pip install 'flowstone\[s3\]'"
    ) as info:
        manager.exists(ctx())
    assert info.value.retryable is False


def test_a_missing_pyarrow_names_the_extra_for_parquet_objects(
    manager: ObjectStoreIOManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(fs.IOManagerError, match=r"module 'pyarrow' is not installed"):
        manager.store(ctx(config={"format": "parquet"}), [{"a": 1}])
    manager.store(ctx(), {"pickle": "needs no pyarrow"})
    assert manager.load(ctx()) == {"pickle": "needs no pyarrow"}


# ---------------------------------------------------------------------- through the engine
def test_the_engine_stores_and_loads_through_s3(
    tmp_path: Path, manager: ObjectStoreIOManager, s3_server: S3Server, bucket: str
) -> None:
    pipeline = fs.Pipeline("t")
    days = fs.StaticPartitions(["2025-01-01", "2025-01-02"])

    @pipeline.asset(io_manager="object_store", partitioned_by=days)
    def raw(context: fs.Context) -> dict[str, Any]:
        return {"day": context.partition_key, "values": [1, 2, 3]}

    @pipeline.asset(
        io_manager="object_store", partitioned_by=days, io_config=ObjectStoreConfig(format="parquet")
    )
    def table(context: fs.Context, raw: dict[str, Any]) -> pa.Table:
        return pa.table({"day": [raw["day"]] * 3, "v": raw["values"]})

    @pipeline.asset(io_manager="object_store", partitioned_by=days, io_config={"format": "json"})
    def summary(context: fs.Context, table: pd.DataFrame) -> dict[str, Any]:
        assert isinstance(table, pd.DataFrame)
        return {"rows": len(table), "sum": int(table["v"].sum())}

    @pipeline.asset(io_manager="object_store", ins={"summary": fs.In(mapping=fs.AllPartitionsMapping())})
    def overall(context: fs.Context, summary: dict[str, dict[str, Any]]) -> int:
        return sum(s["sum"] for s in summary.values())

    with fs.FlowStone(
        pipeline,
        store=f"sqlite:///{tmp_path}/fs.db",
        storage_dir=tmp_path / "storage",
        io_managers={"object_store": manager},
    ) as app:
        run = app.materialize(["overall"])
        run.raise_on_failure()
        assert run.success
        assert app.load("overall") == 12
        assert app.load("summary", partition="2025-01-02") == {"rows": 3, "sum": 6}
        assert isinstance(app.load("table", partition="2025-01-01"), pa.Table)
        mat = run.steps[("table", "2025-01-01")].materialization
        assert mat is not None
        head = s3_server.client.head_object(Bucket=bucket, Key="values/table/2025-01-01.parquet")
        assert mat.value_hash == "etag:" + head["ETag"].strip('"')
        assert mat.value_size == head["ContentLength"]
        assert mat.metadata["row_count"] == 3
        assert mat.metadata["uri"] == f"s3://{bucket}/values/table/2025-01-01.parquet"
        assert "values/summary/2025-01-01.json" in s3_server.keys(bucket)
