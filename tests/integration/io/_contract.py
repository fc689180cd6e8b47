"""What one I/O manager backend is, for the shared contract suite (``test_contract.py``).

Each backend module (``backends_*.py``) lists ``BACKENDS``: ``pytest.param(factory, id=...)``
where ``factory(request)`` builds a :class:`Backend` against a real store (files, PostgreSQL, a
moto S3 server on loopback, DuckDB files) and registers its own teardown with
``request.addfinalizer``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest

import flowstone as fs


@dataclass
class Sample:
    """A value the backend must round-trip; ``expected_type`` is the annotation asked on load."""

    name: str
    value: Any
    expected_type: Any = None
    equals: Callable[[Any, Any], bool] = lambda a, b: bool(a == b)


@dataclass
class Backend:
    manager: fs.IOManager
    # Values it must store and load back; the first two must differ (overwrite test).
    samples: list[Sample]
    # Makes the next store fail part way through writing (after some bytes or rows went out).
    crash: Callable[[], AbstractContextManager[Any]]
    config: dict[str, Any] = field(default_factory=dict)
    checksums: bool = True  # metadata() reports a checksum
    sizes: bool = True  # metadata() reports size_bytes


BackendFactory = Callable[[pytest.FixtureRequest], Backend]


def ctx(
    backend: Backend,
    asset: str = "contract_asset",
    key: str | None = None,
    *,
    tenant: str = "default",
    expected_type: Any = None,
) -> fs.IOContext:
    return fs.IOContext(
        asset=asset,
        partition_key=key,
        tenant=tenant,
        run_id="run-contract",
        config=backend.config,
        materialization_id=None,
        expected_type=expected_type,
    )
