"""The filesystem I/O manager's formats, path templates, sidecars and config validation."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs
from flowstone.io import FilesystemConfig

from .conftest import AppFactory


def ctx(asset: str = "a", key: str | None = None, **config: Any) -> fs.IOContext:
    return fs.IOContext(asset=asset, partition_key=key, config=config)


def sidecar_of(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(path.with_name(path.stem + "._asset.json").read_text())
    return found


def test_json_format_writes_readable_json(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    value = {"total": 3, "names": ["ä", "b"], "nested": {"ok": True, "none": None}}
    manager.store(ctx(format="json"), value)
    path = manager.path_for(ctx(format="json"))
    assert path == tmp_path / "a" / "value.json"
    assert json.loads(path.read_text(encoding="utf-8")) == value
    assert manager.load(ctx(format="json")) == value
    # the pickle file of the same asset is another file: formats never read each other's bytes
    assert not manager.exists(ctx())


def test_a_value_json_cannot_hold_is_a_permanent_io_error_that_suggests_pickle(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path, format="json")
    manager.store(ctx(), [1])
    for bad in ({1, 2}, float("nan"), object()):
        with pytest.raises(fs.IOManagerError, match=r"not JSON.*format='pickle'") as info:
            manager.store(ctx(), bad)
        assert info.value.retryable is False
    assert manager.load(ctx()) == [1]


def test_path_template_lays_files_out_with_sidecars_beside_them(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    config = {"path": "reports/{asset}-{partition}.json", "format": "json"}
    manager.store(ctx("daily", "2025-01-15", **config), {"n": 1})
    manager.store(ctx("daily", "a/b", **config), {"n": 2})
    assert (tmp_path / "reports" / "daily-2025-01-15.json").is_file()
    assert (tmp_path / "reports" / "daily-2025-01-15._asset.json").is_file()
    assert (tmp_path / "reports" / "daily-a%2Fb.json").is_file()  # quoted: no directory escape
    assert manager.load(ctx("daily", "a/b", **config)) == {"n": 2}


def test_sidecar_tells_the_provenance_of_the_value(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    up = fs.UpstreamVersion("raw", "2025-01-15", "m-raw", "sha256:abc")
    context = fs.IOContext(
        asset="clean",
        partition_key="2025-01-15",
        run_id="r1",
        materialization_id="m-clean",
        code_version="3",
        upstream=(up,),
    )
    stored = manager.store(context, [1, 2])
    path = manager.path_for(context)
    sidecar = sidecar_of(path)
    assert sidecar["asset"] == "clean"
    assert sidecar["partition_key"] == "2025-01-15"
    assert sidecar["tenant"] == "default"
    assert sidecar["run_id"] == "r1"
    assert sidecar["materialization_id"] == "m-clean"
    assert sidecar["code_version"] == "3"
    assert sidecar["upstream"] == [
        {
            "asset": "raw",
            "partition_key": "2025-01-15",
            "materialization_id": "m-raw",
            "data_version": "sha256:abc",
        }
    ]
    assert sidecar["checksum"] == stored.checksum == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["data_version"] == stored.checksum  # none declared: the checksum
    assert sidecar["size_bytes"] == path.stat().st_size
    assert sidecar["value_file"] == path.name
    assert sidecar["created_at"].endswith("+00:00")


def test_metadata_does_not_trust_a_sidecar_of_an_older_value(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    manager.store(ctx(), "first value")
    path = manager.path_for(ctx())
    sidecar = path.with_name("value._asset.json")
    shutil.copy(sidecar, tmp_path / "old-sidecar")
    manager.store(ctx(), "second value")
    # as if the run died between renaming the value and renaming its sidecar
    shutil.copy(tmp_path / "old-sidecar", sidecar)
    meta = manager.metadata(ctx())
    assert meta is not None
    assert meta.checksum == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta.checksum != json.loads(sidecar.read_text())["checksum"]


def test_sidecars_can_be_turned_off(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path, sidecars=False)
    manager.store(ctx(), 1)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["value.pickle"]


def test_delete_removes_the_sidecar_too(tmp_path: Path) -> None:
    manager = fs.FilesystemIOManager(tmp_path)
    manager.store(ctx("a", "k"), 1)
    manager.delete(ctx("a", "k"))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_engine_writes_json_and_sidecar_with_the_recorded_versions(
    pipeline: fs.Pipeline, make_app: AppFactory, tmp_path: Path
) -> None:
    days = fs.DailyPartitions(start="2025-01-01")

    @pipeline.asset(partitioned_by=days, io_config=FilesystemConfig(format="json"))
    def raw(context: fs.Context) -> dict[str, str]:
        return {"day": context.partition_key or ""}

    @pipeline.asset(partitioned_by=days, code_version="7")
    def clean(context: fs.Context, raw: dict[str, str]) -> fs.Output:
        return fs.Output([raw["day"]], data_version="declared-v1")

    app = make_app(pipeline)
    run = app.materialize(["clean"], partition="2025-01-02")
    assert run.success
    raw_mat = run.steps["raw"].materialization
    clean_mat = run.steps["clean"].materialization
    assert raw_mat is not None and clean_mat is not None
    raw_file = tmp_path / "storage" / "raw" / "p=2025-01-02.json"
    assert json.loads(raw_file.read_text()) == {"day": "2025-01-02"}
    assert raw_mat.metadata["path"] == str(raw_file)
    sidecar = sidecar_of(tmp_path / "storage" / "clean" / "p=2025-01-02.pickle")
    assert sidecar["materialization_id"] == clean_mat.id
    assert sidecar["run_id"] == run.run_id
    assert sidecar["data_version"] == clean_mat.data_version == "declared-v1"
    assert sidecar["code_version"] == "7"
    assert sidecar["upstream"] == [
        {
            "asset": "raw",
            "partition_key": "2025-01-02",
            "materialization_id": raw_mat.id,
            "data_version": raw_mat.data_version,
        }
    ]
    # an upstream read but not recomputed carries its recorded version too
    rerun = app.materialize(["clean"], partition="2025-01-02", force=True)
    assert "raw" not in rerun.steps
    again = sidecar_of(tmp_path / "storage" / "clean" / "p=2025-01-02.pickle")
    assert again["upstream"][0]["materialization_id"] == raw_mat.id
    assert again["upstream"][0]["data_version"] == raw_mat.data_version


def test_loads_report_bytes_on_io_events(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: fs.Context) -> list[int]:
        return list(range(1000))

    @pipeline.asset()
    def b(context: fs.Context, a: list[int]) -> int:
        return len(a)

    app = make_app(pipeline)
    seen: list[fs.Event] = []
    app.events.subscribe(lambda e: seen.append(e) if e.type.startswith("io.") else None)
    assert app.materialize(["b"]).success
    stored_a = next(e for e in seen if e.type == "io.stored" and e.asset == "a")
    loaded_a = next(e for e in seen if e.type == "io.loaded" and e.asset == "a")
    assert loaded_a.data["size_bytes"] == stored_a.data["size_bytes"] > 1000
    assert loaded_a.data["consumer"] == "b"


# ---------------------------------------------------------------------- validation
def test_invalid_io_config_fails_validation_with_the_asset_location(pipeline: fs.Pipeline) -> None:
    @pipeline.asset(io_config={"format": "yaml", "colour": "blue"})
    def a(context: fs.Context) -> int:
        return 1

    @pipeline.asset(io_config={"path": "../outside/{partition}-{day}.json"})
    def b(context: fs.Context) -> int:
        return 1

    problems = {(p.asset, p.code, p.message) for p in pipeline.problems()}
    messages = [m for _, _, m in problems]
    assert all(code == "invalid_io_config" for _, code, _ in problems)
    assert any("format must be one of ['json', 'pickle'], got 'yaml'" in m for m in messages)
    assert any("unknown option 'colour'" in m for m in messages)
    assert any("unknown placeholder {day}" in m for m in messages)
    assert any("must not contain '..'" in m for m in messages)
    with pytest.raises(fs.PipelineInvalid) as info:
        pipeline.validate()
    assert "test_io_files.py:" in str(info.value)


def test_io_config_must_be_a_dict_or_config_object(pipeline: fs.Pipeline) -> None:
    with pytest.raises(fs.DefinitionError, match="io_config must be a dict or a config dataclass"):

        @pipeline.asset(io_config=["format", "json"])
        def a(context: fs.Context) -> int:
            return 1


def test_a_builtin_manager_whose_extra_is_missing_is_named(
    pipeline: fs.Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    @pipeline.asset(io_manager="duckdb")
    def a(context: fs.Context) -> int:
        return 1

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "duckdb" else real(name, *args)
    )
    [problem] = pipeline.problems()
    assert problem.code == "missing_extra"
    assert "pip install 'flowstone[duckdb]'" in problem.message
    assert "not installed: duckdb" in problem.message
    assert "test_io_files.py:" in str(problem)


def test_a_bound_instance_validates_the_config_it_receives(pipeline: fs.Pipeline, tmp_path: Path) -> None:
    @pipeline.asset(io_manager="lake", io_config={"format": "csv"})
    def a(context: fs.Context) -> int:
        return 1

    with pytest.raises(fs.PipelineInvalid, match="io_config for I/O manager 'lake': format must be one of"):
        fs.FlowStone(
            pipeline,
            store=f"sqlite:///{tmp_path}/fs.db",
            io_managers={"lake": fs.FilesystemIOManager(tmp_path / "lake")},
        )
