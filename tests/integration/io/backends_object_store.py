"""The object_store manager on moto S3 in each format, and on ``memory://``, for the contract suite."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from flowstone.io._object_store import ObjectStoreIOManager

from ._contract import Backend, Sample
from .conftest import S3Server, crash, table_samples


def _samples(fmt: str) -> list[Sample]:
    if fmt == "parquet":
        return table_samples()
    samples = [
        Sample("dict", {"rows": [1, 2, 3], "name": "ünïcode"}),
        Sample("list", [{"a": 1.5, "b": None}, {"a": -2, "b": "x"}]),
        Sample("string", "plain text"),
        Sample("number", 42),
    ]
    if fmt == "pickle":
        samples += [
            Sample("set of tuples", {(1, "a"), (2, "b")}),
            Sample("datetime", dt.datetime(2025, 1, 2, 3, 4, tzinfo=dt.UTC)),
            Sample("bytes", bytes(range(256)) * 100),
        ]
    return samples


def _s3(fmt: str) -> Callable[[pytest.FixtureRequest], Backend]:
    def factory(request: pytest.FixtureRequest) -> Backend:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket = server.bucket()
        manager = ObjectStoreIOManager(
            url=f"s3://{bucket}/values", storage_options=server.storage_options(), format=fmt
        )
        return Backend(manager=manager, samples=_samples(fmt), crash=crash)

    return factory


def _memory(request: pytest.FixtureRequest) -> Backend:
    import fsspec

    root = f"memory://fs-test-{uuid.uuid4().hex}"
    memory: Any = fsspec.filesystem("memory")
    request.addfinalizer(lambda: memory.rm(root, recursive=True) if memory.exists(root) else None)
    manager = ObjectStoreIOManager(url=root, format="pickle")
    return Backend(manager=manager, samples=_samples("pickle"), crash=crash)


BACKENDS = [
    pytest.param(_s3("pickle"), id="object-store-s3-pickle"),
    pytest.param(_s3("json"), id="object-store-s3-json"),
    pytest.param(_s3("parquet"), id="object-store-s3-parquet"),
    pytest.param(_memory, id="object-store-memory"),
]
