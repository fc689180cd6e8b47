"""Telemetry adapters on real runs: JSON log lines, OpenTelemetry spans, in-process Prometheus."""

from __future__ import annotations

import enum
import io
import json
import logging
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

import flowstone as fs
from flowstone._events import Event, EventBus
from flowstone.telemetry import (
    JsonLogs,
    OpenTelemetrySpans,
    PrometheusMetrics,
    StoreMetrics,
    _json_logs,
    enable,
    event_level,
    serve_metrics,
)

from .conftest import AppFactory


# ---------------------------------------------------------------------- helpers
def failing_pipeline() -> fs.Pipeline:
    """raw -> clean, raw -> broken (raises), report needs both: skipped."""
    pipeline = fs.Pipeline("telemetry")

    @pipeline.asset()
    def raw(context: fs.Context) -> list[int]:
        return [1, 2, 3]

    @pipeline.asset()
    def clean(context: fs.Context, raw: list[int]) -> list[int]:
        return [x * 2 for x in raw]

    @pipeline.asset()
    def broken(context: fs.Context, raw: list[int]) -> int:
        raise RuntimeError("boom")

    @pipeline.asset()
    def report(context: fs.Context, clean: list[int], broken: int) -> int:
        return len(clean) + broken

    return pipeline


@pytest.fixture
def app(tmp_path: Path) -> Any:
    app = fs.FlowStone(failing_pipeline(), store=f"sqlite:///{tmp_path}/fs.db", storage_dir=tmp_path / "s")
    yield app
    app.close()


def record(bus: EventBus) -> list[Event]:
    seen: list[Event] = []
    bus.subscribe(seen.append)
    return seen


def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def ns(at: datetime) -> int:
    return round(at.timestamp() * 1_000_000) * 1000


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def one(events: list[Event], type_: str, asset: str | None = None) -> Event:
    found = [e for e in events if e.type == type_ and (asset is None or e.asset == asset)]
    assert len(found) == 1, (type_, asset, found)
    return found[0]


# ---------------------------------------------------------------------- JSON logs
def test_json_logs_write_one_parsable_line_per_event_of_a_real_run(app: fs.FlowStone) -> None:
    events = record(app.events)
    stream = io.StringIO()
    JsonLogs(stream, level=logging.DEBUG).attach(app.events)
    run = app.materialize("*")
    assert run.status is fs.RunStatus.FAILED

    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["type"] for r in records] == [e.type for e in events]
    assert records[0]["type"] == "run.started" and records[-1]["type"] == "run.finished"
    for rec, event in zip(records, events, strict=True):
        assert rec["at"] == event.at.isoformat()
        assert datetime.fromisoformat(rec["at"]).tzinfo is not None
        assert rec["run_id"] == run.run_id
        assert rec["asset"] == event.asset and rec["partition"] is None
        assert rec["level"] == logging.getLevelName(event_level(event)).lower()

    def line(type_: str, asset: str) -> dict[str, Any]:
        found = [r for r in records if r["type"] == type_ and r["asset"] == asset]
        assert len(found) == 1, (type_, asset)
        return found[0]

    failed = line("step.failed", "broken")
    assert failed["level"] == "error"
    assert failed["error_type"] == "execution_error"
    assert "RuntimeError: boom" in failed["error_message"]
    assert failed["retryable"] is False and failed["error_context"]["asset"] == "broken"
    assert "error" not in failed  # flattened, not nested
    succeeded = line("step.succeeded", "clean")
    assert succeeded["level"] == "info"
    assert succeeded["duration_ms"] == one(events, "step.succeeded", "clean").data["duration_ms"]
    stored = line("io.stored", "raw")
    assert stored["level"] == "debug" and stored["io_manager"] == "filesystem"
    raw_materialization = run.steps["raw"].materialization
    assert raw_materialization is not None
    assert stored["size_bytes"] == raw_materialization.value_size
    loaded = [r for r in records if r["type"] == "io.loaded"]
    assert sorted(r["consumer"] for r in loaded) == ["broken", "clean"]
    assert {r["asset"] for r in loaded} == {"raw"}
    skipped = line("step.skipped", "report")
    assert skipped["level"] == "warning" and skipped["reason"] == "upstream 'broken' failed"
    assert records[0]["steps"] == 4
    assert records[-1]["status"] == "failed" and records[-1]["level"] == "error"


def test_json_logs_do_no_work_for_events_below_their_level(
    app: fs.FlowStone, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    real = _json_logs.event_line

    def counting(event: Event, level: int | None = None) -> str:
        built.append(event.type)
        return real(event, level)

    monkeypatch.setattr(_json_logs, "event_line", counting)
    stream = io.StringIO()
    JsonLogs(stream, level="warning").attach(app.events)
    app.materialize("*")
    types = [json.loads(line)["type"] for line in stream.getvalue().splitlines()]
    assert sorted(types) == sorted(built)  # nothing built that was not written
    assert set(types) == {"step.failed", "step.skipped", "run.finished", "error"}


def test_json_logs_go_through_logging_and_its_levels(app: fs.FlowStone) -> None:
    logger = logging.getLogger(f"test.flowstone.json.{uuid.uuid4().hex}")
    logger.propagate = False
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    assert JsonLogs().logger is logging.getLogger("flowstone.events.json")
    detach = JsonLogs(logger=logger, level=logging.DEBUG).attach(app.events)
    app.materialize("*")
    detach()
    assert records, "nothing logged"
    assert {r.levelno for r in records} == {logging.INFO, logging.WARNING, logging.ERROR}  # no DEBUG io.*
    for rec in records:
        parsed = json.loads(rec.getMessage())
        event = rec.__dict__["flowstone_event"]
        assert isinstance(event, Event) and parsed["type"] == event.type
        assert rec.levelno == event_level(event)
    assert not [r for r in records if json.loads(r.getMessage())["type"].startswith("io.")]

    records.clear()
    logger.setLevel(logging.ERROR)  # the logger's level applies too
    JsonLogs(logger=logger).attach(app.events)
    app.materialize("*")
    assert {json.loads(r.getMessage())["type"] for r in records} == {"error", "step.failed", "run.finished"}


class Colour(enum.Enum):
    RED = "red"


def test_json_logs_write_unknown_events_and_awkward_values_as_strict_json() -> None:
    bus = EventBus()
    stream = io.StringIO()
    JsonLogs(stream, level=logging.DEBUG).attach(bus)
    at = datetime(2025, 1, 15, 8, 30, tzinfo=UTC)
    bus.emit(
        Event(
            "checkpoint.requested",
            at,
            "r1",
            "report",
            "2025-01-15",
            {
                "when": at,
                "path": Path("/tmp/x"),
                "ratio": float("nan"),
                "colour": Colour.RED,
                "tags": ("a", "b"),
                "type": "mine",
                "nested": {"deep": [1, float("inf")]},
                "blob": object(),
            },
        )
    )
    bus.emit(Event("resource.setup", at, "r1", data={"resource": "db", "ok": False, "error": "refused"}))
    bus.emit(Event("sensor.poll", at))
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["type"] == "checkpoint.requested" and first["level"] == "info"
    assert first["partition"] == "2025-01-15" and first["at"] == "2025-01-15T08:30:00+00:00"
    assert first["when"] == "2025-01-15T08:30:00+00:00" and first["path"] == "/tmp/x"
    assert first["ratio"] == "nan" and first["nested"] == {"deep": [1, "inf"]}
    assert first["colour"] == "red" and first["tags"] == ["a", "b"]
    assert first["data_type"] == "mine"  # never overwrites the event's own type
    assert first["blob"].startswith("<object object")
    assert second["level"] == "warning" and second["error_message"] == "refused"
    assert second["resource"] == "db" and second["ok"] is False
    assert third == {
        "at": "2025-01-15T08:30:00+00:00",
        "level": "debug",
        "type": "sensor.poll",
        "run_id": None,
        "asset": None,
        "partition": None,
    }
    with pytest.raises(ValueError, match="not both"):
        JsonLogs(io.StringIO(), logger="x")
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        JsonLogs(level="loud")


def test_json_lines_built_directly_are_what_the_general_encoder_writes() -> None:
    at = datetime(2025, 1, 15, 8, 30, 0, 123456, tzinfo=UTC)
    odd = 'é " \\ \n \u2028 \U0001f600'
    events = [
        Event(
            "step.succeeded",
            at,
            "r1",
            "a",
            None,
            {"duration_ms": 0.25, "io_manager": "m", "size_bytes": None},
        ),
        Event("step.started", at, "r1", odd, odd, {"attempt": 2, "big": 10**30, "tiny": -1.5e-300}),
        Event("x", at, None, None, None, {"yes": True, "no": False, odd: odd}),
        Event("x", at.replace(tzinfo=None), "r", "a", None, {}),  # naive: no offset written
        Event("x", at, "r", "a", None, {"nan": float("nan"), "inf": float("-inf")}),
        Event("x", at, "r", "a", None, {"error": None, "ok": True}),
        Event("x", at, "r", "a", None, {"run_id": "shadow", "error": {"type": "t", "message": "m"}}),
        Event("x", at, "r", "a", None, {"colour": Colour.RED, "deep": {"k": [1]}, "path": Path("/p")}),
        Event("x", at, "r", 7, None, {1: "a key that is no str"}),  # type: ignore[arg-type]
        Event("run.finished", at, "r", None, None, {"status": "failed"}),
    ]
    for event in events:
        for level in (None, logging.DEBUG, logging.INFO, 25, logging.ERROR):
            direct = _json_logs.event_line(event, level)
            assert direct == _json_logs.to_json(_json_logs.event_record(event, level))
            json.loads(direct)


# ---------------------------------------------------------------------- OpenTelemetry
def test_otel_spans_of_a_real_run(app: fs.FlowStone) -> None:
    events = record(app.events)
    provider, exporter = tracing()
    OpenTelemetrySpans(provider, pipeline="telemetry", io_events=True).attach(app.events)
    run = app.materialize("*")

    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {
        "flowstone.run",
        "flowstone.step raw",
        "flowstone.step clean",
        "flowstone.step broken",
        "flowstone.step report",
    }
    root = spans["flowstone.run"]
    assert root.parent is None
    assert root.attributes == {
        "flowstone.run_id": run.run_id,
        "flowstone.pipeline": "telemetry",
        "flowstone.step_count": 4,
        "flowstone.status": "failed",
        "flowstone.failed_steps": 1,
        "flowstone.skipped_steps": 1,
    }
    assert root.status.status_code is StatusCode.ERROR
    assert root.start_time == ns(one(events, "run.started").at)
    assert root.end_time == ns(one(events, "run.finished").at)
    for asset in ("raw", "clean", "broken", "report"):
        span = spans[f"flowstone.step {asset}"]
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert span.attributes is not None
        assert span.attributes["flowstone.asset"] == asset
        assert "flowstone.partition" not in span.attributes  # unpartitioned: no None attribute
        assert root.start_time is not None and span.start_time is not None and span.end_time is not None
        assert root.start_time <= span.start_time <= span.end_time

    raw = spans["flowstone.step raw"]
    assert raw.attributes is not None and raw.attributes["flowstone.status"] == "succeeded"
    assert raw.attributes["flowstone.duration_ms"] == one(events, "step.succeeded", "raw").data["duration_ms"]
    assert raw.start_time == ns(one(events, "step.started", "raw").at)
    assert raw.end_time == ns(one(events, "step.succeeded", "raw").at)
    assert raw.status.status_code is StatusCode.UNSET
    [stored] = raw.events
    assert stored.name == "io.stored" and stored.timestamp == ns(one(events, "io.stored", "raw").at)
    assert stored.attributes is not None and stored.attributes["flowstone.io_manager"] == "filesystem"
    materialization = run.steps["raw"].materialization
    assert materialization is not None
    assert stored.attributes["flowstone.size_bytes"] == materialization.value_size

    clean = spans["flowstone.step clean"]
    assert [e.name for e in clean.events] == ["io.loaded", "io.stored"]
    loaded = clean.events[0].attributes
    assert loaded is not None and loaded["flowstone.asset"] == "raw"  # the upstream read
    assert "flowstone.consumer" not in loaded  # the span's own asset: not repeated
    assert (
        stored.attributes.keys() >= {"flowstone.duration_ms"} and "flowstone.asset" not in stored.attributes
    )

    broken = spans["flowstone.step broken"]
    assert broken.status.status_code is StatusCode.ERROR
    assert broken.status.description is not None and "RuntimeError: boom" in broken.status.description
    assert broken.attributes is not None
    assert broken.attributes["flowstone.status"] == "failed"
    assert broken.attributes["flowstone.error_type"] == "execution_error"
    assert broken.end_time == ns(one(events, "step.failed", "broken").at)
    exception = [e for e in broken.events if e.name == "exception"]
    assert len(exception) == 1 and exception[0].attributes is not None
    assert exception[0].attributes["exception.type"] == "execution_error"

    report = spans["flowstone.step report"]
    assert report.attributes is not None and report.attributes["flowstone.status"] == "skipped"
    assert report.attributes["flowstone.reason"] == "upstream 'broken' failed"
    assert report.start_time == report.end_time == ns(one(events, "step.skipped", "report").at)
    assert report.status.status_code is StatusCode.UNSET


def test_otel_io_events_from_worker_threads_land_on_their_own_step(make_app: AppFactory) -> None:
    pipeline = fs.Pipeline("parallel")
    keys = fs.StaticPartitions(["a", "b", "c", "d", "e", "f"])
    barrier = threading.Barrier(3, timeout=30)  # proves steps really overlap on threads

    @pipeline.asset(partitioned_by=keys)
    def up(context: fs.Context) -> str:
        return str(context.partition_key)

    @pipeline.asset(partitioned_by=keys)
    def down(context: fs.Context, up: str) -> str:
        if context.partition_key in ("a", "b", "c"):
            barrier.wait()
        return up * 2

    app = make_app(pipeline)
    provider, exporter = tracing()
    OpenTelemetrySpans(provider, io_events=True).attach(app.events)
    run = app.materialize(["down"], partitions=["a", "b", "c", "d", "e", "f"], parallel=4)
    assert run.success
    spans = [s for s in exporter.get_finished_spans() if s.name == "flowstone.step down"]
    assert len(spans) == 6
    for span in spans:
        assert span.attributes is not None
        key = span.attributes["flowstone.partition"]
        assert [e.name for e in span.events] == ["io.loaded", "io.stored"]
        loaded, stored = (e.attributes for e in span.events)
        assert loaded is not None and stored is not None
        assert loaded["flowstone.partition"] == key and loaded["flowstone.asset"] == "up"
        assert "flowstone.partition" not in stored and stored["flowstone.io_manager"] == "filesystem"
    run_spans = [s for s in exporter.get_finished_spans() if s.name == "flowstone.run"]
    assert len(run_spans) == 1 and not run_spans[0].events  # nothing fell back to the run span


def test_otel_io_events_can_be_left_out(app: fs.FlowStone) -> None:
    provider, exporter = tracing()
    OpenTelemetrySpans(provider, io_events=False).attach(app.events)
    app.materialize("*")
    spans = by_name(exporter.get_finished_spans())
    assert len(spans) == 5
    assert not spans["flowstone.step raw"].events and not spans["flowstone.step clean"].events
    assert [e.name for e in spans["flowstone.step broken"].events] == ["exception"]


def test_otel_run_span_nests_under_the_current_span(app: fs.FlowStone) -> None:
    provider, exporter = tracing()
    OpenTelemetrySpans(provider, io_events=True).attach(app.events)
    with provider.get_tracer("test").start_as_current_span("nightly job") as job:
        app.materialize(["clean"])
    spans = by_name(exporter.get_finished_spans())
    run_span = spans["flowstone.run"]
    assert run_span.parent is not None and run_span.parent.span_id == job.get_span_context().span_id
    assert run_span.status.status_code is StatusCode.UNSET
    assert run_span.attributes is not None and run_span.attributes["flowstone.status"] == "succeeded"
    assert run_span.attributes["flowstone.pipeline"] == "telemetry"  # from the run.started event


def test_otel_without_an_sdk_keeps_no_state(app: fs.FlowStone) -> None:
    from opentelemetry import trace

    spans = OpenTelemetrySpans(trace.NoOpTracerProvider())
    spans.attach(app.events)
    seen: list[str] = []
    app.events.subscribe(lambda e: seen.append(e.type))
    assert app.materialize(["clean"]).success
    assert "step.succeeded" in seen
    assert spans._runs == {}  # nothing recorded, nothing held


def test_otel_retries_are_events_on_one_step_span(make_app: AppFactory) -> None:
    from flowstone.testing import FakeClock

    pipeline = fs.Pipeline("retries")
    calls: list[int] = []

    @pipeline.asset()
    def flaky(context: fs.Context) -> int:
        calls.append(1)
        if len(calls) < 3:
            raise fs.Retry("not yet")
        return 1

    app = make_app(pipeline, clock=FakeClock())
    provider, exporter = tracing()
    OpenTelemetrySpans(provider, io_events=True).attach(app.events)
    assert app.materialize("flaky").success
    spans = [s for s in exporter.get_finished_spans() if s.name == "flowstone.step flaky"]
    assert len(spans) == 1
    [span] = spans
    assert [e.name for e in span.events] == [
        "step.retrying",
        "step.started",
        "step.retrying",
        "step.started",
        "io.stored",
    ]
    retry = span.events[0].attributes
    assert retry is not None
    assert retry["flowstone.attempt"] == 1 and retry["flowstone.error_type"] == "retry_requested"
    assert span.events[3].attributes is not None and span.events[3].attributes["flowstone.attempt"] == 3
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None and span.attributes["flowstone.status"] == "succeeded"


def test_otel_ignores_events_outside_known_runs_and_keeps_others_on_the_run() -> None:
    bus = EventBus()
    provider, exporter = tracing()
    OpenTelemetrySpans(provider, io_events=True).attach(bus)
    at = datetime(2025, 1, 15, tzinfo=UTC)
    bus.emit(Event("step.succeeded", at, "nope", "x"))  # no such run: nothing to end
    bus.emit(Event("schedule.tick", at, data={"schedule": "daily"}))
    bus.emit(Event("run.started", at, "r1", data={"steps": 1}))
    bus.emit(Event("resource.setup", at, "r1", data={"resource": "db", "ok": True, "error": None}))
    bus.emit(Event("step.started", at, "r1", "a"))
    bus.emit(Event("checkpoint.requested", at, "r1", "a", data={"checkpoint": "review", "meta": {"k": 1}}))
    bus.emit(Event("step.started", at + timedelta(seconds=1), "r1", "b"))  # nothing added to it
    end = at + timedelta(seconds=2)
    bus.emit(Event("run.finished", end, "r1", data={"status": "abandoned"}))
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"flowstone.run", "flowstone.step a", "flowstone.step b"}
    left_open = spans["flowstone.step b"]  # made at the run's end, timed by its own events
    assert left_open.start_time == ns(at + timedelta(seconds=1)) and left_open.end_time == ns(end)
    assert left_open.attributes == {"flowstone.asset": "b", "flowstone.status": "unknown"}
    run_span, step = spans["flowstone.run"], spans["flowstone.step a"]
    [setup] = run_span.events
    assert setup.name == "resource.setup" and setup.attributes == {
        "flowstone.resource": "db",
        "flowstone.ok": True,
    }
    [checkpoint] = step.events
    assert checkpoint.attributes is not None and checkpoint.attributes["flowstone.meta"] == '{"k":1}'
    assert step.attributes is not None and step.attributes["flowstone.status"] == "unknown"  # never ended
    assert run_span.status.status_code is StatusCode.ERROR


# ---------------------------------------------------------------------- Prometheus (in process)
def test_prometheus_counts_a_real_run(app: fs.FlowStone) -> None:
    events = record(app.events)
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, io=True)
    assert metrics.registry is registry
    metrics.attach(app.events)
    run = app.materialize("*")
    value = registry.get_sample_value

    assert value("flowstone_materializations_total", {"asset": "raw", "status": "succeeded"}) == 1
    assert value("flowstone_materializations_total", {"asset": "clean", "status": "succeeded"}) == 1
    assert value("flowstone_materializations_total", {"asset": "broken", "status": "failed"}) == 1
    assert value("flowstone_materializations_total", {"asset": "report", "status": "failed"}) is None
    assert value("flowstone_errors_total", {"type": "execution_error"}) == 1  # not twice ("error" too)
    assert value("flowstone_runs_total", {"status": "failed"}) == 1
    assert value("flowstone_step_duration_seconds_count", {"asset": "raw"}) == 1
    assert value("flowstone_step_duration_seconds_sum", {"asset": "raw"}) == pytest.approx(
        one(events, "step.succeeded", "raw").data["duration_ms"] / 1000
    )
    assert value("flowstone_step_duration_seconds_count", {"asset": "broken"}) is None
    materialization = run.steps["raw"].materialization
    assert materialization is not None and materialization.value_size
    size = materialization.value_size
    raw_io = {"asset": "raw", "io_manager": "filesystem"}
    assert value("flowstone_io_bytes_total", {**raw_io, "direction": "stored"}) == size
    assert value("flowstone_io_bytes_total", {**raw_io, "direction": "loaded"}) == 2 * size  # clean, broken
    stores = value("flowstone_io_duration_seconds_count", {"direction": "stored", "io_manager": "filesystem"})
    assert stores == 2  # raw and clean

    at = datetime(2025, 1, 15, tzinfo=UTC)
    error = fs.StepTimeout("too slow").to_dict()
    app.events.emit(
        Event("step.retrying", at, "r", "raw", None, {"attempt": 1, "delay_s": 2, "error": error})
    )
    app.events.emit(Event("sensor.triggered", at, data={"sensor": "s"}))
    assert value("flowstone_step_retries_total", {"asset": "raw"}) == 1
    assert value("flowstone_errors_total", {"type": "timeout"}) == 1
    assert value("flowstone_materializations_total", {"asset": "raw", "status": "failed"}) == 1


def test_default_metrics_count_stored_bytes_without_io_events(app: fs.FlowStone) -> None:
    metrics = PrometheusMetrics()
    metrics.attach(app.events)
    assert not app.events.wants("io.stored") and not app.events.wants("io.loaded")
    run = app.materialize("raw")
    size = run.steps["raw"].materialization.value_size  # type: ignore[union-attr]
    assert size
    stored = metrics.registry.get_sample_value(
        "flowstone_io_bytes_total", {"asset": "raw", "direction": "stored", "io_manager": "filesystem"}
    )
    assert stored == size


def test_prometheus_histograms_read_as_prometheus_clients_own_would() -> None:
    from prometheus_client import Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from flowstone.telemetry._prometheus import STEP_DURATION_BUCKETS

    metrics = PrometheusMetrics()
    reference = CollectorRegistry()
    oracle = Histogram("ref", "reference", ["asset"], buckets=STEP_DURATION_BUCKETS, registry=reference)
    at = datetime(2025, 1, 15, tzinfo=UTC)
    # On a bound (le is inclusive), between bounds, past the last one, zero; NaN is not observed.
    for ms in (5, 7.5, 250, 4_000_000, 0, 5, float("nan")):
        metrics(Event("step.succeeded", at, "r", "a", data={"duration_ms": ms, "size_bytes": None}))
        if ms == ms:
            oracle.labels("a").observe(ms / 1000)

    def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (sample.name.removeprefix(name), sample.labels.get("le", "")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith(name) and not sample.name.endswith("_created")
        }

    ours = samples(metrics.registry, "flowstone_step_duration_seconds")
    assert ours == samples(reference, "ref")
    assert ours["_count", ""] == 6 and ours["_bucket", "0.005"] == 3


def test_prometheus_counts_are_exact_under_concurrent_events() -> None:
    metrics = PrometheusMetrics(io=True)
    at = datetime(2025, 1, 15, tzinfo=UTC)
    start = threading.Barrier(4, timeout=30)

    def work(asset: str) -> None:
        start.wait()
        for _ in range(2000):
            metrics(Event("step.succeeded", at, "r", asset, data={"duration_ms": 1.0}))
            metrics(Event("io.stored", at, "r", "shared", data={"io_manager": "m", "size_bytes": 3}))

    threads = [threading.Thread(target=work, args=(asset,)) for asset in ("a", "b", "a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    value = metrics.registry.get_sample_value
    assert value("flowstone_materializations_total", {"asset": "a", "status": "succeeded"}) == 4000
    assert value("flowstone_step_duration_seconds_count", {"asset": "b"}) == 4000
    assert value("flowstone_step_duration_seconds_sum", {"asset": "b"}) == pytest.approx(4.0)
    io = {"asset": "shared", "direction": "stored", "io_manager": "m"}
    assert value("flowstone_io_bytes_total", io) == 8000 * 3
    assert value("flowstone_io_duration_seconds_count", {"direction": "stored", "io_manager": "m"}) is None


def test_adapters_use_their_own_registries() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()  # no "duplicated timeseries" error
    assert first.registry is not second.registry
    first(Event("run.finished", datetime.now(UTC), "r", data={"status": "succeeded"}))
    assert first.registry.get_sample_value("flowstone_runs_total", {"status": "succeeded"}) == 1
    assert second.registry.get_sample_value("flowstone_runs_total", {"status": "succeeded"}) is None


# ---------------------------------------------------------------------- attach, detach, enable
def test_detach_really_stops_every_adapter(app: fs.FlowStone) -> None:
    stream = io.StringIO()
    provider, exporter = tracing()
    metrics = PrometheusMetrics()
    detach = enable(app, json_logs=JsonLogs(stream), otel=OpenTelemetrySpans(provider), prometheus=metrics)
    assert app.events.has_subscribers
    app.materialize("*")
    lines, spans = len(stream.getvalue().splitlines()), len(exporter.get_finished_spans())
    runs = metrics.registry.get_sample_value("flowstone_runs_total", {"status": "failed"})
    assert lines > 0 and spans == 5 and runs == 1

    detach()
    detach()  # twice is harmless
    assert not app.events.has_subscribers
    app.materialize("*")
    assert len(stream.getvalue().splitlines()) == lines
    assert len(exporter.get_finished_spans()) == spans
    assert metrics.registry.get_sample_value("flowstone_runs_total", {"status": "failed"}) == runs


def test_enable_with_defaults_and_with_nothing(app: fs.FlowStone) -> None:
    detach = enable(app, json_logs=True, prometheus=True)
    subscribers = [subscriber for subscriber, _, batched in app.events._entries if batched]
    assert len(subscribers) == 2
    assert isinstance(subscribers[0], JsonLogs)
    assert isinstance(subscribers[1], PrometheusMetrics)
    detach()
    assert not app.events.has_subscribers
    enable(app)()  # nothing chosen: nothing attached, nothing to undo
    assert not app.events.has_subscribers


def test_adapters_work_as_plain_subscribers(app: fs.FlowStone) -> None:
    metrics = PrometheusMetrics()
    unsubscribe = app.events.subscribe(metrics)
    app.materialize(["clean"])
    unsubscribe()
    app.materialize(["clean"], force=True)
    assert metrics.registry.get_sample_value("flowstone_runs_total", {"status": "succeeded"}) == 1


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("disk full")


def test_a_failing_adapter_never_breaks_the_run(app: fs.FlowStone, caplog: pytest.LogCaptureFixture) -> None:
    JsonLogs(BrokenStream()).attach(app.events)
    metrics = PrometheusMetrics()
    metrics.attach(app.events)  # subscribed after the broken one: still gets every event
    with caplog.at_level(logging.ERROR, logger="flowstone.events"):
        run = app.materialize(["clean"])
    assert run.success and run.steps["clean"].status is fs.StepStatus.SUCCEEDED
    stored = app.store.get_run(tenant=app.tenant, run_id=run.run_id)
    assert stored is not None and stored.status is fs.RunStatus.SUCCEEDED
    assert metrics.registry.get_sample_value("flowstone_runs_total", {"status": "succeeded"}) == 1
    assert any("disk full" in (r.exc_text or "") for r in caplog.records)


# ---------------------------------------------------------------------- optional extras
def test_missing_opentelemetry_names_the_extra(app: fs.FlowStone, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(fs.ConfigurationError, match=r"pip install 'flowstone\[otel\]'"):
        OpenTelemetrySpans()
    with pytest.raises(fs.ConfigurationError, match=r"flowstone\[otel\]"):
        enable(app, json_logs=True, prometheus=True, otel=True)
    assert not app.events.has_subscribers  # all or nothing


def test_missing_prometheus_client_names_the_extra(
    app: fs.FlowStone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    for make in (
        PrometheusMetrics,
        lambda: StoreMetrics(app.store),
        lambda: serve_metrics(CollectorRegistry()),
    ):
        with pytest.raises(fs.ConfigurationError, match=r"pip install 'flowstone\[prometheus\]'") as caught:
            make()
        assert isinstance(caught.value.original, ImportError)


def test_importing_flowstone_telemetry_imports_neither_extra() -> None:
    code = (
        "import sys, flowstone, flowstone.telemetry, flowstone.telemetry._cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('opentelemetry', 'prometheus_client')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_adapters_take_step_events_in_batches_unless_told_not_to() -> None:
    bus = EventBus(batch_size=1000, batch_delay=3600)  # delivered by flush or another event only
    batched, at_once = io.StringIO(), io.StringIO()
    JsonLogs(batched).attach(bus)
    JsonLogs(at_once).attach(bus, batched=False)
    at = datetime(2025, 1, 15, tzinfo=UTC)
    bus.emit(Event("step.succeeded", at, "r1", "a", data={"duration_ms": 1.5}))
    assert batched.getvalue() == "" and json.loads(at_once.getvalue())["asset"] == "a"
    bus.emit(Event("run.finished", at, "r1", data={"status": "succeeded"}))
    assert batched.getvalue() == at_once.getvalue()
    assert [json.loads(line)["type"] for line in batched.getvalue().splitlines()] == [
        "step.succeeded",
        "run.finished",
    ]


def test_json_logs_at_info_write_one_line_per_finished_step(app: fs.FlowStone) -> None:
    stream = io.StringIO()
    JsonLogs(stream).attach(app.events)
    assert not app.events.wants("step.started") and not app.events.wants("io.loaded")
    assert app.materialize(["clean"]).success
    types = [json.loads(line)["type"] for line in stream.getvalue().splitlines()]
    assert types == ["run.started", "step.succeeded", "step.succeeded", "run.finished"]
