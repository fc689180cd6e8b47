"""Real backends for the I/O manager tests: a moto S3 server on loopback, and the shared samples.

``s3_server`` starts one ``ThreadedMotoServer`` on 127.0.0.1 (a free port) per session; each
backend or test makes its own bucket with ``s3_server.bucket()``. ``error_server`` answers every
request with a chosen HTTP status and S3 error code, to see how failures are classified.
"""

from __future__ import annotations

import errno
import http.server
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from flowstone.io._fsspec import HashingWriter

from ._contract import Sample

REGION = "us-east-1"


@dataclass
class S3Server:
    """The moto server's endpoint, with s3fs options and a boto3 client for it."""

    endpoint_url: str
    _client: Any = field(default=None, repr=False)

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """s3fs options for this server: dummy credentials, no instance cache, no retries."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
            "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
            "skip_instance_cache": True,
            **extra,
        }

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name=REGION,
            )
        return self._client

    def bucket(self, name: str | None = None) -> str:
        """Create a bucket (s3fs cannot: moto rejects its location constraint) and return its name."""
        name = name or f"fs-test-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        found = self.client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return sorted(item["Key"] for item in found)

    def open_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        found = self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return [item["Key"] for item in found]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


# ---------------------------------------------------------------------- an endpoint that fails
@dataclass
class ErrorServer:
    """Answers every request with ``status`` and an S3 error document naming ``code``."""

    endpoint_url: str
    status: int = 503
    code: str = "ServiceUnavailable"
    requests: list[str] = field(default_factory=list)

    def storage_options(self) -> dict[str, Any]:
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
            "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
            "skip_instance_cache": True,
            "max_concurrency": 1,  # a whole-object read is then one GET, not a HEAD for its size first
        }


@pytest.fixture
def error_server() -> Iterator[ErrorServer]:
    state = ErrorServer("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            state.requests.append(f"{self.command} {self.path}")
            # A client that asked "Expect: 100-continue" sends no body before an interim answer;
            # answering with the error right away is what S3 does.
            length = int(self.headers.get("Content-Length") or 0)
            if length and self.headers.get("Expect", "").lower() != "100-continue":
                self.rfile.read(length)
            self.close_connection = True
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                f"<Error><Code>{state.code}</Code><Message>simulated {state.status}</Message></Error>"
            ).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.endpoint_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ---------------------------------------------------------------------- failing part way
@contextmanager
def crash_part_way(after_bytes: int = 0, before_raising: Callable[[], None] | None = None) -> Iterator[None]:
    """The next store's sink fails mid-write: once ``after_bytes`` went out, half of the next chunk
    is written, then the connection "drops" (``OSError(EIO)``)."""
    original = HashingWriter.write

    def write(self: HashingWriter, data: Any) -> int:
        if self.size + len(data) <= after_bytes:
            return original(self, data)
        sink = self.sink

        class Dropping:
            def write(self, chunk: Any) -> None:
                sink.write(bytes(chunk[: max(1, len(chunk) // 2)]))
                if before_raising is not None:
                    before_raising()
                raise OSError(errno.EIO, "simulated: connection lost part way through the write")

        self.sink = Dropping()
        return original(self, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HashingWriter, "write", write)
        yield


def crash() -> AbstractContextManager[None]:
    return crash_part_way()


# ---------------------------------------------------------------------- samples
def _same_arrow(a: Any, b: Any) -> bool:
    import pyarrow as pa

    return isinstance(a, pa.Table) and isinstance(b, pa.Table) and a.equals(b)


def _same_pandas(a: Any, b: Any) -> bool:
    import pandas as pd

    if not (isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame)):
        return False
    try:
        pd.testing.assert_frame_equal(a, b)
    except AssertionError:
        return False
    return True


def _same_polars(a: Any, b: Any) -> bool:
    import polars as pl

    return isinstance(a, pl.DataFrame) and isinstance(b, pl.DataFrame) and a.equals(b)


def table_samples() -> list[Sample]:
    """A table of each kind, each loaded back as the kind it was stored as."""
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    return [
        Sample(
            "arrow",
            pa.table({"id": [1, 2, 3], "name": ["a", "b", None], "score": [0.5, 1.5, 2.5]}),
            pa.Table,
            _same_arrow,
        ),
        Sample(
            "pandas",
            pd.DataFrame({"city": ["Oslo", "Lima"], "pop": [709_000, 10_000_000]}, index=[10, 20]),
            pd.DataFrame,
            _same_pandas,
        ),
        Sample("polars", pl.DataFrame({"k": ["x", "y"], "v": [1.0, None]}), pl.DataFrame, _same_polars),
        Sample("rows", [{"a": 1, "b": "x"}, {"a": 2, "b": None}], list[dict[str, Any]]),
    ]
