"""The postgres and duckdb managers for the contract suite, on the real PostgreSQL server (a schema
of their own per test) and on DuckDB files under tmp_path.

``crash`` makes the next store fail once some rows went out: for PostgreSQL half of the first
CSV chunk reaches the server's COPY before the "connection" drops; for DuckDB half of the rows
are inserted before the insert fails. The transaction must take them back.
"""

from __future__ import annotations

import datetime as dt
import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from flowstone.io._duckdb import DuckDBIOManager
from flowstone.io._postgres import PostgresIOManager

from ._contract import Backend, Sample


def same_arrow(a: Any, b: Any) -> bool:
    import pyarrow as pa

    return isinstance(a, pa.Table) and isinstance(b, pa.Table) and a.equals(b, check_metadata=True)


def same_pandas(a: Any, b: Any) -> bool:
    import pandas as pd

    if not (isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame)):
        return False
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    except AssertionError:
        return False
    return True


def same_polars(a: Any, b: Any) -> bool:
    import polars as pl

    return isinstance(a, pl.DataFrame) and isinstance(b, pl.DataFrame) and a.equals(b)


def samples() -> list[Sample]:
    """A table of each kind (the first two differ), each with values that trip naive writers:
    nulls beside empty strings, quotes, commas, newlines, unicode, time zones."""
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    utc = dt.UTC
    return [
        Sample(
            "arrow",
            pa.table(
                {
                    "id": pa.array([1, 2, 3], pa.int64()),
                    "name": ["a,b", "", None],
                    "note": ['say "hi"', "two\nlines", "ünïcødé ✓"],
                    "at": pa.array(
                        [
                            dt.datetime(2025, 1, 1, 12, 30, tzinfo=utc),
                            None,
                            dt.datetime(1999, 12, 31, tzinfo=utc),
                        ],
                        pa.timestamp("us", tz="UTC"),
                    ),
                    "day": [dt.date(2024, 2, 29), dt.date(1970, 1, 1), None],
                    "ok": [True, None, False],
                    "score": [0.1, -2.5e-300, None],
                }
            ),
            pa.Table,
            same_arrow,
        ),
        Sample(
            "pandas",
            pd.DataFrame({"city": ["Oslo", "Lima", ""], "pop": [709_000, 10_000_000, 0]}, index=[10, 20, 30]),
            pd.DataFrame,
            same_pandas,
        ),
        Sample("polars", pl.DataFrame({"k": ["x", "y"], "v": [1.0, None]}), pl.DataFrame, same_polars),
        Sample("rows", [{"a": 1, "b": "x"}, {"a": 2, "b": None}], list[dict[str, Any]]),
    ]


@contextmanager
def postgres_crash(manager: PostgresIOManager) -> Iterator[None]:
    """The next store sends half of a CSV chunk into COPY, then the connection "drops"."""
    real = manager._send

    def send(copy: Any, chunk: memoryview) -> None:
        real(copy, chunk[: max(1, len(chunk) // 2)])
        raise ConnectionResetError(errno.ECONNRESET, "simulated: connection lost during COPY")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manager, "_send", send)
        yield


@contextmanager
def duckdb_crash(manager: DuckDBIOManager) -> Iterator[None]:
    """The next store inserts half of its rows, then fails."""
    real = manager._insert

    def insert(conn: Any, ref: Any, data: Any, tenant: str, partition: str | None) -> None:
        real(conn, ref, data.slice(0, max(1, data.num_rows // 2)), tenant, partition)
        raise OSError(errno.EIO, "simulated: write failed part way")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manager, "_insert", insert)
        yield


def _closing(request: pytest.FixtureRequest, manager: Any) -> None:
    request.addfinalizer(manager.close)


def postgres_backend(request: pytest.FixtureRequest) -> Backend:
    manager = PostgresIOManager(url=request.getfixturevalue("pg_url"))
    _closing(request, manager)
    return Backend(manager=manager, samples=samples(), crash=lambda: postgres_crash(manager))


def duckdb_backend(request: pytest.FixtureRequest) -> Backend:
    manager = DuckDBIOManager(path=request.getfixturevalue("tmp_path") / "contract.duckdb")
    _closing(request, manager)
    return Backend(manager=manager, samples=samples(), crash=lambda: duckdb_crash(manager))


BACKENDS: list[Any] = [
    pytest.param(postgres_backend, id="postgres", marks=pytest.mark.postgres),
    pytest.param(duckdb_backend, id="duckdb"),
]
