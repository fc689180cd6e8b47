"""The whole quickstart through the CLI with its store on PostgreSQL (``--store``).

Uses the ``pg_url`` fixture of tests/conftest.py: a fresh schema per test, skipped (or failed under
``CI=true``) when the server is not reachable.
"""

from __future__ import annotations

import pytest

from ._cli import Project, row_for, step_lines, table_rows

pytestmark = [pytest.mark.acceptance, pytest.mark.postgres]


def test_quickstart_on_postgresql(project: Project, pg_url: str) -> None:
    store = ("--store", pg_url)

    assert "is valid: 4 assets" in project.run(*store, "check").stdout
    first = project.run(*store, "materialize", "daily_report", "--partition", "2025-01-15")
    assert set(step_lines(first.stdout)) == {"user_profiles", "raw_events", "cleaned_events", "daily_report"}
    run_id = first.run_id()
    day2 = ("materialize", "daily_report", "--partition", "2025-01-16")
    second = project.run(*store, *day2, "--parallel", "2")
    assert set(step_lines(second.stdout)) == {"raw_events", "cleaned_events", "daily_report"}
    assert "nothing to do" in project.run(*store, *day2).stdout

    # nothing went to the default SQLite store
    assert not (project.root / ".flowstone" / "flowstone.db").exists()

    runs = project.run(*store, "runs").stdout
    assert row_for(runs, run_id[:12])[1:5] == ["succeeded", "daily_report", "2025-01-15", "4"]
    show = project.run(*store, "run", "show", run_id[:8]).stdout
    assert [row[3] for row in table_rows(show) if row[0].isdigit()] == ["succeeded"] * 4, show

    assets = project.run(*store, "assets").stdout
    assert row_for(assets, "user_profiles")[-1] == "success"
    assert row_for(assets, "daily_report")[-1] == "2 ok"

    upstream = project.run(*store, "lineage", "upstream", "daily_report", "--partition", "2025-01-15").stdout
    assert {(r[0], r[1], r[2]) for r in table_rows(upstream) if r[0].isdigit()} == {
        ("1", "cleaned_events", "2025-01-15"),
        ("1", "user_profiles", "-"),
        ("2", "raw_events", "2025-01-15"),
    }
    impact = project.run(*store, "lineage", "impact", "user_profiles").stdout
    assert sorted(r[2] for r in table_rows(impact) if r[:2] == ["1", "daily_report"]) == [
        "2025-01-15",
        "2025-01-16",
    ]
