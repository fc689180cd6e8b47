"""partition_status of one asset with 1,000,000 partitions and 1,000,000 materializations.

Seeds the store of each dialect with one asset's partitions (minute windows, keys like
``2023-01-01T00:00``): 1,000,000 materialization rows and 1,000,000 latest-state rows, 2% of them
failed and 1% invalidated, generated inside the database by one INSERT ... SELECT per table in one
transaction. Then times ``Store.partition_status(asset, total=1_000_000)`` (target: under 0.5 s),
a deep page of failed keys, and ``missing_keys`` over candidate keys. Prints one JSON line per
dialect.

PostgreSQL runs in a throwaway schema of the database at ``FLOWSTONE_BENCH_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``), dropped afterwards; it is skipped with a note on
stderr when the server is not reachable.

    python benchmarks/partition_scale_store.py [N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from _common import arg_n, report, temp_store

from flowstone.store import Store

ASSET = "events_by_minute"
TENANT = "default"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
START = datetime(2023, 1, 1, tzinfo=UTC)

# Row i: failed when i % 100 < 2, else success; invalidated (stale) when i % 100 == 50.
_SQLITE_SEED = """
WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < :n - 1)
INSERT INTO {table} ({columns})
SELECT {values} FROM seq
"""
_SQLITE_KEY = "strftime('%Y-%m-%dT%H:%M', '2023-01-01', '+' || i || ' minutes')"
_SQLITE_ID = "printf('%032x', i)"
_SQLITE_NOW = "'2025-01-01 00:00:00.000000'"

_PG_SEED = """
INSERT INTO {table} ({columns})
SELECT {values} FROM generate_series(0, :n - 1) AS seq(i)
"""
_PG_KEY = "to_char(timestamp '2023-01-01' + i * interval '1 minute', 'YYYY-MM-DD\"T\"HH24:MI')"
_PG_ID = "lpad(to_hex(i), 32, '0')"
_PG_NOW = "timestamptz '2025-01-01 00:00:00+00'"


def _seed_statements(dialect: str) -> list[str]:
    sqlite = dialect == "sqlite"
    template, key, ident, now = (
        (_SQLITE_SEED, _SQLITE_KEY, _SQLITE_ID, _SQLITE_NOW)
        if sqlite
        else (_PG_SEED, _PG_KEY, _PG_ID, _PG_NOW)
    )
    failed = "i % 100 < 2"
    status = f"CASE WHEN {failed} THEN 'failed' ELSE 'success' END"
    version = "'sha256:' || " + ident
    materializations = {
        "id": ident,
        "tenant_id": f"'{TENANT}'",
        "run_id": "'" + "0" * 32 + "'",
        "asset": f"'{ASSET}'",
        "partition_key": key,
        "status": status,
        "started_at": now,
        "finished_at": now,
        "duration_ms": "1.5",
        "value_hash": f"CASE WHEN {failed} THEN NULL ELSE {version} END",
        "data_version": f"CASE WHEN {failed} THEN NULL ELSE {version} END",
        "code_version": "'v1'",
        "attempt": "1",
    }
    partitions = {
        "tenant_id": f"'{TENANT}'",
        "asset": f"'{ASSET}'",
        "partition_key": key,
        "last_status": status,
        "last_run_id": "'" + "0" * 32 + "'",
        "last_materialization_id": ident,
        "success_materialization_id": f"CASE WHEN {failed} THEN NULL ELSE {ident} END",
        "success_at": f"CASE WHEN {failed} THEN NULL ELSE {now} END",
        "updated_at": now,
        "data_version": f"CASE WHEN {failed} THEN NULL ELSE {version} END",
        "code_version": "'v1'",
        "stale_since": f"CASE WHEN i % 100 = 50 THEN {now} ELSE NULL END",
    }
    return [
        template.format(table=table, columns=", ".join(cols), values=", ".join(cols.values()))
        for table, cols in (
            ("flowstone_materializations", materializations),
            ("flowstone_asset_partitions", partitions),
        )
    ]


def seed(store: Store, n: int) -> float:
    t0 = time.perf_counter()
    with store.engine.begin() as conn:
        for statement in _seed_statements(store.dialect):
            conn.execute(sa.text(statement), {"n": n})
    # What autovacuum/auto-analyze do after a bulk load, done now rather than some time later.
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(sa.text("VACUUM ANALYZE flowstone_materializations"))
            conn.execute(sa.text("VACUUM ANALYZE flowstone_asset_partitions"))
    else:
        with store.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    return time.perf_counter() - t0


def minute_keys(n: int) -> Iterator[str]:
    for i in range(n):
        yield (START + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M")


def timed(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, float, Any]:
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    again = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        again.append(time.perf_counter() - t0)
    return first, statistics.median(again), result


def measure(store: Store, dialect: str, n: int) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM flowstone_materializations")).scalar() == 0
    seed_s = seed(store, n)

    status_s, warm_status_s, status = timed(
        lambda: store.partition_status(tenant=TENANT, asset=ASSET, total=n)
    )
    failed = n // 100 * 2 + min(n % 100, 2)
    stale = n // 100 + (1 if n % 100 > 50 else 0)
    assert status.recorded == n and status.missing == 0, status
    assert status.failed == failed and status.succeeded == n - failed, status
    assert status.stale == stale and status.fresh == n - failed - stale, status
    assert len(status.failed_keys) == min(100, failed)

    last_page = max(status.failed_pages - 1, 0)
    page_s, warm_page_s, paged = timed(
        lambda: store.partition_status(tenant=TENANT, asset=ASSET, total=n, page=last_page)
    )
    assert len(paged.failed_keys) == failed - last_page * 100

    # Candidates streamed from a definition twice the size of what was materialized.
    missing_s, _, missing = timed(
        lambda: store.missing_keys(tenant=TENANT, asset=ASSET, candidate_keys=minute_keys(2 * n), limit=100),
        repeat=1,
    )
    assert len(missing) == 100 and missing[0] == (START + timedelta(minutes=0)).strftime("%Y-%m-%dT%H:%M")
    report(
        benchmark="partition_scale_store",
        dialect=dialect,
        partitions=n,
        materializations=n,
        seed_s=round(seed_s, 2),
        partition_status_s=round(status_s, 4),
        warm_partition_status_s=round(warm_status_s, 4),
        last_failed_page_s=round(page_s, 4),
        warm_last_failed_page_s=round(warm_page_s, 4),
        missing_keys_first_100_s=round(missing_s, 4),
        counts=status.counts,
        stale=status.stale,
    )


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


def main() -> None:
    n = arg_n(1_000_000)
    url, directory = temp_store()
    store = Store.open(url)
    try:
        measure(store, "sqlite", n)
    finally:
        store.close()
        shutil.rmtree(directory)
    with pg_schema_url() as pg_url:
        if pg_url is not None:
            store = Store.open(pg_url)
            try:
                measure(store, "postgresql", n)
            finally:
                store.close()


if __name__ == "__main__":
    main()
