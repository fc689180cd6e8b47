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

from flowstone._config import Settings, build_resources, load_settings
from flowstone._durations import parse_duration
from flowstone._errors import ConfigurationError, FlowStoneError, PipelineInvalid, ValidationError
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
    "retrying": "yellow",
    "pending": "dim",
    "skipped": "magenta",
    "abandoned": "red",
    "queued": "dim",
    "cancelled": "magenta",
    "waiting_approval": "cyan",
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
    profile: str | None = None
    _settings: Settings | None = None
    _pipeline: Pipeline | None = None
    _app: FlowStone | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(
                config_file=self.config,
                overrides={
                    "pipeline": self.pipeline,
                    "store": self.store,
                    "tenant": self.tenant,
                    "profile": self.profile,
                },
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

    def io_managers(self) -> dict[str, Any]:
        """The I/O managers configured under [io.NAME] (created, not yet connected)."""
        from flowstone.io._registry import create

        settings = self.settings
        return {
            name: create(
                name,
                options,
                storage_dir=settings.storage_dir,
                store_url=settings.store_url,
                base_dir=settings.project_dir,
            )
            for name, options in settings.io.items()
        }

    def app(self, *, runs_assets: bool = False) -> FlowStone:
        """The configured app. ``runs_assets``: the command runs asset code here (materialize,
        worker, daemon), so a resource setting that cannot be resolved (a missing environment
        variable) is an error now; other commands only read or edit the store and do not need
        the resources' secrets (a resource's setup still reports it)."""
        if self._app is None:
            from flowstone._app import FlowStone
            from flowstone.queue._config import QueueConfig

            settings = self.settings
            self._app = FlowStone(
                self.load(),
                store=settings.store_url,
                tenant=settings.tenant,
                storage_dir=settings.storage_dir,
                io_managers=self.io_managers(),
                resources=build_resources(settings),
                queue=QueueConfig.from_table(settings.queue),
                event_retention=settings.event_retention,
                check_resources=runs_assets,
            )
        elif runs_assets:
            from flowstone.resources import check_resources

            check_resources(self._app.resources)
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
@click.option("--profile", help="Settings profile ([profiles.NAME] in flowstone.toml), e.g. test.")
@click.option("-v", "--verbose", is_flag=True, help="Show developer details on errors.")
@click.version_option(package_name="flowstone")
@click.pass_context
def main(
    ctx: click.Context,
    config: Path | None,
    pipeline: str | None,
    store: str | None,
    tenant: str | None,
    profile: str | None,
    verbose: bool,
) -> None:
    """FlowStone: asset-first data orchestration."""
    ctx.obj = _State(config, pipeline, store, tenant, verbose, profile)


@main.command()
@click.argument("target", required=False, metavar="[MODULE:ATTR]")
@_pass_state
def check(state: _State, target: str | None) -> None:
    """Load and validate the pipeline (the configured one, or MODULE:ATTR); list every problem
    (exit 2 if any)."""
    if target is not None:
        state.pipeline = target
    pipeline = state.load()
    pipeline.validate(io_managers=state.io_managers())
    _console().print(f"pipeline '{pipeline.name}' is valid: {len(pipeline.assets)} assets")


_EXECUTOR_OPTION = click.option(
    "--executor",
    type=click.Choice(["serial", "threads", "processes", "queue"]),
    help="How steps run: one at a time, on threads, each in its own process (timeouts "
    "terminate it), or on the run queue for `flowstone worker` processes (PostgreSQL store; "
    "returns the run id at once unless --wait). Default: serial, or threads with --parallel.",
)


@main.command()
@click.argument("selection", nargs=-1, required=True)
@click.option("--partition", help="Partition key to materialize.")
@click.option("--partitions", "partition_list", help="Several partition keys, comma-separated.")
@click.option("--force", is_flag=True, help="Re-run selected assets even if already materialized.")
@click.option("--stale", is_flag=True, help="Also re-run what is stale (changed code or upstream data).")
@click.option(
    "--parallel",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Run independent steps on this many threads (or processes).",
)
@_EXECUTOR_OPTION
@click.option("--wait", is_flag=True, help="With --executor queue: follow the run until it ends.")
@_pass_state
def materialize(
    state: _State,
    selection: tuple[str, ...],
    partition: str | None,
    partition_list: str | None,
    force: bool,
    stale: bool,
    parallel: int,
    executor: str | None,
    wait: bool,
) -> None:
    """Materialize SELECTION (names, +name, name+, tag:x, *) and whatever missing upstream it needs."""
    app = state.app(runs_assets=True)
    out = _console()
    if partition is not None and partition_list is not None:
        raise ValidationError("give --partition or --partitions, not both")
    keys = _split_keys(partition_list)
    plan = app.plan(list(selection), partition=partition, partitions=keys, force=force, stale=stale)
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

    if executor == "queue":
        from flowstone._cli_queue import submit_and_follow

        submit_and_follow(app, plan, wait=wait, verbose=state.verbose)
        return

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
        elif event.type == "checkpoint.requested":
            out.print(
                f"  [cyan]⏸[/cyan] {where} waits for approval {str(event.data.get('approval_id'))[:12]}: ",
                end="",
            )
            out.print(str(event.data.get("message") or ""), markup=False)

    unsubscribe = app.events.subscribe(show)
    try:
        result = app.execute(plan, parallel=parallel, actor=f"user:{getpass.getuser()}", executor=executor)
    finally:
        unsubscribe()
    style = STATUS_STYLE.get(result.status.value, "")
    out.print(f"run {result.run_id} [{style}]{result.status.value}[/{style}]")
    if result.status.value == "waiting_approval":
        out.print(
            "decide with `flowstone approvals list` / `approve ID` / `reject ID --reason ...`; "
            "the run resumes"
        )
        return
    if not result.success:
        for step in result.failures:
            if step.error is not None and state.verbose:
                _console(stderr=True).print(step.error.developer_message, markup=False)
        sys.exit(1)


def _split_keys(text: str | None) -> list[str] | None:
    if text is None:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise ValidationError("--partitions needs at least one key")
    return keys


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
    for col in ("#", "asset", "partition", "status", "attempts", "duration", "materialization", "detail"):
        table.add_column(col)
    for step in steps:
        detail = step.reason or (f"[{step.error_type}] {step.error_message}" if step.error_type else "")
        table.add_row(
            str(step.position + 1),
            step.asset,
            escape(step.partition_key or "-"),
            _status(step.status.value),
            str(step.attempt),
            _ms(step.duration_ms),
            (step.materialization_id or "-")[:12],
            escape(detail),
        )
    out.print(table)
    mats = app.store.materializations(tenant=app.tenant, run_id=record.id, limit=100_000)
    retried = sorted(
        (m for m in mats if "retry_delay_s" in m.metadata),
        key=lambda m: (m.asset, m.partition_key or "", m.attempt),
    )
    if retried:
        out.print("retried attempts:")
        for mat in retried:
            where = f"{mat.asset} [{mat.partition_key}]" if mat.partition_key else mat.asset
            out.print(
                f"  {where} attempt {mat.attempt}: [{mat.error_type}] {mat.error_message} "
                f"-> retried after {mat.metadata['retry_delay_s']:g} s",
                markup=False,
            )
    if state.verbose:
        for mat in sorted(mats, key=lambda m: m.finished_at):
            if mat.error_traceback:
                out.print(f"--- {mat.asset} attempt {mat.attempt} traceback ---", markup=False)
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


class _BackfillGroup(click.Group):
    """``flowstone backfill ASSET... --from K1 --to K2`` starts one; ``status|cancel|resume|list``
    act on existing ones: a first word that is not a subcommand is an asset."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_BackfillGroup)
def backfill() -> None:
    """Materialize many partitions: backfill ASSET... --from K1 --to K2 | --partitions k1,k2 | --all."""


def _show_backfill(record: Any) -> None:
    out = _console()
    counts = record.counts
    out.print(
        f"backfill {record.id} {_status(record.status.value)}: "
        + ", ".join(
            f"{k} {counts.get(k, 0)}" for k in ("succeeded", "failed", "skipped", "queued", "running")
        )
        + f" of {counts.get('total', len(record.partition_keys))}"
        + (f" ({counts['up_to_date']} already up to date)" if counts.get("up_to_date") else "")
    )
    out.print(
        f"assets: {' '.join(record.assets)}   partitions: {len(record.partition_keys)}   "
        f"by {record.actor}   started {_when(record.started_at)}   finished {_when(record.finished_at)}",
        markup=False,
    )
    if record.cancel_requested and not record.status.finished:
        out.print("cancel requested: queued steps will not start")


def _run_backfill_with_bar(state: _State, start: Callable[..., Any]) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = _console()
    with Progress(
        TextColumn("backfill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed[/red]"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("backfill", total=None, failed=0, rate="")
        began = [0.0]

        def on_start(total: int, up_to_date: int) -> None:
            import time

            began[0] = time.monotonic()
            bar.update(task, total=total, completed=up_to_date)

        def on_progress(counts: dict[str, int]) -> None:
            import time

            done = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("skipped", 0)
            elapsed = max(time.monotonic() - began[0], 1e-6)
            worked = done - counts.get("up_to_date", 0)
            bar.update(task, completed=done, failed=counts.get("failed", 0), rate=f"{worked / elapsed:.1f}/s")

        result = start(on_start=on_start, on_progress=on_progress, actor=f"user:{getpass.getuser()}")
    _show_backfill(result.backfill)
    if result.status.value != "succeeded":
        sys.exit(1)


@backfill.command("start", hidden=True)
@click.argument("selection", nargs=-1, required=True)
@click.option("--from", "start", help="First partition key (inclusive).")
@click.option("--to", "end", help="Last partition key (inclusive).")
@click.option("--partitions", "partition_list", help="Partition keys, comma-separated.")
@click.option("--all", "all_partitions", is_flag=True, help="Every partition of the selected assets.")
@click.option("--force", is_flag=True, help="Re-run partitions that are already materialized and fresh.")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(1, 256))
@_EXECUTOR_OPTION
@_pass_state
def backfill_start(
    state: _State,
    selection: tuple[str, ...],
    start: str | None,
    end: str | None,
    partition_list: str | None,
    all_partitions: bool,
    force: bool,
    parallel: int,
    executor: str | None,
) -> None:
    app = state.app(runs_assets=True)
    keys = _split_keys(partition_list)

    def go(**kwargs: Any) -> Any:
        return app.backfill(
            list(selection),
            start=start,
            end=end,
            partitions=keys,
            all_partitions=all_partitions,
            force=force,
            parallel=parallel,
            executor=executor,
            **kwargs,
        )

    if executor == "queue":
        result = go(actor=f"user:{getpass.getuser()}")
        _show_backfill(result.backfill)
        _console().print("queued for `flowstone worker`; follow it with `flowstone backfill status`")
        return
    _run_backfill_with_bar(state, go)


@backfill.command("status")
@click.argument("backfill_id")
@_pass_state
def backfill_status(state: _State, backfill_id: str) -> None:
    """Counts and state of one backfill."""
    _show_backfill(state.app().get_backfill(backfill_id))


@backfill.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@_pass_state
def backfill_list(state: _State, limit: int) -> None:
    """Recent backfills, newest first."""
    app = state.app()
    table = Table(title="backfills")
    for col in (
        "backfill",
        "status",
        "assets",
        "partitions",
        "succeeded",
        "failed",
        "skipped",
        "started",
        "by",
    ):
        table.add_column(col)
    for record in app.store.list_backfills(tenant=app.tenant, limit=limit):
        c = record.counts
        table.add_row(
            record.id[:12],
            _status(record.status.value),
            escape(" ".join(record.assets)),
            str(len(record.partition_keys)),
            str(c.get("succeeded", 0)),
            str(c.get("failed", 0)),
            str(c.get("skipped", 0)),
            _when(record.started_at),
            escape(record.actor),
        )
    _console().print(table)


@backfill.command("cancel")
@click.argument("backfill_id")
@click.option("--reason", help="Why (kept in the audit log).")
@_pass_state
def backfill_cancel(state: _State, backfill_id: str, reason: str | None) -> None:
    """Stop a running backfill: queued steps are skipped, running ones finish."""
    app = state.app()
    asked = app.cancel_backfill(backfill_id, actor=f"user:{getpass.getuser()}", reason=reason)
    record = app.get_backfill(backfill_id)
    _console().print(
        f"backfill {record.id}: cancel requested"
        if asked
        else f"backfill {record.id} is already {record.status}"
    )


@backfill.command("resume")
@click.argument("backfill_id")
@click.option("--parallel", type=click.IntRange(1, 256), help="Override the backfill's parallelism.")
@_EXECUTOR_OPTION
@_pass_state
def backfill_resume(state: _State, backfill_id: str, parallel: int | None, executor: str | None) -> None:
    """Run again whatever a backfill did not finish."""
    app = state.app(runs_assets=True)
    _run_backfill_with_bar(
        state, lambda **kw: app.resume_backfill(backfill_id, parallel=parallel, executor=executor, **kw)
    )


@main.command()
@click.argument("selection", nargs=-1)
@click.option("--failed", "show_failed", is_flag=True, help="List failed partitions.")
@_pass_state
def status(state: _State, selection: tuple[str, ...], show_failed: bool) -> None:
    """Per asset: partitions fresh, stale, missing and failed."""
    app = state.app()
    names = app.select(list(selection)) if selection else set(app.pipeline.assets)
    table = Table(title="status")
    for col in ("asset", "partitions", "fresh", "stale", "missing", "failed"):
        table.add_column(col)
    memo: dict[str, set[str | None]] = {}  # upstream staleness, worked out once for all rows
    for name in app.pipeline.graph.topological_order():
        if name not in names:
            continue
        row = app.status(name, memo=memo)
        table.add_row(
            name,
            str(row.total),
            f"[green]{row.fresh}[/green]",
            f"[yellow]{row.stale}[/yellow]",
            str(row.missing),
            f"[red]{row.failed}[/red]" if row.failed else "0",
        )
    _console().print(table)
    if show_failed:
        for name in sorted(names):
            for key in app.store.partition_status(tenant=app.tenant, asset=name, page_size=1000).failed_keys:
                _console().print(f"failed: {name} {key or '-'}", markup=False)


@main.command()
@click.argument("asset")
@click.option("--partition", help="Partition key to invalidate.")
@click.option("--all", "all_partitions", is_flag=True, help="Every partition of the asset.")
@click.option("--downstream", is_flag=True, help="Also everything built from it.")
@click.option("--reason", help="Why (kept in the audit log).")
@_pass_state
def invalidate(
    state: _State,
    asset: str,
    partition: str | None,
    all_partitions: bool,
    downstream: bool,
    reason: str | None,
) -> None:
    """Mark data stale on purpose, so materialize --stale and backfill recompute it."""
    app = state.app()
    count = app.invalidate(
        asset,
        partition=partition,
        all_partitions=all_partitions,
        downstream=downstream,
        actor=f"user:{getpass.getuser()}",
        reason=reason,
    )
    _console().print(f"{count} partition(s) marked stale")


@main.group()
def partitions() -> None:
    """Dynamic partitions: add, remove and list keys."""


@partitions.command("add")
@click.argument("name")
@click.argument("keys", nargs=-1, required=True)
@_pass_state
def partitions_add(state: _State, name: str, keys: tuple[str, ...]) -> None:
    """Add KEYS to the dynamic partitions NAME."""
    app = state.app()
    added = app.add_partitions(name, list(keys), actor=f"user:{getpass.getuser()}")
    _console().print(f"{len(added)} key(s) added to '{name}'", markup=False)


@partitions.command("remove")
@click.argument("name")
@click.argument("keys", nargs=-1, required=True)
@_pass_state
def partitions_remove(state: _State, name: str, keys: tuple[str, ...]) -> None:
    """Remove KEYS from the dynamic partitions NAME (stored data is left alone)."""
    app = state.app()
    removed = app.remove_partitions(name, list(keys), actor=f"user:{getpass.getuser()}")
    _console().print(f"{len(removed)} key(s) removed from '{name}'", markup=False)


@partitions.command("list")
@click.argument("name")
@_pass_state
def partitions_list(state: _State, name: str) -> None:
    """The keys of the dynamic partitions NAME, in the order they were added."""
    app = state.app()
    name = app._dynamic_name(name)  # an unknown name is an error (with a suggestion), not an empty list
    for key in app.store.dynamic_partition_keys(tenant=app.tenant, name=name):
        _console().print(key, markup=False)


@main.group()
def store() -> None:
    """Housekeeping of the metadata store."""


@store.command("prune")
@click.option(
    "--older-than",
    default=None,
    help="Delete run events older than this (e.g. 7d, 12h); default: the event_retention setting (30d).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted without deleting.")
@_pass_state
def store_prune(state: _State, older_than: str | None, dry_run: bool) -> None:
    """Delete old run events so the event log does not grow without bound (runs,
    materializations, lineage and the audit log are kept)."""
    if older_than is not None:
        try:
            parse_duration(older_than)
        except ValueError as exc:
            raise ValidationError(f"--older-than: {exc}", context={"field": "--older-than"}) from None
    app = state.app()
    count = app.prune_events(older_than=older_than, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    age = older_than if older_than is not None else str(state.settings.event_retention)
    _console().print(f"{verb} {count} event(s) older than {age}", markup=False)


@main.group()
def catalog() -> None:
    """The record of stored values, kept beside them in _asset.json sidecars."""


@catalog.command("rebuild")
@click.option("--dry-run", is_flag=True, help="Report what would be imported without writing.")
@_pass_state
def catalog_rebuild(state: _State, dry_run: bool) -> None:
    """Re-import the sidecars of the filesystem I/O managers into the metadata store.

    For a lost or new store: values whose files still match their sidecar's checksum become
    successful materializations again, with their lineage; the rest are listed as skipped."""
    app = state.app()
    report = app.rebuild_catalog(dry_run=dry_run, actor=f"user:{getpass.getuser()}")
    out = _console()
    for entry in report.entries:
        if entry.outcome == "skipped":
            out.print(f"skipped {entry.path}: {entry.reason}", markup=False)
    verb = "would import" if dry_run else "imported"
    out.print(
        f"{verb} {report.imported} materialization(s); {report.known} already known; "
        f"{report.skipped} skipped",
        markup=False,
    )


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


def _register_extra_commands() -> None:
    from flowstone._cli_approvals import approvals
    from flowstone._cli_doctor import doctor
    from flowstone._cli_queue import run_cancel, worker
    from flowstone._cli_schedules import daemon, dev, schedules, sensors
    from flowstone.telemetry._cli import metrics

    main.add_command(doctor)
    main.add_command(metrics)
    main.add_command(worker)
    main.add_command(approvals)
    for command in (schedules, sensors, daemon, dev):
        main.add_command(command)
    run.add_command(run_cancel)


_register_extra_commands()
