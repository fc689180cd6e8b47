"""Store + load of one wide table through the ``parquet`` and ``postgres`` I/O managers,
against the same work done directly (pyarrow's own Parquet write/read; a plain PostgreSQL COPY).

python benchmarks/io.py [ROWS]        (default 1,000,000 rows x 10 columns)

Prints one JSON line: seconds and MB/s (in-memory Arrow size / seconds) per path, and the ratio
of each manager to its raw baseline (target for Parquet: within 1.2x). PostgreSQL figures are
left out, with the reason, when the server at 127.0.0.1:5432 is not reachable.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from _common import arg_n, report

import flowstone as fs
from flowstone.io._parquet import ParquetIOManager
from flowstone.io._postgres import PostgresIOManager

PG_URL = os.environ.get("FLOWSTONE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPEAT = 3


def make_table(rows: int) -> pa.Table:
    import numpy as np

    rng = np.random.default_rng(7)
    ids = np.arange(rows, dtype=np.int64)
    return pa.table(
        {
            "id": ids,
            "user_id": rng.integers(0, 100_000, rows),
            "amount": rng.random(rows) * 1000,
            "quantity": rng.integers(1, 20, rows).astype(np.int32),
            "price": rng.random(rows) * 50,
            "country": pa.array(rng.choice(["NO", "SE", "DK", "FI", "DE"], rows)),
            "sku": pa.array([f"sku-{i % 5000}" for i in range(rows)]),
            "ok": rng.random(rows) > 0.1,
            "ts": pa.array(ids * 1_000_000, type=pa.timestamp("us", tz="UTC")),
            "score": rng.normal(size=rows),
        }
    )


def median_s(fn: Callable[[int], Any]) -> float:
    """Median seconds of ``fn(i)`` for i = 1..REPEAT after one warm-up call ``fn(0)``.

    Each call writes a new file (or partition): replacing an old one would add the file system's
    cost of freeing its blocks, which is not what is compared here.
    """
    fn(0)  # warm-up: first-call costs (imports, CREATE TABLE) are not what is compared
    times = []
    for i in range(1, REPEAT + 1):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def figures(name: str, seconds: float, megabytes: float) -> dict[str, float]:
    return {f"{name}_s": round(seconds, 4), f"{name}_mb_s": round(megabytes / seconds, 1)}


def parquet(table: pa.Table, megabytes: float, work: Path) -> dict[str, Any]:
    def raw_round_trip(i: int) -> None:
        path = work / f"raw-{i}.parquet"
        pq.write_table(table, path)
        pq.read_table(path)

    manager = ParquetIOManager(root=work / "managed")

    def managed_round_trip(i: int) -> None:
        ctx = fs.IOContext(asset="events", partition_key=f"p{i}", run_id="bench", expected_type=pa.Table)
        manager.store(ctx, table)
        manager.load(ctx)

    raw = median_s(raw_round_trip)
    managed = median_s(managed_round_trip)
    return {
        **figures("parquet_raw_pyarrow", raw, megabytes),
        **figures("parquet_manager", managed, megabytes),
        "parquet_ratio": round(managed / raw, 3),
        "parquet_target_ratio": 1.2,
    }


def postgres(table: pa.Table, megabytes: float) -> dict[str, Any]:
    import psycopg

    try:
        conn = psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3)
    except psycopg.OperationalError as exc:
        return {"postgres_skipped": str(exc).strip().splitlines()[0]}
    schema = "flowstone_bench_io"
    conn.autocommit = True
    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(
        f"CREATE TABLE {schema}.raw_copy (id bigint, user_id bigint, amount double precision, "
        "quantity integer, price double precision, country text, sku text, ok boolean, "
        "ts timestamptz, score double precision)"
    )
    columns = ", ".join(table.column_names)

    def raw_round_trip(i: int) -> None:
        # The plain way: CSV from Arrow, COPY in, COPY out, CSV back to Arrow.
        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False))
        with conn.transaction():
            conn.execute(f"TRUNCATE {schema}.raw_copy")
            with conn.cursor().copy(f"COPY {schema}.raw_copy ({columns}) FROM STDIN (FORMAT csv)") as copy:
                copy.write(buffer.getbuffer())
        out = io.BytesIO()
        with conn.cursor().copy(f"COPY {schema}.raw_copy ({columns}) TO STDOUT (FORMAT csv)") as copy:
            for chunk in copy:
                out.write(chunk)
        out.seek(0)
        pacsv.read_csv(
            out,
            read_options=pacsv.ReadOptions(column_names=table.column_names),
            convert_options=pacsv.ConvertOptions(
                column_types=table.schema, true_values=["t"], false_values=["f"]
            ),
        )

    manager = PostgresIOManager(url=PG_URL, schema=schema)

    def managed_round_trip(i: int) -> None:
        ctx = fs.IOContext(asset="events", partition_key=f"p{i}", run_id="bench", expected_type=pa.Table)
        manager.store(ctx, table)
        manager.load(ctx)

    try:
        raw = median_s(raw_round_trip)
        managed = median_s(managed_round_trip)
    finally:
        manager.close()
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.close()
    return {
        **figures("postgres_raw_copy", raw, megabytes),
        **figures("postgres_manager", managed, megabytes),
        "postgres_ratio": round(managed / raw, 3),
    }


def main() -> None:
    rows = arg_n(1_000_000)
    table = make_table(rows)
    megabytes = table.nbytes / 1e6
    work = Path(tempfile.mkdtemp(prefix="flowstone-bench-io-"))
    try:
        results = {
            "benchmark": "io",
            "rows": rows,
            "columns": table.num_columns,
            "arrow_mb": round(megabytes, 1),
        }
        results.update(parquet(table, megabytes, work))
        results.update(postgres(table, megabytes))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(**results)


if __name__ == "__main__":
    main()
