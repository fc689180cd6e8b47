"""Prometheus metrics, two ways.

``PrometheusMetrics`` counts events in the process that runs them: for long-lived processes
(workers, the daemon, ``flowstone dev``) that a Prometheus server scrapes::

    metrics = PrometheusMetrics()
    metrics.attach(app.events)
    serve_metrics(metrics.registry, port=9464)

``StoreMetrics`` computes the same names from the metadata store on every scrape, so a separate
process (``flowstone metrics``) reports what every process recorded, with a few aggregate
queries however many materializations there are::

    serve_metrics(StoreMetrics(app.store, tenant=app.tenant).registry, port=9464)

Both use a registry of their own by default, never the ``prometheus_client`` global one.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import sqlalchemy as sa

from flowstone._errors import ConfigurationError
from flowstone._events import Event, EventBus
from flowstone.telemetry._json_logs import _once

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
    from sqlalchemy.engine import Connection, Engine

    from flowstone.store._store import Store

# Seconds; shared by both sides so in-process and store-backed histograms line up.
STEP_DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
IO_DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
)  # fmt: skip
# The store records a successful materialization as "success"; metrics say "succeeded" like
# step and run statuses do.
_STATUS = {"success": "succeeded"}
APPROVALS_TABLE = "flowstone_approvals"
PENDING_APPROVALS = ("pending", "escalated")


def _prometheus_client() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core  # the metric families custom collectors yield
    except ImportError as exc:
        raise ConfigurationError(
            "Prometheus metrics need prometheus-client: pip install 'flowstone[prometheus]'",
            context={"extra": "prometheus"},
            original=exc,
        ) from exc
    return prometheus_client


def _error_type(value: Any) -> str:
    """The ``type`` of an event's ``error``: a ``FlowStoneError.to_dict()`` or an exception."""
    if isinstance(value, Mapping):
        return str(value.get("type") or "unknown")
    if isinstance(value, BaseException):
        return str(getattr(value, "type", None) or type(value).__name__)
    return "unknown"


# A histogram's state: one count per bucket (the last one +Inf, not cumulative), then the sum.
_Histogram = list[float]
# A counter's state: a one-item list, so a handle on it can be kept and increased in place.
_Counter = list[float]
_Labels = tuple[str, ...]

_MATERIALIZATIONS_HELP = (
    "Materialization attempts, by asset and outcome (a retried attempt counts as failed)."
)
_STEP_DURATION_HELP = "How long successful steps took (load, compute and store)."
_IO_BYTES_HELP = "Bytes loaded and stored by I/O managers."
_IO_DURATION_HELP = "How long I/O manager loads and stores took."
_ERRORS_HELP = "Failed materialization attempts, by error type."
_RUNS_HELP = "Finished runs, by status."
_RETRIES_HELP = "Step retries, by asset."


class PrometheusMetrics:
    """In-process counters and histograms, updated from events.

    Metrics: ``flowstone_materializations_total{asset,status}``,
    ``flowstone_step_duration_seconds{asset}`` (successful steps),
    ``flowstone_io_bytes_total{asset,direction,io_manager}``,
    ``flowstone_io_duration_seconds{direction,io_manager}``, ``flowstone_errors_total{type}``,
    ``flowstone_runs_total{status}`` and ``flowstone_step_retries_total{asset}``.

    The counts are plain numbers behind one lock, turned into metric families when the registry
    is scraped (a custom collector, like ``StoreMetrics``): a step costs a dict lookup and a few
    additions, not a metric object's lock per sample. As with ``StoreMetrics`` there are no
    ``_created`` samples.

    By default stored bytes come from each step's ``step.succeeded`` event and the engine does
    not build I/O events for these metrics at all; ``io=True`` counts every load and store
    (bytes loaded, and the I/O duration histogram) at a few microseconds per I/O call.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, io: bool = False) -> None:
        self.io = io
        prom = _prometheus_client()
        self._families = prom.core
        self._lock = threading.Lock()  # I/O events arrive from worker threads
        # By label values, in the order of the metric's label names.
        self._materializations: dict[_Labels, _Counter] = {}  # (asset, status)
        self._step_durations: dict[_Labels, _Histogram] = {}  # (asset,)
        self._io_bytes: dict[_Labels, _Counter] = {}  # (asset, direction, io manager)
        self._io_durations: dict[_Labels, _Histogram] = {}  # (direction, io manager)
        self._errors: dict[_Labels, _Counter] = {}  # (type,)
        self._runs: dict[_Labels, _Counter] = {}  # (status,)
        self._retries: dict[_Labels, _Counter] = {}  # (asset,)
        # Per asset: its succeeded counter and its duration histogram (the one event of every step).
        self._successes: dict[str, tuple[_Counter, _Histogram]] = {}
        self._handlers: dict[str, Callable[[Event], None]] = {
            "step.succeeded": self._succeeded,
            "step.failed": self._failed,
            "step.retrying": self._retrying,
            "run.finished": self._run_finished,
            "io.loaded": self._io,
            "io.stored": self._io,
        }
        self.registry: CollectorRegistry = prom.CollectorRegistry() if registry is None else registry
        self.registry.register(cast("Collector", self))

    def __repr__(self) -> str:
        return f"PrometheusMetrics(registry={self.registry!r})"

    def attach(self, bus: EventBus, *, batched: bool = True) -> Callable[[], None]:
        """Subscribe to ``bus``; returns the function that detaches again (safe to call twice).

        ``batched`` (the default): the events of steps reach it in batches, in order, by the end
        of their run at the latest (see ``flowstone._events``); ``False`` delivers each event as
        it is emitted, on the thread that emits it.
        """
        excluded = _UNCOUNTED if self.io else (*_UNCOUNTED, *_IO)
        return _once(bus.subscribe(self, exclude=excluded, batched=batched))

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(event)

    # ------------------------------------------------------------------ counting (lock held)
    @staticmethod
    def _add(counters: dict[_Labels, _Counter], key: _Labels, amount: float = 1) -> None:
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = [0.0]
        counter[0] += amount

    @staticmethod
    def _observe(
        histograms: dict[_Labels, _Histogram], key: _Labels, bounds: tuple[float, ...], value: float
    ) -> None:
        histogram = histograms.get(key)
        if histogram is None:
            histogram = histograms[key] = [0.0] * (len(bounds) + 2)
        histogram[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value
        histogram[-1] += value

    # ------------------------------------------------------------------ events
    def _succeeded(self, event: Event) -> None:
        asset = event.asset or ""
        data = event.data
        duration = data.get("duration_ms")
        size = data.get("size_bytes") if not self.io else None  # else io.stored counts it
        with self._lock:
            handles = self._successes.get(asset)
            if handles is None:
                handles = self._successes[asset] = (
                    self._materializations.setdefault((asset, "succeeded"), [0.0]),
                    self._step_durations.setdefault((asset,), [0.0] * (len(STEP_DURATION_BUCKETS) + 2)),
                )
            counter, histogram = handles
            counter[0] += 1
            if _finite(duration):
                seconds = duration / 1000
                histogram[bisect_left(STEP_DURATION_BUCKETS, seconds)] += 1
                histogram[-1] += seconds
            if _finite(size) and size >= 0:
                self._add(self._io_bytes, (asset, "stored", str(data.get("io_manager") or "")), size)

    def _failed(self, event: Event) -> None:
        # Each failed attempt is one failed materialization in the store: the final one
        # (step.failed) and every one retried (step.retrying). The separate "error" event
        # repeats these, so it is not counted again.
        kind = _error_type(event.data.get("error"))
        with self._lock:
            self._add(self._materializations, (event.asset or "", "failed"))
            self._add(self._errors, (kind,))

    def _retrying(self, event: Event) -> None:
        self._failed(event)
        with self._lock:
            self._add(self._retries, (event.asset or "",))

    def _run_finished(self, event: Event) -> None:
        status = str(event.data.get("status", "unknown"))
        with self._lock:
            self._add(self._runs, (status,))

    def _io(self, event: Event) -> None:
        data = event.data
        direction = "loaded" if event.type == "io.loaded" else "stored"
        manager = str(data.get("io_manager") or "")
        size = data.get("size_bytes")
        duration = data.get("duration_ms")
        with self._lock:
            if _finite(size) and size >= 0:
                self._add(self._io_bytes, (event.asset or "", direction, manager), size)
            if _finite(duration):
                self._observe(self._io_durations, (direction, manager), IO_DURATION_BUCKETS, duration / 1000)

    # ------------------------------------------------------------------ scrapes
    def describe(self) -> Iterator[Metric]:
        """The metric names without samples (lets a registry check names without a scrape)."""
        return iter(self._empty())

    def _empty(self) -> list[Any]:  # metric families, typed Any: made from the lazily imported module
        core = self._families
        return [
            core.CounterMetricFamily(
                "flowstone_materializations", _MATERIALIZATIONS_HELP, labels=["asset", "status"]
            ),
            core.HistogramMetricFamily(
                "flowstone_step_duration_seconds", _STEP_DURATION_HELP, labels=["asset"]
            ),
            core.CounterMetricFamily(
                "flowstone_io_bytes", _IO_BYTES_HELP, labels=["asset", "direction", "io_manager"]
            ),
            core.HistogramMetricFamily(
                "flowstone_io_duration_seconds", _IO_DURATION_HELP, labels=["direction", "io_manager"]
            ),
            core.CounterMetricFamily("flowstone_errors", _ERRORS_HELP, labels=["type"]),
            core.CounterMetricFamily("flowstone_runs", _RUNS_HELP, labels=["status"]),
            core.CounterMetricFamily("flowstone_step_retries", _RETRIES_HELP, labels=["asset"]),
        ]

    def collect(self) -> Iterator[Metric]:
        """One scrape: the counts so far, copied under the lock."""
        counted: list[dict[_Labels, _Counter]] = [
            self._materializations,
            self._io_bytes,
            self._errors,
            self._runs,
            self._retries,
        ]
        timed: list[dict[_Labels, _Histogram]] = [self._step_durations, self._io_durations]
        with self._lock:
            counters = [{k: v[0] for k, v in counts.items()} for counts in counted]
            histograms = [{k: list(v) for k, v in values.items()} for values in timed]
        materializations, step_duration, io_bytes, io_duration, errors, runs, retries = families = (
            self._empty()
        )
        for family, values in zip((materializations, io_bytes, errors, runs, retries), counters, strict=True):
            for labels, value in values.items():
                family.add_metric(list(labels), value)
        bounds = (STEP_DURATION_BUCKETS, IO_DURATION_BUCKETS)
        for family, limits, observed in zip((step_duration, io_duration), bounds, histograms, strict=True):
            for labels, counts in observed.items():
                cumulative, buckets = 0.0, []
                for bound, n in zip((*limits, float("inf")), counts[:-1], strict=True):
                    cumulative += n
                    buckets.append((_le(bound), cumulative))
                family.add_metric(list(labels), buckets, counts[-1])
        return iter(families)


def _finite(value: Any) -> TypeGuard[float]:
    """An int or a finite float (what a duration or a size in an event should be)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Frequent events no metric counts: skipped without a call.
_UNCOUNTED = ("run.started", "step.started", "step.skipped", "error")
_IO = ("io.loaded", "io.stored")


class StoreMetrics:
    """A Prometheus collector that reads the metadata store on every scrape.

    A separate process cannot see another process's counters, but every process writes to the
    store: materializations (by asset and status, with a duration histogram of the successful
    ones), bytes stored (by asset and I/O manager), errors (by type), runs (by status) and
    ``flowstone_pending_approvals``. Counts are for one ``tenant``. ``registry`` holds just this
    collector; register it elsewhere with ``other.register(store_metrics)``.
    """

    def __init__(
        self,
        store: Store | Engine,
        *,
        tenant: str = "default",
        buckets: Sequence[float] = STEP_DURATION_BUCKETS,
    ) -> None:
        prom = _prometheus_client()
        self.engine: Engine = cast("Engine", getattr(store, "engine", store))
        self.tenant = tenant
        self.buckets = tuple(sorted(buckets))
        self._families = prom.core
        self.registry: CollectorRegistry = prom.CollectorRegistry(auto_describe=False)
        self.registry.register(cast("Collector", self))

    def __repr__(self) -> str:
        return f"StoreMetrics({self.engine.url!r}, tenant={self.tenant!r})"

    def describe(self) -> Iterator[Metric]:
        """The metric names without samples (lets a registry check names without a query)."""
        return iter(self._empty())

    def _empty(self) -> list[Any]:  # metric families, typed Any: made from the lazily imported module
        core = self._families
        return [
            core.CounterMetricFamily(
                "flowstone_materializations",
                "Materialization attempts recorded, by asset and outcome (a retried attempt is failed).",
                labels=["asset", "status"],
            ),
            core.HistogramMetricFamily(
                "flowstone_step_duration_seconds",
                "How long successful materializations took (load, compute and store).",
                labels=["asset"],
            ),
            core.CounterMetricFamily(
                "flowstone_io_bytes",
                "Bytes stored by I/O managers, as recorded on successful materializations.",
                labels=["asset", "direction", "io_manager"],
            ),
            core.CounterMetricFamily(
                "flowstone_errors", "Failed materialization attempts, by error type.", labels=["type"]
            ),
            core.CounterMetricFamily("flowstone_runs", "Runs, by status.", labels=["status"]),
            core.CounterMetricFamily(
                "flowstone_step_retries", "Step attempts after the first, by asset.", labels=["asset"]
            ),
            core.GaugeMetricFamily(
                "flowstone_pending_approvals", "Checkpoint approvals pending or escalated right now."
            ),
        ]

    def collect(self) -> Iterator[Metric]:
        """One scrape: a grouped query over materializations, one over runs, one for approvals."""
        materializations, durations, stored, errors, runs, retries, approvals = families = self._empty()
        nb = len(self.buckets)
        counts: dict[tuple[str, str], float] = {}
        histograms: dict[str, list[float]] = {}  # per asset: count per bucket, then +Inf, then sum
        bytes_stored: dict[tuple[str, str], float] = {}
        error_counts: dict[str, float] = {}
        retry_counts: dict[str, float] = {}
        with self.engine.connect() as conn:
            # A few hundred grouped rows at most, whatever the number of materializations.
            for row in conn.execute(self._materializations_query()):
                asset, n = row.asset, float(row.n)
                status = _STATUS.get(row.status, row.status)
                counts[asset, status] = counts.get((asset, status), 0) + n
                if row.retries:
                    retry_counts[asset] = retry_counts.get(asset, 0) + float(row.retries)
                if status == "succeeded":
                    bins = histograms.setdefault(asset, [0.0] * (nb + 2))
                    bins[int(row.bucket)] += n
                    bins[nb + 1] += float(row.total_ms or 0) / 1000
                    if row.size is not None:
                        key = (asset, row.io_manager or "")
                        bytes_stored[key] = bytes_stored.get(key, 0) + float(row.size)
                elif status == "failed":
                    kind = row.error_type or "unknown"
                    error_counts[kind] = error_counts.get(kind, 0) + n
            for status, n in conn.execute(self._runs_query()):
                runs.add_metric([status], n)
            approvals.add_metric([], self._pending_approvals(conn))
        for (asset, status), n in sorted(counts.items()):
            materializations.add_metric([asset, status], n)
        for asset, bins in sorted(histograms.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip((*self.buckets, float("inf")), bins[: nb + 1], strict=True):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            durations.add_metric([asset], buckets, bins[nb + 1])
        for (asset, manager), n in sorted(bytes_stored.items()):
            stored.add_metric([asset, "stored", manager], n)
        for kind, n in sorted(error_counts.items()):
            errors.add_metric([kind], n)
        for asset, n in sorted(retry_counts.items()):
            retries.add_metric([asset], n)
        return iter(families)

    def _materializations_query(self) -> sa.Select[Any]:
        """Counts, bytes, retries and duration-bucket counts in one grouped scan of materializations."""
        from flowstone.store import _tables as t

        m = t.materializations
        # Literals, not bind parameters: PostgreSQL must see the CASE in the select list and in
        # GROUP BY as the same expression. Failures all fall in one bucket (-1): fewer groups.
        bucket = sa.case(
            (m.c.status != sa.literal_column("'success'"), sa.literal_column("-1")),
            *(
                (m.c.duration_ms <= sa.literal_column(repr(bound * 1000)), sa.literal_column(str(i)))
                for i, bound in enumerate(self.buckets)
            ),
            else_=sa.literal_column(str(len(self.buckets))),
        )
        retried = sa.case((m.c.attempt > sa.literal_column("1"), 1), else_=0)
        keys = (m.c.asset, m.c.status, m.c.io_manager, m.c.error_type)
        tenant: sa.ColumnElement[str] = m.c.tenant_id
        if self.engine.dialect.name == "sqlite":
            # SQLite would walk the (tenant_id, ...) index and fetch every row by rowid; reading
            # the table straight through is ~3x faster when the tenant has most rows (the usual
            # case). Concatenating '' keeps the planner off the index.
            tenant = tenant.concat("")
        return (
            sa.select(
                *keys,
                bucket.label("bucket"),
                sa.func.count().label("n"),
                sa.func.sum(m.c.value_size).label("size"),
                sa.func.sum(m.c.duration_ms).label("total_ms"),
                sa.func.sum(retried).label("retries"),
            )
            .where(tenant == self.tenant)
            .group_by(*keys, bucket)
        )

    def _runs_query(self) -> sa.Select[Any]:
        from flowstone.store import _tables as t

        r = t.runs
        return sa.select(r.c.status, sa.func.count()).where(r.c.tenant_id == self.tenant).group_by(r.c.status)

    def _pending_approvals(self, conn: Connection) -> int:
        """Approvals waiting for someone; 0 while the store has no approvals table yet."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(APPROVALS_TABLE):
            return 0
        columns = {c["name"] for c in inspector.get_columns(APPROVALS_TABLE)}
        if "status" not in columns:
            return 0
        table = sa.table(APPROVALS_TABLE, *(sa.column(c) for c in ("status", "tenant_id") if c in columns))
        query = sa.select(sa.func.count()).select_from(table).where(table.c.status.in_(PENDING_APPROVALS))
        if "tenant_id" in columns:
            query = query.where(table.c.tenant_id == self.tenant)
        return int(conn.execute(query).scalar_one())


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (on a daemon thread); ``close()`` stops it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def wait(self) -> None:
        """Block until the server stops (``close()`` from another thread, or Ctrl-C)."""
        self._thread.join()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 9464) -> MetricsServer:
    """Serve ``registry`` in Prometheus text format over HTTP; ``port=0`` picks a free port.

    with serve_metrics(PrometheusMetrics().registry, port=0) as server:
        print(server.url)
    """
    prom = _prometheus_client()
    try:
        server, thread = prom.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port}: {exc}",
            context={"host": host, "port": port},
            original=exc,
        ) from exc
    return MetricsServer(host, int(server.server_port), server, thread)
