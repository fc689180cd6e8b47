"""Translate a foreign storage exception into an ``io_error`` that says whether to retry.

Transient (retryable): lost or refused connections, timeouts, disk full, HTTP 5xx, 408 and 429,
database connection errors, lock contention. Permanent: permissions, read-only file systems,
missing buckets, 4xx, bad values and SQL the database rejects. Anything unknown is permanent: a
retry that cannot help only hides the cause for longer.

Object stores reach us twice wrapped: s3fs turns botocore's ``ClientError`` into an ``OSError``
(``PermissionError`` for 403, ``FileNotFoundError`` for 404 and ``NoSuchBucket``, ``OSError(EBUSY)``
for 503/SlowDown, ``OSError(EIO)`` for any code it does not know) with the ``ClientError`` as
``__cause__``. A generic ``EIO`` therefore does not decide alone: an HTTP status further down the
chain wins (a 400 wrapped in ``EIO`` is permanent), and only without one is ``EIO`` transient.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Mapping
from typing import Any

from flowstone._errors import FlowStoneError, IOManagerError, ValueNotFound

_TRANSIENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EIO,
    errno.EAGAIN,
    errno.EBUSY,
    errno.EINTR,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ESTALE,
}
# Errnos that only say "something failed below": look further down the chain for an HTTP status.
_GENERIC_ERRNOS = {errno.EIO, getattr(errno, "EREMOTEIO", errno.EIO)}
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.EISDIR, errno.ENOTDIR}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "TooManyRequests",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "OperationAborted",  # S3: "a conflicting conditional operation is in progress; try again"
    "503",
    "500",
}
_TRANSIENT_NAMES = {
    # botocore / urllib3 / aiohttp connection trouble, duckdb's lock conflicts
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyConnectionError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "IOException",
    # SQLAlchemy / DBAPI
    "OperationalError",
    "InterfaceError",
    "DisconnectionError",
    "TimeoutError",
}
_PERMANENT_NAMES = {
    "IntegrityError",
    "ProgrammingError",
    "DataError",
    "NotSupportedError",
    "CatalogException",
    "BinderException",
    "ConversionException",
    "InvalidInputException",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    work: list[BaseException | None] = [exc]
    while work:
        current = work.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        work.extend([getattr(current, "orig", None), current.__cause__, current.__context__])


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        meta = response.get("ResponseMetadata") or {}
        status = meta.get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = (response.get("Error") or {}).get("Code")
        return None if code is None else str(code)
    return None


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same operation later may succeed."""
    generic = False  # saw an EIO-like error: transient unless an HTTP status below says otherwise
    for current in _chain(exc):
        if isinstance(current, FlowStoneError):
            return current.retryable
        code = _error_code(current)
        if code in _TRANSIENT_CODES:
            return True
        status = _http_status(current)
        if status is not None:
            return status >= 500 or status in (408, 429)
        if code is not None:
            return False
        if generic:
            continue
        name = type(current).__name__
        if name in _PERMANENT_NAMES:
            return False
        if getattr(current, "connection_invalidated", False) or name in _TRANSIENT_NAMES:
            return True
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if isinstance(current, OSError) and current.errno is not None:
            if current.errno in _GENERIC_ERRNOS:
                generic = True
            elif current.errno in _TRANSIENT_ERRNOS:
                return True
            elif current.errno in _PERMANENT_ERRNOS:
                return False
    return generic


def is_missing_bucket(exc: BaseException) -> bool:
    """True when ``exc`` says the bucket itself does not exist (not just the object).

    s3fs reports both as ``FileNotFoundError``; only the ``NoSuchBucket`` code underneath tells a
    misconfigured bucket (permanent, worth a loud error) from a value never stored.
    """
    return any(
        _error_code(current) == "NoSuchBucket" or type(current).__name__ == "NoSuchBucket"
        for current in _chain(exc)
    )


def io_error(
    message: str,
    exc: BaseException,
    *,
    asset: str,
    partition_key: str | None,
    retryable: bool | None = None,
    **context: Any,
) -> IOManagerError:
    """An ``io_error`` for ``exc``: the message, where it happened, and whether to retry.

    Usage in a manager::

        except OSError as exc:
            raise io_error(f"could not write {path}", exc, asset=ctx.asset,
                           partition_key=ctx.partition_key, path=str(path)) from exc
    """
    if isinstance(exc, IOManagerError):
        return exc
    return IOManagerError(
        f"{message}: {type(exc).__name__}: {exc}",
        context={"asset": asset, "partition": partition_key, **context},
        retryable=is_transient(exc) if retryable is None else retryable,
        original=exc,
    )


def not_found(what: str, *, asset: str, partition_key: str | None, **context: Any) -> ValueNotFound:
    """The error for "nothing stored there": distinct from a failing read."""
    return ValueNotFound(
        f"no stored value for asset '{asset}' partition {partition_key!r} ({what})",
        context={"asset": asset, "partition": partition_key, **context},
    )


def missing_extra(extra: str, module: str, *, manager: str) -> IOManagerError:
    return IOManagerError(
        f"the '{manager}' I/O manager needs the '{extra}' extra (module {module!r} is not installed): "
        f"pip install 'flowstone[{extra}]'",
        context={"io_manager": manager, "extra": extra, "module": module},
        retryable=False,
    )
