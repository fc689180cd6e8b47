"""The run queue through the CLI: ``--executor queue`` on the quickstart, real ``flowstone worker``
processes, ``--wait``, queue backfills and ``run cancel``, on the real PostgreSQL (``pg_url``)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from ._cli import Project, cli_env, flowstone_command, row_for, table_rows

pytestmark = [pytest.mark.acceptance, pytest.mark.postgres]


def _until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # poll interval, not a wait for an outcome


@pytest.fixture
def workers(project: Project, pg_url: str) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*flowstone_command(), "--store", pg_url, "worker", "--concurrency", "2"],
            cwd=project.root,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_queue_runs_return_at_once_and_workers_carry_them_out(
    project: Project, pg_url: str, workers: Callable[[], subprocess.Popen[str]]
) -> None:
    store = ("--store", pg_url)
    queued = project.run(
        *store, "materialize", "daily_report", "--partition", "2025-01-15", "--executor", "queue"
    )
    assert "queued (4 step(s))" in queued.stdout, queued
    run_id = queued.run_id()
    assert row_for(project.run(*store, "runs").stdout, run_id[:12])[1] == "queued"

    worker = workers()
    waited = project.run(
        *store, "materialize", "daily_report", "--partition", "2025-01-16", "--executor", "queue", "--wait"
    )
    assert waited.stdout.rstrip().endswith("succeeded"), waited
    _until(
        lambda: row_for(project.run(*store, "runs").stdout, run_id[:12])[1] == "succeeded",
        what="the first queue run to succeed",
    )
    show = project.run(*store, "run", "show", run_id[:12]).stdout
    assert "queue" in show
    assert [row[3] for row in table_rows(show) if row[0].isdigit()] == ["succeeded"] * 4, show

    # A queue backfill returns at once; the worker's last finish ends it.
    started = project.run(
        *store,
        "backfill",
        "daily_report",
        "--from",
        "2025-01-17",
        "--to",
        "2025-01-19",
        "--executor",
        "queue",
    )
    assert "queued for `flowstone worker`" in started.stdout, started
    backfill_id = started.stdout.split()[1]

    def backfill_done() -> bool:
        status = project.run(*store, "backfill", "status", backfill_id[:12]).stdout.split()[2].rstrip(":")
        assert status in ("running", "succeeded"), status
        return status == "succeeded"

    _until(backfill_done, what="the queue backfill to succeed")
    status = project.run(*store, "backfill", "status", backfill_id[:12]).stdout
    assert "succeeded 3" in status, status

    # A finished run cannot be cancelled.
    assert "already succeeded" in project.run(*store, "run", "cancel", run_id[:12]).stdout
    assert worker.poll() is None, "the worker is still running"


def test_run_cancel_removes_queued_steps_and_ends_the_run_cancelled(project: Project, pg_url: str) -> None:
    store = ("--store", pg_url)
    run_id = project.run(
        *store, "materialize", "daily_report", "--partition", "2025-01-15", "--executor", "queue"
    ).run_id()
    cancelled = project.run(*store, "run", "cancel", run_id[:12], "--reason", "wrong day")
    assert "cancel requested" in cancelled.stdout, cancelled
    assert row_for(project.run(*store, "runs").stdout, run_id[:12])[1] == "cancelled"
    show = project.run(*store, "run", "show", run_id[:12]).stdout
    assert {row[3] for row in table_rows(show) if row[0].isdigit()} == {"skipped"}, show


def test_the_queue_executor_needs_postgresql(project: Project) -> None:
    refused = project.run(
        "materialize", "daily_report", "--partition", "2025-01-15", "--executor", "queue", expect=None
    )
    assert refused.code != 0
    assert "needs a PostgreSQL store" in refused.stderr, refused
