"""`flowstone backfill|status|invalidate|partitions` and `materialize --partitions|--stale` on the
quickstart (and on small pipelines written into the copy): summaries, tables, exit codes, and bad
input that exits 2 with a clear message and no traceback."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ._cli import Project, Result, assert_no_traceback, cli_env, flowstone_command, row_for, step_lines

pytestmark = pytest.mark.acceptance

DEADLINE = 30.0  # seconds to wait for a subprocess to reach a step
SUMMARY = re.compile(
    r"^backfill (?P<id>[0-9a-f]{32}) (?P<status>\w+): succeeded (?P<succeeded>\d+), failed (?P<failed>\d+), "
    r"skipped (?P<skipped>\d+), queued (?P<queued>\d+), running (?P<running>\d+) of (?P<total>\d+)"
    r"(?: \((?P<up_to_date>\d+) already up to date\))?$",
    re.MULTILINE,
)
QUICKSTART_ASSETS = ("raw_events", "cleaned_events", "daily_report")

# A daily chain whose `source` fails on 2025-01-03 while the file `broken` exists next to it.
FLAKY = """
    from pathlib import Path

    import flowstone as fs

    pipeline = fs.Pipeline("flaky")
    days = fs.DailyPartitions(start="2025-01-01", end="2025-02-01")
    HERE = Path(__file__).resolve().parent


    @pipeline.asset(partitioned_by=days)
    def source(context):
        if context.partition_key == "2025-01-03" and (HERE / "broken").exists():
            raise ValueError("upstream export for 2025-01-03 is truncated")
        return context.partition.day


    @pipeline.asset(partitioned_by=days)
    def summary(context, source):
        return source * 10
"""

# `source` on 2025-01-02 says it started, then blocks reading the FIFO `gate` until the test writes.
GATED = """
    from pathlib import Path

    import flowstone as fs

    pipeline = fs.Pipeline("gated")
    days = fs.DailyPartitions(start="2025-01-01", end="2025-02-01")
    HERE = Path(__file__).resolve().parent


    @pipeline.asset(partitioned_by=days)
    def source(context):
        if context.partition_key == "2025-01-02":
            (HERE / "gate.entered").write_text("entered")
            with open(HERE / "gate", encoding="utf-8") as gate:  # blocks until a writer opens it
                gate.read()
        return context.partition.day


    @pipeline.asset(partitioned_by=days)
    def summary(context, source):
        return source * 10
"""

TENANTS = """
    import flowstone as fs

    pipeline = fs.Pipeline("tenants")
    customers = fs.DynamicPartitions("customers")


    @pipeline.asset(partitioned_by=customers)
    def invoices(context):
        return {"customer": context.partition_key, "total": len(context.partition_key)}
"""


def summary(result: Result) -> dict[str, str | None]:
    """The fields of the one backfill summary line a command printed."""
    found = list(SUMMARY.finditer(result.stdout))
    assert len(found) == 1, f"expected one backfill summary line\n{result}"
    return found[0].groupdict()


def counts(result: Result) -> tuple[str | None, ...]:
    """(status, succeeded, failed, skipped, queued, running, total, up_to_date) from the summary."""
    fields = summary(result)
    names = ("status", "succeeded", "failed", "skipped", "queued", "running", "total", "up_to_date")
    return tuple(fields[n] for n in names)


def status_row(project: Project, asset: str, *args: str) -> list[str]:
    """``[partitions, fresh, stale, missing, failed]`` of ``asset`` in `flowstone status`."""
    return row_for(project.run(*args, "status").stdout, asset)[1:]


def test_backfill_list_status_cancel_resume_and_status_table(project: Project) -> None:
    first = project.run(
        "backfill", "daily_report", "--from", "2025-01-01", "--to", "2025-01-05", "--parallel", "2"
    )
    assert counts(first) == ("succeeded", "5", "0", "0", "0", "0", "5", None)
    backfill_id = summary(first)["id"]
    assert backfill_id is not None
    assert "assets: daily_report   partitions: 5   by user:" in first.stdout
    assert "ETA" not in first.output  # no progress bar when the output is not a terminal
    assert_no_traceback(first)

    listed = project.run("backfill", "list").stdout
    row = row_for(listed, backfill_id[:12])
    assert row[1:7] == ["succeeded", "daily_report", "5", "5", "0", "0"], listed
    assert row[-1].startswith("user:")

    shown = project.run("backfill", "status", backfill_id[:8])
    assert counts(shown) == counts(first) and summary(shown)["id"] == backfill_id
    assert "started 20" in shown.stdout and "finished 20" in shown.stdout

    # The status table: 5 of 365 days fresh for the daily assets, the unpartitioned one done.
    assert status_row(project, "user_profiles") == ["1", "1", "0", "0", "0"]
    for asset in QUICKSTART_ASSETS:
        assert status_row(project, asset) == ["365", "5", "0", "360", "0"]

    # One of the two requested partitions is already done: only the other runs.
    partial = project.run("backfill", "daily_report", "--partitions", "2025-01-02,2025-01-09")
    assert counts(partial) == ("succeeded", "1", "0", "1", "0", "0", "2", "1")
    assert status_row(project, "daily_report") == ["365", "6", "0", "359", "0"]
    newest = project.run("backfill", "list").stdout
    partial_id = str(summary(partial)["id"])
    assert row_for(newest, partial_id[:12])[1:7] == ["succeeded", "daily_report", "2", "1", "0", "1"]

    cancel = project.run("backfill", "cancel", backfill_id[:10])
    assert f"backfill {backfill_id} is already succeeded" in cancel.stdout

    # Resuming a finished backfill re-plans it: everything is up to date, nothing runs.
    resumed = project.run("backfill", "resume", backfill_id)
    assert counts(resumed) == ("succeeded", "0", "0", "5", "0", "0", "5", "5")

    unknown = project.run("backfill", "status", "abcdef12", expect=2)
    assert "no backfill 'abcdef12'" in unknown.stderr
    assert_no_traceback(unknown)


def test_failing_backfill_exits_1_and_resume_runs_what_did_not_succeed(project: Project) -> None:
    project.write("flaky.py", FLAKY)
    (project.root / "broken").write_text("")
    flaky = ("-p", "flaky:pipeline")

    failed = project.run(
        *flaky, "backfill", "source", "summary", "--from", "2025-01-01", "--to", "2025-01-05", expect=1
    )
    assert counts(failed) == ("failed", "8", "1", "1", "0", "0", "10", None)
    assert_no_traceback(failed)
    backfill_id = summary(failed)["id"]
    assert backfill_id is not None
    assert status_row(project, "source", *flaky) == ["31", "4", "0", "26", "1"]
    assert status_row(project, "summary", *flaky) == ["31", "4", "0", "27", "0"]
    failures = project.run(*flaky, "status", "--failed").stdout
    assert "failed: source 2025-01-03" in failures

    # Fixed: resume runs the failed partition and the one downstream of it, nothing else.
    (project.root / "broken").unlink()
    resumed = project.run(*flaky, "backfill", "resume", backfill_id[:8])
    assert counts(resumed) == ("succeeded", "2", "0", "8", "0", "0", "10", "8")
    assert summary(resumed)["id"] == backfill_id
    assert status_row(project, "summary", *flaky) == ["31", "5", "0", "26", "0"]
    assert row_for(project.run(*flaky, "backfill", "list").stdout, backfill_id[:12])[1] == "succeeded"


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
        pytest.fail(f"backfill exited ({proc.returncode}) before {what}:\n{out}\n{err}")


def _opened_for_writing(gate: Path) -> Callable[[], bool]:
    """Opening the FIFO for writing (and closing it) lets its blocked reader go on; it fails at
    once (ENXIO) while the reader has not opened it yet."""

    def check() -> bool:
        try:
            fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return False
            raise
        os.close(fd)
        return True

    return check


def test_cancel_a_running_backfill_from_another_process(project: Project) -> None:
    project.write("gated.py", GATED)
    gate, entered = project.root / "gate", project.root / "gate.entered"
    os.mkfifo(gate)
    gated = ("-p", "gated:pipeline")
    proc = subprocess.Popen(
        [
            *flowstone_command(),
            *gated,
            "backfill",
            "source",
            "summary",
            "--from",
            "2025-01-01",
            "--to",
            "2025-01-05",
        ],
        cwd=project.root,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _poll(proc, entered.exists, "reaching the blocked step")
        listed = project.run(*gated, "backfill", "list").stdout
        [backfill_id] = re.findall(r"│ ([0-9a-f]{12}) +│ running ", listed)
        refused = project.run(*gated, "backfill", "resume", backfill_id, expect=2)
        assert "is running" in refused.stderr and "backfill cancel" in refused.stderr
        assert_no_traceback(refused)
        cancel = project.run(*gated, "backfill", "cancel", backfill_id, "--reason", "wrong range")
        assert re.search(rf"backfill {backfill_id}[0-9a-f]{{20}}: cancel requested", cancel.stdout), cancel
        waiting = project.run(*gated, "backfill", "status", backfill_id)
        assert summary(waiting)["status"] == "running"
        assert "cancel requested: queued steps will not start" in waiting.stdout
        _poll(proc, _opened_for_writing(gate), "releasing the blocked step")
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=DEADLINE)
    done = Result(("backfill", "..."), proc.returncode, out, err)
    assert done.code == 1, str(done)  # not succeeded
    # The blocked step finished; the steps after it were skipped.
    status, succeeded, failed, skipped, queued, running, total, _ = counts(done)
    assert (status, failed, queued, running, total) == ("cancelled", "0", "0", "0", "10")
    assert int(succeeded) >= 2 and int(succeeded) + int(skipped) == 10  # source 01 and 02 at least
    assert_no_traceback(done)

    resumed = project.run(*gated, "backfill", "resume", backfill_id)
    assert counts(resumed) == (
        "succeeded",
        str(10 - int(succeeded)),
        "0",
        succeeded,
        "0",
        "0",
        "10",
        succeeded,
    )
    assert status_row(project, "summary", *gated) == ["31", "5", "0", "26", "0"]


def test_invalidate_downstream_then_materialize_stale(project: Project) -> None:
    project.run("backfill", "daily_report", "--from", "2025-01-01", "--to", "2025-01-05")

    invalidated = project.run("invalidate", "raw_events", "--partition", "2025-01-03", "--downstream")
    assert "3 partition(s) marked stale" in invalidated.stdout
    for asset in QUICKSTART_ASSETS:
        assert status_row(project, asset) == ["365", "4", "1", "360", "0"]
    assert status_row(project, "user_profiles") == ["1", "1", "0", "0", "0"]

    # Without --stale the invalidated partition counts as done: nothing to do.
    assert "nothing to do" in project.run("materialize", "daily_report", "--partitions", "2025-01-03").stdout
    stale = project.run("materialize", "daily_report", "--partitions", "2025-01-03", "--stale")
    steps = step_lines(stale.stdout)
    assert set(steps) == set(QUICKSTART_ASSETS), stale
    assert all(line.startswith("✓") and "[2025-01-03]" in line for line in steps.values()), stale
    for asset in QUICKSTART_ASSETS:
        assert status_row(project, asset) == ["365", "5", "0", "360", "0"]

    # Several partitions at once, each its own step per asset.
    both = project.run("materialize", "daily_report", "--partitions", "2025-01-10,2025-01-11")
    assert "materializing 6 step(s)" in both.stdout
    lines = [line.strip() for line in both.stdout.splitlines() if line.strip().startswith("✓")]
    assert len(lines) == 6 and sum("[2025-01-10]" in line for line in lines) == 3, both
    for asset in QUICKSTART_ASSETS:
        assert status_row(project, asset) == ["365", "7", "0", "358", "0"]

    bad = project.run("invalidate", "raw_events", expect=2)
    assert "give --partition or --all" in bad.stderr
    assert_no_traceback(bad)

    two_ways = project.run(
        "materialize", "daily_report", "--partition", "2025-01-10", "--partitions", "2025-01-11", expect=2
    )
    assert "give --partition or --partitions, not both" in two_ways.stderr
    assert_no_traceback(two_ways)


def test_dynamic_partitions_add_list_remove(project: Project) -> None:
    project.write("tenants.py", TENANTS)
    tenants = ("-p", "tenants:pipeline")

    added = project.run(*tenants, "partitions", "add", "customers", "acme", "globex", "acme")
    assert "2 key(s) added to 'customers'" in added.stdout
    assert "0 key(s) added" in project.run(*tenants, "partitions", "add", "customers", "acme").stdout
    assert project.run(*tenants, "partitions", "list", "customers").stdout.split() == ["acme", "globex"]

    backfill = project.run(*tenants, "backfill", "invoices", "--all")
    assert counts(backfill) == ("succeeded", "2", "0", "0", "0", "0", "2", None)

    removed = project.run(*tenants, "partitions", "remove", "customers", "globex", "initech")
    assert "1 key(s) removed from 'customers'" in removed.stdout
    assert project.run(*tenants, "partitions", "list", "customers").stdout.split() == ["acme"]
    gone = project.run(*tenants, "backfill", "invoices", "--partitions", "globex", expect=2)
    assert "partition 'globex' is not valid for asset 'invoices'" in gone.stderr
    assert status_row(project, "invoices", *tenants)[0] == "1"  # partitions: the keys there are now

    for command in (("add", "customer", "x"), ("list", "custmers"), ("remove", "customer", "acme")):
        unknown = project.run(*tenants, "partitions", *command, expect=2)
        assert f"no dynamic partitions named '{command[1]}'" in unknown.stderr, unknown
        assert "did you mean 'customers'?" in unknown.stderr, unknown
        assert_no_traceback(unknown)
    assert project.run(*tenants, "partitions", "list", "customers").stdout.split() == ["acme"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--from", "nope", "--to", "2025-01-05"),
            "--from 'nope' is not a partition of asset 'daily_report'",
        ),
        (("--from", "2025-01-01", "--to", "2025-13-01"), "--to '2025-13-01' is not a partition"),
        (("--from", "2025-01-05", "--to", "2025-01-01"), "--from '2025-01-05' comes after --to '2025-01-01'"),
        ((), "choose the partitions one way"),
        (("--all", "--partitions", "2025-01-01"), "choose the partitions one way"),
        (
            ("--partitions", "2025-01-01,2024-12-31"),
            "partition '2024-12-31' is not valid for asset 'daily_report'",
        ),
        (("--partitions", " , "), "--partitions needs at least one key"),
    ],
)
def test_bad_backfill_input_exits_2(project: Project, args: tuple[str, ...], message: str) -> None:
    bad = project.run("backfill", "daily_report", *args, expect=2)
    assert message in bad.stderr, bad
    assert bad.stderr.startswith("error [validation_error]: "), bad
    assert_no_traceback(bad)
    assert "backfill " not in bad.stdout


def test_other_bad_backfill_commands_exit_2(project: Project) -> None:
    cases = [
        (("backfill", "user_profiles", "--all"), "none of ['user_profiles'] is partitioned"),
        (("backfill", "daily_reprot", "--all"), "unknown asset 'daily_reprot'"),
        (("backfill", "daily_report", "--all", "--parallel", "0"), "Invalid value for '--parallel'"),
        (("backfill", "cancel", "00000000"), "no backfill '00000000'"),
        (("backfill", "resume", "00000000"), "no backfill '00000000'"),
        (("status", "nope"), "unknown asset 'nope'"),
    ]
    for args, message in cases:
        bad = project.run(*args, expect=2)
        assert message in bad.stderr, bad
        assert_no_traceback(bad)
    assert "backfills" in project.run("backfill", "list").stdout  # an empty table
