"""Where the CLI's settings come from: flowstone.toml < FLOWSTONE_* variables < --store/--pipeline.

Also `[tool.flowstone]` in pyproject.toml, finding the config from a subdirectory, and clear errors
for unknown keys, unreadable files and a missing pipeline setting.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ._cli import QUICKSTART, Project, assert_no_traceback, run_flowstone

pytestmark = pytest.mark.acceptance


def _one_asset_pipeline(project: Project, module: str, name: str) -> None:
    project.write(
        f"{module}.py",
        f"""
        import flowstone as fs

        pipeline = fs.Pipeline("{name}")


        @pipeline.asset()
        def only(context):
            return 1
        """,
    )


def test_pipeline_setting_precedence(project: Project) -> None:
    _one_asset_pipeline(project, "from_env", "env_pipeline")
    _one_asset_pipeline(project, "from_flag", "flag_pipeline")
    env = {"FLOWSTONE_PIPELINE": "from_env:pipeline"}

    assert "pipeline 'quickstart' is valid" in project.run("check").stdout
    assert "pipeline 'env_pipeline' is valid" in project.run("check", env=env).stdout
    flagged = project.run("--pipeline", "from_flag:pipeline", "check", env=env)
    assert "pipeline 'flag_pipeline' is valid" in flagged.stdout


def test_store_setting_precedence(project: Project) -> None:
    toml = project.root / "flowstone.toml"
    toml.write_text(toml.read_text().replace(".flowstone/flowstone.db", "from_toml.db"))
    env = {"FLOWSTONE_STORE_URL": "sqlite:///from_env.db"}

    def made() -> list[str]:
        return sorted(p.name for p in project.root.glob("*.db"))

    project.run("materialize", "user_profiles")
    assert made() == ["from_toml.db"]
    assert not (project.root / ".flowstone" / "flowstone.db").exists()

    # env beats the file: a different, empty store
    assert "nothing to do" not in project.run("materialize", "user_profiles", env=env).stdout
    assert made() == ["from_env.db", "from_toml.db"]

    # the flag beats both
    flag_db = project.root / "elsewhere" / "from_flag.db"
    flagged = project.run("--store", f"sqlite:///{flag_db}", "materialize", "user_profiles", env=env)
    assert "nothing to do" not in flagged.stdout
    assert flag_db.exists()

    # and each store kept its own records: the file's store still has user_profiles
    again = project.run("materialize", "user_profiles")
    assert "nothing to do" in again.stdout


def test_pyproject_tool_section_found_from_a_subdirectory(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "notebooks" / "deep").mkdir(parents=True)
    shutil.copy2(QUICKSTART / "quickstart.py", root / "quickstart.py")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "shop-analytics"\nversion = "0"\n\n'
        '[tool.flowstone]\npipeline = "quickstart:pipeline"\nstore = "sqlite:///state/meta.db"\n'
    )
    sub = root / "notebooks" / "deep"

    assert "pipeline 'quickstart' is valid: 4 assets" in run_flowstone("check", cwd=sub).stdout
    run_flowstone("materialize", "user_profiles", cwd=sub)
    assert (root / "state" / "meta.db").exists()  # relative to the project, not to the cwd
    assert not (sub / "state").exists()


def test_explicit_config_file(project: Project, tmp_path: Path) -> None:
    (project.root / "flowstone.toml").unlink()
    config = tmp_path / "conf" / "analytics.toml"
    config.parent.mkdir()
    config.write_text(f'pipeline = "quickstart:pipeline"\nstore = "sqlite:///{tmp_path}/conf.db"\n')
    # the pipeline module is looked for next to the config file, so point there
    shutil.copy2(QUICKSTART / "quickstart.py", config.parent / "quickstart.py")

    assert "is valid: 4 assets" in project.run("--config", str(config), "check").stdout
    missing = project.run("--config", str(tmp_path / "nope.toml"), "check", expect=2)
    assert "nope.toml" in missing.stderr and "does not exist" in missing.stderr


def test_unknown_key_names_file_and_key(project: Project) -> None:
    toml = project.root / "flowstone.toml"
    toml.write_text(toml.read_text() + 'stroe = "sqlite:///typo.db"\n')

    result = project.run("check", expect=2)
    assert str(toml) in result.stderr
    assert "unknown setting 'stroe'" in result.stderr
    assert "did you mean 'store'?" in result.stderr
    assert_no_traceback(result)


def test_unreadable_config_and_wrong_types(project: Project) -> None:
    toml = project.root / "flowstone.toml"
    toml.write_text('pipeline = "quickstart:pipeline"\nstore = [\n')
    broken = project.run("check", expect=2)
    assert str(toml) in broken.stderr and "cannot read config" in broken.stderr

    toml.write_text("pipeline = 42\n")
    typed = project.run("check", expect=2)
    assert "setting 'pipeline' must be a string" in typed.stderr
    for result in (broken, typed):
        assert_no_traceback(result)


def test_missing_or_malformed_pipeline_setting(project: Project, tmp_path: Path) -> None:
    toml = project.root / "flowstone.toml"
    toml.write_text('store = "sqlite:///.flowstone/flowstone.db"\n')
    unset = project.run("check", expect=2)
    assert "no pipeline configured" in unset.stderr
    assert "FLOWSTONE_PIPELINE" in unset.stderr and "--pipeline" in unset.stderr

    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    no_config = run_flowstone("materialize", "daily_report", cwd=nowhere, expect=2)
    assert "no pipeline configured" in no_config.stderr

    malformed = project.run("check", env={"FLOWSTONE_PIPELINE": "quickstart.pipeline"}, expect=2)
    assert "must look like 'package.module:pipeline'" in malformed.stderr
    absent = project.run("-p", "no_such_module:pipeline", "check", expect=2)
    assert "cannot import pipeline module 'no_such_module'" in absent.stderr
    for result in (unset, no_config, malformed, absent):
        assert_no_traceback(result)
