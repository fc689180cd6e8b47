"""``flowstone doctor``: check the store, the I/O managers' extras and every resource.

    $ flowstone doctor
    $ flowstone --profile staging doctor --json

Exits 0 when every row is ok, 1 otherwise. Registered on the main group by ``flowstone.cli``.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from flowstone._doctor import CheckResult
    from flowstone.cli import _State


def _rows(state: _State) -> list[CheckResult]:
    from flowstone._doctor import health, settings_health
    from flowstone._errors import FlowStoneError

    try:
        app = state.app()
    except FlowStoneError as exc:  # the app cannot be built: check what can be checked without it
        return settings_health(state.settings, exc)
    return health(app)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.pass_obj
def doctor(state: _State, as_json: bool) -> None:
    """Check the metadata store, the I/O managers' extras and every resource (setup and health
    check); exit 1 if anything is unhealthy."""
    from rich.markup import escape
    from rich.table import Table

    from flowstone.cli import _console, _errors

    with _errors(state):
        rows = _rows(state)
    healthy = all(row.ok for row in rows)
    if as_json:
        payload = [{"name": r.name, "kind": r.kind, "ok": r.ok, "detail": r.detail} for r in rows]
        click.echo(json.dumps({"ok": healthy, "checks": payload}, indent=2))
    else:
        table = Table()
        for column in ("check", "kind", "status", "detail"):
            table.add_column(column)
        for row in rows:
            status = "[green]ok[/green]" if row.ok else "[red]FAIL[/red]"
            table.add_row(escape(row.name), row.kind, status, escape(row.detail))
        out = _console()
        out.print(table)
        failed = sum(not row.ok for row in rows)
        out.print("[green]all checks passed[/green]" if healthy else f"[red]{failed} check(s) failed[/red]")
    if not healthy:
        sys.exit(1)
