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


def _in_zone(value: datetime | None, tz: Any) -> str:
    """A time as wall-clock time of ``tz`` with its UTC offset (unambiguous across DST)."""
    if value is None:
        return "-"
    return value.astimezone(tz).isoformat(sep=" ", timespec="minutes")


def _definitions(app: Any, kind: str) -> dict[str, Any]:
    return dict(app.pipeline.schedules if kind == "schedule" else app.pipeline.sensors)


def _known(app: Any, kind: str, name: str) -> Any:
    from flowstone._errors import ValidationError

    definitions = _definitions(app, kind)
    if name not in definitions:
        import difflib

        guesses = difflib.get_close_matches(name, sorted(definitions), n=1)
        hint = f"; did you mean '{guesses[0]}'?" if guesses else ""
        raise ValidationError(
            f"no {kind} '{name}' in pipeline '{app.pipeline.name}'{hint} (known: {sorted(definitions)})",
            context={kind: name},
        )
    return definitions[name]


def _table(kind: str, state: _State) -> None:
    from rich.markup import escape
    from rich.table import Table

    from flowstone.cli import _console, _errors
    from flowstone.schedules._state import AutomationStore

    with _errors(state):
        app = state.app()
        store = AutomationStore(app.store, app.tenant)
        definitions = _definitions(app, kind)
        table = Table(title=f"{kind}s")
        columns = ("name", "on", "when", "target", "last evaluated", "last tick", "error")
        for col in columns:
            table.add_column(col)
        now = app.clock.now()
        for name, definition in sorted(definitions.items()):
            st = store.state(kind, name)
            last = store.ticks(kind, name, limit=1)
            if kind == "schedule":
                tz = definition.schedule.tz
                upcoming = _in_zone(definition.schedule.next_after(now), tz)
                zone = f"{definition.timezone}, catch_up={definition.catch_up}"
                when = f"{definition.cron} ({zone}); next {upcoming}"
                last_tick = f"{last[0].status} {_in_zone(last[0].tick_at, tz)}" if last else "-"
            else:
                when = f"every {definition.interval:g}s"
                last_tick = f"{last[0].status} {_when(last[0].tick_at)}" if last else "-"
            table.add_row(
                name,
                "off" if st.enabled is False else "on",
                escape(when),
                escape(" ".join(definition.target)),
                _when(st.last_evaluated_at),
                escape(last_tick),
                escape(st.last_error or ""),
            )
        _console().print(table)


def _toggle(kind: str, state: _State, name: str, enabled: bool, reason: str | None) -> None:
    from flowstone.cli import _console, _errors
    from flowstone.schedules._state import AutomationStore

    with _errors(state):
        app = state.app()
        _known(app, kind, name)
        previous = AutomationStore(app.store, app.tenant).set_enabled(
            kind, name, enabled, actor=f"user:{getpass.getuser()}", reason=reason, at=app.clock.now()
        )
        now = "on" if enabled else "off"
        was = "on" if previous is not False else "off"
        note = f" (it was {now} already)" if was == now else ""
        _console().print(f"{kind} '{name}' is {now}{note}", markup=False)


def _history(kind: str, state: _State, name: str, limit: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from flowstone.cli import _console, _errors
    from flowstone.schedules._state import AutomationStore

    with _errors(state):
        app = state.app()
        ticks = AutomationStore(app.store, app.tenant).ticks(kind, name, limit=limit)
        definition = _definitions(app, kind).get(name)
        if definition is None and not ticks:
            _known(app, kind, name)  # raises: not defined, and nothing recorded
        tz = definition.schedule.tz if kind == "schedule" and definition is not None else None
        table = Table(title=f"ticks of {kind} {name}")
        for col in ("tick", "status", "partitions", "runs", "reason"):
            table.add_column(col)
        for tick in ticks:
            table.add_row(
                _in_zone(tick.tick_at, tz) if tz is not None else _when(tick.tick_at),
                tick.status,
                escape(", ".join(str(p) for p in tick.partitions) or "-"),
                " ".join(r[:12] for r in tick.run_ids) or "-",
                escape(tick.reason or ""),
            )
        _console().print(table)
        if not ticks:
            _console().print(f"no ticks recorded for {kind} '{name}' yet", markup=False)


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
    """The next ticks of NAME (in its time zone) and the partitions they would run."""
    from flowstone.cli import _console, _errors
    from flowstone.schedules._daemon import Daemon

    with _errors(state):
        app = state.app()
        definition = _known(app, "schedule", name)
        daemon = Daemon(app)
        out = _console()
        for tick in definition.schedule.preview(app.clock.now(), count):
            try:
                partitions, skip = daemon.tick_partitions(definition, tick)
            except Exception as exc:
                partitions, skip = [], f"the partition function fails: {type(exc).__name__}: {exc}"
            shown = (
                ", ".join(partitions) if partitions else (f"(skipped: {skip})" if skip else "(unpartitioned)")
            )
            out.print(f"{_in_zone(tick, definition.schedule.tz)}  ->  {shown}", markup=False)


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
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("flowstone").setLevel(logging.INFO)  # the daemon's own news, not the libraries'
        app = state.app(runs_assets=True)
        daemon = Daemon(app, interval=interval, executor=executor)
        if once:
            report = daemon.tick()
            daemon.state.stop_daemon(daemon.id)
            _console().print(json.dumps(_report(report)), markup=False)
            return

        def graceful(signum: int, frame: Any) -> None:
            click.echo(
                f"daemon {daemon.name}: stopping after the pass in progress "
                f"({signal.Signals(signum).name} again to stop at once)",
                err=True,
            )
            daemon.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, graceful)
        click.echo(
            f"daemon {daemon.name}: {len(app.pipeline.schedules)} schedule(s), "
            f"{len(app.pipeline.sensors)} sensor(s), every {interval:g}s, runs "
            f"{'on the queue' if executor == 'queue' else 'in this process'}",
            err=True,
        )
        daemon.run()
        click.echo(f"daemon {daemon.name}: stopped", err=True)


def _report(report: Any) -> dict[str, Any]:
    return {
        "launched": [list(x) for x in report.launched],
        "skipped": [list(x) for x in report.skipped],
        "errors": [list(x) for x in report.errors],
        "timeouts": [list(x) for x in report.timeouts],
        "housekeeping": list(report.housekeeping),
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
