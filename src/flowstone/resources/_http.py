"""``HttpClient``: an httpx client with retries, backoff and idempotency keys, as a resource.

    resources = {"crm": fs.HttpClient(base_url="https://crm.example.com/api", retries=3,
                                      headers={"Authorization": fs.EnvVar("CRM_TOKEN")},
                                      idempotency_key=True)}

    @pipeline.asset(requires=["crm"])
    def accounts(context: fs.Context) -> list[dict[str, Any]]:
        response = context.resources.crm.get("/accounts")
        response.raise_for_status()
        return response.json()

Needs the ``http`` extra (``pip install 'flowstone[http]'``); httpx is imported only at setup.
"""

from __future__ import annotations

import email.utils
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flowstone._errors import ConfigurationError, ResourceUnavailable
from flowstone.resources._base import RUNTIME_FIELD, ConfigurableResource, EnvVar, Health, healthy, unhealthy

if TYPE_CHECKING:
    import httpx

_log = logging.getLogger("flowstone.resources.http")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Statuses that say the request was not processed: safe to resend whatever the method.
_NOT_PROCESSED = frozenset({429, 503})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
DEFAULT_IDEMPOTENCY_HEADER = "Idempotency-Key"
# httpx's timeout errors (by name: httpx is imported only at setup): the ``httpx.Timeout`` field
# each one ran into, and what did not happen in time.
_TIMEOUTS = {
    "ConnectTimeout": ("connect", "could not connect"),
    "WriteTimeout": ("write", "could not send the request"),
    "ReadTimeout": ("read", "no response"),
    "PoolTimeout": ("pool", "no free connection"),
}


def _timeout_seconds(exc: httpx.TimeoutException, default: httpx.Timeout, given: Any) -> float | None:
    """The limit that ``exc`` ran into: the request's own ``timeout=`` or else the client's."""
    import httpx

    timeout = default if given is httpx.USE_CLIENT_DEFAULT else httpx.Timeout(given)
    phase = _TIMEOUTS.get(type(exc).__name__)
    seconds = getattr(timeout, phase[0]) if phase else None
    return None if seconds is None else float(seconds)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date.

    ``None`` when absent or unreadable (the caller falls back to its own backoff); a date in the
    past means no wait.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if seconds == seconds else None  # NaN is unreadable
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


@dataclass(frozen=True)
class HttpClient(ConfigurableResource):
    """An HTTP API as a resource; the handle is an :class:`HttpSession`.

    ``timeout`` (seconds) bounds each attempt's connecting, sending and waiting for the answer.
    ``retries`` extra attempts are made on 429/5xx responses, network errors and timeouts, waiting
    what ``Retry-After`` asks (delay-seconds or HTTP date) or else ``backoff * 2**n`` seconds, at
    most ``max_delay`` (a longer ``Retry-After`` returns the response instead of retrying early).
    Responses that say nothing was processed (429, 503) and failures to connect are retried for
    any method; other 5xx, broken connections and timeouts waiting for the answer only for
    idempotent methods, or for any method when ``idempotency_key`` is on: each logical request
    then carries a fresh UUID in that header (``True`` means ``Idempotency-Key``), the same on all
    of its retries.

    ``sleep`` waits between attempts (inject a recorder in tests). The health check GETs
    ``health_path`` (default: the base URL) once and passes on any status below 500.
    """

    base_url: str | EnvVar
    timeout: float | EnvVar = 10.0
    retries: int | EnvVar = 3
    backoff: float | EnvVar = 0.5
    max_delay: float | EnvVar = 60.0
    headers: Mapping[str, str | EnvVar] = field(default_factory=dict, repr=False)  # may hold tokens
    idempotency_key: bool | str = False
    health_path: str = ""
    sleep: Callable[[float], None] = field(
        default=time.sleep, compare=False, repr=False, metadata=RUNTIME_FIELD
    )

    def setup(self, config: Mapping[str, Any]) -> HttpSession:
        try:
            import httpx
        except ImportError as exc:
            raise ConfigurationError(
                "HttpClient needs httpx, which is not installed: pip install 'flowstone[http]'",
                original=exc,
                retryable=False,
            ) from exc
        retries = int(config.get("retries", 3))
        if retries < 0:
            raise ConfigurationError(f"HttpClient retries must be 0 or more, got {retries}")
        key = config.get("idempotency_key", False)
        header = DEFAULT_IDEMPOTENCY_HEADER if key is True else (str(key) if key else None)
        client = httpx.Client(
            base_url=str(config["base_url"]),
            timeout=float(config.get("timeout", 10.0)),
            headers={str(k): str(v) for k, v in dict(config.get("headers") or {}).items()},
        )
        return HttpSession(
            client,
            retries=retries,
            backoff=float(config.get("backoff", 0.5)),
            max_delay=float(config.get("max_delay", 60.0)),
            idempotency_header=header,
            health_path=str(config.get("health_path") or ""),
            sleep=self.sleep,
        )

    def teardown(self, handle: HttpSession) -> None:
        handle.close()

    def health_check(self, handle: HttpSession) -> Health:
        return handle.health()


class HttpSession:
    """What an asset gets from :class:`HttpClient`: ``get``/``post``/... with retries.

    Each call returns the final ``httpx.Response`` (call ``raise_for_status()`` yourself). When
    every attempt fails on the network or times out, ``ResourceUnavailable`` is raised with the
    httpx error as ``original``: retryable, except when the request was not resent because the
    server may have processed it (a POST without an idempotency key), so that a step retry does
    not send it twice either. ``client`` is the underlying ``httpx.Client`` for anything else.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        max_delay: float = 60.0,
        idempotency_header: str | None = None,
        health_path: str = "",
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.retries = retries
        self.backoff = backoff
        self.max_delay = max_delay
        self.idempotency_header = idempotency_header
        self.health_path = health_path
        self._sleep = sleep
        self._now = now

    def __repr__(self) -> str:
        return f"HttpSession({str(self.client.base_url)!r}, retries={self.retries})"

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("HEAD", url, **kwargs)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one logical request, retrying as :class:`HttpClient` describes."""
        import httpx

        method = method.upper()
        headers = httpx.Headers(kwargs.pop("headers", None))
        keyed = self.idempotency_header is not None
        if self.idempotency_header is not None and self.idempotency_header not in headers:
            headers[self.idempotency_header] = str(uuid.uuid4())
        any_failure_safe = keyed or method in _IDEMPOTENT
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.client.request(method, url, headers=headers, **kwargs)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
                resendable = unsent or any_failure_safe
                if attempt > self.retries or not resendable:
                    raise self._unavailable(
                        method, url, exc, attempt, kwargs.get("timeout", httpx.USE_CLIENT_DEFAULT), resendable
                    ) from exc
                delay = self._backoff(attempt)
                reason = type(exc).__name__
            else:
                status = response.status_code
                if (
                    status not in RETRY_STATUSES
                    or attempt > self.retries
                    or not (status in _NOT_PROCESSED or any_failure_safe)
                ):
                    return response
                asked = retry_after_seconds(response.headers.get("Retry-After"), self._now())
                if asked is not None and asked > self.max_delay:
                    _log.warning(
                        "%s %s: HTTP %s asks to retry after %.0fs (more than max_delay %.0fs); giving up",
                        method,
                        self._where(url),
                        status,
                        asked,
                        self.max_delay,
                    )
                    return response
                delay = self._backoff(attempt) if asked is None else asked
                reason = f"HTTP {status}"
                response.close()
            _log.info(
                "%s %s: %s; retry %d of %d in %.3gs",
                method,
                self._where(url),
                reason,
                attempt,
                self.retries,
                delay,
            )
            self._sleep(delay)

    def _unavailable(
        self,
        method: str,
        url: str,
        exc: httpx.TransportError,
        attempts: int,
        request_timeout: Any,
        resendable: bool,
    ) -> ResourceUnavailable:
        """The error for a request whose last attempt failed without a response."""
        import httpx

        where = self._where(url)
        context: dict[str, Any] = {"method": method, "url": where, "attempts": attempts}
        if isinstance(exc, httpx.TimeoutException):
            seconds = _timeout_seconds(exc, self.client.timeout, request_timeout)
            context["timeout_s"] = seconds
            limit = "the timeout" if seconds is None else f"the {seconds:g}s timeout"
            missed = _TIMEOUTS.get(type(exc).__name__, ("", "no answer"))[1]
            what = f"{missed} within {limit} ({type(exc).__name__})"
            hint = (
                f"The server did not answer within {limit}; try again later, or raise "
                "HttpClient(timeout=...) if it is just slow."
            )
        else:
            what = f"{type(exc).__name__}: {exc}"
            hint = (
                "Check that the server is up and HttpClient(base_url=...) is right, then try again later."
                if isinstance(exc, httpx.ConnectError)
                else "The connection broke; try again later."
            )
        if not resendable:
            hint = (
                f"The server may have processed this {method}, so it was not sent again; check "
                "whether it took effect, and set HttpClient(idempotency_key=True) if the API "
                "supports idempotency keys so that it can be retried safely."
            )
        return ResourceUnavailable(
            f"{method} {where} failed after {attempts} attempt(s): {what}",
            context=context,
            retryable=resendable,
            original=exc,
            hint=hint,
        )

    def _backoff(self, attempt: int) -> float:
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_delay))

    def _where(self, url: str) -> str:
        return str(self.client.base_url.join(url))

    def health(self) -> Health:
        """One GET of ``health_path`` (no retries): healthy when it answers below 500."""
        import httpx

        where = self._where(self.health_path)
        try:
            response = self.client.get(self.health_path)
        except httpx.HTTPError as exc:
            return unhealthy(f"GET {where}: {type(exc).__name__}: {exc}")
        if response.status_code >= 500:
            return unhealthy(f"GET {where} answered HTTP {response.status_code}")
        return healthy(f"GET {where} answered HTTP {response.status_code}")

    def close(self) -> None:
        self.client.close()
