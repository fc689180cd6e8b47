"""Backfill N daily partitions of a two-asset chain on SQLite with the memory I/O manager.

``raw`` (daily) -> ``daily`` (daily), ``--parallel 1``: 2 x N steps, each its own
materialization with lineage and status, plus the tracked backfill record. Prints one JSON line:
seconds of the first backfill (cold: an empty store, it also compiles the store's SQL), the median
of three more with ``force`` (warm: every partition again), and of a backfill that finds every
partition up to date (planning and staleness checks only). Target: 365 partitions under 0.3 s.

    python benchmarks/partitions.py 365
"""

from __future__ import annotations

import shutil
import time
from datetime import date, timedelta

from _common import arg_n, report, temp_store, timed

import flowstone as fs


def build(n: int) -> fs.Pipeline:
    start = date(2025, 1, 1)
    days = fs.DailyPartitions(start=start.isoformat(), end=(start + timedelta(days=n)).isoformat())
    pipeline = fs.Pipeline("partitions", default_io_manager="memory")

    @pipeline.asset(partitioned_by=days, code_version="1")
    def raw(context: fs.Context) -> int:
        day: date = context.partition
        return day.toordinal()

    @pipeline.asset(partitioned_by=days, code_version="1")
    def daily(context: fs.Context, raw: int) -> int:
        return raw * 2

    return pipeline


def main() -> None:
    n = arg_n(365)
    url, directory = temp_store()
    t0 = time.perf_counter()
    app = fs.FlowStone(build(n), store=url)
    setup_s = time.perf_counter() - t0
    first_key, last_key = "2025-01-01", (date(2025, 1, 1) + timedelta(days=n - 1)).isoformat()
    results: list[fs.BackfillResult] = []

    def backfill() -> None:
        # The first call fills an empty store; the later ones force every partition to run again.
        results.append(app.backfill(["raw", "daily"], start=first_key, end=last_key, force=bool(results)))

    execute_s, warm_execute_s = timed(backfill)
    assert all(r.status is fs.BackfillStatus.SUCCEEDED and r.counts["succeeded"] == 2 * n for r in results)
    assert app.load("daily", partition=last_key) == 2 * date.fromisoformat(last_key).toordinal()

    t0 = time.perf_counter()
    noop = app.backfill(["raw", "daily"], start=first_key, end=last_key)
    up_to_date_s = time.perf_counter() - t0
    assert noop.counts["up_to_date"] == 2 * n and noop.counts["succeeded"] == 0
    app.close()
    shutil.rmtree(directory)
    report(
        benchmark="partitions",
        partitions=n,
        steps=2 * n,
        parallel=1,
        setup_s=round(setup_s, 4),
        execute_s=round(execute_s, 4),
        warm_execute_s=round(warm_execute_s, 4),
        per_partition_ms=round(execute_s / n * 1000, 4),
        warm_per_partition_ms=round(warm_execute_s / n * 1000, 4),
        up_to_date_s=round(up_to_date_s, 4),
        target_s=0.3,
    )


if __name__ == "__main__":
    main()
