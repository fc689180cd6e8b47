"""HttpClient against a real HTTP server on 127.0.0.1: retries, Retry-After, idempotency keys, health.

The server answers from a script of responses per path and records every request; the client's
``sleep`` is a recorder, so no test waits for a backoff. A scripted reply may be held back (the
handler waits on an event that the fixture sets at teardown) to play a server slower than the
client's timeout.
"""

from __future__ import annotations

import email.utils
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

import flowstone as fs
from flowstone._events import Event
from flowstone._records import StepStatus
from flowstone.resources import RESOURCE_SETUP, EnvVar, HttpClient, HttpSession, RunResources
from flowstone.resources._http import retry_after_seconds

from .conftest import AppFactory


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds the server takes to answer; cut short at teardown (no answer then)


SLOWER_THAN_ANY_TIMEOUT = 30.0


@dataclass
class Seen:
    method: str
    path: str
    headers: Mapping[str, str]


class ScriptedServer:
    """A real HTTP server: each path answers its queued replies in order, then 200 ``{"ok": true}``."""

    def __init__(self) -> None:
        self.replies: dict[str, deque[Reply]] = {}
        self.seen: list[Seen] = []
        self.released = threading.Event()  # set at teardown: held replies give up
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path
                with server._lock:
                    server.seen.append(Seen(self.command, path, dict(self.headers.items())))
                    queue = server.replies.get(path)
                    reply = queue.popleft() if queue else Reply(200, {"ok": True})
                if reply.delay and server.released.wait(reply.delay):
                    return  # the test is over: close the connection without an answer
                payload = json.dumps(reply.body if reply.body is not None else {"status": reply.status})
                data = payload.encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=lambda: self.httpd.serve_forever(poll_interval=0.02), name="test-http", daemon=True
        )

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self.replies.setdefault(path, deque()).extend(replies)

    def requests_to(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    scripted.thread.start()
    yield scripted
    scripted.released.set()
    scripted.httpd.shutdown()
    scripted.httpd.server_close()
    scripted.thread.join(10)


@pytest.fixture
def refused_url() -> str:
    """A URL nothing listens on: a port just bound and released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Sleeps:
    """The injected sleep: records each requested delay instead of waiting."""

    def __init__(self) -> None:
        self.requested: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.requested.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def open_session(server: ScriptedServer, sleeps: Sleeps, **options: Any) -> HttpSession:
    client = HttpClient(base_url=server.url, sleep=sleeps, **options)
    return client.setup(client.config)


# ---------------------------------------------------------------------- retries
def test_503_with_retry_after_seconds_is_retried_after_that_long(
    server: ScriptedServer, sleeps: Sleeps
) -> None:
    server.script("/items", Reply(503, headers={"Retry-After": "7"}), Reply(200, {"items": [1, 2]}))
    api = open_session(server, sleeps)
    response = api.get("/items")
    assert response.status_code == 200 and response.json() == {"items": [1, 2]}
    assert sleeps.requested == [7.0]
    assert len(server.requests_to("/items")) == 2
    api.close()


def test_retry_after_as_an_http_date(server: ScriptedServer, sleeps: Sleeps) -> None:
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server.script("/items", Reply(503, headers={"Retry-After": when}), Reply(200))
    api = open_session(server, sleeps)
    assert api.get("/items").status_code == 200
    [delay] = sleeps.requested
    assert 27.0 <= delay <= 30.5  # whole seconds in the header, and the request took a moment
    api.close()


def test_429_without_retry_after_backs_off_exponentially(server: ScriptedServer, sleeps: Sleeps) -> None:
    server.script("/items", Reply(429), Reply(429), Reply(500), Reply(200))
    api = open_session(server, sleeps, backoff=0.5, retries=3)
    assert api.get("/items").status_code == 200
    assert sleeps.requested == [0.5, 1.0, 2.0]
    assert len(server.requests_to("/items")) == 4
    api.close()


def test_backoff_is_capped_at_max_delay(server: ScriptedServer, sleeps: Sleeps) -> None:
    server.script("/items", *[Reply(502)] * 4)
    api = open_session(server, sleeps, backoff=2.0, retries=4, max_delay=5.0)
    assert api.get("/items").status_code == 200
    assert sleeps.requested == [2.0, 4.0, 5.0, 5.0]
    api.close()


def test_when_retries_run_out_the_last_response_is_returned(server: ScriptedServer, sleeps: Sleeps) -> None:
    server.script("/items", *[Reply(503)] * 5)
    api = open_session(server, sleeps, backoff=1.0, retries=2)
    response = api.get("/items")
    assert response.status_code == 503
    assert sleeps.requested == [1.0, 2.0]
    assert len(server.requests_to("/items")) == 3
    api.close()


def test_a_retry_after_longer_than_max_delay_is_not_retried_early(
    server: ScriptedServer, sleeps: Sleeps
) -> None:
    server.script("/items", Reply(429, headers={"Retry-After": "3600"}))
    api = open_session(server, sleeps, max_delay=60)
    assert api.get("/items").status_code == 429
    assert sleeps.requested == [] and len(server.requests_to("/items")) == 1
    api.close()


def test_client_errors_are_not_retried(server: ScriptedServer, sleeps: Sleeps) -> None:
    server.script("/items", Reply(404), Reply(200))
    api = open_session(server, sleeps)
    assert api.get("/items").status_code == 404
    assert sleeps.requested == [] and len(server.requests_to("/items")) == 1
    api.close()


def test_a_post_is_only_resent_when_it_was_not_processed(server: ScriptedServer, sleeps: Sleeps) -> None:
    # Without an idempotency key, a 500 may mean the order was created: do not send it twice.
    server.script("/orders", Reply(500), Reply(201))
    api = open_session(server, sleeps)
    assert api.post("/orders", json={"sku": "a"}).status_code == 500
    assert len(server.requests_to("/orders")) == 1
    # 503 and 429 say nothing was done: safe to resend.
    server.script("/queue", Reply(503), Reply(429), Reply(201))
    assert api.post("/queue", json={"sku": "a"}).status_code == 201
    assert len(server.requests_to("/queue")) == 3
    api.close()


def test_an_idempotency_key_is_the_same_across_retries_and_new_per_request(
    server: ScriptedServer, sleeps: Sleeps
) -> None:
    server.script("/orders", Reply(500), Reply(502), Reply(201), Reply(201))
    api = open_session(server, sleeps, idempotency_key=True)
    assert api.post("/orders", json={"sku": "a"}).status_code == 201
    assert api.post("/orders", json={"sku": "b"}).status_code == 201
    keys = [seen.headers.get("Idempotency-Key") for seen in server.requests_to("/orders")]
    assert len(keys) == 4 and all(keys)
    assert keys[0] == keys[1] == keys[2]  # one logical request, three attempts
    assert keys[3] != keys[0]  # the next request has a key of its own
    assert str(uuid.UUID(str(keys[0]))) == keys[0]
    api.close()


def test_the_idempotency_header_name_and_a_callers_own_key(server: ScriptedServer, sleeps: Sleeps) -> None:
    server.script("/orders", Reply(503), Reply(201))
    api = open_session(server, sleeps, idempotency_key="X-Request-Id")
    api.post("/orders", headers={"X-Request-Id": "order-17"})
    api.put("/orders")
    seen = server.requests_to("/orders")
    assert [s.headers.get("X-Request-Id") for s in seen[:2]] == ["order-17", "order-17"]
    assert seen[2].headers.get("X-Request-Id") not in (None, "order-17")
    assert "Idempotency-Key" not in seen[0].headers
    api.close()


def test_no_idempotency_key_unless_asked(server: ScriptedServer, sleeps: Sleeps) -> None:
    api = open_session(server, sleeps)
    api.post("/orders")
    assert "Idempotency-Key" not in server.requests_to("/orders")[0].headers
    api.close()


def test_connection_refused_is_retried_then_raised_as_resource_unavailable(
    refused_url: str, sleeps: Sleeps
) -> None:
    client = HttpClient(base_url=refused_url, sleep=sleeps, retries=2, backoff=0.25)
    api = client.setup(client.config)
    with pytest.raises(fs.ResourceUnavailable) as info:
        api.post("/orders")  # nothing was sent: safe to retry even a POST
    assert sleeps.requested == [0.25, 0.5]
    assert info.value.retryable is True and info.value.context["attempts"] == 3
    assert isinstance(info.value.original, httpx.ConnectError)
    assert f"POST {refused_url}/orders failed after 3 attempt(s)" in info.value.message
    client.teardown(api)


def test_headers_come_from_the_config_with_env_vars(server: ScriptedServer, sleeps: Sleeps) -> None:
    client = HttpClient(base_url=server.url, headers={"Authorization": EnvVar("API_TOKEN")}, sleep=sleeps)
    run = RunResources({"api": client}, environ={"API_TOKEN": "Bearer t0k3n"})
    run["api"].get("/me")
    run.teardown()
    assert server.requests_to("/me")[0].headers["Authorization"] == "Bearer t0k3n"
    assert "t0k3n" not in repr(client)


# ---------------------------------------------------------------------- timeout
def test_an_answer_within_the_timeout_is_not_a_timeout(server: ScriptedServer, sleeps: Sleeps) -> None:
    server.script("/items", Reply(200, {"items": [1]}, delay=0.05))
    api = open_session(server, sleeps, timeout=5.0)
    assert api.get("/items").json() == {"items": [1]}
    assert sleeps.requested == [] and len(server.requests_to("/items")) == 1
    api.close()


def test_a_get_that_times_out_is_retried_then_raises_resource_unavailable(
    server: ScriptedServer, sleeps: Sleeps
) -> None:
    server.script("/slow", *[Reply(delay=SLOWER_THAN_ANY_TIMEOUT)] * 3)
    api = open_session(server, sleeps, timeout=0.2, retries=2, backoff=0.25)
    with pytest.raises(fs.ResourceUnavailable) as info:
        api.get("/slow")
    error = info.value
    assert len(server.requests_to("/slow")) == 3 and sleeps.requested == [0.25, 0.5]
    assert error.retryable is True
    assert isinstance(error.original, httpx.ReadTimeout)
    assert error.context == {"method": "GET", "url": f"{server.url}/slow", "attempts": 3, "timeout_s": 0.2}
    assert error.message == (
        f"GET {server.url}/slow failed after 3 attempt(s): no response within the 0.2s timeout (ReadTimeout)"
    )
    # A call that timed out, not a resource that could not be set up; the advice fits that.
    assert "set up" not in error.user_message
    assert "HttpClient(timeout=...)" in error.user_message and "try again later" in error.user_message
    assert "ReadTimeout" in error.developer_message and "Traceback" in error.developer_message
    api.close()


def test_a_requests_own_timeout_is_the_one_reported(server: ScriptedServer, sleeps: Sleeps) -> None:
    server.script("/slow", Reply(delay=SLOWER_THAN_ANY_TIMEOUT))
    api = open_session(server, sleeps, timeout=10.0, retries=0)
    with pytest.raises(fs.ResourceUnavailable, match=r"within the 0\.1s timeout") as info:
        api.get("/slow", timeout=0.1)
    assert info.value.context["timeout_s"] == 0.1
    api.close()


def test_a_post_without_an_idempotency_key_is_not_resent_after_a_timeout(
    server: ScriptedServer, sleeps: Sleeps
) -> None:
    # The server may have created the order before the client gave up: sending it again could
    # create a second one. The error is not retryable either, so a step retry does not resend it.
    server.script("/orders", Reply(delay=SLOWER_THAN_ANY_TIMEOUT), Reply(201))
    api = open_session(server, sleeps, timeout=0.2, retries=3)
    with pytest.raises(fs.ResourceUnavailable) as info:
        api.post("/orders", json={"sku": "a"})
    error = info.value
    assert len(server.requests_to("/orders")) == 1 and sleeps.requested == []
    assert error.retryable is False
    assert error.context["attempts"] == 1 and error.context["timeout_s"] == 0.2
    assert "idempotency_key=True" in error.user_message and "try again later" not in error.user_message
    api.close()


def test_a_post_with_an_idempotency_key_is_resent_after_a_timeout_with_the_same_key(
    server: ScriptedServer, sleeps: Sleeps
) -> None:
    slow = Reply(delay=SLOWER_THAN_ANY_TIMEOUT)
    server.script("/orders", slow, slow, Reply(201, {"id": 7}))
    api = open_session(server, sleeps, timeout=0.2, retries=3, idempotency_key=True)
    response = api.post("/orders", json={"sku": "a"})
    assert response.status_code == 201 and response.json() == {"id": 7}
    assert sleeps.requested == [0.5, 1.0]
    keys = [seen.headers.get("Idempotency-Key") for seen in server.requests_to("/orders")]
    assert len(keys) == 3 and keys[0] and keys[0] == keys[1] == keys[2]
    api.close()


# ---------------------------------------------------------------------- health
def test_health_check_gets_the_configured_path(server: ScriptedServer, sleeps: Sleeps) -> None:
    server.script("/health", Reply(200), Reply(404), Reply(503))
    client = HttpClient(base_url=server.url, health_path="/health", sleep=sleeps)
    api = client.setup(client.config)
    first, second, third = (client.health_check(api) for _ in range(3))
    assert first.ok and "answered HTTP 200" in first.detail
    assert second.ok  # reachable: a 404 is the API's answer, not an outage
    assert not third.ok and third.detail == f"GET {server.url}/health answered HTTP 503"
    assert sleeps.requested == [] and len(server.requests_to("/health")) == 3  # no retries
    client.teardown(api)


def test_health_check_defaults_to_the_base_url_and_fails_when_refused(
    server: ScriptedServer, refused_url: str, sleeps: Sleeps
) -> None:
    client = HttpClient(base_url=server.url + "/v1/", sleep=sleeps)
    api = client.setup(client.config)
    assert client.health_check(api).ok
    assert server.seen[-1].path == "/v1/"
    client.teardown(api)
    down = HttpClient(base_url=refused_url, sleep=sleeps)
    handle = down.setup(down.config)
    result = down.health_check(handle)
    assert not result.ok and "ConnectError" in result.detail
    down.teardown(handle)


# ---------------------------------------------------------------------- through a run
def test_an_asset_uses_the_client_and_the_run_closes_it(
    pipeline: fs.Pipeline, make_app: AppFactory, server: ScriptedServer, sleeps: Sleeps
) -> None:
    server.script("/items", Reply(503, headers={"Retry-After": "2"}), Reply(200, {"items": ["a", "b"]}))
    handles: list[HttpSession] = []

    @pipeline.asset(requires=["api"])
    def items(context: fs.Context) -> list[str]:
        api = context.resources.api
        handles.append(api)
        response = api.get("/items")
        response.raise_for_status()
        return list(response.json()["items"])

    app = make_app(pipeline, resources={"api": HttpClient(base_url=server.url, sleep=sleeps)})
    events: list[Event] = []
    app.events.subscribe(events.append)
    run = app.materialize("items", values=True)
    assert run.steps["items"].value == ["a", "b"]
    assert sleeps.requested == [2.0]
    assert handles[0].client.is_closed
    assert [e.data["ok"] for e in events if e.type == RESOURCE_SETUP] == [True]


def test_an_unreachable_api_fails_the_step_as_retryable(
    pipeline: fs.Pipeline, make_app: AppFactory, refused_url: str, sleeps: Sleeps
) -> None:
    @pipeline.asset(requires=["api"])
    def items(context: fs.Context) -> int:
        return int(context.resources.api.get("/items").status_code)

    app = make_app(pipeline, resources={"api": HttpClient(base_url=refused_url, sleep=sleeps, retries=1)})
    step = app.materialize("items").steps["items"]
    assert step.status is StepStatus.FAILED
    assert isinstance(step.error, fs.ResourceUnavailable) and step.error.retryable is True
    assert sleeps.requested == [0.5]


# ---------------------------------------------------------------------- setup details
def test_without_httpx_setup_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # import httpx now raises ImportError
    client = HttpClient(base_url="http://127.0.0.1")
    with pytest.raises(fs.ConfigurationError, match=r"pip install 'flowstone\[http\]'"):
        client.setup(client.config)


def test_import_flowstone_does_not_import_httpx() -> None:
    script = "import sys, flowstone, flowstone.resources; print('httpx' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_negative_retries_are_refused() -> None:
    client = HttpClient(base_url="http://127.0.0.1", retries=-1)
    with pytest.raises(fs.ConfigurationError, match="retries must be 0 or more"):
        client.setup(client.config)


NOW = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("Wed, 15 Jan 2025 12:00:45 GMT", 45.0),
        ("Wed, 15 Jan 2025 11:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after_values(header: str | None, expected: float | None) -> None:
    assert retry_after_seconds(header, NOW) == expected
