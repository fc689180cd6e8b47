"""Partition mappings end to end: what a downstream partition reads, how it is planned and validated.

Every test materializes through ``FlowStone.materialize(..., values=True)`` on its own SQLite store
and checks the value the asset function received, so a mapping is tested by what the user sees.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import flowstone as fs

from ._support import line_of_next_def
from .conftest import AppFactory

StepStatus = fs.StepStatus
RunStatus = fs.RunStatus
Step = tuple[str, str | None]

DAYS = fs.DailyPartitions(start="2025-01-01", end="2025-02-01")


def steps_of(run: fs.RunResult) -> list[Step]:
    """(asset, partition) of every step of a run, in step order."""
    return [(s.asset, s.partition_key) for s in run.steps.values()]


def planned(app: fs.FlowStone, selection: str | list[str], **kwargs: Any) -> list[Step]:
    return [s.key for s in app.plan(selection, **kwargs).steps]


def value(run: fs.RunResult, asset: str, key: str | None) -> Any:
    return run.steps[(asset, key)].value


def where(line: int) -> str:
    return f"{__file__}:{line}"


def day_keys(first: int, last: int, month: int = 1) -> list[str]:
    return [f"2025-{month:02d}-{d:02d}" for d in range(first, last + 1)]


def upstream_days(pipeline: fs.Pipeline, days: fs.PartitionsDefinition = DAYS) -> list[Step]:
    """Registers ``raw``: a daily asset whose value is ``raw@<key>``; returns the calls it gets."""
    calls: list[Step] = []

    @pipeline.asset(partitioned_by=days)
    def raw(context: fs.Context) -> str:
        calls.append(("raw", context.partition_key))
        return f"raw@{context.partition_key}"

    return calls


# ---------------------------------------------------------------------- identity
def test_identity_is_the_default_between_equal_definitions(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    upstream_days(pipeline)

    @pipeline.asset(partitioned_by=fs.DailyPartitions(start="2025-01-01", end="2025-02-01"))
    def implicit(context: fs.Context, raw: str) -> str:
        return f"{context.partition_key}<-{raw}"

    @pipeline.asset(partitioned_by=DAYS, ins={"raw": fs.In(mapping=fs.IdentityMapping())})
    def explicit(context: fs.Context, raw: str) -> str:
        return f"{context.partition_key}<-{raw}"

    app = make_app(pipeline)
    run = app.materialize(["implicit", "explicit"], partition="2025-01-15", values=True)
    assert run.success
    assert steps_of(run)[0] == ("raw", "2025-01-15")
    assert sorted(steps_of(run)[1:]) == [("explicit", "2025-01-15"), ("implicit", "2025-01-15")]
    assert value(run, "implicit", "2025-01-15") == "2025-01-15<-raw@2025-01-15"
    assert value(run, "explicit", "2025-01-15") == "2025-01-15<-raw@2025-01-15"
    # Each side reads the same partition of the other: the lineage says so too.
    [entry] = app.lineage.upstream("implicit", partition="2025-01-15")
    assert (entry.asset, entry.partition_key) == ("raw", "2025-01-15")


def test_identity_mapping_needs_equal_definitions(pipeline: fs.Pipeline) -> None:
    upstream_days(pipeline)

    @pipeline.asset(
        partitioned_by=fs.DailyPartitions(start="2025-01-01"),
        ins={"raw": fs.In(mapping=fs.IdentityMapping())},
    )
    def other_days(context: fs.Context, raw: str) -> str:
        return raw

    [problem] = pipeline.problems()
    assert (problem.code, problem.asset) == ("partition_mismatch", "other_days")
    assert "identity mapping needs the same partitions" in problem.message


# ---------------------------------------------------------------------- time-window offsets
def test_yesterday_reads_the_previous_day_as_one_value(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    upstream_days(pipeline)

    @pipeline.asset(
        partitioned_by=DAYS, ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-1, end_offset=-1))}
    )
    def yesterday(context: fs.Context, raw: str) -> str:
        return raw

    app = make_app(pipeline)
    assert planned(app, "yesterday", partition="2025-01-10") == [
        ("raw", "2025-01-09"),
        ("yesterday", "2025-01-10"),
    ]
    run = app.materialize("yesterday", partition="2025-01-10", values=True)
    assert run.success
    assert value(run, "yesterday", "2025-01-10") == "raw@2025-01-09"  # the value, not {key: value}


@pytest.mark.parametrize("missing", ["fail", None])
def test_yesterday_on_the_first_day_fails_with_dependency_not_ready(
    pipeline: fs.Pipeline, make_app: AppFactory, missing: str | None
) -> None:
    upstream_days(pipeline)
    mapping = fs.TimeWindowMapping(start_offset=-1, end_offset=-1)
    spec = fs.In(mapping=mapping) if missing is None else fs.In(mapping=mapping, missing="fail")
    ran: list[str] = []

    @pipeline.asset(partitioned_by=DAYS, ins={"raw": spec})
    def yesterday(context: fs.Context, raw: str) -> str:
        ran.append("yesterday")
        return raw

    @pipeline.asset(partitioned_by=DAYS)
    def report(context: fs.Context, yesterday: str) -> str:
        ran.append("report")
        return yesterday

    app = make_app(pipeline)
    run = app.materialize("report", partition="2025-01-01")
    assert run.status is RunStatus.FAILED and not run.success
    assert ran == []
    failed = run.steps[("yesterday", "2025-01-01")]
    assert failed.status is StepStatus.FAILED
    assert isinstance(failed.error, fs.DependencyNotReady)
    assert failed.error.type == "dependency_not_ready" and failed.error.retryable
    assert "upstream 'raw' has no partition 1 window(s) before 2025-01-01" in failed.error.message
    skipped = run.steps[("report", "2025-01-01")]
    assert skipped.status is StepStatus.SKIPPED and skipped.reason == "upstream 'yesterday' failed"
    assert isinstance(skipped.error, fs.DependencyFailed)
    # The failure is recorded as a materialization of its own, with its type.
    [mat] = app.store.materializations(tenant="default", asset="yesterday")
    assert (mat.status, mat.error_type, mat.partition_key) == ("failed", "dependency_not_ready", "2025-01-01")
    assert app.store.materializations(tenant="default", asset="report") == []
    with pytest.raises(fs.DependencyNotReady):
        run.raise_on_failure()


def test_yesterday_with_skip_runs_with_none_on_the_first_day(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    upstream_days(pipeline)

    @pipeline.asset(
        partitioned_by=DAYS,
        ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-1, end_offset=-1), missing="skip")},
    )
    def yesterday(context: fs.Context, raw: str | None) -> str:
        return f"after {raw}"

    @pipeline.asset(
        partitioned_by=DAYS, ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-6), missing="skip")}
    )
    def week(context: fs.Context, raw: dict[str, str]) -> list[str]:
        return list(raw)

    app = make_app(pipeline)
    run = app.materialize(["yesterday", "week"], partition="2025-01-01", values=True)
    assert run.success
    assert value(run, "yesterday", "2025-01-01") == "after None"
    assert value(run, "week", "2025-01-01") == ["2025-01-01"]  # the one day that exists
    run = app.materialize("week", partition="2025-01-03", values=True)
    assert value(run, "week", "2025-01-03") == day_keys(1, 3)  # fewer than seven keys
    run = app.materialize("yesterday", partition="2025-01-02", values=True)
    assert value(run, "yesterday", "2025-01-02") == "after raw@2025-01-01"


def test_yesterday_with_wait_is_skipped_and_the_run_does_not_succeed(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    upstream_days(pipeline)
    ran: list[str] = []

    @pipeline.asset(
        partitioned_by=DAYS,
        ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-1, end_offset=-1), missing="wait")},
    )
    def yesterday(context: fs.Context, raw: str) -> str:
        ran.append("yesterday")
        return raw

    @pipeline.asset(partitioned_by=DAYS)
    def report(context: fs.Context, yesterday: str) -> str:
        ran.append("report")
        return yesterday

    app = make_app(pipeline)
    run = app.materialize("report", partition="2025-01-01")
    assert run.status is not RunStatus.SUCCEEDED and not run.success
    assert ran == []
    waiting = run.steps[("yesterday", "2025-01-01")]
    assert waiting.status is StepStatus.SKIPPED
    assert waiting.reason is not None and waiting.reason.startswith(
        "waiting: upstream 'raw' has no partition"
    )
    assert isinstance(waiting.error, fs.DependencyNotReady)
    assert run.steps[("report", "2025-01-01")].status is StepStatus.SKIPPED
    assert run.failures == []  # waiting is not failing: no failed step
    # Nothing was materialized, not even a failure: the partition is still missing.
    assert app.store.materializations(tenant="default", asset="yesterday") == []
    assert app.status("yesterday").missing == DAYS.count()
    [step, _] = app.store.run_steps(tenant="default", run_id=run.run_id)
    assert (step.asset, step.status, step.error_type) == (
        "yesterday",
        StepStatus.SKIPPED,
        "dependency_not_ready",
    )
    # A later day has its yesterday: it runs.
    assert app.materialize("report", partition="2025-01-02").success and ran == ["yesterday", "report"]


def test_rolling_week_receives_seven_days_in_order(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    calls = upstream_days(pipeline)

    @pipeline.asset(partitioned_by=DAYS, ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-6))})
    def week(context: fs.Context, raw: dict[str, str]) -> dict[str, str]:
        return raw

    app = make_app(pipeline)
    assert planned(app, "week", partition="2025-01-10") == [
        *(("raw", k) for k in day_keys(4, 10)),
        ("week", "2025-01-10"),
    ]
    run = app.materialize("week", partition="2025-01-10", values=True)
    assert run.success
    got = value(run, "week", "2025-01-10")
    assert isinstance(got, dict) and list(got) == day_keys(4, 10)
    assert got == {k: f"raw@{k}" for k in day_keys(4, 10)}
    assert sorted(calls) == [("raw", k) for k in day_keys(4, 10)]

    # The next window reuses six stored days and computes only the new one.
    calls.clear()
    run = app.materialize("week", partition="2025-01-11", values=True)
    assert calls == [("raw", "2025-01-11")]
    assert list(value(run, "week", "2025-01-11")) == day_keys(5, 11)


def test_rolling_week_before_seven_days_exist_fails_by_default(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    upstream_days(pipeline)

    @pipeline.asset(partitioned_by=DAYS, ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-6))})
    def week(context: fs.Context, raw: dict[str, str]) -> int:
        return len(raw)

    app = make_app(pipeline)
    run = app.materialize("week", partition="2025-01-03")
    error = run.steps[("week", "2025-01-03")].error
    assert isinstance(error, fs.DependencyNotReady) and "4 window(s) before 2025-01-01" in error.message


def test_time_window_mapping_offsets_are_checked() -> None:
    with pytest.raises(ValueError, match="start_offset 1 is after end_offset 0"):
        fs.TimeWindowMapping(start_offset=1)
    assert fs.TimeWindowMapping() == fs.TimeWindowMapping(0, 0)
    assert fs.TimeWindowMapping(-1, -1).many(DAYS, DAYS) is False
    assert fs.TimeWindowMapping(-6).many(DAYS, DAYS) is True


# ---------------------------------------------------------------------- rollups
OSLO_HOURS = fs.HourlyPartitions(start="2025-03-28", end="2025-11-01", timezone="Europe/Oslo")
OSLO_DAYS = fs.DailyPartitions(start="2025-03-28", end="2025-11-01", timezone="Europe/Oslo")


@pytest.mark.parametrize(
    ("day", "hours"),
    [("2025-03-29", 24), ("2025-03-30", 23), ("2025-10-26", 25), ("2025-10-27", 24)],
    ids=["normal", "spring-forward", "fall-back", "after-fall-back"],
)
@pytest.mark.parametrize("explicit", [True, False], ids=["Rollup", "default"])
def test_hourly_rolls_up_into_oslo_days(
    pipeline: fs.Pipeline, make_app: AppFactory, day: str, hours: int, explicit: bool
) -> None:
    @pipeline.asset(partitioned_by=OSLO_HOURS)
    def clicks(context: fs.Context) -> float:
        window: fs.TimeWindow = context.partition
        return window.duration / timedelta(hours=1)

    ins = {"clicks": fs.In(mapping=fs.Rollup())} if explicit else None

    @pipeline.asset(partitioned_by=OSLO_DAYS, ins=ins)
    def daily_clicks(context: fs.Context, clicks: dict[str, float]) -> dict[str, float]:
        return clicks

    app = make_app(pipeline)
    run = app.materialize("daily_clicks", partition=day, values=True)
    assert run.success
    got = value(run, "daily_clicks", day)
    assert len(got) == hours
    window = OSLO_DAYS.window(day)
    assert list(got) == list(OSLO_HOURS.keys_between(window.start, window.end))  # in time order
    assert sum(got.values()) == window.duration / timedelta(hours=1) == hours
    first, last = OSLO_HOURS.window(next(iter(got))), OSLO_HOURS.window(list(got)[-1])
    assert (first.start, last.end) == (window.start, window.end)


def test_daily_rolls_up_into_months(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    days = fs.DailyPartitions(start="2025-01-01", end="2025-04-01")
    upstream_days(pipeline, days)
    months = fs.MonthlyPartitions(start="2025-01-01", end="2025-04-01")

    @pipeline.asset(partitioned_by=months, ins={"raw": fs.In(mapping=fs.Rollup())})
    def monthly(context: fs.Context, raw: dict[str, str]) -> list[str]:
        return list(raw)

    @pipeline.asset(partitioned_by=months)  # the default between time windows rolls up too
    def monthly_default(context: fs.Context, raw: dict[str, str]) -> int:
        return len(raw)

    app = make_app(pipeline)
    run = app.materialize(
        ["monthly", "monthly_default"], partitions=["2025-01-01", "2025-02-01"], values=True
    )
    assert run.success
    assert value(run, "monthly", "2025-01-01") == day_keys(1, 31)
    assert value(run, "monthly", "2025-02-01") == day_keys(1, 28, month=2)
    assert value(run, "monthly_default", "2025-02-01") == 28
    assert len([s for s in steps_of(run) if s[0] == "raw"]) == 31 + 28  # each day computed once


def test_a_rollup_over_an_upstream_starting_mid_month_reports_the_days_before_as_missing(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    # The upstream's days start on the 15th: January is only half there, never silently so.
    upstream_days(pipeline, fs.DailyPartitions(start="2025-01-15", end="2025-03-01"))
    months = fs.MonthlyPartitions(start="2025-01-01", end="2025-03-01")

    @pipeline.asset(partitioned_by=months, ins={"raw": fs.In(mapping=fs.Rollup())})
    def strict(context: fs.Context, raw: dict[str, str]) -> int:
        return len(raw)

    @pipeline.asset(partitioned_by=months, ins={"raw": fs.In(mapping=fs.Rollup(), missing="skip")})
    def lenient(context: fs.Context, raw: dict[str, str]) -> list[str]:
        return list(raw)

    app = make_app(pipeline)
    run = app.materialize(["strict", "lenient"], partition="2025-01-01", values=True)
    error = run.steps[("strict", "2025-01-01")].error
    assert isinstance(error, fs.DependencyNotReady) and "14 window(s) before 2025-01-15" in error.message
    assert value(run, "lenient", "2025-01-01") == day_keys(15, 31)
    assert app.materialize("strict", partition="2025-02-01").success


def test_time_window_mapping_counts_windows_outside_the_upstream() -> None:
    up = fs.DailyPartitions(start="2025-01-05", end="2025-01-10")
    down = fs.DailyPartitions(start="2025-01-01", end="2025-01-15")
    yesterday = fs.TimeWindowMapping(-1, -1)
    assert yesterday.upstream_keys(down, "2025-01-06", up) == (["2025-01-05"], [])
    assert yesterday.upstream_keys(down, "2025-01-05", up) == ([], ["1 window(s) before 2025-01-05"])
    assert yesterday.upstream_keys(down, "2025-01-02", up) == ([], ["1 window(s) before 2025-01-05"])
    assert yesterday.upstream_keys(down, "2025-01-11", up) == ([], ["1 window(s) after the last one"])
    around = fs.TimeWindowMapping(-2, 2)
    assert around.upstream_keys(down, "2025-01-05", up) == (
        day_keys(5, 7),
        ["2 window(s) before 2025-01-05"],
    )
    assert around.upstream_keys(down, "2025-01-09", up) == (
        day_keys(7, 9),
        ["2 window(s) after the last one"],
    )


# ---------------------------------------------------------------------- all partitions
@pytest.mark.parametrize("explicit", [False, True], ids=["default", "AllPartitionsMapping"])
def test_unpartitioned_fan_in_reads_every_partition(
    pipeline: fs.Pipeline, make_app: AppFactory, explicit: bool
) -> None:
    days = fs.DailyPartitions(start="2025-01-01", end="2025-01-06")
    calls = upstream_days(pipeline, days)
    ins = {"raw": fs.In(mapping=fs.AllPartitionsMapping())} if explicit else None

    @pipeline.asset(ins=ins)
    def total(context: fs.Context, raw: dict[str, str]) -> dict[str, str]:
        assert context.partition_key is None
        return raw

    app = make_app(pipeline)
    assert planned(app, "total") == [*(("raw", k) for k in day_keys(1, 5)), ("total", None)]
    run = app.materialize("total", values=True)
    assert run.success
    assert value(run, "total", None) == {k: f"raw@{k}" for k in day_keys(1, 5)}
    assert list(value(run, "total", None)) == day_keys(1, 5)
    assert len(calls) == 5
    assert len(app.lineage.upstream("total")) == 5
    assert app.materialize("total").up_to_date == [("total", None)]


def test_fan_in_over_some_materialized_partitions_computes_only_the_rest(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    calls = upstream_days(pipeline, fs.DailyPartitions(start="2025-01-01", end="2025-01-06"))

    @pipeline.asset()
    def total(context: fs.Context, raw: dict[str, str]) -> int:
        return len(raw)

    app = make_app(pipeline)
    app.materialize("raw", partitions=["2025-01-02", "2025-01-04"])
    calls.clear()
    run = app.materialize("total", values=True)
    assert sorted(calls) == [("raw", k) for k in ["2025-01-01", "2025-01-03", "2025-01-05"]]
    assert value(run, "total", None) == 5


# ---------------------------------------------------------------------- static mapping
REGIONS = fs.StaticPartitions(["eu", "us", "apac"])
GROUPS = fs.StaticPartitions(["west", "east"])


def regional(pipeline: fs.Pipeline) -> None:
    @pipeline.asset(partitioned_by=REGIONS)
    def sales(context: fs.Context) -> str:
        return f"sales-{context.partition}"


def test_static_mapping_with_lists_passes_dicts(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    regional(pipeline)
    table = {"west": ["eu", "us"], "east": ["apac"]}

    @pipeline.asset(partitioned_by=GROUPS, ins={"sales": fs.In(mapping=fs.StaticMapping(table))})
    def grouped(context: fs.Context, sales: dict[str, str]) -> dict[str, str]:
        return sales

    @pipeline.asset(
        partitioned_by=GROUPS, ins={"sales": fs.In(mapping=fs.StaticMapping({"west": "us", "east": "apac"}))}
    )
    def single(context: fs.Context, sales: str) -> str:
        return sales

    app = make_app(pipeline)
    assert planned(app, "grouped", partition="west") == [
        ("sales", "eu"),
        ("sales", "us"),
        ("grouped", "west"),
    ]
    run = app.materialize(["grouped", "single"], partitions=["west", "east"], values=True)
    assert run.success
    assert value(run, "grouped", "west") == {"eu": "sales-eu", "us": "sales-us"}
    assert value(run, "grouped", "east") == {"apac": "sales-apac"}  # a list of one is still a dict
    assert value(run, "single", "west") == "sales-us"  # a plain string maps to one value
    assert value(run, "single", "east") == "sales-apac"
    assert sorted(s for s in steps_of(run) if s[0] == "sales") == [("sales", k) for k in ["apac", "eu", "us"]]


def test_a_key_the_static_mapping_does_not_name_is_missing(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    regional(pipeline)
    table = {"west": ["eu", "us"]}

    @pipeline.asset(partitioned_by=GROUPS, ins={"sales": fs.In(mapping=fs.StaticMapping(table))})
    def strict(context: fs.Context, sales: dict[str, str]) -> int:
        return len(sales)

    @pipeline.asset(
        partitioned_by=GROUPS, ins={"sales": fs.In(mapping=fs.StaticMapping(table), missing="skip")}
    )
    def lenient(context: fs.Context, sales: dict[str, str]) -> int:
        return len(sales)

    app = make_app(pipeline)
    run = app.materialize(["strict", "lenient"], partition="east", values=True)
    error = run.steps[("strict", "east")].error
    assert isinstance(error, fs.DependencyNotReady)
    assert "has no partition for 'east' (the static mapping has no entry for it)" in error.message
    assert value(run, "lenient", "east") == 0


def test_static_mapping_problems_are_validation_problems(pipeline: fs.Pipeline) -> None:
    regional(pipeline)
    line_down = line_of_next_def()

    def bad_downstream(context: fs.Context, sales: str) -> str:
        return sales

    line_up = line_of_next_def()

    def bad_upstream(context: fs.Context, sales: str) -> str:
        return sales

    pipeline.asset(partitioned_by=GROUPS, ins={"sales": fs.In(mapping=fs.StaticMapping({"north": "eu"}))})(
        bad_downstream
    )
    pipeline.asset(
        partitioned_by=GROUPS, ins={"sales": fs.In(mapping=fs.StaticMapping({"west": ["eu", "mars"]}))}
    )(bad_upstream)
    problems = {str(p.asset): p for p in pipeline.problems()}
    assert sorted(problems) == ["bad_downstream", "bad_upstream"]
    assert all(p.code == "partition_mismatch" for p in problems.values())
    assert problems["bad_downstream"].location == where(line_down)
    assert "downstream keys ['north']" in problems["bad_downstream"].message
    assert problems["bad_upstream"].location == where(line_up)
    assert "upstream keys ['mars']" in problems["bad_upstream"].message
    with pytest.raises(fs.PipelineInvalid, match="2 problem"):
        pipeline.validate()


# ---------------------------------------------------------------------- dimensions
GRID_DAYS = fs.DailyPartitions(start="2025-01-01", end="2025-01-08")
GRID = fs.MultiPartitions({"region": REGIONS, "date": GRID_DAYS})


def test_multi_downstream_projects_onto_a_daily_upstream(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    calls = upstream_days(pipeline, GRID_DAYS)

    @pipeline.asset(partitioned_by=GRID)
    def by_region(context: fs.Context, raw: str) -> tuple[str, str]:
        return (context.partition.region, raw)

    @pipeline.asset(partitioned_by=GRID, ins={"raw": fs.In(mapping=fs.DimensionMapping("date"))})
    def explicit(context: fs.Context, raw: str) -> str:
        return raw

    app = make_app(pipeline)
    keys = [GRID.key_of(region=r, date="2025-01-03") for r in ["eu", "us"]]
    run = app.materialize(["by_region", "explicit"], partitions=keys, values=True)
    assert run.success
    assert value(run, "by_region", "eu|2025-01-03") == ("eu", "raw@2025-01-03")  # one value, not a dict
    assert value(run, "by_region", "us|2025-01-03") == ("us", "raw@2025-01-03")
    assert value(run, "explicit", "us|2025-01-03") == "raw@2025-01-03"
    assert calls == [("raw", "2025-01-03")]  # shared by every region


def test_daily_downstream_reads_every_region_of_a_multi_upstream(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    @pipeline.asset(partitioned_by=GRID)
    def sales(context: fs.Context) -> str:
        return f"{context.partition.region}:{context.partition.date.day}"

    @pipeline.asset(partitioned_by=GRID_DAYS)
    def daily_total(context: fs.Context, sales: dict[str, str]) -> dict[str, str]:
        return sales

    app = make_app(pipeline)
    assert planned(app, "daily_total", partition="2025-01-02")[-1] == ("daily_total", "2025-01-02")
    run = app.materialize("daily_total", partition="2025-01-02", values=True)
    assert run.success
    got = value(run, "daily_total", "2025-01-02")
    # Keyed by the upstream's own keys, one per region, in the region dimension's order.
    assert got == {"eu|2025-01-02": "eu:2", "us|2025-01-02": "us:2", "apac|2025-01-02": "apac:2"}
    assert list(got) == [GRID.key_of(region=r, date="2025-01-02") for r in ["eu", "us", "apac"]]


def test_multi_to_multi_over_a_subset_of_dimensions(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    kinds = fs.StaticPartitions(["web", "app"])
    wide = fs.MultiPartitions({"kind": kinds, "region": REGIONS, "date": GRID_DAYS})

    @pipeline.asset(partitioned_by=wide)
    def events(context: fs.Context) -> str:
        return str(context.partition_key)

    @pipeline.asset(partitioned_by=GRID)
    def per_region(context: fs.Context, events: dict[str, str]) -> list[str]:
        return list(events)

    areas = fs.MultiPartitions({"area": REGIONS, "date": GRID_DAYS})

    @pipeline.asset(partitioned_by=areas)
    def area_sales(context: fs.Context) -> str:
        return f"area {context.partition.area}"

    @pipeline.asset(
        partitioned_by=GRID,
        ins={"area_sales": fs.In(mapping=fs.DimensionMapping(renames={"area": "region"}))},
    )
    def renamed(context: fs.Context, area_sales: str) -> str:
        return area_sales

    app = make_app(pipeline)
    run = app.materialize(["per_region", "renamed"], partition="us|2025-01-05", values=True)
    assert run.success
    assert value(run, "per_region", "us|2025-01-05") == ["web|us|2025-01-05", "app|us|2025-01-05"]
    assert value(run, "renamed", "us|2025-01-05") == "area us"
    assert ("area_sales", "us|2025-01-05") in steps_of(run)


def test_dimension_mapping_problems(pipeline: fs.Pipeline) -> None:
    @pipeline.asset(partitioned_by=GRID)
    def sales(context: fs.Context) -> int:
        return 1

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["a", "b"]))
    def unrelated(context: fs.Context, sales: dict[str, int]) -> int:
        return 1

    @pipeline.asset(
        partitioned_by=fs.DailyPartitions(start="2025-01-01"),  # not the grid's days
        ins={"sales": fs.In(mapping=fs.DimensionMapping("date"))},
    )
    def other_days(context: fs.Context, sales: dict[str, int]) -> int:
        return 1

    problems = {str(p.asset): p.message for p in pipeline.problems() if p.code == "partition_mismatch"}
    assert sorted(problems) == ["other_days", "unrelated"]
    assert "no default partition mapping" in problems["unrelated"]
    assert "dimension 'date' is partitioned differently" in problems["other_days"]


# ---------------------------------------------------------------------- dynamic partitions
def test_dynamic_partitions(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    customers = fs.DynamicPartitions("customers")

    @pipeline.asset(partitioned_by=customers)
    def profile(context: fs.Context) -> str:
        return f"profile of {context.partition}"

    @pipeline.asset()
    def directory(context: fs.Context, profile: dict[str, str]) -> list[str]:
        return list(profile)

    app = make_app(pipeline)
    with pytest.raises(fs.ValidationError, match="'acme' is not a key of DynamicPartitions"):
        app.materialize("profile", partition="acme")
    assert app.add_partitions("customers", ["acme", "globex"]) == ["acme", "globex"]
    assert app.add_partitions("customers", ["globex", "initech"]) == ["initech"]  # only the new ones

    run = app.materialize("profile", partition="acme", values=True)
    assert run.success and value(run, "profile", "acme") == "profile of acme"
    with pytest.raises(fs.ValidationError, match="is not valid for asset 'profile'") as info:
        app.materialize("profile", partition="umbrella")
    assert info.value.context["partition"] == "umbrella"

    # Fan-in over the keys there are now, in the order they were added.
    run = app.materialize("directory", values=True)
    assert value(run, "directory", None) == ["acme", "globex", "initech"]
    assert app.remove_partitions("customers", ["initech"]) == ["initech"]
    assert [s.key for s in app.plan("directory", force=True).steps] == [("directory", None)]
    run = app.materialize("directory", force=True, values=True)
    assert value(run, "directory", None) == ["acme", "globex"]


def test_unknown_dynamic_partitions_name_suggests(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(partitioned_by=fs.DynamicPartitions("customers"))
    def profile(context: fs.Context) -> str:
        return "x"

    app = make_app(pipeline)
    with pytest.raises(
        fs.ValidationError, match=r"no dynamic partitions named 'customer'.*did you mean 'customers'"
    ):
        app.add_partitions("customer", ["acme"])
    with pytest.raises(fs.ValidationError, match="no dynamic partitions named 'zzz'") as info:
        app.remove_partitions("zzz", ["acme"])
    assert "did you mean" not in info.value.message
    assert app.store.dynamic_partition_keys(tenant="default", name="customer") == []


def test_multi_partitions_with_a_dynamic_dimension(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    customers = fs.DynamicPartitions("customers")
    grid = fs.MultiPartitions({"customer": customers, "date": GRID_DAYS})
    upstream_days(pipeline, GRID_DAYS)

    @pipeline.asset(partitioned_by=customers)
    def profile(context: fs.Context) -> str:
        return f"profile of {context.partition}"

    @pipeline.asset(partitioned_by=grid)
    def usage(context: fs.Context, profile: str, raw: str) -> tuple[str, str, str]:
        return (context.partition.customer, profile, raw)

    @pipeline.asset(partitioned_by=customers)
    def customer_week(context: fs.Context, usage: dict[str, Any]) -> list[str]:
        return list(usage)

    app = make_app(pipeline)
    with pytest.raises(fs.ValidationError, match="dimension 'customer'"):
        app.materialize("usage", partition="acme|2025-01-02")
    app.add_partitions("customers", ["acme", "globex"])
    run = app.materialize("usage", partition="globex|2025-01-02", values=True)
    assert run.success
    assert value(run, "usage", "globex|2025-01-02") == ("globex", "profile of globex", "raw@2025-01-02")
    run = app.materialize("customer_week", partition="acme", values=True)
    assert value(run, "customer_week", "acme") == [f"acme|{k}" for k in day_keys(1, 7)]


def test_static_mapping_onto_dynamic_keys_waits_until_they_exist(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    customers = fs.DynamicPartitions("customers")

    @pipeline.asset(partitioned_by=customers)
    def profile(context: fs.Context) -> str:
        return f"profile of {context.partition}"

    # Dynamic keys are unknown when the pipeline is validated: the mapping is not a problem then.
    table = {"west": ["acme", "globex"], "east": ["initech"]}

    @pipeline.asset(
        partitioned_by=GROUPS, ins={"profile": fs.In(mapping=fs.StaticMapping(table), missing="wait")}
    )
    def accounts(context: fs.Context, profile: dict[str, str]) -> list[str]:
        return sorted(profile)

    assert pipeline.problems() == []
    app = make_app(pipeline)
    app.add_partitions("customers", ["acme", "globex"])
    run = app.materialize("accounts", partitions=["west", "east"], values=True)
    assert value(run, "accounts", "west") == ["acme", "globex"]
    waiting = run.steps[("accounts", "east")]
    assert waiting.status is StepStatus.SKIPPED and "has no partition initech" in (waiting.reason or "")
    assert not run.success
    app.add_partitions("customers", ["initech"])
    run = app.materialize("accounts", partitions=["west", "east"], values=True)
    assert run.success and steps_of(run) == [("profile", "initech"), ("accounts", "east")]
    assert run.up_to_date == [("accounts", "west")]


# ---------------------------------------------------------------------- validation
def test_no_default_mapping_is_a_partition_mismatch_with_its_location(pipeline: fs.Pipeline) -> None:
    upstream_days(pipeline)
    line = line_of_next_def()

    def by_region(context: fs.Context, raw: str) -> str:
        return raw

    pipeline.asset(partitioned_by=REGIONS)(by_region)
    [problem] = pipeline.problems()
    assert (problem.code, problem.asset, problem.location) == ("partition_mismatch", "by_region", where(line))
    assert "no default partition mapping from its input 'raw'" in problem.message
    assert "fs.In(mapping=...)" in problem.message
    assert str(problem).startswith(f"{where(line)}: asset 'by_region' ")
    with pytest.raises(fs.PipelineInvalid) as info:
        pipeline.validate()
    assert info.value.problems[0].code == "partition_mismatch"


def test_a_time_window_mapping_between_static_definitions_is_a_problem(
    pipeline: fs.Pipeline, tmp_path: Any
) -> None:
    regional(pipeline)
    line = line_of_next_def()

    def shifted(context: fs.Context, sales: str) -> str:
        return sales

    pipeline.asset(partitioned_by=REGIONS, ins={"sales": fs.In(mapping=fs.TimeWindowMapping(-1, -1))})(
        shifted
    )
    [problem] = pipeline.problems()
    assert (problem.code, problem.asset, problem.location) == ("partition_mismatch", "shifted", where(line))
    assert (
        "input 'sales': a time-window mapping needs time-window partitions on both assets" in problem.message
    )
    with pytest.raises(fs.PipelineInvalid, match="time-window mapping"):
        fs.FlowStone(pipeline, store=f"sqlite:///{tmp_path}/fs.db", storage_dir=tmp_path / "s")


def test_other_mapping_problems(pipeline: fs.Pipeline) -> None:
    upstream_days(pipeline)

    @pipeline.asset()
    def lookup(context: fs.Context) -> int:
        return 1

    @pipeline.asset(partitioned_by=DAYS, ins={"lookup": fs.In(mapping=fs.AllPartitionsMapping())})
    def everything(context: fs.Context, lookup: int) -> int:
        return lookup

    @pipeline.asset(ins={"raw": fs.In(mapping=fs.StaticMapping({"x": "2025-01-01"}))})
    def unpartitioned(context: fs.Context, raw: str) -> str:
        return raw

    problems = {p.asset: p.message for p in pipeline.problems()}
    assert problems == {
        "everything": "input 'lookup': all-partitions mapping needs a partitioned upstream",
        "unpartitioned": "input 'raw': a static mapping needs both assets partitioned",
    }


def test_ins_are_checked_when_decorating(pipeline: fs.Pipeline) -> None:
    upstream_days(pipeline)
    line = line_of_next_def()

    def not_an_input(context: fs.Context, raw: str) -> str:
        return raw

    with pytest.raises(fs.DefinitionError, match="ins names 'rwa', which is not one of its inputs") as info:
        pipeline.asset(partitioned_by=DAYS, ins={"rwa": fs.In()})(not_an_input)
    assert info.value.context == {"asset": "not_an_input", "location": where(line)}
    assert info.value.message.startswith(where(line))

    with pytest.raises(fs.DefinitionError, match=r"ins\['raw'\] must be fs.In\(...\), got TimeWindowMapping"):

        @pipeline.asset(partitioned_by=DAYS, ins={"raw": fs.TimeWindowMapping(-1, -1)})  # type: ignore[dict-item]
        def forgot_in(context: fs.Context, raw: str) -> str:
            return raw

    with pytest.raises(fs.DefinitionError, match="ins must be a dict"):

        @pipeline.asset(partitioned_by=DAYS, ins=[fs.In()])  # type: ignore[call-overload,untyped-decorator]
        def not_a_dict(context: fs.Context, raw: str) -> str:
            return raw

    assert sorted(pipeline.assets) == ["raw"]


def test_in_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="must be a partition mapping"):
        fs.In(mapping="yesterday")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be 'fail', 'skip' or 'wait'"):
        fs.In(missing="ignore")  # type: ignore[arg-type]
    assert fs.In().missing == "fail" and fs.In().mapping is None


# ---------------------------------------------------------------------- planning through mappings
def test_a_window_partition_plans_exactly_its_missing_upstream_days(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    calls = upstream_days(pipeline)

    @pipeline.asset(partitioned_by=DAYS, ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-6))})
    def week(context: fs.Context, raw: dict[str, str]) -> int:
        return len(raw)

    app = make_app(pipeline)
    app.materialize("raw", partitions=["2025-01-05", "2025-01-08", "2025-01-20"])
    plan = app.plan("week", partition="2025-01-10")
    missing_days = ["2025-01-04", "2025-01-06", "2025-01-07", "2025-01-09", "2025-01-10"]
    assert [s.key for s in plan.steps] == [*(("raw", k) for k in missing_days), ("week", "2025-01-10")]
    assert sorted(plan.existing) == [("raw", "2025-01-05"), ("raw", "2025-01-08")]
    [week_step] = [s for s in plan.steps if s.asset == "week"]
    assert week_step.inputs == tuple(("raw", k) for k in day_keys(4, 10))
    calls.clear()
    run = app.execute(plan, values=True)
    assert sorted(calls) == [("raw", k) for k in missing_days]
    assert value(run, "week", "2025-01-10") == 7


def test_plan_order_puts_every_upstream_step_first(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    upstream_days(pipeline)

    @pipeline.asset(partitioned_by=DAYS, ins={"raw": fs.In(mapping=fs.TimeWindowMapping(-2, 0))})
    def smooth(context: fs.Context, raw: dict[str, str]) -> int:
        return len(raw)

    @pipeline.asset(partitioned_by=DAYS, ins={"smooth": fs.In(mapping=fs.TimeWindowMapping(-1, 0))})
    def trend(context: fs.Context, smooth: dict[str, int]) -> int:
        return sum(smooth.values())

    @pipeline.asset()
    def summary(context: fs.Context, trend: dict[str, int]) -> int:
        return len(trend)

    app = make_app(pipeline)
    plan = app.plan("trend", partitions=["2025-01-10", "2025-01-20"])
    position = {s.key: i for i, s in enumerate(plan.steps)}
    for step in plan.steps:
        for upstream in step.inputs:
            assert position[upstream] < position[step.key], (upstream, step.key)
    assert [k for a, k in position if a == "trend"] == ["2025-01-10", "2025-01-20"]
    assert sorted(str(k) for a, k in position if a == "smooth") == [
        "2025-01-09",
        "2025-01-10",
        "2025-01-19",
        "2025-01-20",
    ]
    assert len([1 for a, _ in position if a == "raw"]) == 8
    run = app.execute(plan, values=True)
    assert run.success and value(run, "trend", "2025-01-10") == 6


def test_force_reruns_only_the_selected_partitions(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    calls = upstream_days(pipeline)

    @pipeline.asset(partitioned_by=DAYS, ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-2))})
    def recent(context: fs.Context, raw: dict[str, str]) -> int:
        calls.append(("recent", context.partition_key))
        return len(raw)

    app = make_app(pipeline)
    app.materialize("recent", partitions=["2025-01-05", "2025-01-06"])
    calls.clear()
    assert planned(app, "recent", partition="2025-01-05", force=True) == [("recent", "2025-01-05")]
    run = app.materialize("recent", partition="2025-01-05", force=True)
    assert run.success and calls == [("recent", "2025-01-05")]
    calls.clear()
    run = app.materialize("+recent", partition="2025-01-06", force=True)
    # Forcing the upstream too re-runs the days the selected partition reads, and nothing else.
    assert sorted(calls) == [*(("raw", k) for k in day_keys(4, 6)), ("recent", "2025-01-06")]


def test_several_partitions_are_planned_together(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    upstream_days(pipeline)

    @pipeline.asset(partitioned_by=DAYS)
    def clean(context: fs.Context, raw: str) -> str:
        return raw.upper()

    app = make_app(pipeline)
    keys = ["2025-01-03", "2025-01-01", "2025-01-02"]
    assert planned(app, "clean", partitions=keys) == [
        *(("raw", k) for k in day_keys(1, 3)),
        *(("clean", k) for k in day_keys(1, 3)),
    ]
    run = app.materialize("clean", partitions=keys, values=True)
    assert run.success and value(run, "clean", "2025-01-02") == "RAW@2025-01-02"
    run = app.materialize("clean", partitions=[*keys, "2025-01-04"])
    assert steps_of(run) == [("raw", "2025-01-04"), ("clean", "2025-01-04")]
    assert sorted(run.up_to_date) == [("clean", k) for k in day_keys(1, 3)]
    with pytest.raises(ValueError, match="partition= or partitions="):
        app.plan("clean", partition="2025-01-01", partitions=["2025-01-02"])


def test_a_bad_key_among_several_is_not_silently_dropped(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    upstream_days(pipeline)

    @pipeline.asset(partitioned_by=DAYS)
    def clean(context: fs.Context, raw: str) -> str:
        return raw

    app = make_app(pipeline)
    with pytest.raises(fs.ValidationError, match="'2025-02-30' is not valid for asset 'clean'") as info:
        app.materialize("clean", partitions=["2025-01-01", "2025-02-30"])
    assert info.value.context == {"asset": "clean", "partition": "2025-02-30"}
    assert app.runs() == []


def test_a_key_for_an_unpartitioned_selection_is_refused(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    # The fan-in reads every upstream partition: a key would be silently meaningless.
    upstream_days(pipeline)

    @pipeline.asset()
    def total(context: fs.Context, raw: dict[str, str]) -> int:
        return len(raw)

    app = make_app(pipeline)
    for key in ["2025-01-02", "nonsense"]:
        with pytest.raises(fs.ValidationError, match=r"none of \['total'\] is partitioned"):
            app.plan("total", partition=key)
    # Selecting the partitioned upstream too makes the key meaningful.
    assert planned(app, "+total", partition="2025-01-02")[0] == ("raw", "2025-01-01")


def test_a_key_may_fit_only_some_of_the_selected_assets(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(partitioned_by=GRID)
    def sales(context: fs.Context) -> int:
        return 1

    @pipeline.asset(partitioned_by=GRID_DAYS)
    def daily_total(context: fs.Context, sales: dict[str, int]) -> int:
        return sum(sales.values())

    app = make_app(pipeline)
    # "+daily_total" selects the grid too: the day is a key of daily_total only, and that is fine.
    run = app.materialize("+daily_total", partition="2025-01-02", values=True)
    assert run.success and value(run, "daily_total", "2025-01-02") == 3
    with pytest.raises(fs.ValidationError, match="is not valid for asset"):
        app.materialize("+daily_total", partitions=["2025-01-02", "eu"])
