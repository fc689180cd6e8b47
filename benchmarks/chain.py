"""N trivial assets in a chain, materialized on SQLite with the memory I/O manager.

Every step's materialization, lineage and status are committed to the store as in a real run.
Prints one JSON line: seconds of the first materialize (cold: it also compiles the store's SQL)
and the median of three more (warm), per-asset ms, peak RSS.

``--telemetry api`` attaches every telemetry adapter as a production process would (JSON logs to
a stream that discards, Prometheus counts, OpenTelemetry spans through the API alone);
``--telemetry sdk`` has the OpenTelemetry SDK record every span as well (to an exporter that
discards). ``benchmarks/telemetry.py`` compares these with telemetry off, alternating runs.

    python benchmarks/chain.py 1000 [--telemetry off|api|sdk]
"""

from __future__ import annotations

import io
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from _common import arg_n, report, temp_store, timed

import flowstone as fs


def build(n: int) -> fs.Pipeline:
    pipeline = fs.Pipeline("chain", default_io_manager="memory")

    def first(context: fs.Context) -> int:
        return 0

    pipeline.add(fs.AssetDefinition(name="a0", fn=first, deps=()))
    for i in range(1, n):

        def step(context: fs.Context, **upstream: Any) -> int:
            return next(iter(upstream.values())) + 1

        pipeline.add(fs.AssetDefinition(name=f"a{i}", fn=step, deps=(f"a{i - 1}",), takes_var_kwargs=True))
    return pipeline


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


def attach_telemetry(app: fs.FlowStone, mode: str) -> None:
    """Every adapter on ``app``'s events (``mode`` api or sdk, see the module docstring)."""
    if mode == "off":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from flowstone.telemetry import JsonLogs, OpenTelemetrySpans, PrometheusMetrics, enable

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider: Any = trace.NoOpTracerProvider()
    if mode == "sdk":
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Discard()))
    logs, spans = JsonLogs(_Discard()), OpenTelemetrySpans(provider)
    enable(app, json_logs=logs, otel=spans, prometheus=PrometheusMetrics())


def main() -> None:
    n = arg_n(1000)
    mode = sys.argv[sys.argv.index("--telemetry") + 1] if "--telemetry" in sys.argv else "off"
    if mode not in ("off", "api", "sdk"):
        raise SystemExit(f"--telemetry must be off, api or sdk, not {mode!r}")
    url, directory = temp_store()
    t0 = time.perf_counter()
    pipeline = build(n)
    app = fs.FlowStone(pipeline, store=url)
    attach_telemetry(app, mode)
    setup_s = time.perf_counter() - t0
    runs: list[fs.RunResult] = []

    def materialize() -> None:
        # force: every run re-materializes all n assets, recording each one
        runs.append(app.materialize([f"+a{n - 1}"], values=True, force=True))

    execute_s, warm_execute_s = timed(materialize)
    assert all(r.success and len(r.steps) == n for r in runs)
    assert runs[0].steps[f"a{n - 1}"].value == n - 1
    app.close()
    shutil.rmtree(directory)
    report(
        benchmark="chain",
        assets=n,
        telemetry=mode,
        setup_s=round(setup_s, 4),
        execute_s=round(execute_s, 4),
        warm_execute_s=round(warm_execute_s, 4),
        per_asset_ms=round(execute_s / n * 1000, 4),
        warm_per_asset_ms=round(warm_execute_s / n * 1000, 4),
    )


if __name__ == "__main__":
    main()
