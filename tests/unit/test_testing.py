"""flowstone.testing.run_asset: one asset, called as a run would, with no store."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest

import flowstone as fs
from flowstone.testing import run_asset


class Counter:
    """A Resource that records its lifecycle."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def setup(self, config: Mapping[str, Any]) -> dict[str, int]:
        self.events.append("setup")
        return {"base": 100}

    def teardown(self, handle: Any) -> None:
        self.events.append("teardown")


def test_run_asset_passes_partition_inputs_and_resources(pipeline: fs.Pipeline) -> None:
    @pipeline.asset(partitioned_by=fs.DailyPartitions(start="2025-01-01"), requires=["counter"])
    def report(context: fs.Context, events: list[int]) -> fs.Output:
        assert context.partition == dt.date(2025, 1, 15)
        total = sum(events) + context.resources.counter["base"]
        return fs.Output({"total": total}, metadata={"rows": len(events)})

    counter = Counter()
    with pytest.raises(fs.DefinitionError, match=r"unknown asset|depends on"):
        pipeline.validate()  # 'events' is not an asset of this pipeline: run_asset does not care
    assert run_asset(report, partition="2025-01-15", resources={"counter": counter}, events=[1, 2]) == {
        "total": 103
    }
    out = run_asset(report, partition="2025-01-15", resources={"counter": counter}, events=[], output=True)
    assert out.metadata == {"rows": 0}
    assert counter.events == ["setup", "teardown", "setup", "teardown"]


def test_run_asset_names_what_is_wrong(pipeline: fs.Pipeline) -> None:
    @pipeline.asset(partitioned_by=fs.DailyPartitions(start="2025-01-01"), requires=["db"])
    def clean(context: fs.Context, raw: list[int]) -> list[int]:
        return raw

    with pytest.raises(fs.DefinitionError, match=r"run_asset\('clean'\): missing inputs \['raw'\]"):
        run_asset(clean, partition="2025-01-01", resources={"db": object()})
    with pytest.raises(fs.DefinitionError, match=r"unexpected inputs \['rwa'\]"):
        run_asset(clean, partition="2025-01-01", resources={"db": object()}, raw=[], rwa=[])
    with pytest.raises(fs.DefinitionError, match="the asset is partitioned"):
        run_asset(clean, resources={"db": object()}, raw=[])
    with pytest.raises(fs.DefinitionError, match=r"requires resources \['db'\]"):
        run_asset(clean, partition="2025-01-01", raw=[])
    with pytest.raises(fs.ValidationError, match="not valid for asset 'clean'"):
        run_asset(clean, partition="15/01/2025", resources={"db": object()}, raw=[])
