"""Resources from flowstone.toml through the CLI: environment variables, a test profile that
overrides them, `flowstone doctor`, and a run whose resource cannot be set up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._cli import Project, assert_no_traceback, copy_quickstart

pytestmark = pytest.mark.acceptance

CONFIG = """
pipeline = "shop:pipeline"
store = "sqlite:///.flowstone/flowstone.db"

[resources.db]
type = "sql"
url = "${SHOP_DB_URL}"

[profiles.test.resources.db]
url = "sqlite:///test-data.db"
"""


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = copy_quickstart(tmp_path / "shop")
    (project.root / "flowstone.toml").write_text(CONFIG)
    project.write(
        "shop.py",
        """
        import sqlalchemy as sa

        import flowstone as fs

        pipeline = fs.Pipeline("shop")


        @pipeline.asset(requires=["db"])
        def answer(context):
            with context.resources.db.connect() as conn:
                return conn.execute(sa.text("SELECT 40 + 2")).scalar_one()
        """,
    )
    return project


def test_a_missing_variable_is_reported_before_anything_runs(project: Project) -> None:
    result = project.run("materialize", "answer", expect=2)
    assert_no_traceback(result)
    assert "SHOP_DB_URL" in result.stderr and "resource 'db'" in result.stderr
    doctor = project.run("doctor", "--json", expect=1)
    report = json.loads(doctor.stdout)
    assert report["ok"] is False
    assert any("SHOP_DB_URL" in check["detail"] for check in report["checks"])


def test_the_test_profile_overrides_the_resource(project: Project) -> None:
    doctor = project.run("--profile", "test", "doctor")
    assert "all checks passed" in doctor.stdout
    assert "db" in doctor.stdout
    run = project.run("--profile", "test", "materialize", "answer")
    assert "answer" in run.stdout and "succeeded" in run.stdout
    unknown = project.run("--profile", "staging", "doctor", expect=None)
    assert unknown.code != 0 and "staging" in unknown.output and "test" in unknown.output


def test_the_environment_variable_is_used_when_set(project: Project, tmp_path: Path) -> None:
    env = {"SHOP_DB_URL": f"sqlite:///{tmp_path / 'prod.db'}"}
    run = project.run("materialize", "answer", env=env)
    assert "succeeded" in run.stdout
