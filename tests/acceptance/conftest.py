"""Fixtures for the CLI acceptance tests: fresh copies of examples/quickstart in tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ._cli import Project, copy_quickstart


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh copy of examples/quickstart (flowstone.toml + quickstart.py), nothing materialized."""
    return copy_quickstart(tmp_path / "quickstart")


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[[str], Project]:
    """Further fresh quickstart copies in this test's tmp_path, by directory name."""
    return lambda name: copy_quickstart(tmp_path / name)
