"""Read-only commands on a materialized quickstart: `lineage`, `runs`, `run show`, `assets`.

One project per module, materialized for two days, shared by the tests here (they only read it).
"""

from __future__ import annotations

import pytest

from ._cli import Project, assert_no_traceback, copy_quickstart, row_for, rows_for, table_rows

pytestmark = pytest.mark.acceptance


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, list[str]]:
    project = copy_quickstart(tmp_path_factory.mktemp("inspect") / "quickstart")
    run_ids = [
        project.run("materialize", "daily_report", "--partition", day).run_id()
        for day in ("2025-01-15", "2025-01-16")
    ]
    return project, run_ids


def _lineage(text: str) -> list[tuple[str, str, str, str, str]]:
    """(depth, asset, partition, materialization, status) of each row of a lineage table."""
    return [tuple(row[:5]) for row in table_rows(text) if row[0].isdigit()]  # type: ignore[misc]


def test_lineage_upstream_lists_exact_inputs_with_depths(materialized: tuple[Project, list[str]]) -> None:
    project, _ = materialized
    full = project.run("lineage", "upstream", "daily_report", "--partition", "2025-01-15").stdout
    assert "upstream of daily_report [2025-01-15]" in full
    rows = _lineage(full)
    assert {(d, a, p) for d, a, p, _, _ in rows} == {
        ("1", "cleaned_events", "2025-01-15"),
        ("1", "user_profiles", "-"),
        ("2", "raw_events", "2025-01-15"),
    }
    assert all(status == "success" and len(mat) == 12 for _, _, _, mat, status in rows), full

    shallow = project.run("lineage", "upstream", "daily_report", "--partition", "2025-01-15", "--depth", "1")
    assert {(d, a) for d, a, _, _, _ in _lineage(shallow.stdout)} == {
        ("1", "cleaned_events"),
        ("1", "user_profiles"),
    }

    # the other day was built from other materializations of the partitioned inputs, the same profiles
    other = _lineage(project.run("lineage", "upstream", "daily_report", "--partition", "2025-01-16").stdout)
    mats = {a: m for _, a, _, m, _ in rows}
    other_mats = {a: m for _, a, _, m, _ in other}
    assert other_mats["user_profiles"] == mats["user_profiles"]
    assert other_mats["cleaned_events"] != mats["cleaned_events"]
    assert other_mats["raw_events"] != mats["raw_events"]


def test_lineage_downstream_and_impact(materialized: tuple[Project, list[str]]) -> None:
    project, _ = materialized
    down = project.run("lineage", "downstream", "raw_events", "--partition", "2025-01-15").stdout
    assert {(d, a, p) for d, a, p, _, _ in _lineage(down)} == {
        ("1", "cleaned_events", "2025-01-15"),
        ("2", "daily_report", "2025-01-15"),
    }

    impact = project.run("lineage", "impact", "user_profiles").stdout
    reports = rows_for(impact, "1")
    assert sorted(row[2] for row in reports) == ["2025-01-15", "2025-01-16"], impact
    assert all(row[1] == "daily_report" and row[4] == "success" and row[-1] == "no" for row in reports)

    near = project.run("lineage", "impact", "raw_events", "--partition", "2025-01-16", "--depth", "1").stdout
    assert [(d, a, p) for d, a, p, _, _ in _lineage(near)] == [("1", "cleaned_events", "2025-01-16")]


def test_lineage_bad_input_is_a_clear_error(materialized: tuple[Project, list[str]]) -> None:
    project, _ = materialized
    unknown = project.run("lineage", "upstream", "daily_reports", "--partition", "2025-01-15", expect=2)
    assert "unknown asset 'daily_reports'" in unknown.stderr
    assert "did you mean 'daily_report'?" in unknown.stderr

    no_key = project.run("lineage", "upstream", "daily_report", expect=2)
    assert "is partitioned" in no_key.stderr
    bad_key = project.run("lineage", "downstream", "raw_events", "--partition", "2025-02-30", expect=2)
    assert "'2025-02-30'" in bad_key.stderr
    for result in (unknown, no_key, bad_key):
        assert_no_traceback(result)
        assert result.stdout == ""


def test_runs_run_show_and_assets(materialized: tuple[Project, list[str]]) -> None:
    project, (first, second) = materialized
    runs = project.run("runs").stdout
    assert [row[0] for row in table_rows(runs)] == [second[:12], first[:12]]  # newest first
    assert row_for(runs, first[:12])[1:5] == ["succeeded", "daily_report", "2025-01-15", "4"]
    assert row_for(runs, second[:12])[1:5] == ["succeeded", "daily_report", "2025-01-16", "3"]

    show = project.run("run", "show", second[:7]).stdout
    assert show.startswith(f"run {second}")
    assert "selection: daily_report" in show and "partition: 2025-01-16" in show
    assert [row[1] for row in table_rows(show)] == ["raw_events", "cleaned_events", "daily_report"]

    missing = project.run("run", "show", "deadbeef", expect=2)
    assert "no run 'deadbeef'" in missing.stderr

    assets = project.run("assets").stdout
    assert row_for(assets, "user_profiles")[-1] == "success"
    for name in ("raw_events", "cleaned_events", "daily_report"):
        row = row_for(assets, name)
        assert row[-1] == "2 ok", assets
        assert row[3] == "DailyPartitions"
        assert row[4] != "-"  # last materialized
