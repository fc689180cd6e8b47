"""Built-in sensors: each factory registers a sensor on a pipeline and returns its definition.

    from flowstone.schedules import sensors

    sensors.file_arrival(pipeline, name="new_exports", path="s3://bucket/exports/*.csv",
                         pattern=r"(\\d{4}-\\d{2}-\\d{2})", target=["raw_events"],
                         storage_options={"anon": False}, dynamic_partitions=None)
    sensors.asset_materialized(pipeline, name="refresh_c", upstream=["a", "b"], target=["c"])
    sensors.database_change(pipeline, name="orders_changed", url="postgresql://...",
                            query="SELECT max(updated_at) FROM orders", target=["orders"])
    sensors.http_poll(pipeline, name="export_ready", url="https://api.example.com/status",
                      predicate=lambda response: response.json()["ready"], target=["export"])
    sensors.run_status(pipeline, name="report_failed", status="failed", of=["daily_report"],
                       notify=lambda run, context: page_someone(run))

Every one registers through ``pipeline.sensor`` (same validation, same namespace as schedules)
and is evaluated by the daemon like any other sensor. Their cursors are JSON strings. Each run
request carries a key derived from what caused it (file path and version, materialization ids,
watermark, response identity, run id), so evaluating the same state twice - another daemon, or a
daemon that died before saving the cursor - never launches the same thing twice.

By default the requests are forced (``force=True``): a run for a partition that is already
materialized would otherwise do nothing, and new data for it is exactly why the sensor fired.

First evaluation: ``file_arrival`` treats files already present as new (``ignore_existing=True``
to skip them); ``asset_materialized``, ``run_status`` and ``database_change`` only record where
things stand and request nothing (like a schedule that has just been turned on).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flowstone._durations import parse_duration
from flowstone._errors import ConfigurationError, DefinitionError
from flowstone.schedules._definitions import RunRequest, SensorDefinition, SensorResult

if TYPE_CHECKING:
    import httpx

    from flowstone._pipeline import Pipeline
    from flowstone._records import Materialization, RunRecord
    from flowstone.schedules._daemon import SensorContext
    from flowstone.schedules._state import AutomationStore

__all__ = [
    "BuiltinSensor",
    "asset_materialized",
    "database_change",
    "file_arrival",
    "http_poll",
    "run_status",
]

Duration = str | float | timedelta


# ``flowstone_ticks.tick_key`` is VARCHAR(255): longer request keys are shortened with a digest.
MAX_KEY_LENGTH = 255
_CURSOR_VERSION = 1
RUN_STATUSES = ("succeeded", "failed", "abandoned", "cancelled")


# ---------------------------------------------------------------------- the registered callable
@dataclass(frozen=True)
class _Where:
    """Stands in for ``__code__`` so the definition's location is the factory's caller."""

    co_filename: str
    co_firstlineno: int


class BuiltinSensor:
    """The function behind a built-in sensor: ``kind`` and ``options`` say what it watches.

    Called by the daemon as ``sensor(context, cursor) -> SensorResult`` like any sensor function.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        evaluate: Callable[[SensorContext, str | None, tuple[str, ...]], SensorResult],
        where: _Where,
        options: Mapping[str, Any],
    ) -> None:
        self.kind = kind
        self.__name__ = name
        self.__qualname__ = name
        self.__doc__ = f"{kind} sensor"
        self.__code__ = where  # read by build_sensor: the definition's location
        self.options = dict(options)
        self.target: tuple[str, ...] = ()  # set once registered
        self._evaluate = evaluate

    def __call__(self, context: SensorContext, cursor: str | None) -> SensorResult:
        return self._evaluate(context, cursor, self.target)

    def __repr__(self) -> str:
        return f"<{self.kind} sensor {self.__name__!r}>"


def _caller() -> _Where:
    """Where the user called the factory: the first frame outside this module."""
    frame = inspect.currentframe()
    try:
        while frame is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back
        if frame is None:
            return _Where("<unknown>", 0)
        return _Where(frame.f_code.co_filename, frame.f_lineno)
    finally:
        del frame


def _failer(name: Any, where: _Where) -> Callable[[str], DefinitionError]:
    location = f"{where.co_filename}:{where.co_firstlineno}"

    def fail(text: str) -> DefinitionError:
        return DefinitionError(
            f"{location}: sensor '{name}': {text}", context={"sensor": name, "location": location}
        )

    return fail


def _register(
    pipeline: Pipeline,
    kind: str,
    name: str,
    evaluate: Callable[[SensorContext, str | None, tuple[str, ...]], SensorResult],
    where: _Where,
    *,
    target: Any,
    interval: Duration,
    timeout: Duration,
    description: str | None,
    options: Mapping[str, Any],
) -> SensorDefinition:
    fn = BuiltinSensor(kind, name, evaluate, where, options)
    definition: SensorDefinition = pipeline.sensor(
        fn, target=target, name=name, interval=interval, timeout=timeout, description=description
    )
    fn.target = definition.target
    return definition


def _check_name(name: Any, where: _Where) -> str:
    if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
        raise _failer(name, where)("name= must be an identifier (letters, digits, _ and -)")
    return name


def _seconds(value: Duration, what: str, fail: Callable[[str], DefinitionError]) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise fail(f"{what}: {exc}") from None


def _callable_or_none(value: Any, what: str, fail: Callable[[str], DefinitionError]) -> None:
    if value is not None and not callable(value):
        raise fail(f"{what} must be a function, got {value!r}")


# ---------------------------------------------------------------------- shared helpers
def _digest(*parts: str, length: int = 32) -> str:
    """A short hex digest of ``parts`` (NUL-separated)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def _fit_key(key: str) -> str:
    """``key`` unchanged when it fits a tick key, else its start and a digest of the whole."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return f"{key[:150]}...#{_digest(key, length=64)}"


def _as_keys(value: Any) -> list[str]:
    """Partition keys from what a user function returned: None, one key or several."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(dict.fromkeys(str(v) for v in value if v is not None and str(v)))
    return [str(value)]


def _load_cursor(cursor: str | None, kind: str) -> dict[str, Any] | None:
    if cursor is None:
        return None
    try:
        state = json.loads(cursor)
    except ValueError:
        state = None
    if not isinstance(state, dict) or state.get("v") != _CURSOR_VERSION:
        raise ValueError(
            f"the cursor {cursor[:80]!r} is not a {kind} cursor; reset it (set it to nothing) to start over"
        )
    return state


def _dump_cursor(**state: Any) -> str:
    return json.dumps({"v": _CURSOR_VERSION, **state}, sort_keys=True, separators=(",", ":"), default=str)


def _target_partitioned(context: SensorContext, target: Sequence[str]) -> bool:
    """Whether any asset the target selects is partitioned (then keys are carried over)."""
    pipeline = context.app.pipeline
    return any(pipeline.assets[a].partitioned_by is not None for a in pipeline.graph.select(list(target)))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Window:
    """A cursor over rows that appear with a timestamp: ``after`` (the newest timestamp seen)
    and the ids seen within ``lookback`` of it.

    Rows are read from ``after - lookback`` on, so a row committed late - its timestamp is when
    it finished, on the host that ran it, not when it became visible - is still found as long as
    it became visible within ``lookback``; the ids already seen are left out.
    """

    def __init__(self, state: dict[str, Any] | None, lookback: float) -> None:
        self.first = state is None
        after = (state or {}).get("after")
        self.after: datetime | None = _utc(datetime.fromisoformat(after)) if after else None
        self.seen: set[str] = set((state or {}).get("seen") or [])
        self.lookback = timedelta(seconds=lookback)

    @property
    def since(self) -> datetime | None:
        """Read rows whose timestamp is after this (None: all of them)."""
        return None if self.after is None else self.after - self.lookback

    def advance(self, rows: Sequence[tuple[str, datetime]]) -> list[str]:
        """Take the rows read from ``since`` on; returns the ids not seen before, in order."""
        new = [row_id for row_id, _ in rows if row_id not in self.seen]
        stamps = [_utc(at) for _, at in rows]
        if stamps:
            newest = max(stamps)
            self.after = newest if self.after is None else max(self.after, newest)
        keep_from = self.since
        # Every id seen before that is still inside the window was read again with ``rows``.
        self.seen = {row_id for row_id, at in rows if keep_from is None or _utc(at) > keep_from}
        return new

    def state(self) -> dict[str, Any]:
        return {"after": None if self.after is None else self.after.isoformat(), "seen": sorted(self.seen)}


# ---------------------------------------------------------------------- file arrival
_MAGIC = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class _File:
    url: str
    version: str
    updated_at: datetime | None

    @property
    def digest(self) -> str:
        return _digest(self.url, self.version, length=20)


def _file_version(info: Mapping[str, Any]) -> tuple[str, datetime | None]:
    """A token that changes with each write (etag, else time, size and inode) and the file's time."""
    from flowstone.io._fsspec import _as_datetime

    updated = None
    for key in ("LastModified", "last_modified", "mtime", "updated", "created"):
        updated = _as_datetime(info.get(key))
        if updated is not None:
            break
    raw_etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if raw_etag:
        return f"etag={str(raw_etag).strip(chr(34))}", updated
    stamp = "" if updated is None else updated.isoformat()
    inode = f",ino={info['ino']}" if info.get("ino") is not None else ""
    return f"at={stamp},size={info.get('size')}{inode}", updated


def _partition_finder(
    pattern: str | re.Pattern[str] | Callable[[str], Any] | None, fail: Callable[[str], DefinitionError]
) -> Callable[[str], list[str]] | None:
    if pattern is None:
        return None
    if callable(pattern) and not isinstance(pattern, re.Pattern):
        fn = pattern
        return lambda url: _as_keys(fn(url))
    if isinstance(pattern, str):
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise fail(f"pattern {pattern!r} is not a regular expression: {exc}") from None
    elif isinstance(pattern, re.Pattern):
        regex = pattern
    else:
        raise fail(f"pattern must be a regular expression or a function (path) -> key, got {pattern!r}")
    if "partition" in regex.groupindex:
        group: int | str = "partition"
    elif regex.groups > 1:
        raise fail(
            f"pattern {regex.pattern!r} has {regex.groups} groups: name the one holding the partition "
            "key (?P<partition>...), or pass a function (path) -> key"
        )
    else:
        group = regex.groups  # 1: the group, 0: the whole match

    def find(url: str) -> list[str]:
        match = regex.search(url)
        if match is None:
            return []
        return _as_keys(match.group(group))

    return find


def file_arrival(
    pipeline: Pipeline,
    *,
    name: str,
    path: str,
    target: Any,
    pattern: str | re.Pattern[str] | Callable[[str], Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dynamic_partitions: str | None = None,
    min_age: Duration | None = None,
    ignore_existing: bool = False,
    max_requests: int | None = None,
    force: bool = True,
    interval: Duration = "60s",
    timeout: Duration = "60s",
    description: str | None = None,
) -> SensorDefinition:
    """Run ``target`` when files appear (or change) at ``path``, any fsspec URL or glob.

    ``path``: ``"s3://bucket/exports/*.csv"``, ``"/data/landing/**/*.json"``, or a directory
    (everything under it). ``storage_options`` go to fsspec (for S3: ``key``, ``secret``,
    ``client_kwargs={"endpoint_url": ...}``...).

    ``pattern`` gives each file's partition key from its URL (``s3://bucket/exports/x.csv``, or
    the absolute local path): a regular expression searched in it - the group named
    ``partition``, else its only group, else the whole match - or a function (url) -> key(s) or
    None. Files it does not match are ignored. One run is requested per partition, for all the
    new files of that partition; without a pattern one run (no partitions) for all new files.

    ``dynamic_partitions``: the name of a ``DynamicPartitions`` definition the keys are added to
    before the runs. ``min_age``: leave files changed less than this long ago (by the daemon's
    clock) for a later evaluation - they may still be being written. ``max_requests``: at most
    this many partitions per evaluation, the oldest files first; the rest wait for the next one.

    The cursor holds a digest of (path, version) of each file present that has been handled, so
    a file that changes (new etag, or new modification time/size) counts as new again.
    """
    where = _caller()
    sensor_name = _check_name(name, where)
    fail = _failer(sensor_name, where)
    if not isinstance(path, str) or not path.strip():
        raise fail(f"path must be an fsspec URL, path or glob, got {path!r}")
    find_keys = _partition_finder(pattern, fail)
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise fail(f"storage_options must be a mapping, got {storage_options!r}")
    if dynamic_partitions is not None and (not isinstance(dynamic_partitions, str) or not dynamic_partitions):
        raise fail(f"dynamic_partitions must be the name of a DynamicPartitions, got {dynamic_partitions!r}")
    if dynamic_partitions is not None and find_keys is None:
        raise fail("dynamic_partitions needs a pattern= giving each file's partition key")
    settle = None if min_age is None else timedelta(seconds=_seconds(min_age, "min_age", fail))
    if max_requests is not None and (
        not isinstance(max_requests, int) or isinstance(max_requests, bool) or max_requests < 1
    ):
        raise fail(f"max_requests must be a positive integer, got {max_requests!r}")
    options = dict(storage_options or {})
    url = path.strip()
    is_glob = bool(_MAGIC.search(url.split("://", 1)[-1]))

    opened: list[tuple[Any, str]] = []
    lock = threading.Lock()

    def filesystem() -> tuple[Any, str]:
        """The filesystem, opened once per sensor (its clients and connections are reused)."""
        from fsspec.core import url_to_fs

        with lock:
            if not opened:
                try:
                    opened.append(url_to_fs(url, **options))
                except ImportError as exc:
                    module = exc.name or str(exc)
                    extra = " (pip install 'flowstone[s3]')" if url.startswith(("s3://", "s3a://")) else ""
                    raise ConfigurationError(
                        f"sensor '{sensor_name}' cannot read {url}: "
                        f"module {module!r} is not installed{extra}",
                        context={"sensor": sensor_name, "module": module},
                    ) from None
            return opened[0]

    def list_files() -> list[_File]:
        from flowstone.io._fsspec import full_url, is_bucket_store, is_local

        fs, where_in = filesystem()
        fs.invalidate_cache()  # listings are cached per filesystem instance: always list afresh
        bucket = where_in.split("/", 1)[0]
        missing = FileNotFoundError(f"bucket {bucket!r} of {url} does not exist")
        try:
            if is_glob:
                found = fs.glob(where_in, detail=True)
            else:
                found = fs.find(where_in.rstrip("/") or where_in, detail=True)
        except FileNotFoundError as exc:
            if is_bucket_store(fs) and not fs.exists(bucket):
                raise missing from exc
            raise
        # A glob over a bucket that does not exist lists nothing (s3fs): say so, not "no files".
        if not found and is_bucket_store(fs) and not fs.exists(bucket):
            raise missing
        files = []
        for file_path, info in dict(found).items():
            if info.get("type", "file") != "file":
                continue
            version, updated = _file_version(info)
            files.append(_File(file_path if is_local(fs) else full_url(fs, file_path), version, updated))
        return files

    def evaluate(context: SensorContext, cursor: str | None, target: tuple[str, ...]) -> SensorResult:
        state = _load_cursor(cursor, "file_arrival")
        seen = set((state or {}).get("seen") or [])
        files = list_files()
        handled: set[str] = set()  # digests of files present that are done with
        new: list[_File] = []
        young = 0
        for file in files:
            if file.digest in seen or (state is None and ignore_existing):
                handled.add(file.digest)
            elif (
                settle is not None and file.updated_at is not None and context.now - file.updated_at < settle
            ):
                young += 1
            else:
                new.append(file)
        new.sort(key=lambda f: (f.updated_at or datetime.min.replace(tzinfo=UTC), f.url))
        groups: dict[str | None, list[_File]] = {}
        keys_of: dict[str, list[str | None]] = {}
        unmatched = 0
        for file in new:
            keys: list[str | None] = [None] if find_keys is None else list(find_keys(file.url))
            if not keys:
                unmatched += 1
                continue
            keys_of[file.digest] = keys
            for key in keys:
                groups.setdefault(key, []).append(file)
        chosen = list(groups)[: max_requests or None]
        requests = [
            RunRequest(
                partitions=() if key is None else (key,),
                key=_fit_key(
                    f"{key or ''}@{_digest(*sorted(f.url + chr(0) + f.version for f in groups[key]))}"
                ),
                force=force,
            )
            for key in chosen
        ]
        taken = set(chosen)
        handled.update(d for d, keys in keys_of.items() if all(k in taken for k in keys))
        added = [k for k in chosen if k is not None]
        skip = None
        if not requests:
            parts = [f"{len(files)} file(s) at {url}, none new"]
            if young:
                parts.append(f"{young} younger than min_age")
            if unmatched:
                parts.append(f"{unmatched} not matching the pattern")
            skip = "; ".join(parts)
        return SensorResult(
            run_requests=requests,
            cursor=_dump_cursor(seen=sorted(handled)),
            skip_reason=skip,
            dynamic_partitions={dynamic_partitions: added} if dynamic_partitions and added else {},
        )

    return _register(
        pipeline,
        "file_arrival",
        sensor_name,
        evaluate,
        where,
        target=target,
        interval=interval,
        timeout=timeout,
        description=description or f"files arriving at {url}",
        options={"path": url, "pattern": pattern, "dynamic_partitions": dynamic_partitions},
    )


# ---------------------------------------------------------------------- asset materialized
def asset_materialized(
    pipeline: Pipeline,
    *,
    name: str,
    upstream: str | Sequence[str],
    target: Any,
    require: str = "any",
    partitions: Callable[[Materialization], Any] | None = None,
    lookback: Duration = "5m",
    force: bool = True,
    interval: Duration = "30s",
    timeout: Duration = "60s",
    description: str | None = None,
) -> SensorDefinition:
    """Run ``target`` when ``upstream`` assets get new successful materializations.

    One run per downstream partition: by default the upstream materialization's partition key
    when the target is partitioned, else one unpartitioned run; ``partitions`` maps a
    ``Materialization`` to the key(s) to run instead (None: none). ``require="all"``: a
    partition runs only once every upstream asset has a new materialization for it (the ones
    seen so far wait in the cursor).

    Materializations made by this sensor's own runs are left out (no feedback loop). The cursor
    is the newest ``finished_at`` seen and the ids seen within ``lookback`` of it: a
    materialization recorded later than ``lookback`` after it finished (clock skew between
    hosts, long commit delays) is missed. The first evaluation records where things stand and
    requests nothing.
    """
    where = _caller()
    sensor_name = _check_name(name, where)
    fail = _failer(sensor_name, where)
    names = [upstream] if isinstance(upstream, str) else list(upstream or [])
    if not names or not all(isinstance(n, str) and n for n in names):
        raise fail(f"upstream must be one or more asset names, got {upstream!r}")
    if require not in ("any", "all"):
        raise fail(f"require must be 'any' or 'all', got {require!r}")
    _callable_or_none(partitions, "partitions", fail)
    window_s = _seconds(lookback, "lookback", fail)
    actor = f"sensor:{sensor_name}"

    def evaluate(context: SensorContext, cursor: str | None, target: tuple[str, ...]) -> SensorResult:
        import sqlalchemy as sa

        from flowstone.store import _tables as t
        from flowstone.store._store import _materialization

        app = context.app
        assets = sorted(app.pipeline.graph.select(names))
        state = _load_cursor(cursor, "asset_materialized")
        window = _Window(state, window_s)
        m, r = t.materializations.c, t.runs.c
        query = (
            sa.select(t.materializations)
            .select_from(t.materializations.outerjoin(t.runs, r.id == m.run_id))
            .where(
                m.tenant_id == app.tenant,
                m.asset.in_(assets),
                m.status == "success",
                sa.or_(r.actor.is_(None), r.actor != actor),
            )
        )
        with app.store.engine.connect() as conn:
            if window.first:
                newest = conn.execute(
                    query.with_only_columns(sa.func.max(m.finished_at)).order_by(None)
                ).scalar()
                window.after = None if newest is None else _utc(newest)
            since = window.since
            if since is not None:
                query = query.where(m.finished_at > since)
            rows = [_materialization(row) for row in conn.execute(query.order_by(m.finished_at, m.id))]
        fresh = set(window.advance([(mat.id, mat.finished_at) for mat in rows]))
        if window.first:
            return SensorResult(
                cursor=_dump_cursor(**window.state(), pending={}),
                skip_reason=f"first evaluation: from now on, new materializations of {assets}",
            )
        carry = partitions is None and _target_partitioned(context, target)
        groups: dict[str, dict[str, str]] = {}  # downstream key ('' = none) -> upstream asset -> mat id
        for mat in rows:
            if mat.id not in fresh:
                continue
            if partitions is not None:
                keys = _as_keys(partitions(mat))
            else:
                keys = [mat.partition_key or ""] if carry else [""]
            for key in keys:
                groups.setdefault(key, {})[mat.asset] = mat.id
        pending: dict[str, dict[str, str]] = dict((state or {}).get("pending") or {})
        ready: dict[str, dict[str, str]] = {}
        if require == "all":
            for key, found in groups.items():
                pending[key] = {**pending.get(key, {}), **found}
            for key in list(pending):
                if set(pending[key]) >= set(assets):
                    ready[key] = pending.pop(key)
        else:
            ready = groups
        requests = [
            RunRequest(
                partitions=(key,) if key else (),
                key=_fit_key(f"{key}@{_digest(*sorted(ids.values()))}"),
                force=force,
            )
            for key, ids in sorted(ready.items())
        ]
        skip = None
        if not requests:
            skip = (
                f"{len(fresh)} new materialization(s); "
                f"{len(pending)} partition(s) waiting for all of {assets}"
                if fresh
                else f"no new materializations of {assets}"
            )
        return SensorResult(
            run_requests=requests, cursor=_dump_cursor(**window.state(), pending=pending), skip_reason=skip
        )

    return _register(
        pipeline,
        "asset_materialized",
        sensor_name,
        evaluate,
        where,
        target=target,
        interval=interval,
        timeout=timeout,
        description=description or f"new materializations of {', '.join(names)} ({require})",
        options={"upstream": names, "require": require},
    )


# ---------------------------------------------------------------------- database change
def _plain(value: Any) -> Any:
    """A watermark as JSON: dates and times as ISO text, anything else JSON cannot hold as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return _utc(value).isoformat() if value.tzinfo else value.isoformat()
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def database_change(
    pipeline: Pipeline,
    *,
    name: str,
    url: Any,
    query: str,
    target: Any,
    params: Mapping[str, Any] | None = None,
    partitions: Callable[[Any], Any] | None = None,
    force: bool = True,
    interval: Duration = "60s",
    timeout: Duration = "60s",
    description: str | None = None,
) -> SensorDefinition:
    """Run ``target`` when a SQL query's value (a watermark) changes.

    ``url``: a database URL (``postgresql://...`` uses psycopg 3, ``sqlite:///...``) or a
    SQLAlchemy engine. ``query`` returns one value - the first column of the first row, e.g.
    ``SELECT max(updated_at) FROM orders`` - bound with ``params``. ``partitions`` maps the new
    value to the partition key(s) to run (default: none). The cursor is the last value; the
    first evaluation records it without running. No rows, or NULL, is a value too: the first
    row inserted into an empty table is a change.
    """
    where = _caller()
    sensor_name = _check_name(name, where)
    fail = _failer(sensor_name, where)
    if not isinstance(query, str) or not query.strip():
        raise fail("query must be SQL returning one value, e.g. 'SELECT max(updated_at) FROM t'")
    if params is not None and not isinstance(params, Mapping):
        raise fail(f"params must be a mapping, got {params!r}")
    _callable_or_none(partitions, "partitions", fail)
    import sqlalchemy as sa

    if isinstance(url, sa.engine.Engine):
        given: sa.engine.Engine | None = url
        shown = url.url.render_as_string(hide_password=True)
    elif isinstance(url, str) and url.strip():
        from flowstone.store._store import normalize_url

        given = None
        try:
            parsed = sa.engine.make_url(normalize_url(url.strip()))
        except sa.exc.ArgumentError as exc:
            raise fail(f"url is not a database URL: {exc}") from None
        shown = parsed.render_as_string(hide_password=True)
    else:
        raise fail(f"url must be a database URL or a SQLAlchemy engine, got {url!r}")
    statement = sa.text(query)
    bound = dict(params or {})
    engines: list[sa.engine.Engine] = []
    lock = threading.Lock()

    def engine() -> sa.engine.Engine:
        if given is not None:
            return given
        with lock:
            if not engines:
                # No pool: a connection per evaluation, none held open between them.
                engines.append(sa.create_engine(parsed, poolclass=sa.pool.NullPool))
            return engines[0]

    def evaluate(context: SensorContext, cursor: str | None, target: tuple[str, ...]) -> SensorResult:
        state = _load_cursor(cursor, "database_change")
        with engine().connect() as conn:
            row = conn.execute(statement, bound).first()
        value = None if row is None else row[0]
        plain = _plain(value)
        text = json.dumps(plain, sort_keys=True, default=str)
        new_cursor = _dump_cursor(value=plain)
        if state is None:
            return SensorResult(cursor=new_cursor, skip_reason=f"first evaluation: watermark is {text}")
        before = json.dumps(state.get("value"), sort_keys=True, default=str)
        if before == text:
            return SensorResult(cursor=new_cursor, skip_reason=f"watermark unchanged ({text})")
        keys = _as_keys(partitions(value)) if partitions is not None else []
        request = RunRequest(
            partitions=tuple(keys), key=_fit_key(f"{text}@{_digest(before, length=16)}"), force=force
        )
        return SensorResult(run_requests=[request], cursor=new_cursor)

    return _register(
        pipeline,
        "database_change",
        sensor_name,
        evaluate,
        where,
        target=target,
        interval=interval,
        timeout=timeout,
        description=description or f"watermark change in {shown}",
        options={"url": shown, "query": query},
    )


# ---------------------------------------------------------------------- HTTP poll
def http_poll(
    pipeline: Pipeline,
    *,
    name: str,
    url: str,
    target: Any,
    predicate: Callable[[httpx.Response], Any] | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    partitions: Callable[[httpx.Response], Any] | None = None,
    identity: Callable[[httpx.Response], str] | None = None,
    request_timeout: Duration = "10s",
    force: bool = True,
    interval: Duration = "60s",
    timeout: Duration = "60s",
    description: str | None = None,
) -> SensorDefinition:
    """Poll ``url`` (httpx) and run ``target`` when ``predicate(response)`` holds for a new response.

    ``predicate`` sees every response, whatever its status (default: a 2xx status). A response
    is new when its identity differs from the one that last fired: ``identity(response)``, by
    default the ``ETag`` header, else a digest of the status and body. So a status page saying
    "ready" fires once, and again when what it says changes. ``partitions(response)``: the
    partition key(s) to run (default: none). Network errors are the sensor's errors (recorded;
    the next evaluation tries again).
    """
    where = _caller()
    sensor_name = _check_name(name, where)
    fail = _failer(sensor_name, where)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise fail(f"url must be an http(s) URL, got {url!r}")
    _callable_or_none(predicate, "predicate", fail)
    _callable_or_none(partitions, "partitions", fail)
    _callable_or_none(identity, "identity", fail)
    if not isinstance(method, str) or not method.isalpha():
        raise fail(f"method must be an HTTP method, got {method!r}")
    wait = _seconds(request_timeout, "request_timeout", fail)
    sent_headers = dict(headers or {})
    sent_params = dict(params or {})

    def identify(response: httpx.Response) -> str:
        if identity is not None:
            return str(identity(response))
        etag = response.headers.get("etag")
        if etag:
            return f"etag={etag}"
        return f"sha256={_digest(str(response.status_code), response.content.hex(), length=40)}"

    def evaluate(context: SensorContext, cursor: str | None, target: tuple[str, ...]) -> SensorResult:
        import httpx

        state = _load_cursor(cursor, "http_poll")
        with httpx.Client(timeout=wait, follow_redirects=True) as client:
            response = client.request(method.upper(), url, headers=sent_headers, params=sent_params)
        ok = predicate(response) if predicate is not None else response.is_success
        if not ok:
            return SensorResult(skip_reason=f"HTTP {response.status_code}: the predicate does not hold")
        ident = identify(response)
        if state is not None and state.get("fired") == ident:
            return SensorResult(skip_reason=f"HTTP {response.status_code}: nothing new since the last run")
        keys = _as_keys(partitions(response)) if partitions is not None else []
        request = RunRequest(partitions=tuple(keys), key=_fit_key(ident), force=force)
        return SensorResult(run_requests=[request], cursor=_dump_cursor(fired=ident))

    return _register(
        pipeline,
        "http_poll",
        sensor_name,
        evaluate,
        where,
        target=target,
        interval=interval,
        timeout=timeout,
        description=description or f"{method.upper()} {url}",
        options={"url": url, "method": method.upper()},
    )


# ---------------------------------------------------------------------- run status
def run_status(
    pipeline: Pipeline,
    *,
    name: str,
    status: str | Sequence[str] = "failed",
    of: str | Sequence[str] | None = None,
    target: Any = None,
    notify: Callable[[RunRecord, SensorContext], None] | None = None,
    partitions: Callable[[RunRecord], Any] | None = None,
    lookback: Duration = "5m",
    force: bool = True,
    interval: Duration = "30s",
    timeout: Duration = "60s",
    description: str | None = None,
) -> SensorDefinition:
    """React to runs of this pipeline finishing with ``status`` (``failed``, ``succeeded``,
    ``abandoned``, ``cancelled``, or several): run ``target``, call ``notify(run, context)``, or both.

    ``of``: only runs that had a step of one of these assets (selection expressions allowed);
    default every run. A run's target request carries, when the target is partitioned, the
    partition keys of the run's steps (of the ``of`` assets when given); ``partitions(run)``
    chooses instead. Runs launched by this sensor are left out. Each run (finish) is handled
    once: its request key, and for ``notify`` a tick row claimed before the call, are the run id
    and finish time, so a notification is sent at most once even with several daemons. The
    cursor works as in :func:`asset_materialized`; the first evaluation requests nothing.
    """
    where = _caller()
    sensor_name = _check_name(name, where)
    fail = _failer(sensor_name, where)
    statuses = [status] if isinstance(status, str) else list(status or [])
    bad = [s for s in statuses if s not in RUN_STATUSES]
    if not statuses or bad:
        raise fail(f"status must be one or more of {list(RUN_STATUSES)}, got {status!r}")
    of_names = [of] if isinstance(of, str) else list(of or [])
    if not all(isinstance(n, str) and n for n in of_names):
        raise fail(f"of must be asset names or selections, got {of!r}")
    _callable_or_none(notify, "notify", fail)
    _callable_or_none(partitions, "partitions", fail)
    if target is None and notify is None:
        raise fail("give target=[...] (assets to run), notify=callable, or both")
    window_s = _seconds(lookback, "lookback", fail)
    actor = f"sensor:{sensor_name}"
    # A sensor needs a target; one that only notifies "targets" what it watches (never run).
    registered_target = target if target is not None else (of_names or "*")

    def evaluate(context: SensorContext, cursor: str | None, _target: tuple[str, ...]) -> SensorResult:
        import sqlalchemy as sa

        from flowstone.store import _tables as t
        from flowstone.store._store import _run

        app = context.app
        watched = sorted(app.pipeline.graph.select(of_names)) if of_names else None
        state = _load_cursor(cursor, "run_status")
        window = _Window(state, window_s)
        r, s = t.runs.c, t.run_steps.c
        query = sa.select(t.runs).where(
            r.tenant_id == app.tenant,
            r.pipeline == app.pipeline.name,
            r.status.in_(statuses),
            r.finished_at.is_not(None),
            r.actor != actor,
        )
        if watched is not None:
            query = query.where(sa.exists().where(s.run_id == r.id, s.asset.in_(watched)))
        with app.store.engine.connect() as conn:
            if window.first:
                newest = conn.execute(query.with_only_columns(sa.func.max(r.finished_at))).scalar()
                window.after = None if newest is None else _utc(newest)
            since = window.since
            if since is not None:
                query = query.where(r.finished_at > since)
            runs = [_run(row) for row in conn.execute(query.order_by(r.finished_at, r.id))]

        def ident(run: RunRecord) -> str:
            assert run.finished_at is not None
            return f"{run.id}@{_utc(run.finished_at).isoformat()}"  # the same in any session time zone

        fresh = set(window.advance([(ident(run), run.finished_at or datetime.min) for run in runs]))
        cursor_out = _dump_cursor(**window.state())
        if window.first:
            return SensorResult(
                cursor=cursor_out, skip_reason=f"first evaluation: from now on, {statuses} runs"
            )
        new = [run for run in runs if ident(run) in fresh]
        requests: list[RunRequest] = []
        if target is not None and new:
            step_keys = _step_keys(context, [run.id for run in new], watched) if partitions is None else {}
            carry = partitions is None and _target_partitioned(context, _target)
            for run in new:
                if partitions is not None:
                    keys = _as_keys(partitions(run))
                else:
                    keys = step_keys.get(run.id, []) if carry else []
                requests.append(
                    RunRequest(partitions=tuple(keys), key=_fit_key(f"run:{ident(run)}"), force=force)
                )
        failures: list[str] = []
        if notify is not None:
            failures = _notify_each(context, sensor_name, new, notify, ident)
        if failures:
            # The cursor is not saved: the next evaluation tries again (what was notified is not).
            raise RuntimeError(f"notify failed for {len(failures)} run(s): " + "; ".join(failures))
        skip = (
            None
            if requests
            else (f"notified about {len(new)} run(s)" if new else f"no new {'/'.join(statuses)} runs")
        )
        return SensorResult(run_requests=requests, cursor=cursor_out, skip_reason=skip)

    return _register(
        pipeline,
        "run_status",
        sensor_name,
        evaluate,
        where,
        target=registered_target,
        interval=interval,
        timeout=timeout,
        description=description
        or f"runs {'/'.join(statuses)}" + (f" of {', '.join(of_names)}" if of_names else ""),
        options={
            "status": statuses,
            "of": of_names,
            "notify": notify is not None,
            "runs": target is not None,
        },
    )


def _step_keys(
    context: SensorContext, run_ids: Sequence[str], assets: Sequence[str] | None
) -> dict[str, list[str]]:
    """The partition keys of each run's steps (of ``assets`` when given), in step order."""
    import sqlalchemy as sa

    from flowstone.store import _tables as t

    s = t.run_steps.c
    query = sa.select(s.run_id, s.partition_key).where(
        s.tenant_id == context.app.tenant, s.run_id.in_(list(run_ids)), s.partition_key != ""
    )
    if assets is not None:
        query = query.where(s.asset.in_(list(assets)))
    found: dict[str, list[str]] = {}
    with context.app.store.engine.connect() as conn:
        for run_id, key in conn.execute(query.order_by(s.run_id, s.position)):
            keys = found.setdefault(run_id, [])
            if key not in keys:
                keys.append(key)
    return found


def _notify_each(
    context: SensorContext,
    sensor_name: str,
    runs: Sequence[RunRecord],
    notify: Callable[[RunRecord, SensorContext], None],
    ident: Callable[[RunRecord], str],
) -> list[str]:
    """Call ``notify`` for each run until it succeeds once; returns what failed.

    A tick row keyed by the run is claimed before the call: a run whose notification went out
    is never notified again, and two daemons never notify at once. A failed notification leaves
    its row ``failed``; the next evaluation takes it back and tries again.
    """
    from flowstone._ids import new_id
    from flowstone.schedules._state import AutomationStore

    state = AutomationStore(context.app.store, context.app.tenant)
    daemon_id = str(getattr(context, "daemon_id", None) or new_id())
    failures = []
    for run in runs:
        key = _fit_key(f"notify:{ident(run)}")
        tick = state.claim_tick(
            "sensor",
            sensor_name,
            key,
            context.now,
            daemon_id=daemon_id,
            partitions=[run.partition_key] if run.partition_key else [],
        )
        if tick is None:
            tick = _retake_failed(state, sensor_name, key, daemon_id)
        if tick is None:
            continue  # notified already (by another daemon, or before a restart)
        try:
            notify(run, context)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            state.finish_tick(tick, status="failed", run_ids=[run.id], reason=f"notify failed: {text}")
            failures.append(f"run {run.id[:12]}: {text}")
            continue
        state.finish_tick(tick, status="launched", run_ids=[run.id], reason="notified")
    return failures


def _retake_failed(state: AutomationStore, sensor_name: str, key: str, daemon_id: str) -> int | None:
    """The id of the ``failed`` tick row ``key``, now ``launching`` again; None when it is not failed."""
    import sqlalchemy as sa

    from flowstone.store import _tables as t
    from flowstone.store._store import utcnow

    c = t.ticks.c
    where = (c.tenant_id == state.tenant, c.kind == "sensor", c.name == sensor_name, c.tick_key == key)
    with state.engine.begin() as conn:
        tick_id = conn.execute(sa.select(c.id).where(*where, c.status == "failed")).scalar()
        if tick_id is None:
            return None
        moved = conn.execute(
            t.ticks.update()
            .where(c.id == tick_id, c.status == "failed")
            .values(status="launching", daemon_id=daemon_id, reason=None, updated_at=utcnow())
        )
    return int(tick_id) if moved.rowcount == 1 else None
