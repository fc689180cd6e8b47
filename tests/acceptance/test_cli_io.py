"""The CLI and storage: `catalog rebuild` after losing the metadata database, `[io.NAME]` settings
in flowstone.toml, and `check` reporting bad `io_config` and unknown manager types."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._cli import Project, assert_no_traceback, copy_quickstart, line_of

pytestmark = pytest.mark.acceptance


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return copy_quickstart(tmp_path / "quickstart")


def test_catalog_rebuild_after_the_database_is_lost(project: Project) -> None:
    project.run("materialize", "daily_report", "--partition", "2025-01-15")
    storage = project.root / ".flowstone" / "storage"
    sidecars = sorted(p.relative_to(storage).as_posix() for p in storage.rglob("*._asset.json"))
    assert "daily_report/p=2025-01-15._asset.json" in sidecars
    (project.root / ".flowstone" / "flowstone.db").unlink()

    dry = project.run("catalog", "rebuild", "--dry-run")
    assert f"would import {len(sidecars)} materialization(s); 0 already known; 0 skipped" in dry.stdout
    done = project.run("catalog", "rebuild")
    assert f"imported {len(sidecars)} materialization(s)" in done.stdout

    again = project.run("materialize", "daily_report", "--partition", "2025-01-15")
    assert "nothing to do" in again.stdout
    lineage = project.run("lineage", "upstream", "daily_report", "--partition", "2025-01-15").stdout
    assert "raw_events" in lineage and "user_profiles" in lineage
    assert "0 skipped" in project.run("catalog", "rebuild").stdout


def test_io_table_in_flowstone_toml_configures_managers(project: Project) -> None:
    config = project.root / "flowstone.toml"
    config.write_text(
        config.read_text()
        + '\n[io.filesystem]\nroot = "lake"\nformat = "json"\n'
        + '\n[io.archive]\ntype = "filesystem"\nroot = "cold"\n'
    )
    project.write(
        "quickstart.py",
        """
        import flowstone as fs

        pipeline = fs.Pipeline("quickstart")


        @pipeline.asset()
        def numbers(context):
            return [1, 2, 3]


        @pipeline.asset(io_manager="archive")
        def archived(context, numbers):
            return {"sum": sum(numbers)}
        """,
    )
    project.run("materialize", "archived")
    assert (project.root / "lake" / "numbers" / "value.json").read_text() == "[1, 2, 3]"
    assert (project.root / "cold" / "archived" / "value.pickle").is_file()
    assert (project.root / "cold" / "archived" / "value._asset.json").is_file()


def test_check_reports_bad_io_config_with_file_and_line(project: Project) -> None:
    module = project.write(
        "quickstart.py",
        """
        import flowstone as fs

        pipeline = fs.Pipeline("quickstart")


        @pipeline.asset(io_config={"format": "yaml"})
        def numbers(context):
            return [1, 2, 3]
        """,
    )
    result = project.run("check", expect=2)
    assert_no_traceback(result)
    line = line_of(module, "@pipeline.asset")
    assert f"quickstart.py:{line}: asset 'numbers' io_config for I/O manager 'filesystem'" in result.stderr
    assert "format must be one of ['json', 'pickle'], got 'yaml'" in result.stderr


def test_unknown_io_manager_type_in_config_is_a_clear_error(project: Project) -> None:
    config = project.root / "flowstone.toml"
    config.write_text(config.read_text() + '\n[io.lake]\ntype = "hdfs"\n')
    result = project.run("check", expect=2)
    assert_no_traceback(result)
    assert "[io.lake]: unknown I/O manager type 'hdfs'" in result.stderr


def test_io_options_read_environment_variables(project: Project, tmp_path: Path) -> None:
    config = project.root / "flowstone.toml"
    config.write_text(config.read_text() + '\n[io.filesystem]\nroot = "${QUICKSTART_LAKE}"\n')
    missing = project.run("materialize", "raw_events", "--partition", "2025-01-15", expect=2)
    assert_no_traceback(missing)
    assert "[io.filesystem]: root: environment variable QUICKSTART_LAKE is not set" in missing.stderr
    lake = tmp_path / "lake"
    project.run("materialize", "raw_events", "--partition", "2025-01-15", env={"QUICKSTART_LAKE": str(lake)})
    assert (lake / "raw_events" / "p=2025-01-15.pickle").is_file()
