"""CLI of the run queue: ``flowstone worker``, ``flowstone run cancel`` and following a queue run.

    $ flowstone worker --concurrency 4 --queues flowstone,backfill
    $ flowstone materialize daily_report --partition 2025-01-15 --executor queue --wait
    $ flowstone run cancel 3f2a

Registered on the main group by ``flowstone.cli``.
"""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from flowstone._app import FlowStone
    from flowstone.cli import _State
    from flowstone.engine._planner import Plan


@click.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    help="Steps this worker runs at once (default: [queue] concurrency, else 4).",
)
@click.option("--queues", help="Only take steps of these queues, comma-separated (default: all).")
@click.option("--name", help="How this worker is named in logs and claims (default: host:pid).")
@click.option(
    "--isolate",
    is_flag=True,
    help="Run each step in a process of its own: a step whose run is cancelled, or that "
    "overruns its timeout, is terminated (not just asked to stop).",
)
@click.pass_obj
def worker(
    state: _State, concurrency: int | None, queues: str | None, name: str | None, isolate: bool
) -> None:
    """Run queue steps of the configured pipeline until interrupted (Ctrl-C or SIGTERM: running
    steps finish first). Start as many as you like, on any host that reaches the store."""
    import logging

    from flowstone.cli import _errors
    from flowstone.queue._worker import Worker

    with _errors(state):
        logging.basicConfig(
            level=logging.DEBUG if state.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # psycopg's pool logs every connection handed out at INFO.
        logging.getLogger("psycopg.pool").setLevel(logging.DEBUG if state.verbose else logging.WARNING)
        app = state.app(runs_assets=True)
        chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
        runner = Worker(app, concurrency=concurrency, queues=chosen, name=name, isolate=isolate)
        click.echo(
            f"worker {runner.name}: pipeline '{app.pipeline.name}', concurrency {runner.concurrency}, "
            f"queues {', '.join(chosen) if chosen else 'all'}",
            err=True,
        )
        runner.run()


@click.command("cancel")
@click.argument("run_id")
@click.option("--reason", help="Why (kept in the audit log).")
@click.pass_obj
def run_cancel(state: _State, run_id: str, reason: str | None) -> None:
    """Cancel queue run RUN_ID: steps not started are removed at once, running ones are asked to
    stop; the run ends ``cancelled`` with the record of what did finish."""
    from flowstone._errors import FlowStoneError
    from flowstone.cli import _console, _errors, _fail

    with _errors(state):
        app = state.app()
        found = app.run(run_id)
        if found is None:
            missing = FlowStoneError(f"no run {run_id!r} (see `flowstone runs`)", context={"run_id": run_id})
            _fail(missing, state.verbose, exit_code=2)
        record = found[0]
        if record.executor != "queue":
            _fail(
                FlowStoneError(
                    f"run {record.id} runs in the process that started it ({record.executor}); "
                    "interrupt that process (Ctrl-C) to stop it",
                    context={"run_id": record.id},
                ),
                state.verbose,
                exit_code=2,
            )
        if not app.cancel_run(record.id, actor=f"user:{getpass.getuser()}", reason=reason):
            _console().print(f"run {record.id} is already {record.status.value}", markup=False)
            return
        _console().print(f"run {record.id}: cancel requested", markup=False)


def submit_and_follow(app: FlowStone, plan: Plan, *, wait: bool, verbose: bool) -> None:
    """Enqueue ``plan``; with ``wait``, show a live bar until the run ends (exit 1 unless it
    succeeded)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flowstone.cli import _console, _status

    out = _console()
    run_id = app.submit_plan(plan, actor=f"user:{getpass.getuser()}")
    out.print(f"run {run_id} queued ({len(plan.steps)} step(s))", markup=False)
    if not wait:
        out.print("follow it with `flowstone run show " + run_id[:12] + "`", markup=False)
        return
    with Progress(
        TextColumn("run"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=out,
        disable=not out.is_terminal,
    ) as bar:
        task = bar.add_task("run", total=len(plan.steps), detail="")

        def progress(status: str, counts: dict[str, int]) -> None:
            done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "skipped"))
            detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if n)
            bar.update(task, completed=done, detail=detail)

        record = app.wait_run(run_id, on_progress=progress)
    _, steps = app.run(run_id) or (record, [])
    for step in steps:
        if step.error_type and step.status.value != "skipped":
            where = f"{step.asset} [{step.partition_key}]" if step.partition_key else step.asset
            out.print(f"  ✗ {where}: [{step.error_type}] {step.error_message}", markup=False)
    out.print(f"run {run_id} {_status(record.status.value)}")
    if record.status.value == "waiting_approval":
        out.print("decide with `flowstone approvals list` / `approve ID`; workers carry on from there")
        return
    if record.status.value != "succeeded":
        sys.exit(1)
