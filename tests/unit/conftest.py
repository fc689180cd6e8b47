"""Fixtures for the unit suite: every test gets its own pipeline, store and storage in tmp_path."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs

AppFactory = Callable[..., fs.FlowStone]


@pytest.fixture
def pipeline() -> fs.Pipeline:
    return fs.Pipeline("unit")


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/fs.db"


@pytest.fixture
def make_app(tmp_path: Path, store_url: str) -> Iterator[AppFactory]:
    """Build FlowStone apps on this test's SQLite store; all are closed at teardown."""
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline, **kwargs: Any) -> fs.FlowStone:
        kwargs.setdefault("store", store_url)
        kwargs.setdefault("storage_dir", tmp_path / "storage")
        app = fs.FlowStone(pipeline, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event blocked assets wait on; set at teardown so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()
