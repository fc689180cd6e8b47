"""``flowstone metrics``: the store-backed Prometheus metrics over HTTP, or printed once.

    flowstone metrics                      # serve http://127.0.0.1:9464/metrics until Ctrl-C
    flowstone metrics --host 0.0.0.0 --port 9100
    flowstone metrics --once               # print the exposition text and exit (cron, tests)

Registered on the ``flowstone`` group by ``flowstone.cli``; the click object only needs an
``app()`` method (and ``verbose``), like the CLI's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import click

if TYPE_CHECKING:
    from flowstone._app import FlowStone


class _AppState(Protocol):
    verbose: bool

    def app(self) -> FlowStone: ...


@click.command("metrics")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=9464, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free port)."
)
@click.option("--once", is_flag=True, help="Print the metrics to stdout once and exit.")
@click.pass_obj
def metrics(state: _AppState, host: str, port: int, once: bool) -> None:
    """Serve metrics computed from the metadata store at /metrics, for Prometheus to scrape.

    Counts come from what every process recorded in the store (materializations, durations,
    bytes stored, errors, runs, pending approvals), for the configured tenant.
    """
    from flowstone.telemetry._prometheus import StoreMetrics, serve_metrics

    try:
        app = state.app()
        collector = StoreMetrics(app.store, tenant=app.tenant)
        if once:
            from prometheus_client import generate_latest

            click.echo(generate_latest(collector.registry).decode(), nl=False)
            return
        server = serve_metrics(collector.registry, host=host, port=port)
    except Exception as exc:
        _fail(exc, state)
    click.echo(f"serving FlowStone metrics on {server.url} (Ctrl-C to stop)", err=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.close()


def _fail(error: Exception, state: Any) -> NoReturn:
    """Report like every other command does (user message, ``-v`` for details), then exit."""
    from flowstone.cli import _fail as fail

    fail(error, bool(getattr(state, "verbose", False)))
