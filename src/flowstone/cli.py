"""The ``flowstone`` command line.

    flowstone check
    flowstone materialize daily_report --partition 2025-01-15 [--force] [--parallel 4]
    flowstone assets | runs | run show ID | runs recover
    flowstone lineage upstream|downstream|impact ASSET [--partition K] [--depth N]
    flowstone graph [--format ascii|mermaid]

Settings come from flowstone.toml / [tool.flowstone], ``FLOWSTONE_*`` variables and the global
flags. Errors print their user message (``-v`` adds the developer message) and exit non-zero:
2 for bad input or definitions, 1 for failed runs.
"""

from __future__ import annotations

import getpass
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flowstone._config import Settings, load_settings
from flowstone._durations import parse_duration
from flowstone._errors import ConfigurationError, FlowStoneError, PipelineInvalid
from flowstone._events import STEP_FAILED, STEP_SKIPPED, STEP_STARTED, STEP_SUCCEEDED, Event
from flowstone._pipeline import Pipeline, load_pipeline

if TYPE_CHECKING:
    from flowstone._app import FlowStone
    from flowstone._records import LineageEntry

STATUS_STYLE = {
    "succeeded": "green",
    "success": "green",
    "failed": "red",
    "running": "yellow",
    "pending": "dim",
    "skipped": "magenta",
    "abandoned": "red",
}


def _console(stderr: bool = False) -> Console:
    file = sys.stderr if stderr else sys.stdout
    width = None if file.isatty() else 200
    return Console(file=file, width=width, soft_wrap=True, highlight=False)


@dataclass
class _State:
    config: Path | None
    pipeline: str | None
    store: str | None
    tenant: str | None
    verbose: bool
    _settings: Settings | None = None
    _pipeline: Pipeline | None = None
    _app: FlowStone | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(
                config_file=self.config,
                overrides={"pipeline": self.pipeline, "store": self.store, "tenant": self.tenant},
            )
        return self._settings

    def load(self) -> Pipeline:
        if self._pipeline is None:
            target = self.settings.pipeline
            if not target:
                raise ConfigurationError(
                    "no pipeline configured: set pipeline = 'module:attr' in flowstone.toml, "
                    "FLOWSTONE_PIPELINE, or pass --pipeline"
                )
            self._pipeline = load_pipeline(target, search_path=[self.settings.project_dir])
        return self._pipeline

    def app(self) -> FlowStone:
        if self._app is None:
            from flowstone._app import FlowStone

            settings = self.settings
            self._app = FlowStone(
                self.load(),
                store=settings.store_url,
                tenant=settings.tenant,
                storage_dir=settings.storage_dir,
            )
        return self._app


def _fail(error: BaseException, verbose: bool, *, exit_code: int | None = None) -> NoReturn:
    """Print ``error`` for a user and exit: ``exit_code`` overrides the error's own code."""
    err = _console(stderr=True)
    if isinstance(error, PipelineInvalid):
        err.print(f"[red]error:[/red] pipeline is invalid ({len(error.problems)} problem(s)):")
        for problem in error.problems:
            err.print(f"  - {problem}", markup=False)
        sys.exit(2)
    if isinstance(error, FlowStoneError):
        err.print(f"[red]error[/red] {escape(f'[{error.type}]')}: ", end="")
        err.print(error.user_message, markup=False)
        if verbose:
            err.print(error.developer_message, markup=False)
        sys.exit(error.exit_code if exit_code is None else exit_code)
    err.print("[red]error:[/red] unexpected failure: ", end="")
    err.print(f"{type(error).__name__}: {error}", markup=False)
    err.print("".join(traceback.format_exception(error)), markup=False)
    sys.exit(1)


@contextmanager
def _errors(state: _State) -> Iterator[None]:
    try:
        yield
    except (click.exceptions.Exit, click.ClickException, SystemExit):
        raise
    except KeyboardInterrupt:
        # A run in progress has already been marked abandoned by the runner.
        _console(stderr=True).print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except Exception as exc:
        _fail(exc, state.verbose)


def _pass_state(fn: Callable[..., Any]) -> Callable[..., Any]:
    @click.pass_obj
    def wrapper(state: _State, *args: Any, **kwargs: Any) -> Any:
        with _errors(state):
            return fn(state, *args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(path_type=Path), help="flowstone.toml or pyproject.toml to use.")
@click.option("--pipeline", "-p", help="Pipeline location, 'package.module:attribute'.")
@click.option("--store", help="Metadata store URL (sqlite:///... or postgresql://...).")
@click.option("--tenant", help="Tenant to act for (default: 'default').")
@click.option("-v", "--verbose", is_flag=True, help="Show developer details on errors.")
@click.version_option(package_name="flowstone")
@click.pass_context
def main(
    ctx: click.Context,
    config: Path | None,
    pipeline: str | None,
    store: str | None,
    tenant: str | None,
    verbose: bool,
) -> None:
    """FlowStone: asset-first data orchestration."""
    ctx.obj = _State(config, pipeline, store, tenant, verbose)


@main.command()
@click.argument("target", required=False, metavar="[MODULE:ATTR]")
@_pass_state
def check(state: _State, target: str | None) -> None:
    """Load and validate the pipeline (the configured one, or MODULE:ATTR); list every problem
    (exit 2 if any)."""
    if target is not None:
        state.pipeline = target
    pipeline = state.load()
    pipeline.validate()
    _console().print(f"pipeline '{pipeline.name}' is valid: {len(pipeline.assets)} assets")


@main.command()
@click.argument("selection", nargs=-1, required=True)
@click.option("--partition", help="Partition key to materialize.")
@click.option("--force", is_flag=True, help="Re-run selected assets even if already materialized.")
@click.option(
    "--parallel",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Run independent steps on this many threads.",
)
@_pass_state
def materialize(
    state: _State, selection: tuple[str, ...], partition: str | None, force: bool, parallel: int
) -> None:
    """Materialize SELECTION (names, +name, name+, tag:x, *) and whatever missing upstream it needs."""
    app = state.app()
    out = _console()
    plan = app.plan(list(selection), partition=partition, force=force)
    if not plan.steps:
        out.print(
            f"nothing to do: {', '.join(a for a, _ in plan.up_to_date)} already materialized "
            "(use --force to re-run)",
            markup=False,
        )
    else:
        out.print(
            f"materializing {len(plan.steps)} step(s)" + (f" for partition {partition}" if partition else ""),
            markup=False,
        )

    def show(event: Event) -> None:
        where = escape(f"{event.asset} [{event.partition_key}]" if event.partition_key else f"{event.asset}")
        if event.type == STEP_STARTED and parallel > 1:
            out.print(f"  [yellow]…[/yellow] {where} started")
        elif event.type == STEP_SUCCEEDED:
            out.print(f"  [green]✓[/green] {where} ({event.data.get('duration_ms', 0):.1f} ms)")
        elif event.type == STEP_FAILED:
            error = event.data.get("error", {})
            out.print(f"  [red]✗[/red] {where}: ", end="")
            out.print(f"[{error.get('type')}] {error.get('message')}", markup=False)
        elif event.type == STEP_SKIPPED:
            out.print(f"  [magenta]-[/magenta] {where} skipped: ", end="")
            out.print(str(event.data.get("reason")), markup=False)

    unsubscribe = app.events.subscribe(show)
    try:
        result = app.execute(plan, parallel=parallel, actor=f"user:{getpass.getuser()}")
    finally:
        unsubscribe()
    style = STATUS_STYLE.get(result.status.value, "")
    out.print(f"run {result.run_id} [{style}]{result.status.value}[/{style}]")
    if not result.success:
        for step in result.failures:
            if step.error is not None and state.verbose:
                _console(stderr=True).print(step.error.developer_message, markup=False)
        sys.exit(1)


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _status(value: str | None) -> str:
    if not value:
        return "[dim]never[/dim]"
    style = STATUS_STYLE.get(value, "")
    return f"[{style}]{value}[/{style}]" if style else value


@main.command()
@_pass_state
def assets(state: _State) -> None:
    """Table of assets: dependencies, I/O manager, last materialization and status."""
    app = state.app()
    states: dict[str, list[Any]] = {}
    for row in app.store.asset_states(tenant=app.tenant):
        states.setdefault(row.asset, []).append(row)
    table = Table(title=f"assets of '{app.pipeline.name}'")
    for col in ("asset", "depends on", "io manager", "partitions", "last materialized", "status"):
        table.add_column(col)
    for name in app.pipeline.graph.topological_order():
        definition = app.pipeline.assets[name]
        rows = states.get(name, [])
        last = max((r.success_at for r in rows if r.success_at), default=None)
        partitions = "-" if definition.partitioned_by is None else type(definition.partitioned_by).__name__
        if definition.partitioned_by is None or not rows:
            status = _status(rows[0].last_status if rows else None)
        else:
            ok = sum(1 for r in rows if r.last_status == "success")
            bad = sum(1 for r in rows if r.last_status != "success")
            status = f"[green]{ok} ok[/green]" + (f", [red]{bad} failed[/red]" if bad else "")
        table.add_row(
            name,
            ", ".join(definition.deps) or "-",
            definition.io_manager or app.pipeline.default_io_manager,
            partitions,
            _when(last),
            status,
        )
    _console().print(table)


@main.group(invoke_without_command=True)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--status", type=click.Choice(["running", "succeeded", "failed", "abandoned", "queued"]))
@click.pass_context
def runs(ctx: click.Context, limit: int, status: str | None) -> None:
    """List recent runs (newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    state: _State = ctx.obj
    with _errors(state):
        app = state.app()
        table = Table(title="runs")
        for col in ("run", "status", "selection", "partition", "steps", "started", "duration", "by"):
            table.add_column(col)
        for run in app.runs(limit=limit, status=status):
            table.add_row(
                run.id[:12],
                _status(run.status.value),
                escape(" ".join(run.selection)),
                escape(run.partition_key or "-"),
                str(run.step_count),
                _when(run.started_at),
                _ms(run.duration_ms),
                escape(run.actor),
            )
        _console().print(table)


@runs.command("recover")
@click.option(
    "--stale-after", help="Also abandon runs on any host with no heartbeat for this long (e.g. 10m)."
)
@_pass_state
def runs_recover(state: _State, stale_after: str | None) -> None:
    """Mark runs whose process died as abandoned, so their steps can run again."""
    from flowstone.store import Store

    delta = timedelta(seconds=parse_duration(stale_after)) if stale_after else None
    # The store alone, not ``state.app()``: binding the pipeline would already recover the dead
    # runs (and this would report none), and recovering must work while the pipeline is broken.
    settings = state.settings
    store = Store.open(settings.store_url)
    try:
        dead = store.recover(tenant=settings.tenant, stale_after=delta)
    finally:
        store.close()
    _console().print(f"{len(dead)} run(s) marked abandoned" + (": " + ", ".join(dead) if dead else ""))


@main.group()
def run() -> None:
    """Inspect one run."""


@run.command("show")
@click.argument("run_id")
@_pass_state
def run_show(state: _State, run_id: str) -> None:
    """Steps of RUN_ID (a full id or a unique prefix) with timing and errors."""
    app = state.app()
    found = app.run(run_id)
    if found is None:
        missing = FlowStoneError(
            f"no run {run_id!r} (give a full run id or a unique prefix of at least 4 characters; "
            "see `flowstone runs`)",
            context={"run_id": run_id},
        )
        _fail(missing, state.verbose, exit_code=2)
    record, steps = found
    out = _console()
    out.print(f"run {record.id}  {_status(record.status.value)}  pipeline {escape(record.pipeline)}")
    out.print(
        f"selection: {' '.join(record.selection)}   partition: {record.partition_key or '-'}   "
        f"by {record.actor} on {record.host} (pid {record.pid}, {record.executor})",
        markup=False,
    )
    out.print(
        f"started {_when(record.started_at)}  finished {_when(record.finished_at)}  "
        f"duration {_ms(record.duration_ms)}"
    )
    if record.error:
        out.print(f"[red]{escape(record.error)}[/red]")
    table = Table()
    for col in ("#", "asset", "partition", "status", "duration", "materialization", "detail"):
        table.add_column(col)
    for step in steps:
        detail = step.reason or (f"[{step.error_type}] {step.error_message}" if step.error_type else "")
        table.add_row(
            str(step.position + 1),
            step.asset,
            escape(step.partition_key or "-"),
            _status(step.status.value),
            _ms(step.duration_ms),
            (step.materialization_id or "-")[:12],
            escape(detail),
        )
    out.print(table)
    if state.verbose:
        for mat in app.store.materializations(tenant=app.tenant, run_id=record.id, limit=10_000):
            if mat.error_traceback:
                out.print(f"--- {mat.asset} traceback ---", markup=False)
                out.print(mat.error_traceback, markup=False)


@main.group()
def lineage() -> None:
    """Where a materialization came from and what it feeds."""


def _lineage_command(direction: str) -> Callable[..., Any]:
    @click.argument("asset")
    @click.option("--partition", help="Partition key.")
    @click.option("--depth", type=click.IntRange(1, 100), help="Stop after this many hops.")
    @_pass_state
    def command(state: _State, asset: str, partition: str | None, depth: int | None) -> None:
        app = state.app()
        query = getattr(app.lineage, direction)
        entries: list[LineageEntry] = query(asset, partition=partition, depth=depth)
        where = f" [{partition}]" if partition else ""
        table = Table(title=escape(f"{direction} of {asset}{where}"))
        columns = ["depth", "asset", "partition", "materialization", "status", "materialized"]
        if direction == "impact":
            columns.append("stale")
        for col in columns:
            table.add_column(col)
        for e in entries:
            row = [
                str(e.depth),
                e.asset,
                escape(e.partition_key or "-"),
                (e.materialization_id or "-")[:12],
                _status(e.status),
                _when(e.finished_at),
            ]
            if direction == "impact":
                row.append("-" if e.stale is None else ("yes" if e.stale else "no"))
            table.add_row(*row)
        out = _console()
        if not entries:
            out.print(f"no {direction} lineage recorded for {asset}{where}", markup=False)
        else:
            out.print(table)

    command.__doc__ = {
        "upstream": "Materializations the latest ASSET was built from.",
        "downstream": "Materializations built from ASSET.",
        "impact": "Everything downstream of ASSET, with its status and whether it is stale.",
    }[direction]
    return command


for _direction in ("upstream", "downstream", "impact"):
    lineage.command(_direction)(_lineage_command(_direction))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["ascii", "mermaid"]), default="ascii", show_default=True)
@_pass_state
def graph(state: _State, fmt: str) -> None:
    """Print the asset graph as an ASCII tree or Mermaid."""
    pipeline = state.load()
    pipeline.validate()
    out = _console()
    if fmt == "mermaid":
        out.print(render_mermaid(pipeline), markup=False)
    else:
        out.print(render_ascii(pipeline), markup=False)


def render_mermaid(pipeline: Pipeline) -> str:
    lines = ["graph TD"]
    g = pipeline.graph
    for name in g.topological_order():
        lines.append(f"    {name}[{name}]")
    for name in g.topological_order():
        for dep in g.dependencies(name):
            lines.append(f"    {dep} --> {name}")
    return "\n".join(lines)


def render_ascii(pipeline: Pipeline) -> str:
    """Each root with its dependents indented below; a node met again is marked ``(see above)``."""
    g = pipeline.graph
    roots = [n for n in g.topological_order() if not g.dependencies(n)]
    lines: list[str] = []
    shown: set[str] = set()

    def walk(name: str, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└── " if last else "├── ")
        seen = name in shown
        lines.append(f"{prefix}{branch}{name}" + (" (see above)" if seen and g.dependents(name) else ""))
        if seen:
            return
        shown.add(name)
        children = list(g.dependents(name))
        child_prefix = prefix if top else prefix + ("    " if last else "│   ")
        for i, child in enumerate(children):
            walk(child, child_prefix, i == len(children) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main()
