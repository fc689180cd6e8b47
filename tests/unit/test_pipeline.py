"""Whole-pipeline validation (every problem at once) and loading ``module:attr``."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs

from ._support import line_of_next_def


def where(line: int) -> str:
    return f"{__file__}:{line}"


def test_valid_pipeline_has_no_problems(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset(io_manager="memory")
    def b(context: Any, a: int) -> int:
        return a

    assert pipeline.problems() == []
    pipeline.validate()
    assert repr(pipeline) == "Pipeline('unit', 2 assets)"


def test_unknown_dependency_with_suggestion(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def raw_events(context: Any) -> int:
        return 1

    line = line_of_next_def()

    def cleaned(context: Any, raw_event: int) -> int:
        return raw_event

    pipeline.asset()(cleaned)
    [problem] = pipeline.problems()
    assert problem.code == "unknown_dependency"
    assert problem.asset == "cleaned"
    assert problem.location == where(line)
    assert "unknown asset 'raw_event'" in problem.message
    assert "did you mean 'raw_events'?" in problem.message
    assert str(problem).startswith(f"{where(line)}: asset 'cleaned' ")


def test_unknown_dependency_without_close_match_has_no_suggestion(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def b(context: Any, zzzzzz: int) -> int:
        return zzzzzz

    [problem] = pipeline.problems()
    assert "unknown asset 'zzzzzz'" in problem.message
    assert "did you mean" not in problem.message


def test_validate_reports_every_problem_at_once(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def raw_events(context: Any) -> int:
        return 1

    @pipeline.asset()
    def cleaned(context: Any, raw_event: int) -> int:  # unknown dependency
        return raw_event

    line_first = line_of_next_def()

    def report(context: Any) -> int:
        return 1

    line_dup = line_of_next_def()

    def report_again(context: Any) -> int:
        return 2

    pipeline.asset()(report)
    pipeline.asset(name="report")(report_again)  # duplicate name

    @pipeline.asset(io_manager="memroy")  # unknown I/O manager
    def stats(context: Any) -> int:
        return 1

    @pipeline.asset(depends_on=["c"])  # a -> b -> c -> a
    def a(context: Any, **up: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any, a: int) -> int:
        return a

    @pipeline.asset()
    def c(context: Any, b: int) -> int:
        return b

    problems = pipeline.problems()
    by_code = {p.code: p for p in problems}
    assert sorted(by_code) == ["cycle", "duplicate_asset", "unknown_dependency", "unknown_io_manager"]
    assert len(problems) == 4

    dup = by_code["duplicate_asset"]
    assert dup.asset == "report"
    assert dup.location == where(line_dup)
    assert f"first at {where(line_first)}" in dup.message

    io = by_code["unknown_io_manager"]
    assert io.asset == "stats"
    assert "'memroy'" in io.message and "did you mean 'memory'?" in io.message

    cycle = by_code["cycle"]
    assert cycle.asset == "a"
    assert "a -> b -> c -> a" in cycle.message
    assert cycle.location == f"{__file__}:{a.fn.__code__.co_firstlineno}"

    for problem in problems:
        assert problem.asset
        assert problem.location.startswith(__file__ + ":")

    with pytest.raises(fs.PipelineInvalid) as info:
        pipeline.validate()
    err = info.value
    assert isinstance(err, fs.DefinitionError)
    assert [str(p) for p in err.problems] == [str(p) for p in problems]
    text = str(err)
    assert text.startswith("pipeline has 4 problem(s):")
    assert "a -> b -> c -> a" in text
    assert "did you mean 'raw_events'?" in text
    assert "did you mean 'memory'?" in text
    assert "is defined twice" in text
    assert len(err.context["problems"]) == 4


def test_every_problem_of_one_asset_is_reported(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def known(context: Any) -> int:
        return 1

    @pipeline.asset(io_manager="nowhere")
    def many(context: Any, ghost_one: int, known: int, ghost_two: int) -> int:
        return 1

    problems = pipeline.problems()
    assert [(p.code, p.asset) for p in problems] == [
        ("unknown_dependency", "many"),
        ("unknown_dependency", "many"),
        ("unknown_io_manager", "many"),
    ]
    assert "'ghost_one'" in problems[0].message and "'ghost_two'" in problems[1].message


def test_validate_accepts_extra_and_pipeline_io_managers() -> None:
    pipeline = fs.Pipeline("p", io_managers={"warehouse": fs.MemoryIOManager()})

    @pipeline.asset(io_manager="warehouse")
    def a(context: Any) -> int:
        return 1

    @pipeline.asset(io_manager="lake")
    def b(context: Any) -> int:
        return 1

    [problem] = pipeline.problems()
    assert problem.code == "unknown_io_manager" and problem.asset == "b"
    pipeline.validate(io_managers=["lake"])


def test_unknown_default_io_manager_is_reported_per_asset() -> None:
    pipeline = fs.Pipeline("p", default_io_manager="nowhere")

    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    [problem] = pipeline.problems()
    assert problem.code == "unknown_io_manager" and "'nowhere'" in problem.message


def test_partition_mismatch_is_a_problem(pipeline: fs.Pipeline) -> None:
    @pipeline.asset(partitioned_by=fs.DailyPartitions(start="2025-01-01"))
    def daily(context: Any) -> int:
        return 1

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["eu", "us"]))
    def regional(context: Any, daily: int) -> int:
        return daily

    @pipeline.asset()
    def total(context: Any, daily: int) -> int:
        return daily

    # An unpartitioned asset over a partitioned one is a fan-in (all partitions): no problem.
    codes = sorted((p.code, p.asset) for p in pipeline.problems())
    assert codes == [("partition_mismatch", "regional")]


def test_invalid_pipeline_cannot_be_bound_to_a_store(pipeline: fs.Pipeline, tmp_path: Path) -> None:
    @pipeline.asset()
    def a(context: Any, missing: int) -> int:
        return missing

    with pytest.raises(fs.PipelineInvalid, match="unknown asset 'missing'"):
        fs.FlowStone(pipeline, store=f"sqlite:///{tmp_path}/fs.db", storage_dir=tmp_path / "s")
    assert not (tmp_path / "fs.db").exists()


def test_get_unknown_asset_suggests(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def daily_report(context: Any) -> int:
        return 1

    with pytest.raises(fs.AssetNotFound, match="did you mean 'daily_report'") as info:
        pipeline.get("daily_reprot")
    assert info.value.context["suggestions"] == ["daily_report"]
    assert info.value.exit_code == 2


def test_pipeline_name_must_be_an_identifier() -> None:
    assert fs.Pipeline("my-pipeline").name == "my-pipeline"
    with pytest.raises(ValueError, match="identifier"):
        fs.Pipeline("my pipeline")


def test_pipelines_are_independent_registries() -> None:
    one, two = fs.Pipeline("one"), fs.Pipeline("two")

    @one.asset()
    def a(context: Any) -> int:
        return 1

    assert "a" in one.assets and "a" not in two.assets


def test_graph_is_rebuilt_after_adding_assets(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    assert pipeline.graph.names == ["a"]

    @pipeline.asset()
    def b(context: Any, a: int) -> int:
        return a

    assert pipeline.graph.topological_order() == ["a", "b"]


# ---------------------------------------------------------------------- load_pipeline
@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory for throw-away modules; sys.path and sys.modules are restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    directory = tmp_path / "mods"
    directory.mkdir()
    yield directory
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _write_module(directory: Path, body: str) -> str:
    name = f"fs_unit_{uuid.uuid4().hex[:12]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(body))
    importlib.invalidate_caches()
    return name


def test_load_pipeline_returns_the_pipeline(module_dir: Path) -> None:
    name = _write_module(
        module_dir,
        """
        import flowstone
        pipeline = flowstone.Pipeline("loaded")

        @pipeline.asset()
        def a(context):
            return 1
        """,
    )
    loaded = fs.load_pipeline(f"{name}:pipeline", search_path=[module_dir])
    assert isinstance(loaded, fs.Pipeline)
    assert loaded.name == "loaded"
    assert list(loaded.assets) == ["a"]


@pytest.mark.parametrize("target", ["no_colon", ":pipeline", "module:", ""])
def test_load_pipeline_bad_format(target: str) -> None:
    with pytest.raises(fs.ConfigurationError, match=r"must look like 'package\.module:pipeline'"):
        fs.load_pipeline(target)


def test_load_pipeline_missing_module(module_dir: Path) -> None:
    with pytest.raises(fs.ConfigurationError, match="cannot import pipeline module") as info:
        fs.load_pipeline("fs_unit_no_such_module_xyz:pipeline", search_path=[module_dir])
    assert isinstance(info.value.original, ModuleNotFoundError)
    assert info.value.exit_code == 2


def test_load_pipeline_missing_attribute(module_dir: Path) -> None:
    name = _write_module(module_dir, "x = 1\n")
    with pytest.raises(fs.ConfigurationError, match="has no attribute 'pipeline'"):
        fs.load_pipeline(f"{name}:pipeline", search_path=[module_dir])


def test_load_pipeline_not_a_pipeline(module_dir: Path) -> None:
    name = _write_module(module_dir, "pipeline = {'not': 'a pipeline'}\n")
    with pytest.raises(fs.ConfigurationError, match=r"is a dict, not a flowstone\.Pipeline"):
        fs.load_pipeline(f"{name}:pipeline", search_path=[module_dir])


def test_load_pipeline_bad_attribute_path(module_dir: Path) -> None:
    name = _write_module(module_dir, "x = 1\n")
    with pytest.raises(fs.ConfigurationError, match="bad attribute"):
        fs.load_pipeline(f"{name}:x.1bad", search_path=[module_dir])


def test_load_pipeline_reports_a_missing_import_inside_the_module_as_such(module_dir: Path) -> None:
    # The module exists; what it imports does not. That is the user's import error, not ours,
    # even when the missing name is a prefix of the module's own name.
    missing = f"fs_unit_dep_{uuid.uuid4().hex[:8]}"
    (module_dir / f"{missing}_pipeline.py").write_text(f"import {missing}\n")
    importlib.invalidate_caches()
    with pytest.raises(ModuleNotFoundError, match=missing):
        fs.load_pipeline(f"{missing}_pipeline:pipeline", search_path=[module_dir])
