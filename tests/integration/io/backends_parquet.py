"""The parquet manager on a local directory and on moto S3, for the contract suite."""

from __future__ import annotations

import pytest

from flowstone.io._parquet import ParquetIOManager

from ._contract import Backend
from .conftest import S3Server, crash, table_samples


def _local(request: pytest.FixtureRequest) -> Backend:
    root = request.getfixturevalue("tmp_path") / "parquet"
    return Backend(manager=ParquetIOManager(root=root), samples=table_samples(), crash=crash)


def _s3(request: pytest.FixtureRequest) -> Backend:
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.bucket()
    manager = ParquetIOManager(root=f"s3://{bucket}/lake", storage_options=server.storage_options())
    return Backend(manager=manager, samples=table_samples(), crash=crash)


BACKENDS = [
    pytest.param(_local, id="parquet-local"),
    pytest.param(_s3, id="parquet-s3"),
]
