"""The memory and filesystem I/O managers."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs

from .conftest import AppFactory


def ctx(asset: str = "a", key: str | None = None, tenant: str = "default") -> fs.IOContext:
    return fs.IOContext(asset=asset, partition_key=key, tenant=tenant)


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def value_files(root: Path) -> list[Path]:
    """Stored values, without their ``_asset.json`` sidecars."""
    return [p for p in all_files(root) if not p.name.endswith("._asset.json")]


# ---------------------------------------------------------------------- memory
def test_memory_manager_round_trip() -> None:
    manager = fs.MemoryIOManager()
    assert isinstance(manager, fs.IOManager)
    assert not manager.exists(ctx())
    assert manager.metadata(ctx()) is None
    with pytest.raises(fs.ValueNotFound, match="no value in memory for asset 'a'"):
        manager.load(ctx())
    value = object()
    manager.store(ctx(), value)
    assert manager.load(ctx()) is value
    assert manager.exists(ctx())
    assert manager.metadata(ctx()) is not None
    manager.delete(ctx())
    assert not manager.exists(ctx())
    manager.delete(ctx())  # deleting twice is fine


def test_memory_manager_keys_by_tenant_asset_and_partition() -> None:
    manager = fs.MemoryIOManager()
    manager.store(ctx("a", "k1"), 1)
    manager.store(ctx("a", "k2"), 2)
    manager.store(ctx("a", "k1", tenant="acme"), 3)
    manager.store(ctx("b", "k1"), 4)
    contexts = [ctx("a", "k1"), ctx("a", "k2"), ctx("a", "k1", "acme"), ctx("b", "k1")]
    assert [manager.load(c) for c in contexts] == [1, 2, 3, 4]
    with pytest.raises(fs.ValueNotFound):
        manager.load(ctx("a"))


def test_value_not_found_is_an_io_error() -> None:
    err = fs.ValueNotFound("x")
    assert isinstance(err, fs.IOManagerError) and err.type == "io_error" and err.retryable is False


# ---------------------------------------------------------------------- filesystem
def test_filesystem_round_trip_and_metadata(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path / "root")
    assert isinstance(manager, fs.IOManager)
    value = {"rows": list(range(100)), "name": "x"}
    stored = manager.store(ctx(), value)
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    assert stored.size_bytes == len(data)
    assert stored.checksum == "sha256:" + hashlib.sha256(data).hexdigest()
    assert stored.updated_at is not None
    assert manager.load(ctx()) == value
    assert manager.exists(ctx())
    meta = manager.metadata(ctx())
    assert meta is not None
    assert (meta.size_bytes, meta.checksum) == (stored.size_bytes, stored.checksum)
    path = manager.path_for(ctx())
    assert path == tmp_path / "root" / "a" / "value.pickle"
    assert path.stat().st_size == stored.size_bytes
    manager.delete(ctx())
    assert not manager.exists(ctx())
    assert manager.metadata(ctx()) is None
    manager.delete(ctx())


def test_filesystem_missing_value(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    message = "no stored value for asset 'a' partition '2025-01-01'"
    with pytest.raises(fs.ValueNotFound, match=message) as info:
        manager.load(ctx("a", "2025-01-01"))
    assert info.value.context["asset"] == "a"


def test_filesystem_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    for i in range(5):
        manager.store(ctx("a", f"k{i}"), i)
        manager.store(ctx("a", f"k{i}"), i * 10)  # overwrite
    names = [p.name for p in all_files(tmp_path)]
    assert len(names) == 10  # five values, five sidecars
    assert sorted(p.name for p in value_files(tmp_path)) == [f"p=k{i}.pickle" for i in range(5)]
    assert not [n for n in names if n.startswith(".tmp")]
    assert [manager.load(ctx("a", f"k{i}")) for i in range(5)] == [0, 10, 20, 30, 40]


def test_failed_write_keeps_previous_value_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = fs.FilesystemIOManager(tmp_path, fsync=False)
    manager.store(ctx(), "old")

    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(fs.IOManagerError, match="could not write") as info:
        manager.store(ctx(), "new")
    assert info.value.retryable is True
    assert isinstance(info.value.original, OSError)
    monkeypatch.undo()
    assert manager.load(ctx()) == "old"
    assert [p.name for p in all_files(tmp_path)] == ["value._asset.json", "value.pickle"]


def test_unpicklable_value_is_an_io_error(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    with pytest.raises(fs.IOManagerError, match="cannot be pickled") as info:
        manager.store(ctx(), lambda: 1)
    assert info.value.retryable is False
    assert all_files(tmp_path) == []


def test_corrupt_file_is_an_io_error(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    manager.store(ctx(), 1)
    manager.path_for(ctx()).write_bytes(b"not a pickle")
    with pytest.raises(fs.IOManagerError, match="cannot be decoded as pickle") as info:
        manager.load(ctx())
    assert not isinstance(info.value, fs.ValueNotFound)


@pytest.mark.parametrize(
    "key",
    ["../../escape", "a/b/c", "..", "/etc/passwd", "..\\..\\x", "%2e%2e%2f", "p=../value", "."],
)
def test_filesystem_keys_stay_inside_the_asset_directory(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    manager = fs.FilesystemIOManager(root)
    manager.store(ctx("a", key), key)
    path = manager.path_for(ctx("a", key)).resolve()
    assert path.parent == (root / "a").resolve()
    assert manager.load(ctx("a", key)) == key
    assert value_files(tmp_path) == [path]  # nothing written anywhere else
    assert manager.sidecar_for(path).parent == path.parent


def test_filesystem_distinct_keys_do_not_collide(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    keys = ["a/b", "a%2Fb", "a_b", "a b", "A/B"]
    for key in keys:
        manager.store(ctx("x", key), key)
    assert [manager.load(ctx("x", k)) for k in keys] == keys
    assert len(value_files(tmp_path)) == len(keys)
    assert not manager.exists(ctx("x", None))


def test_filesystem_tenants_are_separate(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    manager.store(ctx("a", tenant="default"), "mine")
    manager.store(ctx("a", tenant="../acme"), "theirs")
    assert manager.load(ctx("a")) == "mine"
    assert manager.load(ctx("a", tenant="../acme")) == "theirs"
    theirs = manager.path_for(ctx("a", tenant="../acme")).resolve()
    assert theirs.is_relative_to((tmp_path / "tenants").resolve())


def test_materialization_records_size_and_checksum(
    pipeline: fs.Pipeline, make_app: AppFactory, tmp_path: Path
) -> None:
    @pipeline.asset()
    def a(context: Any) -> list[int]:
        return [1, 2, 3]

    @pipeline.asset(io_manager="memory")
    def b(context: Any, a: list[int]) -> int:
        return sum(a)

    app = make_app(pipeline)
    app.materialize("b")
    [mat] = app.store.materializations(tenant="default", asset="a")
    manager = app.io_managers["filesystem"]
    meta = manager.metadata(ctx("a"))
    assert meta is not None
    assert mat.value_size == meta.size_bytes
    assert mat.value_hash == meta.checksum
    assert (tmp_path / "storage" / "a" / "value.pickle").is_file()
    [mat_b] = app.store.materializations(tenant="default", asset="b")
    assert mat_b.io_manager == "memory"
    assert mat_b.value_size is None


def test_custom_io_manager_override(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    class Recording(fs.MemoryIOManager):
        def __init__(self) -> None:
            super().__init__()
            self.stored: list[str] = []

        def store(self, ctx: fs.IOContext, value: Any) -> fs.StoredValue | None:
            self.stored.append(ctx.asset)
            super().store(ctx, value)
            return fs.StoredValue(size_bytes=7, checksum="custom", extra={"where": "ram"})

    @pipeline.asset(io_manager="recording", io_config={"bucket": "b1"})
    def a(context: Any) -> int:
        return 1

    recording = Recording()
    app = make_app(pipeline, io_managers={"recording": recording})
    app.materialize("a")
    assert recording.stored == ["a"]
    [mat] = app.store.materializations(tenant="default", asset="a")
    assert (mat.value_size, mat.value_hash, mat.metadata) == (7, "custom", {"where": "ram"})


def test_io_managers_must_implement_the_protocol(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    with pytest.raises(TypeError, match="does not implement the IOManager protocol"):
        make_app(pipeline, io_managers={"broken": object()})
