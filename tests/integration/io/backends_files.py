"""The filesystem manager in both formats, for the contract suite."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest

import flowstone as fs

from ._contract import Backend, Sample


@contextmanager
def _fail_fsync() -> Iterator[None]:
    # The bytes are in the temp file; flushing them to disk fails (as on a full or failing disk).
    with mock.patch(
        "flowstone.io._filesystem.os.fsync", side_effect=OSError(errno.EIO, "injected I/O error")
    ):
        yield


def _files(fmt: str) -> Any:
    def factory(request: pytest.FixtureRequest) -> Backend:
        root = request.getfixturevalue("tmp_path") / "files"
        samples = [
            Sample("dict", {"rows": [1, 2, 3], "name": "ünïcode"}),
            Sample("list", [{"a": 1.5, "b": None}, {"a": -2, "b": "x"}]),
            Sample("string", "plain text"),
            Sample("number", 42),
        ]
        if fmt == "pickle":
            samples.append(Sample("set of tuples", {(1, "a"), (2, "b")}))
        return Backend(
            manager=fs.FilesystemIOManager(root, format=fmt),
            samples=samples,
            crash=_fail_fsync,
        )

    return factory


BACKENDS = [
    pytest.param(_files("pickle"), id="filesystem-pickle"),
    pytest.param(_files("json"), id="filesystem-json"),
]
