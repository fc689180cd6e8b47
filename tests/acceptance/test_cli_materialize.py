"""`flowstone materialize` on the quickstart: plans, re-runs, --force, --parallel, selections, bad input."""

from __future__ import annotations

import re

import pytest

from ._cli import Project, assert_no_traceback, row_for, rows_for, step_lines, table_rows

pytestmark = pytest.mark.acceptance

ALL = {"user_profiles", "raw_events", "cleaned_events", "daily_report"}


def _succeeded(result_stdout: str) -> set[str]:
    steps = step_lines(result_stdout)
    assert all(line.startswith("✓") for line in steps.values()), result_stdout
    return set(steps)


def test_quickstart_end_to_end(project: Project) -> None:
    before = project.run("assets").stdout
    for asset in ALL:
        assert row_for(before, asset)[-1] == "never"

    first = project.run("materialize", "daily_report", "--partition", "2025-01-15")
    assert "materializing 4 step(s) for partition 2025-01-15" in first.stdout
    assert _succeeded(first.stdout) == ALL
    steps = step_lines(first.stdout)
    assert steps["user_profiles"].startswith("✓ user_profiles (")  # not partitioned
    for asset in ALL - {"user_profiles"}:
        assert steps[asset].startswith(f"✓ {asset} [2025-01-15] (")
    order = [line.split()[1] for line in first.stdout.splitlines() if line.strip().startswith("✓")]
    assert order.index("raw_events") < order.index("cleaned_events") < order.index("daily_report")
    assert order.index("user_profiles") < order.index("daily_report")
    first_id = first.run_id()
    assert f"run {first_id} succeeded" in first.stdout

    again = project.run("materialize", "daily_report", "--partition", "2025-01-15")
    assert "nothing to do" in again.stdout
    assert "daily_report already materialized" in again.stdout
    assert step_lines(again.stdout) == {}

    forced = project.run("materialize", "daily_report", "--partition", "2025-01-15", "--force")
    assert "materializing 1 step(s)" in forced.stdout
    assert _succeeded(forced.stdout) == {"daily_report"}  # --force re-runs the selection only

    parallel = project.run("materialize", "daily_report", "--partition", "2025-01-16", "--parallel", "2")
    # user_profiles is not partitioned: its one value from the first run is reused
    assert _succeeded(parallel.stdout) == ALL - {"user_profiles"}
    assert "run " in parallel.stdout and "succeeded" in parallel.stdout
    parallel_id = parallel.run_id()

    runs = project.run("runs").stdout
    listed = [row for row in table_rows(runs) if re.fullmatch(r"[0-9a-f]{12}", row[0])]
    assert len(listed) == 4, runs
    assert listed[0][0] == parallel_id[:12]  # newest first
    assert listed[-1][0] == first_id[:12]
    assert all(row[1] == "succeeded" for row in listed), runs
    oldest = row_for(runs, first_id[:12])
    assert oldest[2:5] == ["daily_report", "2025-01-15", "4"], oldest

    shown = project.run("run", "show", first_id[:8]).stdout
    assert f"run {first_id}" in shown
    assert "succeeded" in shown.splitlines()[0]
    step_rows = {row[1]: row for row in table_rows(shown) if row[0].isdigit()}
    assert set(step_rows) == ALL
    assert all(row[3] == "succeeded" for row in step_rows.values()), shown
    assert step_rows["daily_report"][2] == "2025-01-15"
    assert step_rows["user_profiles"][2] == "-"

    after = project.run("assets").stdout
    profiles = row_for(after, "user_profiles")
    assert profiles[-1] == "success"
    for asset in ("raw_events", "cleaned_events", "daily_report"):
        assert row_for(after, asset)[-1] == "2 ok", after  # two partitions, both succeeded
    assert row_for(after, "daily_report")[1] == "cleaned_events, user_profiles"
    assert row_for(after, "cleaned_events")[2] == "filesystem"


def test_selection_syntax_and_forcing_upstream(project: Project) -> None:
    ingest = project.run("materialize", "tag:ingest", "--partition", "2025-01-15")
    assert _succeeded(ingest.stdout) == {"user_profiles", "raw_events"}

    downstream = project.run("materialize", "raw_events+", "--partition", "2025-01-16")
    # user_profiles is outside the selection and already materialized: not re-run
    assert _succeeded(downstream.stdout) == {"raw_events", "cleaned_events", "daily_report"}

    # `+daily_report` selects daily_report and all of its upstream, so --force re-runs all of them
    upstream = project.run("materialize", "+daily_report", "--partition", "2025-01-16", "--force")
    assert _succeeded(upstream.stdout) == ALL

    # everything partition 2025-01-15 still lacks, and nothing it already has
    missing = project.run("materialize", "daily_report", "--partition", "2025-01-15")
    assert _succeeded(missing.stdout) == {"cleaned_events", "daily_report"}

    # user_profiles changed after daily_report was built from it: impact flags that as stale
    fresh = rows_for(project.run("lineage", "impact", "user_profiles").stdout, "1")
    assert [row[-1] for row in fresh] == ["no", "no"], fresh
    project.run("materialize", "user_profiles", "--force")
    impact = project.run("lineage", "impact", "user_profiles").stdout
    reports = rows_for(impact, "1")
    assert sorted(row[2] for row in reports) == ["2025-01-15", "2025-01-16"], impact
    assert all(row[1] == "daily_report" and row[-1] == "yes" for row in reports), impact


def test_bad_selections_and_partitions_are_clear_errors_and_start_nothing(project: Project) -> None:
    typo = project.run("materialize", "daily_reprot", "--partition", "2025-01-15", expect=2)
    assert "unknown asset 'daily_reprot'" in typo.stderr
    assert "did you mean 'daily_report'?" in typo.stderr

    no_tag = project.run("materialize", "tag:nope", "--partition", "2025-01-15", expect=2)
    assert "no asset has tag 'nope'" in no_tag.stderr

    bad_key = project.run("materialize", "daily_report", "--partition", "2025-13-45", expect=2)
    assert "'2025-13-45'" in bad_key.stderr
    assert "YYYY-MM-DD" in bad_key.stderr

    out_of_range = project.run("materialize", "daily_report", "--partition", "2026-01-01", expect=2)
    assert "2026-01-01" in out_of_range.stderr
    assert "outside 2025-01-01..2025-12-31" in out_of_range.stderr

    no_key = project.run("materialize", "daily_report", expect=2)
    assert "is partitioned" in no_key.stderr and "--partition" in no_key.stderr

    for result in (typo, no_tag, bad_key, out_of_range, no_key):
        assert_no_traceback(result)
        assert "materializing" not in result.stdout

    runs = project.run("runs").stdout
    assert not any(re.fullmatch(r"[0-9a-f]{12}", row[0]) for row in table_rows(runs)), runs
