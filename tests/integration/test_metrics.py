"""Store-backed Prometheus metrics (``flowstone metrics``) on SQLite and PostgreSQL.

Runs real materializations, then reads the metrics three ways: from the collector, scraped over
HTTP from ``serve_metrics``, and from the click command, all parsed as Prometheus text.
"""

from __future__ import annotations

import queue
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import flowstone as fs
from flowstone.store import _tables as t
from flowstone.telemetry import PrometheusMetrics, StoreMetrics, _prometheus, serve_metrics
from flowstone.telemetry._cli import metrics as metrics_command

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def build_pipeline() -> fs.Pipeline:
    pipeline = fs.Pipeline("metrics")

    @pipeline.asset()
    def raw(context: fs.Context) -> list[int]:
        return [1, 2, 3]

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["a", "b", "c"]))
    def parts(context: fs.Context) -> str:
        return str(context.partition_key) * 10

    @pipeline.asset()
    def broken(context: fs.Context, raw: list[int]) -> int:
        raise RuntimeError("boom")

    return pipeline


@pytest.fixture
def app(store_url: str, tmp_path: Path) -> Iterator[fs.FlowStone]:
    app = fs.FlowStone(build_pipeline(), store=store_url, storage_dir=tmp_path / "s")
    yield app
    app.close()


def run_some(app: fs.FlowStone) -> int:
    """Two successes of raw, three of parts, one failure of broken; returns raw's stored size."""
    first = app.materialize(["raw", "broken"])
    assert first.status is fs.RunStatus.FAILED
    assert app.materialize(["parts"], partitions=["a", "b", "c"]).success
    assert app.materialize(["raw"], force=True).success
    materialization = first.steps["raw"].materialization
    assert materialization is not None and materialization.value_size
    return materialization.value_size


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(collector: StoreMetrics) -> Samples:
    return parse(generate_latest(collector.registry).decode())


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def stored_bytes(samples: Samples, asset: str, io_manager: str) -> float | None:
    return get(samples, "flowstone_io_bytes_total", asset=asset, direction="stored", io_manager=io_manager)


def check_counts(samples: Samples, raw_size: int) -> None:
    """Exactly what ``run_some`` recorded, and nothing else."""
    materializations = {
        dict(labels)["asset"]: (dict(labels)["status"], value)
        for (name, labels), value in samples.items()
        if name == "flowstone_materializations_total"
    }
    assert materializations == {"raw": ("succeeded", 2), "parts": ("succeeded", 3), "broken": ("failed", 1)}
    errors = {dict(labels)["type"]: v for (n, labels), v in samples.items() if n == "flowstone_errors_total"}
    assert errors == {"execution_error": 1}
    runs = {dict(labels)["status"]: v for (n, labels), v in samples.items() if n == "flowstone_runs_total"}
    assert runs == {"failed": 1, "succeeded": 2}
    assert stored_bytes(samples, "raw", "filesystem") == 2 * raw_size
    assert stored_bytes(samples, "parts", "filesystem")
    assert get(samples, "flowstone_step_duration_seconds_count", asset="raw") == 2
    assert get(samples, "flowstone_step_duration_seconds_bucket", asset="raw", le="+Inf") == 2
    assert get(samples, "flowstone_step_duration_seconds_count", asset="parts") == 3
    assert get(samples, "flowstone_step_duration_seconds_count", asset="broken") is None  # successes only
    assert get(samples, "flowstone_pending_approvals") == 0
    assert not [k for k in samples if k[0] == "flowstone_step_retries_total"]


# ---------------------------------------------------------------------- the collector
def test_store_metrics_count_what_the_store_recorded(app: fs.FlowStone, tmp_path: Path) -> None:
    raw_size = run_some(app)
    collector = StoreMetrics(app.store, tenant=app.tenant)
    check_counts(scrape(collector), raw_size)

    # Another tenant's runs in the same store are not counted, and are counted for that tenant.
    other = fs.FlowStone(build_pipeline(), store=app.store.engine, tenant="other", storage_dir=tmp_path / "o")
    assert other.materialize(["raw"]).success
    check_counts(scrape(collector), raw_size)
    theirs = scrape(StoreMetrics(app.store.engine, tenant="other"))
    assert get(theirs, "flowstone_materializations_total", asset="raw", status="succeeded") == 1
    assert get(theirs, "flowstone_runs_total", status="succeeded") == 1
    assert get(theirs, "flowstone_materializations_total", asset="parts", status="succeeded") is None


def test_store_duration_histogram_buckets_follow_duration_ms(app: fs.FlowStone) -> None:
    now = datetime.now(UTC)
    durations_ms = [3.0, 700.0, 1000.0, 20_000.0, 5_000_000.0]
    rows = [
        {
            "id": uuid.uuid4().hex,
            "tenant_id": app.tenant,
            "run_id": "r" * 32,
            "asset": "timed",
            "partition_key": str(i),
            "status": "success",
            "started_at": now,
            "finished_at": now,
            "duration_ms": ms,
            "value_size": 100 * (i + 1),
            "io_manager": "memory",
            "error_type": None,  # every row names every column: executemany takes the first's
            "attempt": 1,
        }
        for i, ms in enumerate(durations_ms)
    ]
    failed = {**rows[0], "status": "failed"}
    rows.append({**failed, "id": uuid.uuid4().hex, "error_type": "timeout", "attempt": 2})
    rows.append({**failed, "id": uuid.uuid4().hex, "error_type": None, "attempt": 1})
    with app.store.engine.begin() as conn:
        conn.execute(t.materializations.insert(), rows)

    samples = scrape(StoreMetrics(app.store, tenant=app.tenant))
    buckets = {
        dict(labels)["le"]: v
        for (name, labels), v in samples.items()
        if name == "flowstone_step_duration_seconds_bucket" and dict(labels)["asset"] == "timed"
    }
    assert buckets["0.005"] == 1 and buckets["0.5"] == 1  # 3 ms
    assert buckets["1.0"] == 3  # 700 ms, and 1000 ms: a bound is inclusive ("le")
    assert buckets["10.0"] == 3 and buckets["30.0"] == 4  # 20 s
    assert buckets["3600.0"] == 4 and buckets["+Inf"] == 5  # 5000 s: only in +Inf
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert get(samples, "flowstone_step_duration_seconds_count", asset="timed") == 5
    assert get(samples, "flowstone_step_duration_seconds_sum", asset="timed") == pytest.approx(
        sum(durations_ms) / 1000
    )
    assert stored_bytes(samples, "timed", "memory") == 1500  # successes only: 100 + 200 + ... + 500
    assert get(samples, "flowstone_materializations_total", asset="timed", status="failed") == 2
    assert get(samples, "flowstone_errors_total", type="timeout") == 1
    assert get(samples, "flowstone_errors_total", type="unknown") == 1
    assert get(samples, "flowstone_step_retries_total", asset="timed") == 1


def test_pending_approvals_count_open_requests_of_the_tenant(app: fs.FlowStone) -> None:
    from flowstone.store import _tables as t
    from flowstone.store._store import utcnow

    collector = StoreMetrics(app.store, tenant=app.tenant)
    assert get(scrape(collector), "flowstone_pending_approvals") == 0
    now = utcnow()
    rows = [
        (app.tenant, "pending"),
        (app.tenant, "escalated"),
        (app.tenant, "approved"),
        (app.tenant, "rejected"),
        ("other", "pending"),
    ]
    with app.store.engine.begin() as conn:
        conn.execute(
            t.approvals.insert(),
            [
                {
                    "id": f"a{i:031d}",
                    "tenant_id": tenant,
                    "run_id": f"r{i:031d}",
                    "step_id": f"s{i:031d}",
                    "checkpoint": "review",
                    "partition_key": "",
                    "status": status,
                    "created_at": now,
                    "updated_at": now,
                }
                for i, (tenant, status) in enumerate(rows)
            ],
        )
    assert get(scrape(collector), "flowstone_pending_approvals") == 2
    assert get(scrape(StoreMetrics(app.store, tenant="other")), "flowstone_pending_approvals") == 1


def test_store_and_in_process_metrics_agree_including_retries(app: fs.FlowStone, tmp_path: Path) -> None:
    from flowstone.testing import FakeClock

    pipeline = build_pipeline()
    calls: list[int] = []

    @pipeline.asset()
    def flaky(context: fs.Context) -> int:
        calls.append(1)
        if len(calls) < 3:
            raise fs.Retry("not yet")
        return 1

    retrying = fs.FlowStone(pipeline, store=app.store.engine, storage_dir=tmp_path / "r", clock=FakeClock())
    live = PrometheusMetrics()
    live.attach(retrying.events)
    run_some(retrying)
    assert retrying.materialize(["flaky"]).success

    stored = scrape(StoreMetrics(app.store, tenant=app.tenant))
    counted = parse(generate_latest(live.registry).decode())
    assert get(stored, "flowstone_step_retries_total", asset="flaky") == 2
    for name in (
        "flowstone_materializations_total",
        "flowstone_errors_total",
        "flowstone_runs_total",
        "flowstone_step_retries_total",
        "flowstone_step_duration_seconds_count",
    ):
        mine = {k: v for k, v in stored.items() if k[0] == name}
        theirs = {k: v for k, v in counted.items() if k[0] == name}
        assert mine and mine == theirs, name
    stored_bytes = {k: v for k, v in stored.items() if k[0] == "flowstone_io_bytes_total"}
    assert stored_bytes and all(counted[k] == v for k, v in stored_bytes.items())
    assert get(stored, "flowstone_materializations_total", asset="flaky", status="failed") == 2
    assert get(stored, "flowstone_errors_total", type="retry_requested") == 2


# ---------------------------------------------------------------------- over HTTP
def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body: bytes = response.read()
    return body.decode()


def test_serve_metrics_over_http(app: fs.FlowStone) -> None:
    raw_size = run_some(app)
    collector = StoreMetrics(app.store, tenant=app.tenant)
    with serve_metrics(collector.registry, host="127.0.0.1", port=0) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        check_counts(parse(fetch(server.url)), raw_size)
        assert app.materialize(["raw"], force=True).success
        again = parse(fetch(server.url))  # computed afresh on every scrape
        assert get(again, "flowstone_materializations_total", asset="raw", status="succeeded") == 3
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=5)


def test_serve_metrics_on_a_taken_port_is_a_configuration_error(app: fs.FlowStone) -> None:
    registry = StoreMetrics(app.store).registry
    with serve_metrics(registry, port=0) as server:
        expected = f"cannot serve metrics on 127.0.0.1:{server.port}"
        with pytest.raises(fs.ConfigurationError, match=expected):
            serve_metrics(registry, port=server.port)


# ---------------------------------------------------------------------- the command
@dataclass
class StubState:
    """What ``flowstone metrics`` needs of the CLI state."""

    target: fs.FlowStone | Exception
    verbose: bool = False

    def app(self) -> fs.FlowStone:
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def test_metrics_command_once_prints_the_exposition(app: fs.FlowStone) -> None:
    raw_size = run_some(app)
    result = CliRunner().invoke(metrics_command, ["--once"], obj=StubState(app))
    assert result.exit_code == 0, result.output
    check_counts(parse(result.stdout), raw_size)
    assert "# TYPE flowstone_materializations_total counter" in result.stdout


def test_metrics_command_serves_until_stopped(app: fs.FlowStone, monkeypatch: pytest.MonkeyPatch) -> None:
    raw_size = run_some(app)
    started: queue.Queue[_prometheus.MetricsServer] = queue.Queue()
    real = _prometheus.serve_metrics

    def recording(*args: Any, **kwargs: Any) -> _prometheus.MetricsServer:
        server = real(*args, **kwargs)
        started.put(server)
        return server

    monkeypatch.setattr(_prometheus, "serve_metrics", recording)
    outcome: dict[str, Any] = {}

    def invoke() -> None:
        outcome["result"] = CliRunner().invoke(
            metrics_command, ["--host", "127.0.0.1", "--port", "0"], obj=StubState(app)
        )

    thread = threading.Thread(target=invoke, daemon=True)
    thread.start()
    server = started.get(timeout=60)
    try:
        check_counts(parse(fetch(server.url)), raw_size)
    finally:
        server.close()
    thread.join(timeout=60)
    assert not thread.is_alive()
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    assert f"serving FlowStone metrics on {server.url}" in result.stderr


def test_metrics_command_reports_errors_like_the_cli() -> None:
    problem = fs.ConfigurationError("no pipeline configured: set pipeline = 'module:attr'")
    result = CliRunner().invoke(metrics_command, ["--once"], obj=StubState(problem))
    assert result.exit_code == 2
    assert "configuration_error" in result.stderr and "no pipeline configured" in result.stderr
    assert result.stdout == ""
    bad_port = CliRunner().invoke(metrics_command, ["--port", "70000"], obj=StubState(problem))
    assert bad_port.exit_code == 2 and "70000" in bad_port.output
