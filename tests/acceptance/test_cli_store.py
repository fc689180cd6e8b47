"""`flowstone store prune` and the event_retention setting, through the real command."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from ._cli import Project, assert_no_traceback, copy_quickstart

pytestmark = pytest.mark.acceptance


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return copy_quickstart(tmp_path / "quickstart")


def _age_events(project: Project, run_id: str, days: int) -> int:
    """Make one run's events ``days`` old, as if that much time had passed; returns how many."""
    with sqlite3.connect(project.root / ".flowstone" / "flowstone.db") as db:
        cursor = db.execute(
            "UPDATE flowstone_events SET at = datetime('now', ?) WHERE run_id = ?", (f"-{days} days", run_id)
        )
        return cursor.rowcount


def _count_events(project: Project, run_id: str) -> int:
    with sqlite3.connect(project.root / ".flowstone" / "flowstone.db") as db:
        (count,) = db.execute("SELECT count(*) FROM flowstone_events WHERE run_id = ?", (run_id,)).fetchone()
        return int(count)


def test_prune_keeps_events_younger_than_the_retention_and_deletes_older(project: Project) -> None:
    old = project.run("materialize", "user_profiles").run_id()
    new = project.run("materialize", "user_profiles", "--force").run_id()
    aged = _age_events(project, old, days=10)
    assert aged > 0

    # the default retention (30 days) keeps ten-day-old events
    kept = project.run("store", "prune")
    assert "deleted 0 event(s) older than 30d" in kept.stdout
    assert _count_events(project, old) == aged

    # a shorter retention in flowstone.toml is the new default
    config = project.root / "flowstone.toml"
    config.write_text(config.read_text() + 'event_retention = "7d"\n')
    dry = project.run("store", "prune", "--dry-run")
    assert f"would delete {aged} event(s) older than 7d" in dry.stdout
    assert _count_events(project, old) == aged
    done = project.run("store", "prune")
    assert f"deleted {aged} event(s) older than 7d" in done.stdout
    assert _count_events(project, old) == 0
    assert _count_events(project, new) > 0
    # the runs themselves are kept
    assert "succeeded" in project.run("run", "show", old).stdout


def test_the_flag_overrides_the_setting(project: Project) -> None:
    run = project.run("materialize", "user_profiles").run_id()
    aged = _age_events(project, run, days=3)
    result = project.run("store", "prune", "--older-than", "2d", env={"FLOWSTONE_EVENT_RETENTION": "90d"})
    assert f"deleted {aged} event(s) older than 2d" in result.stdout
    assert _count_events(project, run) == 0


def test_a_bad_duration_names_the_flag_or_the_setting(project: Project) -> None:
    bad_flag = project.run("store", "prune", "--older-than", "soon", expect=2)
    assert_no_traceback(bad_flag)
    assert "[validation_error]" in bad_flag.stderr and "--older-than" in bad_flag.stderr
    assert "soon" in bad_flag.stderr

    config = project.root / "flowstone.toml"
    config.write_text(config.read_text() + 'event_retention = "a while"\n')
    bad_setting = project.run("store", "prune", expect=2)
    assert_no_traceback(bad_setting)
    assert "event_retention" in bad_setting.stderr and "flowstone.toml" in bad_setting.stderr


def test_inspection_commands_do_not_need_the_resources_secrets(project: Project) -> None:
    """A resource's missing variable stops what runs assets, not what only reads the store."""
    run = project.run("materialize", "user_profiles").run_id()
    config = project.root / "flowstone.toml"
    config.write_text(config.read_text() + '\n[resources.db]\ntype = "sql"\nurl = "${QUICKSTART_DB_URL}"\n')

    assert "succeeded" in project.run("runs").stdout
    assert "user_profiles" in project.run("run", "show", run).stdout
    project.run("store", "prune", "--dry-run")
    project.run("assets")

    blocked = project.run("materialize", "user_profiles", expect=2)
    assert_no_traceback(blocked)
    assert "QUICKSTART_DB_URL" in blocked.stderr and "resource 'db'" in blocked.stderr
    # doctor names the resource and the variable, and does not blame the store
    doctor = project.run("doctor", "--json", expect=1)
    assert '"store"' in doctor.stdout
    checks = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
    assert checks["store"]["ok"] is True, doctor
    assert checks["db"]["ok"] is False and "QUICKSTART_DB_URL" in checks["db"]["detail"], doctor
