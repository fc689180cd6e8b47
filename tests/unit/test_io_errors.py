"""Which storage failures are worth retrying: ``flowstone.io.is_transient`` and ``io_error``."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc

import flowstone as fs
from flowstone.io import io_error, is_transient


class FakeClientError(Exception):
    """Shaped like botocore's ClientError: a parsed ``response`` dict."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"{code} ({status})")
        self.response: dict[str, Any] = {
            "Error": {"Code": code, "Message": "..."},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }


class EndpointConnectionError(Exception):
    """Named like botocore's: the endpoint could not be reached."""


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EIO, "Input/output error"), True),
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (OSError(errno.EROFS, "Read-only file system"), False),
        (FileNotFoundError(errno.ENOENT, "missing"), False),
        (ConnectionResetError(errno.ECONNRESET, "reset by peer"), True),
        (TimeoutError("timed out"), True),
        (FakeClientError(503, "ServiceUnavailable"), True),
        (FakeClientError(500, "InternalError"), True),
        (FakeClientError(429, "TooManyRequests"), True),
        (FakeClientError(403, "AccessDenied"), False),
        (FakeClientError(404, "NoSuchBucket"), False),
        (EndpointConnectionError("could not connect"), True),
        (sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
        (sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (sa_exc.ProgrammingError("SELECT", {}, Exception("syntax error")), False),
        (ValueError("bad value"), False),
        (fs.IOManagerError("x", retryable=True), True),
        (fs.ValueNotFound("x"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_the_cause_chain_is_followed() -> None:
    try:
        try:
            raise FakeClientError(503, "SlowDown")
        except FakeClientError as inner:
            raise OSError("wrapped by a library") from inner
    except OSError as outer:
        assert is_transient(outer) is True


def test_io_error_names_where_and_keeps_the_original() -> None:
    original = OSError(errno.ENOSPC, "No space left on device")
    err = io_error("could not write /x", original, asset="a", partition_key="k", path="/x")
    assert isinstance(err, fs.IOManagerError) and err.type == "io_error"
    assert err.retryable is True
    assert err.original is original
    assert err.context == {"asset": "a", "partition": "k", "path": "/x"}
    assert "could not write /x: OSError:" in err.message
    assert io_error("again", err, asset="a", partition_key="k") is err  # never wrapped twice
    forced = io_error("bad", original, asset="a", partition_key=None, retryable=False)
    assert forced.retryable is False


def test_a_full_disk_fails_the_step_as_a_retryable_io_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = fs.Pipeline("disk")

    @pipeline.asset()
    def a(context: fs.Context) -> int:
        return 1

    with fs.FlowStone(pipeline, store=f"sqlite:///{tmp_path}/fs.db", storage_dir=tmp_path / "s") as app:
        assert app.materialize(["a"]).success

        def full(*args: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("flowstone.io._filesystem.os.fsync", full)
        run = app.materialize(["a"], force=True)
        monkeypatch.undo()
        step = run.steps["a"]
        assert step.error is not None and step.error.type == "io_error" and step.error.retryable is True
        mat = step.materialization
        assert mat is not None and mat.status == "failed" and mat.retryable is True
        assert "No space left on device" in (mat.error_message or "")
        assert app.load("a") == 1  # the previous value stays loadable
