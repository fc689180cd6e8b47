"""`flowstone schedules list|on|off|preview|history`, `flowstone daemon` and `flowstone dev`.

The real command in a subprocess on a copy of the quickstart with a schedule module of its own
(``scheduled_<test>.py``, so the tests' in-process imports never share a module). The CLI reads
the real clock: outputs that depend on it (preview, next tick) are checked by their shape and by
the rules (02:30 Oslo time, yesterday's partition), not by fixed dates. History is made by a
``Daemon`` on the project's store with a ``FakeClock`` in this process, then read by the CLI.
``flowstone daemon`` is stopped with SIGTERM / SIGINT once it has said it started (its stderr is
read line by line: nothing sleeps).
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone._pipeline import load_pipeline
from flowstone.schedules import Daemon
from flowstone.store import _tables as t
from flowstone.testing import FakeClock

from ._cli import CLI_TIMEOUT, Project, assert_no_traceback, cli_env, flowstone_command, line_of, row_for

pytestmark = pytest.mark.acceptance

SCHEDULED = """
    import flowstone as fs

    pipeline = fs.Pipeline("scheduled")
    days = fs.DailyPartitions(start="2025-01-01", timezone="Europe/Oslo")


    @pipeline.asset(partitioned_by=days)
    def daily_sales(context):
        return str(context.partition_key)


    @pipeline.asset()
    def refreshed(context):
        return 1


    pipeline.schedule("nightly", cron="30 2 * * *", timezone="Europe/Oslo", target=[daily_sales])


    @pipeline.schedule(cron="0 * * * *", target=["refreshed"], catch_up="none")
    def hourly(tick):
        return None


    @pipeline.sensor(interval="5m", target=["refreshed"])
    def watcher(context, cursor):
        return fs.SensorResult(skip_reason="nothing to see")
"""


@pytest.fixture
def scheduled(project: Project) -> Project:
    """The quickstart copy with ``scheduled_<dir>.py`` as its pipeline."""
    module = f"scheduled_{uuid.uuid4().hex[:12]}"
    project.write(f"{module}.py", SCHEDULED)
    project.write(
        "flowstone.toml",
        f'pipeline = "{module}:pipeline"\nstore = "sqlite:///.flowstone/flowstone.db"\n',
    )
    return project


def module_of(project: Project) -> str:
    [path] = project.root.glob("scheduled_*.py")
    return path.stem


def store_of(project: Project) -> str:
    return f"sqlite:///{project.root / '.flowstone' / 'flowstone.db'}"


def in_process_app(project: Project, clock: FakeClock) -> fs.FlowStone:
    pipeline = load_pipeline(f"{module_of(project)}:pipeline", search_path=[project.root])
    return fs.FlowStone(
        pipeline, store=store_of(project), storage_dir=project.root / ".flowstone" / "storage", clock=clock
    )


def audit_rows(project: Project) -> list[tuple[str, str, str | None]]:
    engine = sa.create_engine(store_of(project))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.audit_log.c.action, t.audit_log.c.resource_id, t.audit_log.c.reason)
                .where(t.audit_log.c.resource_type.in_(["schedule", "sensor"]))
                .order_by(t.audit_log.c.id)
            ).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows]


def daemon_rows(project: Project) -> list[sa.Row[tuple[object, ...]]]:
    engine = sa.create_engine(store_of(project))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(t.daemons)).all())
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- list, on, off
def test_list_off_on_are_persisted_and_audited(scheduled: Project) -> None:
    listing = scheduled.run("schedules", "list").stdout
    nightly = row_for(listing, "nightly")
    assert nightly[1] == "on"
    assert "30 2 * * * (Europe/Oslo, catch_up=latest)" in nightly[2]
    assert re.search(r"next \d{4}-\d\d-\d\d 0[23]:[03]0\+0[12]:00", nightly[2]), nightly
    assert nightly[3] == "daily_sales" and nightly[5] == "-"
    assert row_for(listing, "hourly")[1] == "on"

    off = scheduled.run("schedules", "off", "nightly", "--reason", "warehouse migration")
    assert off.stdout.strip() == "schedule 'nightly' is off"
    assert scheduled.run("sensors", "off", "watcher").stdout.strip() == "sensor 'watcher' is off"
    listing = scheduled.run("schedules", "list").stdout  # another process: read from the store
    assert (row_for(listing, "nightly")[1], row_for(listing, "hourly")[1]) == ("off", "on")
    assert scheduled.run("schedules", "on", "nightly").stdout.strip() == "schedule 'nightly' is on"
    again = scheduled.run("schedules", "on", "nightly")
    assert again.stdout.strip() == "schedule 'nightly' is on (it was on already)"

    assert audit_rows(scheduled) == [
        ("schedule.off", "nightly", "warehouse migration"),
        ("sensor.off", "watcher", None),
        ("schedule.on", "nightly", None),
        ("schedule.on", "nightly", None),
    ]
    unknown = scheduled.run("schedules", "off", "nighlty", expect=2)
    assert "no schedule 'nighlty'" in unknown.stderr and "did you mean 'nightly'?" in unknown.stderr
    assert_no_traceback(unknown)


# ---------------------------------------------------------------------- preview
def test_preview_shows_the_next_ticks_in_the_zone_and_their_partitions(scheduled: Project) -> None:
    result = scheduled.run("schedules", "preview", "nightly", "--next", "5")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5, result
    days = []
    for line in lines:
        match = re.fullmatch(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d)(\+0[12]:00)  ->  (\d{4}-\d\d-\d\d)", line)
        assert match, line
        day, at, _offset, partition = match.groups()
        assert at == "02:30" or at == "03:00"  # 03:00 only where 02:30 does not exist (spring)
        assert date.fromisoformat(partition) == date.fromisoformat(day) - timedelta(
            days=1
        )  # the day just closed
        days.append(date.fromisoformat(day))
    assert [b - a for a, b in itertools.pairwise(days)] == [timedelta(days=1)] * 4
    assert days[0] - datetime.now(UTC).date() <= timedelta(days=2)

    hourly = scheduled.run("schedules", "preview", "hourly").stdout.strip().splitlines()
    assert len(hourly) == 5 and all(
        line.endswith("->  (skipped: the partition function chose no partition for this tick)")
        for line in hourly
    )


# ---------------------------------------------------------------------- history
def test_history_shows_ticks_with_runs_and_skip_reasons(scheduled: Project) -> None:
    oslo = datetime.fromisoformat
    clock = FakeClock(oslo("2025-03-27T12:00+01:00"))
    app = in_process_app(scheduled, clock)
    try:
        Daemon(app).tick()  # first look
        clock.advance(3 * 24 * 3600)  # down for three nights, back on 2025-03-30 at 12:00 (CEST)
        report = Daemon(app).tick()
        [(_, _, [run_id])] = [x for x in report.launched if x[1] == "nightly"]
    finally:
        app.close()

    result = scheduled.run("schedules", "history", "nightly")
    assert row_for(result.stdout, "2025-03-30 03:00+02:00") == [
        "2025-03-30 03:00+02:00",
        "launched",
        "2025-03-29",
        run_id[:12],
        "",
    ]
    for night in ("2025-03-28 02:30+01:00", "2025-03-29 02:30+01:00"):
        _, status, partitions, runs, reason = row_for(result.stdout, night)
        assert (status, partitions, runs) == ("skipped", "-", "-")
        assert reason.startswith("missed while no daemon evaluated the schedule; catch_up=latest")
    empty = scheduled.run("sensors", "history", "watcher")  # it never asked for a run
    assert "no ticks recorded for sensor 'watcher' yet" in empty.stdout


# ---------------------------------------------------------------------- the daemon
def test_daemon_once_prints_what_the_pass_did(scheduled: Project) -> None:
    result = scheduled.run("daemon", "--once")
    report = json.loads(result.stdout)
    assert set(report) == {"launched", "skipped", "errors", "timeouts", "housekeeping"}
    assert report["launched"] == [] and report["errors"] == []
    assert ["sensor", "watcher", "nothing to see"] in report["skipped"]
    [row] = daemon_rows(scheduled)
    assert row.stopped_at is not None  # --once leaves no daemon that looks alive


@pytest.mark.parametrize(("command", "sig"), [("daemon", signal.SIGTERM), ("dev", signal.SIGINT)])
def test_daemon_stops_gracefully_on_a_signal(scheduled: Project, command: str, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [*flowstone_command(), command, "--interval", "0.2"],
        cwd=scheduled.root,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # printed once the daemon is set up, before its first pass
        assert "2 schedule(s), 1 sensor(s)" in first, first + proc.stderr.read()
        assert ("in this process" in first) and "every 0.2s" in first
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=CLI_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopping after the pass in progress" in err and err.rstrip().endswith("stopped")
    assert "Traceback" not in err
    [row] = daemon_rows(scheduled)
    assert row.stopped_at is not None and row.heartbeat_at is not None


# ---------------------------------------------------------------------- definitions
def test_bad_schedules_fail_the_check_naming_file_and_line(scheduled: Project) -> None:
    bad = scheduled.write(
        "bad_schedules.py",
        """
        import flowstone as fs

        pipeline = fs.Pipeline("bad")


        @pipeline.asset()
        def thing(context):
            return 1


        pipeline.schedule("typo", cron="0 2 * * *", target=["thnig"])
        pipeline.schedule("other", cron="0 3 * * *", target=["nothing_like_it"])
        """,
    )
    result = scheduled.run("check", "bad_schedules:pipeline", expect=2)
    assert "pipeline is invalid (2 problem(s))" in result.stderr
    assert f"bad_schedules.py:{line_of(bad, 'thnig')}: schedule 'typo' targets 'thnig'" in result.stderr
    assert f"bad_schedules.py:{line_of(bad, 'nothing_like_it')}: schedule 'other'" in result.stderr
    assert_no_traceback(result)

    zone = scheduled.write(
        "bad_zone.py",
        """
        import flowstone as fs

        pipeline = fs.Pipeline("bad")


        @pipeline.asset()
        def thing(context):
            return 1


        @pipeline.schedule(cron="0 2 * * *", timezone="Europe/Olso", target=[thing])
        def nightly(tick):
            return None
        """,
    )
    result = scheduled.run("check", "bad_zone:pipeline", expect=2)
    where = f"({line_of(zone, 'def nightly') - 1}|{line_of(zone, 'def nightly')})"  # decorator or def
    expected = rf"bad_zone\.py:{where}: schedule 'nightly': unknown timezone 'Europe/Olso'"
    assert re.search(expected, result.stderr), result
    assert_no_traceback(result)
