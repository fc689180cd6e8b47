"""The lineage API on a diamond: a -> (b, c) -> d -> e."""

from __future__ import annotations

from typing import Any

import pytest

import flowstone as fs

from .conftest import AppFactory


@pytest.fixture
def diamond(pipeline: fs.Pipeline, make_app: AppFactory) -> fs.FlowStone:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any, a: int) -> int:
        return a + 1

    @pipeline.asset()
    def c(context: Any, a: int) -> int:
        return a + 2

    @pipeline.asset()
    def d(context: Any, b: int, c: int) -> int:
        return b + c

    @pipeline.asset()
    def e(context: Any, d: int) -> int:
        return d

    app = make_app(pipeline)
    app.materialize("d")  # e is never materialized
    return app


def latest_id(app: fs.FlowStone, asset: str) -> str:
    mats = [m for m in app.store.materializations(tenant="default", asset=asset) if m.status == "success"]
    return mats[0].id


def test_upstream(diamond: fs.FlowStone) -> None:
    entries = diamond.lineage.upstream("d")
    assert [(e.asset, e.depth) for e in entries] == [("b", 1), ("c", 1), ("a", 2)]
    for entry in entries:
        assert entry.materialization_id == latest_id(diamond, entry.asset)
        assert entry.status == "success"
    assert [(e.asset, e.depth) for e in diamond.lineage.upstream("d", depth=1)] == [("b", 1), ("c", 1)]
    assert diamond.lineage.upstream("a") == []
    assert diamond.lineage.upstream("e") == []  # never materialized


def test_downstream(diamond: fs.FlowStone) -> None:
    entries = diamond.lineage.downstream("a")
    assert [(e.asset, e.depth) for e in entries] == [("b", 1), ("c", 1), ("d", 2)]
    assert [e.asset for e in diamond.lineage.downstream("a", depth=1)] == ["b", "c"]
    assert diamond.lineage.downstream("d") == []


def test_impact_marks_stale_and_never_materialized(diamond: fs.FlowStone) -> None:
    impact = diamond.lineage.impact("a")
    assert [(e.asset, e.depth, e.stale) for e in impact] == [
        ("b", 1, False),
        ("c", 1, False),
        ("d", 2, False),
        ("e", 3, None),
    ]
    assert impact[-1].materialization_id is None

    diamond.materialize("a", force=True)
    assert [(e.asset, e.stale) for e in diamond.lineage.impact("a")] == [
        ("b", True),
        ("c", True),
        ("d", True),
        ("e", None),
    ]
    diamond.materialize("b", force=True)
    impact = diamond.lineage.impact("a")
    assert [(e.asset, e.stale) for e in impact] == [("b", False), ("c", True), ("d", True), ("e", None)]
    assert impact[0].materialization_id == latest_id(diamond, "b")

    assert [e.asset for e in diamond.lineage.impact("a", depth=1)] == ["b", "c"]
    assert [(e.asset, e.depth) for e in diamond.lineage.impact("d")] == [("e", 1)]


def test_unknown_asset(diamond: fs.FlowStone) -> None:
    for query in (diamond.lineage.upstream, diamond.lineage.downstream, diamond.lineage.impact):
        with pytest.raises(fs.AssetNotFound, match="did you mean 'd'"):
            query("dd")


def test_depth_must_be_positive(diamond: fs.FlowStone) -> None:
    with pytest.raises(fs.FlowStoneError, match="depth must be an integer from 1 to"):
        diamond.lineage.upstream("d", depth=0)


def test_depth_is_not_silently_capped(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    # A chain longer than the old cap of 100: every ancestor is reported.
    pipeline.add(fs.AssetDefinition(name="n0", fn=lambda context: 0, deps=()))
    for i in range(1, 130):
        pipeline.add(
            fs.AssetDefinition(
                name=f"n{i}", fn=lambda context, **up: 0, deps=(f"n{i - 1}",), takes_var_kwargs=True
            )
        )
    app = make_app(pipeline, io_managers={"filesystem": fs.MemoryIOManager()})
    app.materialize("+n129")
    entries = app.lineage.upstream("n129")
    assert len(entries) == 129 and entries[-1].asset == "n0" and entries[-1].depth == 129
    assert len(app.lineage.downstream("n0")) == 129
    with pytest.raises(fs.FlowStoneError, match="depth must be an integer"):
        app.lineage.upstream("n129", depth=10**6)


def test_partition_must_fit_the_asset(diamond: fs.FlowStone) -> None:
    for query in (diamond.lineage.upstream, diamond.lineage.downstream, diamond.lineage.impact):
        with pytest.raises(fs.ValidationError, match="asset 'd' is not partitioned"):
            query("d", partition="2025-01-01")


def test_partitioned_lineage(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    days = fs.DailyPartitions(start="2025-01-01")

    @pipeline.asset(partitioned_by=days)
    def raw(context: Any) -> str:
        return str(context.partition)

    @pipeline.asset(partitioned_by=days)
    def report(context: Any, raw: str) -> str:
        return raw

    app = make_app(pipeline)
    app.materialize("report", partition="2025-01-01")
    app.materialize("report", partition="2025-01-02")
    up = app.lineage.upstream("report", partition="2025-01-02")
    assert [(e.asset, e.partition_key) for e in up] == [("raw", "2025-01-02")]
    down = app.lineage.downstream("raw", partition="2025-01-01")
    assert [(e.asset, e.partition_key) for e in down] == [("report", "2025-01-01")]
    assert app.lineage.upstream("report", partition="2025-01-03") == []


def test_partitioned_asset_needs_a_valid_partition(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(partitioned_by=fs.StaticPartitions(["eu", "us"]))
    def sales(context: Any) -> str:
        return str(context.partition)

    app = make_app(pipeline)
    app.materialize("sales", partition="eu")
    with pytest.raises(fs.ValidationError, match="asset 'sales' is partitioned"):
        app.lineage.downstream("sales")
    with pytest.raises(fs.ValidationError, match="'asia' is not valid for asset 'sales'"):
        app.lineage.impact("sales", partition="asia")
