"""Partition definitions (codecs) and partitioned materialization."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

import flowstone as fs

from .conftest import AppFactory


# ---------------------------------------------------------------------- codecs
def test_daily_partitions_codec() -> None:
    # end is exclusive: the windows lying wholly inside [start, end)
    days = fs.DailyPartitions(start="2025-01-01", end="2025-01-04")
    assert days.to_value("2025-01-02") == date(2025, 1, 2)
    assert list(days.keys()) == ["2025-01-01", "2025-01-02", "2025-01-03"]
    assert days.count() == 3 and days.key_at(2) == "2025-01-03" and days.index_of("2025-01-02") == 1
    assert "2025-01-03" in days and "2025-01-04" not in days and 20250101 not in days
    assert days.to_key(date(2025, 1, 3)) == "2025-01-03"
    assert days == fs.DailyPartitions(start=date(2025, 1, 1), end=date(2025, 1, 4))
    assert hash(days) == hash(fs.DailyPartitions(start="2025-01-01", end="2025-01-04"))
    assert days != fs.DailyPartitions(start="2025-01-01")
    assert days != fs.DailyPartitions(start="2025-01-01", end="2025-01-04", timezone="Europe/Oslo")
    assert repr(days) == "DailyPartitions(start='2025-01-01', end='2025-01-04')"


def test_daily_partitions_accept_datetimes_as_bounds() -> None:
    # A bound inside a day cuts that day off: only whole windows are partitions.
    days = fs.DailyPartitions(start=datetime(2025, 1, 1, 12, 30), end=datetime(2025, 1, 4, 6, 0))
    assert list(days.keys()) == ["2025-01-02", "2025-01-03"]
    assert days.to_value("2025-01-02") == date(2025, 1, 2)
    assert "2025-01-01" not in days and "2025-01-04" not in days
    assert days == fs.DailyPartitions(start="2025-01-02", end="2025-01-04")
    assert days.start == datetime(2025, 1, 2, tzinfo=UTC) and days.end == datetime(2025, 1, 4, tzinfo=UTC)


@pytest.mark.parametrize("key", ["2025-1-5", "20250105", "2025-01-05T00:00", "yesterday", "", "2025-02-30"])
def test_daily_partitions_reject_non_canonical_keys(key: str) -> None:
    with pytest.raises(ValueError, match="not a day key"):
        fs.DailyPartitions(start="2025-01-01").to_value(key)


def test_daily_partitions_range() -> None:
    days = fs.DailyPartitions(start="2025-01-10", end="2025-01-20")
    with pytest.raises(ValueError, match="outside"):
        days.to_value("2025-01-09")
    with pytest.raises(ValueError, match="outside"):
        days.to_value("2025-01-21")
    assert list(days.keys()) == [f"2025-01-{d}" for d in range(10, 20)]
    with pytest.raises(ValueError, match="before start"):
        fs.DailyPartitions(start="2025-02-01", end="2025-01-01")
    with pytest.raises(ValueError, match="no whole window"):
        fs.DailyPartitions(start="2025-02-01", end="2025-02-01T12:00")
    with pytest.raises(ValueError, match="not a date"):
        fs.DailyPartitions(start="soon")


def test_static_partitions_codec() -> None:
    regions = fs.StaticPartitions(["eu", "us"])
    assert regions.to_value("eu") == "eu"
    assert list(regions.keys()) == ["eu", "us"]
    assert "us" in regions and "apac" not in regions
    with pytest.raises(ValueError, match="not one of"):
        regions.to_value("apac")
    assert regions == fs.StaticPartitions(["eu", "us"]) and regions != fs.StaticPartitions(["us", "eu"])
    for bad in [[], ["eu", "eu"], ["eu", ""], ["eu", 1], "eu"]:
        with pytest.raises(ValueError):
            fs.StaticPartitions(bad)  # type: ignore[arg-type]


def test_static_date_looking_keys_stay_strings() -> None:
    days = fs.StaticPartitions(["2025-01-01", "2025-01-02T00:00"])
    assert days.to_value("2025-01-01") == "2025-01-01"
    assert type(days.to_value("2025-01-02T00:00")) is str
    assert days.to_key("2025-01-01") == "2025-01-01"
    with pytest.raises(ValueError):
        days.to_key(date(2025, 1, 1))


# ---------------------------------------------------------------------- materializing
@pytest.fixture
def daily_pipeline(pipeline: fs.Pipeline) -> fs.Pipeline:
    days = fs.DailyPartitions(start="2025-01-01", end="2026-01-01")

    @pipeline.asset()
    def lookup(context: Any) -> dict[str, int]:
        return {"factor": 10}

    @pipeline.asset(partitioned_by=days)
    def events(context: fs.Context, lookup: dict[str, int]) -> dict[str, Any]:
        return {"day": context.partition, "key": context.partition_key, "n": lookup["factor"]}

    @pipeline.asset(partitioned_by=days)
    def report(context: fs.Context, events: dict[str, Any]) -> str:
        return f"{events['day'].isoformat()}:{events['n']}"

    return pipeline


def test_context_partition_is_a_typed_date(daily_pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    app = make_app(daily_pipeline)
    run = app.materialize("report", partition="2025-01-15", values=True)
    assert run.success
    value = run.steps["events"].value
    assert value["day"] == date(2025, 1, 15) and isinstance(value["day"], date)
    assert value["key"] == "2025-01-15"
    assert run.steps["report"].value == "2025-01-15:10"
    assert run.steps["lookup"].partition_key is None
    assert run.steps["events"].partition_key == "2025-01-15"
    assert app.load("report", partition="2025-01-15") == "2025-01-15:10"

    # Another day re-uses the unpartitioned upstream and keeps the first day's value.
    run2 = app.materialize("report", partition="2025-01-16")
    assert [s.asset for s in run2.steps.values()] == ["events", "report"]
    assert app.load("report", partition="2025-01-15") == "2025-01-15:10"
    assert app.load("report", partition="2025-01-16") == "2025-01-16:10"
    with pytest.raises(fs.ValueNotFound):
        app.load("report", partition="2025-01-17")
    assert app.materialize("report", partition="2025-01-15").up_to_date == [("report", "2025-01-15")]


def test_missing_partition_is_a_validation_error(daily_pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    app = make_app(daily_pipeline)
    with pytest.raises(fs.ValidationError, match="asset 'report' is partitioned; choose a partition"):
        app.materialize("report")
    assert app.runs() == []


@pytest.mark.parametrize("key", ["2025-13-01", "2025/01/15", "2024-12-31", "2026-01-01", "../../etc"])
def test_invalid_partition_key_is_a_validation_error(
    daily_pipeline: fs.Pipeline, make_app: AppFactory, key: str
) -> None:
    app = make_app(daily_pipeline)
    with pytest.raises(fs.ValidationError, match="is not valid for asset 'report'") as info:
        app.materialize("report", partition=key)
    assert info.value.context["partition"] == key
    assert app.runs() == []


def test_partition_for_unpartitioned_selection(daily_pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    app = make_app(daily_pipeline)
    with pytest.raises(fs.ValidationError, match="none of \\['lookup'\\] is partitioned"):
        app.materialize("lookup", partition="2025-01-15")


def test_static_partitions(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    regions = fs.StaticPartitions(["eu", "us"])

    @pipeline.asset(partitioned_by=regions)
    def sales(context: fs.Context) -> str:
        return f"sales-{context.partition}"

    app = make_app(pipeline)
    for region in ["eu", "us"]:
        assert app.materialize("sales", partition=region).success
    assert app.load("sales", partition="eu") == "sales-eu"
    assert app.load("sales", partition="us") == "sales-us"
    with pytest.raises(fs.ValidationError, match="'apac' is not one of"):
        app.materialize("sales", partition="apac")
    with pytest.raises(fs.ValidationError):
        app.load("sales", partition="apac")
    mats = app.store.materializations(tenant="default", asset="sales")
    assert sorted(m.partition_key or "" for m in mats) == ["eu", "us"]


def test_multi_partitions_give_a_typed_key(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    parts = fs.MultiPartitions(
        {"region": fs.StaticPartitions(["eu", "us|ca"]), "date": fs.DailyPartitions(start="2025-01-01")}
    )

    @pipeline.asset(partitioned_by=parts)
    def sales(context: fs.Context) -> tuple[str, date, str]:
        return (context.partition.region, context.partition["date"], context.partition_key)

    app = make_app(pipeline)
    key = parts.key_of(region="us|ca", date="2025-01-15")
    assert key == "us\\|ca|2025-01-15"
    assert app.materialize("sales", partition=key).success
    assert app.load("sales", partition=key) == ("us|ca", date(2025, 1, 15), key)
    with pytest.raises(fs.ValidationError, match="dimension 'region'"):
        app.materialize("sales", partition="apac|2025-01-15")
