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

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

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


class PrometheusMetrics:
    """In-process counters and histograms, updated from events.

    Metrics: ``flowstone_materializations_total{asset,status}``,
    ``flowstone_step_duration_seconds{asset}`` (successful steps),
    ``flowstone_io_bytes_total{asset,direction,io_manager}``,
    ``flowstone_io_duration_seconds{direction,io_manager}``, ``flowstone_errors_total{type}``,
    ``flowstone_runs_total{status}`` and ``flowstone_step_retries_total{asset}``.

    By default stored bytes come from each step's ``step.succeeded`` event and the engine does
    not build I/O events for these metrics at all; ``io=True`` counts every load and store
    (bytes loaded, and the I/O duration histogram) at a few microseconds per I/O call.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, io: bool = False) -> None:
        self.io = io
        prom = _prometheus_client()
        self.registry: CollectorRegistry = prom.CollectorRegistry() if registry is None else registry
        r = self.registry
        self.materializations = prom.Counter(
            "flowstone_materializations",
            "Materialization attempts, by asset and outcome (a retried attempt counts as failed).",
            ["asset", "status"],
            registry=r,
        )
        self.step_duration = prom.Histogram(
            "flowstone_step_duration_seconds",
            "How long successful steps took (load, compute and store).",
            ["asset"],
            buckets=STEP_DURATION_BUCKETS,
            registry=r,
        )
        self.io_bytes = prom.Counter(
            "flowstone_io_bytes",
            "Bytes loaded and stored by I/O managers.",
            ["asset", "direction", "io_manager"],
            registry=r,
        )
        self.io_duration = prom.Histogram(
            "flowstone_io_duration_seconds",
            "How long I/O manager loads and stores took.",
            ["direction", "io_manager"],
            buckets=IO_DURATION_BUCKETS,
            registry=r,
        )
        self.errors = prom.Counter(
            "flowstone_errors", "Failed materialization attempts, by error type.", ["type"], registry=r
        )
        self.runs = prom.Counter("flowstone_runs", "Finished runs, by status.", ["status"], registry=r)
        self.retries = prom.Counter(
            "flowstone_step_retries", "Step retries, by asset.", ["asset"], registry=r
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Per asset: its succeeded counter's ``inc`` and its duration histogram's ``observe``.
        self._successes: dict[str, tuple[Callable[[], None], Callable[[float], None]]] = {}
        self._handlers: dict[str, Callable[[Event], None]] = {
            "step.succeeded": self._succeeded,
            "step.failed": self._failed,
            "step.retrying": self._retrying,
            "run.finished": self._run_finished,
            "io.loaded": self._io,
            "io.stored": self._io,
        }

    def __repr__(self) -> str:
        return f"PrometheusMetrics(registry={self.registry!r})"

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Subscribe to ``bus``; returns the function that detaches again (safe to call twice)."""
        excluded = _UNCOUNTED if self.io else (*_UNCOUNTED, *_IO)
        return _once(bus.subscribe(self, exclude=excluded, batched=True))

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(event)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: a dict lookup instead of a locked one per event."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:  # two threads may both get here: labels() hands both the same child
            child = self._children[key] = metric.labels(*labels)
        return child

    def _succeeded(self, event: Event) -> None:
        # The one event of every step: a single lookup gives both metrics' children.
        asset = event.asset or ""
        data = event.data
        handles = self._successes.get(asset)
        if handles is None:  # two threads may both get here: labels() hands both the same child
            handles = self._successes[asset] = (
                self._child(self.materializations, asset, "succeeded").inc,
                self._child(self.step_duration, asset).observe,
            )
        count, observe = handles
        count()
        duration = data.get("duration_ms")
        if isinstance(duration, (int, float)):
            observe(duration / 1000)
        size = data.get("size_bytes")
        if not self.io and isinstance(size, (int, float)) and size >= 0:  # else io.stored counts it
            self._child(self.io_bytes, asset, "stored", str(data.get("io_manager") or "")).inc(size)

    def _failed(self, event: Event) -> None:
        # Each failed attempt is one failed materialization in the store: the final one
        # (step.failed) and every one retried (step.retrying). The separate "error" event
        # repeats these, so it is not counted again.
        self._child(self.materializations, event.asset or "", "failed").inc()
        self._child(self.errors, _error_type(event.data.get("error"))).inc()

    def _retrying(self, event: Event) -> None:
        self._failed(event)
        self._child(self.retries, event.asset or "").inc()

    def _run_finished(self, event: Event) -> None:
        self._child(self.runs, str(event.data.get("status", "unknown"))).inc()

    def _io(self, event: Event) -> None:
        data = event.data
        direction = "loaded" if event.type == "io.loaded" else "stored"
        manager = str(data.get("io_manager") or "")
        size = data.get("size_bytes")
        if isinstance(size, (int, float)) and size >= 0:
            self._child(self.io_bytes, event.asset or "", direction, manager).inc(size)
        duration = data.get("duration_ms")
        if isinstance(duration, (int, float)):
            self._child(self.io_duration, direction, manager).observe(duration / 1000)


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
