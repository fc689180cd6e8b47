"""One daemon evaluation of eager automation: 1,000 assets x 365 daily partitions.

The pipeline: 10 layers of 100 daily-partitioned assets (2025-01-01 .. 2025-12-31); every asset
of layers 1-9 is ``eager()`` and reads two assets of the layer above (365,000 asset partitions,
900 automated assets). The store is seeded in bulk, as if everything had been materialized
once: the latest state of every partition (``flowstone_asset_partitions``), one materialization
each and the lineage of every downstream one (657,000 rows), generated inside the database by
one INSERT ... SELECT per table (nothing runs through the engine for that).

Then, per repeat, one upstream partition changes (one real one-step materialization of a root
asset's partition through the engine, not timed) and one evaluation is timed:

- ``evaluate_ms``: ``AutomationEvaluator.evaluate(now)`` (target: under 100 ms);
- ``tick_ms``: a full ``Daemon.tick`` (evaluate, claim the ticks, launch the runs it asks for in
  the daemon's process, checkpoint timeouts), split into ``tick_in_launched_runs_ms`` (executing
  the two one-step runs in-process; with ``--executor queue`` they would only be submitted) and
  ``tick_without_runs_ms`` (the daemon's own work);
- ``quiet_*``: the same with nothing new; ``evaluate_365_changed_ms``: after a root asset was
  materialized for all its 365 partitions at once (730 downstream partitions to check);
- ``*_statements``: SQL statements one evaluation executes, and ``evaluate_cpu_ms`` its CPU
  time: figures a busy host does not inflate (compare ``host_calibration_s`` across runs).

Prints one JSON line per dialect: SQLite always, PostgreSQL with ``--postgres`` (a throwaway
schema of ``FLOWSTONE_BENCH_PG_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``).

    python benchmarks/daemon_tick.py [--postgres] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from _common import report, temp_store

import flowstone as fs
from flowstone.io._base import IOContext, StoredValue
from flowstone.schedules import Daemon
from flowstone.schedules._automation import AutomationEvaluator, AutomationRequest, eager
from flowstone.store import _tables as t
from flowstone.testing import FakeClock

LAYERS = 10
WIDTH = 100
FIRST_DAY = date(2025, 1, 1)
DAYS = [(FIRST_DAY + timedelta(days=i)).isoformat() for i in range(365)]
TENANT = "default"
RUN_ID = "0" * 32
SEEDED_AT = datetime(2026, 1, 2, tzinfo=UTC)
NOW = datetime(2026, 1, 10, tzinfo=UTC)
TARGET_MS = 100.0
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


class NullIO:
    """Stores nothing, loads 0: the benchmark measures the metadata, not the values."""

    def store(self, ctx: IOContext, value: Any) -> StoredValue | None:
        return None

    def load(self, ctx: IOContext) -> Any:
        return 0

    def delete(self, ctx: IOContext) -> None:
        return None

    def exists(self, ctx: IOContext) -> bool:
        return True

    def metadata(self, ctx: IOContext) -> StoredValue | None:
        return StoredValue()


def name(layer: int, i: int) -> str:
    return f"l{layer}_a{i:03d}"


def parents(layer: int, i: int) -> list[str]:
    return [] if layer == 0 else [name(layer - 1, i), name(layer - 1, (i + 1) % WIDTH)]


def build_pipeline() -> fs.Pipeline:
    pipeline = fs.Pipeline("daemon_tick", io_managers={"null": NullIO()}, default_io_manager="null")
    days = fs.DailyPartitions(start="2025-01-01", end="2026-01-01")

    def compute(context: fs.Context, **upstream: int) -> int:
        return sum(upstream.values()) + 1

    for layer in range(LAYERS):
        for i in range(WIDTH):
            pipeline.asset(
                name=name(layer, i),
                depends_on=parents(layer, i),
                partitioned_by=days,
                automation=None if layer == 0 else eager(),
            )(compute)
    return pipeline


def mat_id(layer: int, i: int, day: int) -> str:
    return f"{(layer * WIDTH + i) * 1000 + day:032x}"


# Rows generated inside the database from two number series: n = layer * WIDTH + i (the asset),
# d = the day; for lineage also u (which of the two parents). Same ids as mat_id().
_SQLITE = {
    "series": (
        "WITH RECURSIVE n(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM n WHERE n < {assets} - 1), "
        "d(d) AS (SELECT 0 UNION ALL SELECT d + 1 FROM d WHERE d < {days} - 1), "
        "u(u) AS (SELECT 0 UNION ALL SELECT 1) "
    ),
    "name": "printf('l%d_a%03d', ({n}) / {width}, ({n}) % {width})",
    "key": "date('2025-01-01', '+' || d || ' days')",
    "id": "printf('%032x', ({n}) * 1000 + d)",
    "at": "'2026-01-02 00:00:00.000000'",
}
_PG = {
    "series": "",
    "name": "format('l%s_a%s', ({n}) / {width}, lpad((({n}) % {width})::text, 3, '0'))",
    "key": "to_char(date '2025-01-01' + d, 'YYYY-MM-DD')",
    "id": "lpad(to_hex(({n}) * 1000 + d), 32, '0')",
    "at": "timestamptz '2026-01-02 00:00:00+00'",
}
_PG_FROM = {
    "n": "generate_series(0, {assets} - 1) AS n(n)",
    "d": "generate_series(0, {days} - 1) AS d(d)",
    "u": "generate_series(0, 1) AS u(u)",
}


def _seed_statements(dialect: str) -> dict[str, str]:
    sql = _SQLITE if dialect == "sqlite" else _PG
    sizes = {"assets": LAYERS * WIDTH, "days": len(DAYS), "width": WIDTH}
    up = f"(n / {WIDTH} - 1) * {WIDTH} + (n % {WIDTH} + u) % {WIDTH}"

    def expr(kind: str, n: str = "n") -> str:
        return sql[kind].format(n=n, **sizes)

    def source(names: str) -> str:
        if dialect == "sqlite":
            return " CROSS JOIN ".join(names)
        return ", ".join(_PG_FROM[x].format(**sizes) for x in names)

    partitions = {
        "tenant_id": f"'{TENANT}'",
        "asset": expr("name"),
        "partition_key": expr("key"),
        "last_status": "'success'",
        "last_run_id": f"'{RUN_ID}'",
        "last_materialization_id": expr("id"),
        "success_materialization_id": expr("id"),
        "success_at": expr("at"),
        "updated_at": expr("at"),
        "data_version": expr("id"),
    }
    materializations = {
        "id": expr("id"),
        "tenant_id": f"'{TENANT}'",
        "run_id": f"'{RUN_ID}'",
        "asset": expr("name"),
        "partition_key": expr("key"),
        "status": "'success'",
        "started_at": expr("at"),
        "finished_at": expr("at"),
        "duration_ms": "1.0",
        "attempt": "1",
        "data_version": expr("id"),
    }
    lineage = {
        "tenant_id": f"'{TENANT}'",
        "materialization_id": expr("id"),
        "asset": expr("name"),
        "partition_key": expr("key"),
        "upstream_materialization_id": expr("id", up),
        "upstream_asset": expr("name", up),
        "upstream_partition_key": expr("key"),
        "run_id": f"'{RUN_ID}'",
        "created_at": expr("at"),
        "upstream_data_version": expr("id", up),
    }
    prefix = sql["series"].format(**sizes)
    statements = {}
    for table, columns, names, where in (
        (t.asset_partitions, partitions, "nd", ""),
        (t.materializations, materializations, "nd", ""),
        (t.lineage, lineage, "ndu", f" WHERE n >= {WIDTH}"),
    ):
        statements[table.name] = (
            f"{prefix}INSERT INTO {table.name} ({', '.join(columns)}) "
            f"SELECT {', '.join(columns.values())} FROM {source(names)}{where}"
        )
    return statements


def seed(engine: sa.Engine) -> tuple[float, dict[str, int]]:
    """Every partition materialized once, with its lineage, generated in the database."""
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for table, statement in _seed_statements(engine.dialect.name).items():
            conn.execute(sa.text(statement))
            counts[table] = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in counts:
                conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
        else:
            conn.execute(sa.text("ANALYZE"))
            conn.commit()
    # Spot check: the generated ids are the ones the benchmark computes.
    with engine.connect() as conn:
        c = t.lineage.c
        row = conn.execute(
            sa.select(c.upstream_materialization_id, c.upstream_asset).where(
                c.materialization_id == mat_id(LAYERS - 1, WIDTH - 1, 200),
                c.upstream_asset == name(LAYERS - 2, 0),
            )
        ).one()
        assert tuple(row) == (mat_id(LAYERS - 2, 0, 200), name(LAYERS - 2, 0)), row
    return time.perf_counter() - t0, counts


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def claim(evaluator: AutomationEvaluator, requests: list[AutomationRequest]) -> None:
    """What the daemon does with requests (without launching them)."""
    for request in requests:
        evaluator.state_store.claim_tick("automation", request.name, request.key, NOW, daemon_id="bench")


def measure(url: str, dialect: str, repeat: int) -> None:
    pipeline = build_pipeline()
    storage = tempfile.mkdtemp(prefix="flowstone-bench-storage-")
    app = fs.FlowStone(pipeline, store=url, clock=FakeClock(NOW), storage_dir=storage)
    try:
        seed_s, rows = seed(app.store.engine)
        changes = iter((i, d) for d in range(0, 365, 7) for i in range(0, WIDTH, 3))

        def change() -> tuple[str, str]:
            i, d = next(changes)
            asset, key = name(0, i), DAYS[d]
            result = app.materialize([asset], partition=key, force=True)
            assert result.success and len(result.steps) == 1, result
            return asset, key

        # --- the evaluator alone
        statements: list[str] = []
        sa.event.listen(app.store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        evaluator = AutomationEvaluator(app)
        t0 = time.perf_counter()
        assert evaluator.evaluate(NOW) == []  # first look: takes its position
        first_ms = ms(time.perf_counter() - t0)
        quiet: list[float] = []
        timings: list[float] = []
        cpu: list[float] = []
        candidates: list[int] = []
        counts: list[int] = []
        quiet_counts: list[int] = []
        for _ in range(repeat):
            asset, key = change()
            statements.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            requests = evaluator.evaluate(NOW)
            timings.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            counts.append(len(statements))
            assert sorted((r.name, tuple(r.partitions)) for r in requests) == sorted(
                (child, (key,)) for child in children_of(asset)
            ), requests
            candidates.append(evaluator.last_pass.candidates)
            claim(evaluator, requests)
            statements.clear()
            t0 = time.perf_counter()
            assert evaluator.evaluate(NOW) == []
            quiet.append(time.perf_counter() - t0)
            quiet_counts.append(len(statements))

        # --- a year of one root asset changed at once: 730 downstream partitions to check
        result = app.materialize([name(0, 50)], partitions=DAYS, force=True)
        assert result.success and len(result.steps) == 365
        t0 = time.perf_counter()
        wide = evaluator.evaluate(NOW)
        wide_ms = ms(time.perf_counter() - t0)
        wide_candidates = evaluator.last_pass.candidates
        assert sorted(len(r.partitions) for r in wide) == [365, 365], wide
        claim(evaluator, wide)

        # --- full daemon passes (the daemon launches the runs in its process)
        daemon = Daemon(app)
        daemon.tick(NOW)  # first look
        tick_timings: list[float] = []
        in_runs: list[float] = []
        quiet_ticks: list[float] = []
        runs: list[int] = []
        materialize = app.materialize
        spent = [0.0]

        def timed_materialize(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return materialize(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0

        for _ in range(repeat):
            change()
            spent[0] = 0.0
            setattr(app, "materialize", timed_materialize)  # noqa: B010 (an instance attribute)
            t0 = time.perf_counter()
            outcome = daemon.tick(NOW)
            tick_timings.append(time.perf_counter() - t0)
            del app.materialize
            in_runs.append(spent[0])
            assert not outcome.errors, outcome.errors
            runs.append(sum(len(ids) for kind, _, ids in outcome.launched if kind == "automation"))
            # Stop the cascade the launched runs start (claim the next layer's requests without
            # running them), so each repeat measures one change.
            drain: Any = daemon._evaluator
            claim(drain, drain.evaluate(NOW))
            t0 = time.perf_counter()
            daemon.tick(NOW)
            quiet_ticks.append(time.perf_counter() - t0)

        evaluate_ms = ms(statistics.median(timings))
        own = [tick - run for tick, run in zip(tick_timings, in_runs, strict=True)]
        tick_ms = ms(statistics.median(tick_timings))
        report(
            benchmark="daemon_tick",
            dialect=dialect,
            assets=LAYERS * WIDTH,
            eager_assets=(LAYERS - 1) * WIDTH,
            partitions_per_asset=len(DAYS),
            asset_partitions=rows.get("flowstone_asset_partitions", 0),
            lineage_rows=rows.get("flowstone_lineage", 0),
            seed_s=round(seed_s, 2),
            repeats=repeat,
            first_evaluate_ms=first_ms,
            evaluate_ms=evaluate_ms,
            evaluate_max_ms=ms(max(timings)),
            evaluate_cpu_ms=ms(statistics.median(cpu)),
            evaluate_candidates=statistics.median(candidates),
            evaluate_statements=statistics.median(counts),
            quiet_evaluate_ms=ms(statistics.median(quiet)),
            quiet_evaluate_statements=statistics.median(quiet_counts),
            evaluate_365_changed_ms=wide_ms,
            evaluate_365_changed_candidates=wide_candidates,
            tick_ms=tick_ms,
            tick_max_ms=ms(max(tick_timings)),
            tick_runs_launched=statistics.median(runs),
            tick_in_launched_runs_ms=ms(statistics.median(in_runs)),
            tick_without_runs_ms=ms(statistics.median(own)),
            quiet_tick_ms=ms(statistics.median(quiet_ticks)),
            target_ms=TARGET_MS,
            evaluate_under_target=evaluate_ms < TARGET_MS,
            tick_under_target=tick_ms < TARGET_MS,
        )
    finally:
        app.close()
        shutil.rmtree(storage, ignore_errors=True)


def children_of(asset: str) -> list[str]:
    i = int(asset.split("_a")[1])
    return [name(1, i), name(1, (i - 1) % WIDTH)]


@contextmanager
def pg_schema_url() -> Iterator[str | None]:
    base = sa.make_url(os.environ.get("FLOWSTONE_BENCH_PG_URL") or DEFAULT_PG_URL).set(
        drivername="postgresql+psycopg"
    )
    admin = sa.create_engine(base, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
    schema = f"fs_bench_{uuid.uuid4().hex}"
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL skipped: {str(exc.orig).strip().splitlines()[0]}", file=sys.stderr)
        yield None
        return
    try:
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--postgres", action="store_true", help="also measure on PostgreSQL")
    parser.add_argument("--repeat", type=int, default=7, help="timed evaluations per figure")
    args = parser.parse_args(argv)
    url, directory = temp_store()
    try:
        measure(url, "sqlite", args.repeat)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.postgres:
        with pg_schema_url() as pg_url:
            if pg_url is not None:
                measure(pg_url, "postgresql", args.repeat)


if __name__ == "__main__":
    main()
