"""Staleness propagation through a partitioned diamond, on SQLite and PostgreSQL.

raw (daily) -> left, right (daily) -> report (daily) -> summary (unpartitioned fan-in)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import flowstone as fs

DAYS = ["2025-01-01", "2025-01-02", "2025-01-03"]


@pytest.fixture
def make_app(store_url: str, tmp_path: Path) -> Iterator[Callable[[fs.Pipeline], fs.FlowStone]]:
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline) -> fs.FlowStone:
        app = fs.FlowStone(pipeline, store=store_url, storage_dir=tmp_path / "storage")
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def diamond(
    values: dict[str, int], calls: list[tuple[str, str | None]], report_version: str = "1"
) -> fs.Pipeline:
    pipeline = fs.Pipeline("diamond")
    days = fs.DailyPartitions(start="2025-01-01", end="2025-01-04")

    @pipeline.asset(partitioned_by=days)
    def raw(context: fs.Context) -> int:
        calls.append(("raw", context.partition_key))
        return values[context.partition_key]

    @pipeline.asset(partitioned_by=days)
    def left(context: fs.Context, raw: int) -> int:
        calls.append(("left", context.partition_key))
        return raw + 1

    @pipeline.asset(partitioned_by=days)
    def right(context: fs.Context, raw: int) -> int:
        calls.append(("right", context.partition_key))
        return raw * 2

    @pipeline.asset(partitioned_by=days, code_version=report_version)
    def report(context: fs.Context, left: int, right: int) -> int:
        calls.append(("report", context.partition_key))
        return left + right

    @pipeline.asset()
    def summary(context: fs.Context, report: dict[str, int]) -> int:
        calls.append(("summary", None))
        return sum(report.values())

    return pipeline


def stale_counts(app: fs.FlowStone) -> dict[str, int]:
    return {name: app.status(name).stale for name in ("raw", "left", "right", "report", "summary")}


def test_a_changed_upstream_partition_makes_exactly_its_downstream_stale(
    make_app: Callable[[fs.Pipeline], fs.FlowStone],
) -> None:
    values = {day: i for i, day in enumerate(DAYS, start=1)}
    calls: list[tuple[str, str | None]] = []
    app = make_app(diamond(values, calls))
    result = app.backfill(["report"], partitions=DAYS)
    assert result.status is fs.BackfillStatus.SUCCEEDED
    assert app.materialize("summary", values=True).steps["summary"].value == sum(
        (v + 1) + v * 2 for v in values.values()
    )
    assert stale_counts(app) == {"raw": 0, "left": 0, "right": 0, "report": 0, "summary": 0}

    # Same data for day 2: nothing becomes stale.
    app.materialize("raw", partition="2025-01-02", force=True)
    assert stale_counts(app) == {"raw": 0, "left": 0, "right": 0, "report": 0, "summary": 0}

    # New data for day 2: its left, right and report partitions and the summary are stale.
    values["2025-01-02"] = 20
    app.materialize("raw", partition="2025-01-02", force=True)
    assert stale_counts(app) == {"raw": 0, "left": 1, "right": 1, "report": 1, "summary": 1}
    stale_plan = app.plan(["left", "right", "report", "summary"], partitions=DAYS, stale=True)
    assert [s.key for s in stale_plan.steps] == [
        ("left", "2025-01-02"),
        ("right", "2025-01-02"),
        ("report", "2025-01-02"),
        ("summary", None),
    ]

    # A backfill without --force recomputes exactly the stale partitions.
    calls.clear()
    again = app.backfill(["report"], partitions=DAYS)
    assert again.status is fs.BackfillStatus.SUCCEEDED
    assert sorted(calls) == [("left", "2025-01-02"), ("report", "2025-01-02"), ("right", "2025-01-02")]
    assert again.counts["up_to_date"] == 2
    assert stale_counts(app) == {"raw": 0, "left": 0, "right": 0, "report": 0, "summary": 1}
    assert app.materialize("summary", stale=True, values=True).steps["summary"].value == sum(
        (v + 1) + v * 2 for v in values.values()
    )
    assert stale_counts(app)["summary"] == 0


def test_a_new_code_version_and_an_invalidation_propagate(
    make_app: Callable[[fs.Pipeline], fs.FlowStone],
) -> None:
    values = {day: 1 for day in DAYS}
    calls: list[tuple[str, str | None]] = []
    app = make_app(diamond(values, calls))
    app.backfill(["summary", "report"], partitions=DAYS)
    app.materialize("summary")

    rebuilt = make_app(diamond(values, calls, report_version="2"))
    assert stale_counts(rebuilt) == {"raw": 0, "left": 0, "right": 0, "report": 3, "summary": 1}
    calls.clear()
    rebuilt.materialize(["report", "summary"], partitions=DAYS, stale=True)
    assert sorted(c for c in calls if c[0] == "report") == [("report", d) for d in DAYS]
    assert stale_counts(rebuilt) == {"raw": 0, "left": 0, "right": 0, "report": 0, "summary": 0}

    marked = rebuilt.invalidate("left", partition="2025-01-03", downstream=True, actor="user:test")
    assert marked == 3  # left, report for that day, and the summary over all days
    assert stale_counts(rebuilt) == {"raw": 0, "left": 1, "right": 0, "report": 1, "summary": 1}
    audit = [a for a in rebuilt.store.list_audit(tenant="default") if a["action"] == "invalidate"]
    assert audit and audit[-1]["actor"] == "user:test"


def test_status_counts_missing_and_failed(make_app: Callable[[fs.Pipeline], fs.FlowStone]) -> None:
    values = {"2025-01-01": 1}  # day 2 raises KeyError: a failed partition
    calls: list[tuple[str, str | None]] = []
    app = make_app(diamond(values, calls))
    result = app.backfill(["raw"], partitions=DAYS[:2])
    assert result.status is fs.BackfillStatus.FAILED
    status = app.status("raw")
    assert (status.total, status.fresh, status.failed, status.missing) == (3, 1, 1, 1)
