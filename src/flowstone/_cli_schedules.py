"""CLI of schedules, sensors and the daemon.

    $ flowstone schedules list
    $ flowstone schedules preview nightly --next 5
    $ flowstone schedules off nightly --reason "warehouse migration"
    $ flowstone schedules history nightly
    $ flowstone sensors list | on NAME | off NAME | history NAME
    $ flowstone daemon [--interval 5] [--executor queue]
    $ flowstone dev                      # daemon + local execution, for development

Registered on the main group by ``flowstone.cli``.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flowstone.cli import _State


def _when(value: datetime | None) -> str:
    from flowstone.cli import _when as when

    return when(value)


def _table(kind: str, state: _State) -> None:
    from rich.markup import escape
    from rich.table import Table

    from flowstone.cli import _console, _errors
    from flowstone.schedules._state import AutomationStore

    with _errors(state):
        app = state.app()
        store = AutomationStore(app.store, app.tenant)
        definitions = app.pipeline.schedules if kind == "schedule" else app.pipeline.sensors
        table = Table(title=f"{kind}s")
        columns = ("name", "on", "when", "target", "last evaluated", "last tick", "error")
        for col in columns:
            table.add_column(col)
        now = app.clock.now()
        for name, definition in sorted(definitions.items()):
            st = store.state(kind, name)
            last = store.ticks(kind, name, limit=1)
            if kind == "schedule":
                upcoming = _when(definition.schedule.next_after(now))
                when = f"{definition.cron} ({definition.timezone}); next {upcoming}"
            else:
                when = f"every {definition.interval:g}s"
            table.add_row(
                name,
                "off" if st.enabled is False else "on",
                escape(when),
                escape(" ".join(definition.target)),
                _when(st.last_evaluated_at),
                escape(f"{last[0].status} {_when(last[0].tick_at)}" if last else "-"),
                escape(st.last_error or ""),
            )
        _console().print(table)


def _toggle(kind: str, state: _State, name: str, enabled: bool, reason: str | None) -> None:
    from flowstone._errors import ValidationError
    from flowstone.cli import _console, _errors
    from flowstone.schedules._state import AutomationStore

    with _errors(state):
        app = state.app()
        definitions = app.pipeline.schedules if kind == "schedule" else app.pipeline.sensors
        if name not in definitions:
            raise ValidationError(
                f"no {kind} '{name}' in pipeline '{app.pipeline.name}' (known: {sorted(definitions)})",
                context={kind: name},
            )
        AutomationStore(app.store, app.tenant).set_enabled(
            kind, name, enabled, actor=f"user:{getpass.getuser()}", reason=reason
        )
        _console().print(f"{kind} '{name}' is {'on' if enabled else 'off'}", markup=False)


def _history(kind: str, state: _State, name: str, limit: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from flowstone.cli import _console, _errors
    from flowstone.schedules._state import AutomationStore

    with _errors(state):
        app = state.app()
        table = Table(title=f"ticks of {kind} {name}")
        for col in ("tick", "status", "partitions", "runs", "reason"):
            table.add_column(col)
        for tick in AutomationStore(app.store, app.tenant).ticks(kind, name, limit=limit):
            table.add_row(
                _when(tick.tick_at),
                tick.status,
                escape(", ".join(str(p) for p in tick.partitions) or "-"),
                " ".join(r[:12] for r in tick.run_ids) or "-",
                escape(tick.reason or ""),
            )
        _console().print(table)


@click.group("schedules")
def schedules() -> None:
    """Cron schedules of the pipeline (fired by `flowstone daemon`)."""


@schedules.command("list")
@click.pass_obj
def schedules_list(state: _State) -> None:
    """Every schedule: on/off, cron, next tick, last tick."""
    _table("schedule", state)


@schedules.command("on")
@click.argument("name")
@click.option("--reason", help="Why (kept in the audit log).")
@click.pass_obj
def schedules_on(state: _State, name: str, reason: str | None) -> None:
    """Turn schedule NAME on (ticks from now on fire; the time it was off is not caught up)."""
    _toggle("schedule", state, name, True, reason)


@schedules.command("off")
@click.argument("name")
@click.option("--reason", help="Why (kept in the audit log).")
@click.pass_obj
def schedules_off(state: _State, name: str, reason: str | None) -> None:
    """Turn schedule NAME off."""
    _toggle("schedule", state, name, False, reason)


@schedules.command("preview")
@click.argument("name")
@click.option("--next", "count", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.pass_obj
def schedules_preview(state: _State, name: str, count: int) -> None:
    """The next ticks of NAME and the partitions they would run."""
    from flowstone._errors import ValidationError
    from flowstone.cli import _console, _errors
    from flowstone.schedules._daemon import Daemon

    with _errors(state):
        app = state.app()
        definition = app.pipeline.schedules.get(name)
        if definition is None:
            raise ValidationError(f"no schedule '{name}' (known: {sorted(app.pipeline.schedules)})")
        daemon = Daemon(app)
        out = _console()
        for tick in definition.schedule.preview(app.clock.now(), count):
            local = tick.astimezone(definition.schedule.tz)
            partitions = daemon._tick_partitions(definition, tick)
            shown = ", ".join(partitions) or "(no partition: unpartitioned, or decided when it fires)"
            out.print(f"{local.isoformat()}  ->  {shown}", markup=False)


@schedules.command("history")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.pass_obj
def schedules_history(state: _State, name: str, limit: int) -> None:
    """Ticks of NAME: when, what it launched, or why it was skipped."""
    _history("schedule", state, name, limit)


@click.group("sensors")
def sensors() -> None:
    """Sensors of the pipeline (polled by `flowstone daemon`)."""


@sensors.command("list")
@click.pass_obj
def sensors_list(state: _State) -> None:
    _table("sensor", state)


@sensors.command("on")
@click.argument("name")
@click.option("--reason")
@click.pass_obj
def sensors_on(state: _State, name: str, reason: str | None) -> None:
    _toggle("sensor", state, name, True, reason)


@sensors.command("off")
@click.argument("name")
@click.option("--reason")
@click.pass_obj
def sensors_off(state: _State, name: str, reason: str | None) -> None:
    _toggle("sensor", state, name, False, reason)


@sensors.command("history")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.pass_obj
def sensors_history(state: _State, name: str, limit: int) -> None:
    _history("sensor", state, name, limit)


def _run_daemon(state: _State, interval: float, executor: str | None, once: bool) -> None:
    import logging
    import signal

    from flowstone.cli import _console, _errors
    from flowstone.schedules._daemon import Daemon

    with _errors(state):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        app = state.app()
        daemon = Daemon(app, interval=interval, executor=executor)
        if once:
            report = daemon.tick()
            _console().print(json.dumps(_report(report)), markup=False)
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: daemon.stop())
        click.echo(
            f"daemon {daemon.name}: {len(app.pipeline.schedules)} schedule(s), "
            f"{len(app.pipeline.sensors)} sensor(s), every {interval:g}s, runs "
            f"{'on the queue' if executor == 'queue' else 'in this process'}",
            err=True,
        )
        daemon.run()


def _report(report: Any) -> dict[str, Any]:
    return {
        "launched": [list(x) for x in report.launched],
        "skipped": [list(x) for x in report.skipped],
        "errors": [list(x) for x in report.errors],
        "timeouts": [list(x) for x in report.timeouts],
    }


@click.command("daemon")
@click.option(
    "--interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.05, 3600),
    help="Seconds between passes.",
)
@click.option(
    "--executor",
    type=click.Choice(["serial", "threads", "processes", "queue"]),
    help="How launched runs execute: in this process (default serial) or on the queue for workers.",
)
@click.option("--once", is_flag=True, help="One pass, print what it did as JSON, exit.")
@click.pass_obj
def daemon(state: _State, interval: float, executor: str | None, once: bool) -> None:
    """Fire schedules, poll sensors and enforce checkpoint timeouts until interrupted. Several
    daemons on one PostgreSQL store never fire a tick twice."""
    _run_daemon(state, interval, executor, once)


@click.command("dev")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.05, 3600))
@click.pass_obj
def dev(state: _State, interval: float) -> None:
    """Local development: the daemon with runs executed in this process (threads)."""
    _run_daemon(state, interval, "threads", False)
