"""Runs that go wrong: an asset that raises, a CLI process killed mid-step, texts that look like markup."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ._cli import Project, assert_no_traceback, cli_env, flowstone_command, row_for, step_lines, table_rows

pytestmark = pytest.mark.acceptance

FAILING = """
    import flowstone as fs

    pipeline = fs.Pipeline("failing")


    @pipeline.asset()
    def source(context):
        return {"rows": 3}


    @pipeline.asset()
    def exploding(context, source):
        {body}


    @pipeline.asset()
    def summary(context, exploding):
        return exploding + 1


    @pipeline.asset()
    def final(context, summary, source):
        return summary + source["rows"]
"""

BLOCKING = """
    import threading
    from pathlib import Path

    import flowstone as fs

    pipeline = fs.Pipeline("blocking")
    HERE = Path(__file__).resolve().parent


    @pipeline.asset()
    def first(context):
        return 1


    @pipeline.asset()
    def slow(context, first):
        (HERE / "slow.started").write_text("started")
        if (HERE / "block").exists():
            threading.Event().wait()  # blocks until the process is killed
        return first + 1


    @pipeline.asset()
    def last(context, slow):
        return slow + 1
"""

DEADLINE = 30.0  # seconds to wait for the blocked subprocess to reach its step


def _step_rows(show: str) -> dict[str, list[str]]:
    return {row[1]: row for row in table_rows(show) if row[0].isdigit()}


def test_failing_asset_fails_the_run_and_skips_downstream(project: Project) -> None:
    raising = "raise KeyError(\"missing column 'amount'\")"
    module = project.write("failing.py", FAILING.replace("{body}", raising))
    pipeline = ("-p", "failing:pipeline")

    failed = project.run(*pipeline, "materialize", "final", expect=1)
    steps = step_lines(failed.stdout)
    assert steps["source"].startswith("✓ source")
    assert steps["exploding"].startswith("✗ exploding")
    assert "execution_error" in steps["exploding"]
    assert "KeyError" in steps["exploding"] and "missing column 'amount'" in steps["exploding"]
    for skipped in ("summary", "final"):
        assert steps[skipped].startswith(f"- {skipped} skipped"), failed
        assert "exploding" in steps[skipped]
    run_id = failed.run_id()
    assert f"run {run_id} failed" in failed.stdout
    assert_no_traceback(failed)

    show = project.run(*pipeline, "run", "show", run_id[:10])
    assert f"run {run_id}" in show.stdout and "failed" in show.stdout.splitlines()[0]
    rows = _step_rows(show.stdout)
    assert rows["source"][3] == "succeeded"
    assert rows["exploding"][3] == "failed"
    assert "[execution_error]" in rows["exploding"][-1]
    assert "KeyError" in rows["exploding"][-1] and "missing column 'amount'" in rows["exploding"][-1]
    for skipped in ("summary", "final"):
        assert rows[skipped][3] == "skipped"
        assert "exploding" in rows[skipped][-1]
    assert_no_traceback(show)

    verbose = project.run("-v", *pipeline, "run", "show", run_id)
    assert "Traceback (most recent call last)" in verbose.stdout
    assert f'File "{module}"' in verbose.stdout and "in exploding" in verbose.stdout
    assert "KeyError" in verbose.stdout

    assets = project.run(*pipeline, "assets").stdout
    assert row_for(assets, "source")[-1] == "success"
    assert row_for(assets, "exploding")[-1] == "failed"
    assert row_for(assets, "summary")[-1] == "never"

    # fixed: only what did not succeed runs again; source's stored value is reused
    project.write("failing.py", FAILING.replace("{body}", "return source['rows'] * 10"))
    fixed = project.run(*pipeline, "materialize", "final")
    assert set(step_lines(fixed.stdout)) == {"exploding", "summary", "final"}
    assert all(line.startswith("✓") for line in step_lines(fixed.stdout).values()), fixed


def _poll(proc: subprocess.Popen[str], condition: Callable[[], bool], what: str) -> None:
    """Until ``condition()`` holds, within DEADLINE; the subprocess must not exit meanwhile."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {DEADLINE} s")
        try:
            proc.wait(timeout=0.02)  # the pause between two polls doubles as an early-exit check
        except subprocess.TimeoutExpired:
            continue
        out, err = proc.communicate()
        pytest.fail(f"materialize exited ({proc.returncode}) before {what}:\n{out}\n{err}")


def _committed_success(db: Path, asset: str) -> Callable[[], bool]:
    """Whether the store has committed a succeeded step of ``asset`` (runs are group-committed)."""
    query = "SELECT count(*) FROM flowstone_run_steps WHERE asset = ? AND status = 'succeeded'"

    def check() -> bool:
        if not db.exists():
            return False
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            try:
                return bool(conn.execute(query, (asset,)).fetchone()[0])
            except sqlite3.OperationalError:  # schema not created yet
                return False

    return check


def _start_blocked(project: Project) -> subprocess.Popen[str]:
    """Start `materialize last` on the blocking pipeline; `slow` will block until unblocked."""
    project.write("blocking.py", BLOCKING)
    (project.root / "block").write_text("")
    return subprocess.Popen(
        [*flowstone_command(), "-p", "blocking:pipeline", "materialize", "last"],
        cwd=project.root,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_while_blocked(project: Project, *, wait_for_commit: bool) -> int:
    """Start `materialize last` on the blocking pipeline, SIGKILL it inside `slow`; its pid."""
    marker = project.root / "slow.started"
    proc = _start_blocked(project)
    try:
        _poll(proc, marker.exists, "reaching the blocking step")
        if wait_for_commit:
            db = project.root / ".flowstone" / "flowstone.db"
            _poll(proc, _committed_success(db, "first"), "recording `first` as succeeded")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)  # reaps it: its pid is gone for good
    assert proc.returncode == -signal.SIGKILL
    (project.root / "block").unlink()
    marker.unlink()
    return proc.pid


def test_killed_run_is_abandoned_and_the_rerun_finishes_it(project: Project) -> None:
    pipeline = ("-p", "blocking:pipeline")
    pid = _kill_while_blocked(project, wait_for_commit=True)

    recovered = project.run(*pipeline, "runs", "recover")
    assert "1 run(s) marked abandoned" in recovered.stdout, recovered
    run_id = recovered.stdout.strip().rsplit(" ", 1)[-1]
    assert len(run_id) == 32, recovered
    assert "0 run(s) marked abandoned" in project.run(*pipeline, "runs", "recover").stdout

    runs = project.run(*pipeline, "runs").stdout
    assert row_for(runs, run_id[:12])[1] == "abandoned"

    show = project.run(*pipeline, "run", "show", run_id[:6]).stdout
    assert f"run {run_id}" in show and "abandoned" in show.splitlines()[0]
    assert f"process {pid} " in show  # why: the process that ran it is gone
    rows = _step_rows(show)
    assert rows["first"][3] == "succeeded"
    assert rows["slow"][3] == "abandoned"
    assert rows["last"][3] == "abandoned"

    rerun = project.run(*pipeline, "materialize", "last")
    steps = step_lines(rerun.stdout)
    assert set(steps) == {"slow", "last"}, rerun  # `first` was stored and recorded: not again
    assert all(line.startswith("✓") for line in steps.values()), rerun
    assert (project.root / "slow.started").exists()


def test_the_next_command_abandons_a_dead_run_by_itself(project: Project) -> None:
    _kill_while_blocked(project, wait_for_commit=False)

    runs = project.run("-p", "blocking:pipeline", "runs").stdout
    listed = [row for row in table_rows(runs) if len(row) > 1 and len(row[0]) == 12]
    assert len(listed) == 1 and listed[0][1] == "abandoned", runs


REGIONS = """
    import flowstone as fs

    pipeline = fs.Pipeline("regions")
    regions = fs.StaticPartitions(["eu", "us", "b"])


    @pipeline.asset(partitioned_by=regions)
    def sales(context):
        if context.partition_key == "us":
            raise ValueError("[bold]not[/bold] a tag")
        return 1
"""


def test_partition_keys_and_messages_are_printed_verbatim(project: Project) -> None:
    """Keys like ``eu`` or ``b`` and error texts with brackets are data, not console markup."""
    project.write("regions.py", REGIONS)
    pipeline = ("-p", "regions:pipeline")

    one = project.run(*pipeline, "materialize", "sales", "--partition", "b")
    assert step_lines(one.stdout)["sales"].startswith("✓ sales [b] (")

    us = project.run(*pipeline, "materialize", "sales", "--partition", "us", expect=1)
    line = step_lines(us.stdout)["sales"]
    assert line.startswith("✗ sales [us]: [execution_error]"), us
    assert "[bold]not[/bold] a tag" in line

    show = project.run(*pipeline, "run", "show", us.run_id()).stdout
    assert "[execution_error]" in show and "[bold]not[/bold] a tag" in show, show


def test_ctrl_c_abandons_the_run_and_exits_130(project: Project) -> None:
    marker = project.root / "slow.started"
    proc = _start_blocked(project)
    try:
        _poll(proc, marker.exists, "reaching the blocking step")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err, err
    runs = project.run("-p", "blocking:pipeline", "runs").stdout
    [row] = [r for r in table_rows(runs) if len(r) > 1 and len(r[0]) == 12]
    assert row[1] == "abandoned", runs
