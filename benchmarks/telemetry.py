"""Telemetry overhead: a chain of N trivial assets (memory I/O manager, SQLite) with the
adapters off, each one alone, and all on; then one store-backed scrape over M materializations.

Adapters as a production process would run them, minus the network: JSON logs at INFO to a
stream that discards, OpenTelemetry spans through the SDK with a span processor that exports to
nowhere, in-process Prometheus metrics. ``all_otel_api_only`` is the same with the OpenTelemetry
API alone (what ``flowstone[otel]`` installs; spans are recorded once an SDK is configured), so
the SDK's own cost per span shows apart from FlowStone's. ``otel_sdk_floor_pct`` is what the
SDK alone takes for the same spans (a run span and N step spans with the same attributes and
explicit times, started and ended in a tight loop, no FlowStone), against the run with
telemetry off: a lower bound of what recording every span costs, whoever makes them.
``flowstone_share_with_sdk_pct`` is ``overhead_pct`` less that floor: FlowStone's own part when
an SDK records every span.
Each configuration's run is bracketed by runs with telemetry off, and its figure is the median,
over the repeats, of its ratio to the mean of the two: the host's speed drifts by +-20 % within
a minute, far more than the effects measured, and only neighbouring runs share it. The
``_spread_pct`` figures are the 25th and 75th percentiles of the same ratios. Each repeat runs on
a fresh store (after one warm-up run), with the configurations in a rotated order: a run takes
longer as the store grows (on one store ``off`` went from 0.17 s to 0.33 s over 200 runs), so
the baseline is that of ``chain.py`` (a young store), as in the issue.
Prints one JSON line.

    python benchmarks/telemetry.py [N=1000] [M=1000000]
"""

from __future__ import annotations

import gc
import io
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from _common import arg_n, report, temp_store
from chain import build
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import generate_latest

import flowstone as fs
from flowstone.store import _tables as t
from flowstone.telemetry import JsonLogs, OpenTelemetrySpans, PrometheusMetrics, StoreMetrics, enable

REPEATS = 80
FRESH_EVERY = 10  # repeats on one store before a fresh one
# Measured in every repeat: all adapters on, with the OpenTelemetry API alone and with the SDK.
HEADLINE = ("all_otel_api_only", "all")


class NullStream(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


class DiscardSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def tracer_provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(DiscardSpans()))
    return provider


def configurations(provider: TracerProvider) -> dict[str, Callable[[fs.FlowStone], Callable[[], None]]]:
    """Ways to attach adapters; each adapter is made once, as a long-lived process keeps its own."""
    logs, spans, metrics = JsonLogs(NullStream()), OpenTelemetrySpans(provider), PrometheusMetrics()
    loud_spans = OpenTelemetrySpans(provider, io_events=True)
    # What `flowstone[otel]` installs: the API alone, spans not recorded until an SDK is set up.
    api_spans = OpenTelemetrySpans(trace.NoOpTracerProvider())
    return {
        "off": lambda app: lambda: None,
        "json_logs": lambda app: logs.attach(app.events),
        "otel": lambda app: spans.attach(app.events),
        "otel_io_events": lambda app: loud_spans.attach(app.events),
        "otel_api_only": lambda app: api_spans.attach(app.events),
        "prometheus": lambda app: metrics.attach(app.events),
        "json_logs_and_prometheus": lambda app: enable(app, json_logs=logs, prometheus=metrics),
        "all_otel_api_only": lambda app: enable(app, json_logs=logs, otel=api_spans, prometheus=metrics),
        "all": lambda app: enable(app, json_logs=logs, otel=spans, prometheus=metrics),
        # The same, each event delivered as it is emitted: what batching step events saves.
        "all_unbatched": lambda app: detach_all(
            [adapter.attach(app.events, batched=False) for adapter in (logs, spans, metrics)]
        ),
    }


def detach_all(detachers: list[Callable[[], None]]) -> Callable[[], None]:
    def detach() -> None:
        for undo in reversed(detachers):
            undo()

    return detach


def sdk_spans(provider: TracerProvider, n: int) -> float:
    """Seconds the SDK takes to record a run's spans by itself: one run span, ``n`` step spans."""
    tracer = trace.get_tracer("floor", tracer_provider=provider)
    start = time.time_ns()
    t0 = time.perf_counter()
    run = tracer.start_span("flowstone.run", attributes={"flowstone.run_id": "r"}, start_time=start)
    context = trace.set_span_in_context(run)
    for i in range(n):
        tracer.start_span(
            f"flowstone.step a{i}",
            context=context,
            attributes={
                "flowstone.asset": f"a{i}",
                "flowstone.status": "succeeded",
                "flowstone.duration_ms": 0.1,
            },
            start_time=start + i,
        ).end(end_time=start + i + 1)
    run.end(end_time=start + n)
    return time.perf_counter() - t0


def overhead(n: int) -> dict[str, Any]:
    pipeline = build(n)
    provider = tracer_provider()
    configs = configurations(provider)
    names = list(configs)
    times: dict[str, list[float]] = {name: [] for name in [*names, "sdk_floor"]}

    def materialize(app: fs.FlowStone) -> None:
        run = app.materialize([f"+a{n - 1}"], force=True)
        assert run.success and len(run.steps) == n

    def fresh() -> tuple[fs.FlowStone, Callable[[], None]]:
        url, directory = temp_store()
        app = fs.FlowStone(pipeline, store=url)
        materialize(app)  # warm-up: the store's compiled SQL, its first writes

        def close() -> None:
            app.close()
            shutil.rmtree(directory)

        return app, close

    app, close = fresh()
    for attach in configs.values():  # warm-up: first imports, first spans, metric label sets
        detach = attach(app)
        materialize(app)
        detach()
    close()
    # Each configuration's run is bracketed by two runs with telemetry off on the same store, a
    # moment before and after: its ratio to their mean is free of the host's drift (on this
    # shared host one configuration's wall time spans +-20 % across a minute) and of the store
    # growing by a run's rows each time. Run to run the ratios still scatter by +-10 %: the
    # headline configurations get REPEATS of them (the median's standard error ~1.5 %), the
    # others a quarter as many.
    ratios: dict[str, list[float]] = {name: [] for name in [*names, "sdk_floor"] if name != "off"}
    others = [name for name in names if name not in ("off", *HEADLINE)]
    app, close = fresh()
    for repeat in range(REPEATS):
        if repeat and repeat % FRESH_EVERY == 0:  # a young store, as chain.py's
            close()
            app, close = fresh()
        measured = [*HEADLINE, *(others if repeat % 4 == 0 else ())]
        shift = repeat % len(measured)

        def timed_run(name: str, app: fs.FlowStone = app) -> float:
            detach = configs[name](app)
            gc.collect()  # garbage left by the previous configuration is not this one's cost
            t0 = time.perf_counter()
            materialize(app)
            took = time.perf_counter() - t0
            detach()
            times[name].append(took)
            return took

        before = timed_run("off")
        for name in measured[shift:] + measured[:shift]:
            took = timed_run(name)
            after = timed_run("off")
            ratios[name].append(took / ((before + after) / 2))
            before = after
        gc.collect()
        floor = sdk_spans(provider, n)
        times["sdk_floor"].append(floor)
        ratios["sdk_floor"].append(floor / before)
    close()

    def pct(name: str, quartile: int = 2) -> float:
        """The ratios' ``quartile`` (2: the median) as a percentage added (the floor's: taken)."""
        value = statistics.quantiles(ratios[name], n=4)[quartile - 1]
        return round((value - (0 if name == "sdk_floor" else 1)) * 100, 1)

    off = statistics.median(times["off"])
    overhead_pct, floor_pct = pct("all"), pct("sdk_floor")
    return {
        "off_s": round(off, 4),
        "on_s": round(statistics.median(times["all"]), 4),
        # Medians of the bracketed ratios; the _spread figures are their 25th and 75th percentiles.
        "overhead_pct": overhead_pct,
        "overhead_spread_pct": [pct("all", 1), pct("all", 3)],
        "overhead_otel_api_only_pct": pct("all_otel_api_only"),
        "overhead_otel_api_only_spread_pct": [pct("all_otel_api_only", 1), pct("all_otel_api_only", 3)],
        "otel_sdk_floor_pct": floor_pct,
        # What FlowStone adds beyond the SDK's own minimum for the same spans: the adapters, the
        # bus, and everything else between an event and the SDK call.
        "flowstone_share_with_sdk_pct": round(overhead_pct - floor_pct, 1),
        "per_adapter_overhead_pct": {name: pct(name) for name in configs if name not in ("off", "all")},
        "per_asset_overhead_us": round(off * overhead_pct / 100 / n * 1e6, 1),
    }


def scrape(rows: int, assets: int = 1000) -> dict[str, Any]:
    """Seconds one store-backed scrape takes over ``rows`` materializations of ``assets`` assets."""
    url, directory = temp_store()
    store = fs.FlowStone(fs.Pipeline("empty"), store=url).store
    now = datetime.now(UTC)
    run_id = uuid.uuid4().hex
    t0 = time.perf_counter()
    with store.engine.begin() as conn:
        for start in range(0, rows, 50_000):
            conn.execute(
                t.materializations.insert(),
                [
                    {
                        "id": uuid.uuid4().hex,
                        "tenant_id": "default",
                        "run_id": run_id,
                        "asset": f"a{i % assets}",
                        "partition_key": str(i),
                        "status": "failed" if i % 50 == 0 else "success",
                        "started_at": now,
                        "finished_at": now,
                        "duration_ms": float(i % 5000),
                        "value_size": 1000 + i % 100,
                        "io_manager": "filesystem",
                        "error_type": "execution_error" if i % 50 == 0 else None,
                        "attempt": 1,
                    }
                    for i in range(start, min(rows, start + 50_000))
                ],
            )
    load_s = time.perf_counter() - t0
    collector = StoreMetrics(store)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        text = generate_latest(collector.registry)
        times.append(time.perf_counter() - t0)
    store.close()
    shutil.rmtree(directory)
    return {
        "scrape_rows": rows,
        "scrape_assets": assets,
        "scrape_s": round(statistics.median(times), 3),
        "scrape_bytes": len(text),
        "scrape_load_s": round(load_s, 1),
    }


def main() -> None:
    n = arg_n(1000)
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    report(benchmark="telemetry", assets=n, repeats=REPEATS, **overhead(n), **scrape(rows))


if __name__ == "__main__":
    main()
