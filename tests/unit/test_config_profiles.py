"""[resources.NAME] and [profiles.NAME] in flowstone.toml: building resources, selecting a profile."""

from __future__ import annotations

import textwrap
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs
from flowstone._config import load_settings
from flowstone.resources import EnvVar, HttpClient, SQLDatabase, build_resources, check_resources
from flowstone.testing import FakeClock

from .conftest import AppFactory

CONFIG = """
pipeline = "analytics:pipeline"
store = "sqlite:///meta.db"

[resources.warehouse]
type = "sql"
url = "${WAREHOUSE_URL}"
pool_size = { env = "POOL_SIZE", default = 5 }
echo = false

[resources.crm]
type = "http"
base_url = "https://crm.example.com/api"
retries = 1
headers = { Authorization = "${CRM_TOKEN}", Accept = "application/json" }

[profiles.test]
store = "sqlite:///test-meta.db"
tenant = "testing"
[profiles.test.resources.warehouse]
url = "sqlite:///test-warehouse.db"
[profiles.test.resources.crm]
retries = 0

[profiles.ci]
store = "sqlite:///ci.db"
"""


def write(root: Path, text: str, name: str = "flowstone.toml") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text))
    return path


def settings(root: Path, *, environ: dict[str, str] | None = None, **overrides: str | None) -> Any:
    return load_settings(start=root, environ=environ or {}, overrides=overrides)


def test_resources_are_built_from_their_tables(tmp_path: Path) -> None:
    write(tmp_path, CONFIG)
    loaded = settings(tmp_path)
    assert loaded.profile is None
    assert loaded.resources["warehouse"]["url"] == "${WAREHOUSE_URL}"  # raw, as written
    built = build_resources(loaded)
    assert built["warehouse"] == SQLDatabase(
        url=EnvVar("WAREHOUSE_URL"), pool_size=EnvVar("POOL_SIZE", default=5), echo=False
    )
    crm = built["crm"]
    assert isinstance(crm, HttpClient) and crm.retries == 1
    assert crm.headers == {"Authorization": EnvVar("CRM_TOKEN"), "Accept": "application/json"}
    # The variables are only read when checked or set up.
    with pytest.raises(fs.ConfigurationError) as info:
        check_resources(built, environ={})
    assert "resource 'warehouse', field 'url': environment variable WAREHOUSE_URL is not set" in str(
        info.value
    )
    assert "resource 'crm', field 'headers.Authorization'" in str(info.value)
    check_resources(built, environ={"WAREHOUSE_URL": "sqlite://", "CRM_TOKEN": "t"})


def test_a_profile_overrides_settings_and_resource_fields(tmp_path: Path) -> None:
    write(tmp_path, CONFIG)
    loaded = settings(tmp_path, profile="test")
    assert loaded.profile == "test"
    assert loaded.store_url == f"sqlite:///{(tmp_path / 'test-meta.db').resolve()}"
    assert loaded.tenant == "testing"
    built = build_resources(loaded)
    warehouse = built["warehouse"]
    # url replaced (relative SQLite paths are taken from the project), pool_size kept from the file
    assert warehouse.url == f"sqlite:///{(tmp_path / 'test-warehouse.db').resolve()}"
    assert warehouse.pool_size == EnvVar("POOL_SIZE", default=5)
    assert built["crm"].retries == 0 and built["crm"].base_url == "https://crm.example.com/api"
    # Without the profile, the file's own values.
    assert settings(tmp_path).store_url == f"sqlite:///{(tmp_path / 'meta.db').resolve()}"


def test_flowstone_profile_selects_a_profile_and_the_flag_wins(tmp_path: Path) -> None:
    write(tmp_path, CONFIG)
    from_env = settings(tmp_path, environ={"FLOWSTONE_PROFILE": "ci"})
    assert from_env.profile == "ci" and from_env.store_url.endswith("/ci.db")
    flagged = settings(tmp_path, environ={"FLOWSTONE_PROFILE": "ci"}, profile="test")
    assert flagged.profile == "test" and flagged.store_url.endswith("/test-meta.db")


def test_env_and_flags_still_beat_a_profile(tmp_path: Path) -> None:
    write(tmp_path, CONFIG)
    env = {"FLOWSTONE_PROFILE": "test", "FLOWSTONE_STORE_URL": "sqlite:////tmp/from-env.db"}
    assert settings(tmp_path, environ=env).store_url == "sqlite:////tmp/from-env.db"
    assert (
        settings(tmp_path, environ=env, store="sqlite:////tmp/flag.db").store_url == "sqlite:////tmp/flag.db"
    )


def test_an_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    write(tmp_path, CONFIG)
    with pytest.raises(fs.ConfigurationError) as info:
        settings(tmp_path, profile="tset")
    message = str(info.value)
    assert "unknown profile 'tset'" in message and "did you mean 'test'?" in message
    assert "known profiles: ['ci', 'test']" in message
    with pytest.raises(fs.ConfigurationError, match="unknown profile 'prod'"):
        settings(tmp_path, environ={"FLOWSTONE_PROFILE": "prod"})


def test_a_profile_without_any_profiles_defined(tmp_path: Path) -> None:
    write(tmp_path, 'pipeline = "analytics:pipeline"\n')
    with pytest.raises(fs.ConfigurationError, match="known profiles: none defined"):
        settings(tmp_path, profile="test")


def test_a_profile_naming_a_type_or_class_replaces_the_resource(tmp_path: Path) -> None:
    module = f"fake_resources_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass

            @dataclass(frozen=True)
            class FakeWarehouse:
                rows: int = 0
            """
        )
    )
    write(
        tmp_path,
        CONFIG
        + f"""
[profiles.offline.resources.warehouse]
class = "{module}:FakeWarehouse"
rows = 3
[profiles.offline.resources.extra]
type = "http"
base_url = "http://127.0.0.1:9"
""",
    )
    built = build_resources(settings(tmp_path, profile="offline"))
    assert type(built["warehouse"]).__name__ == "FakeWarehouse" and built["warehouse"].rows == 3
    assert isinstance(built["extra"], HttpClient)


def test_a_profile_adding_a_resource_needs_its_type(tmp_path: Path) -> None:
    write(tmp_path, CONFIG + '\n[profiles.bad.resources.newcomer]\nurl = "sqlite://"\n')
    with pytest.raises(fs.ConfigurationError, match=r"\[resources.newcomer\] needs either type"):
        settings(tmp_path, profile="bad")


def test_profiles_check_their_keys(tmp_path: Path) -> None:
    write(tmp_path, CONFIG + '\n[profiles.bad]\nstroe = "sqlite:///x.db"\n')
    with pytest.raises(
        fs.ConfigurationError, match=r"\[profiles.bad\]: unknown setting 'stroe'; did you mean 'store'"
    ):
        settings(tmp_path, profile="bad")
    # Every profile is checked, selected or not: the typo shows before anyone deploys with it.
    with pytest.raises(fs.ConfigurationError, match="unknown setting 'stroe'"):
        settings(tmp_path)
    write(tmp_path, CONFIG + '\n[profiles.nested.profiles.inner]\nstore = "x"\n')
    with pytest.raises(fs.ConfigurationError, match=r"\[profiles.nested\] cannot hold profiles of its own"):
        settings(tmp_path)


def test_profiles_must_be_tables(tmp_path: Path) -> None:
    write(tmp_path, 'profiles = "test"\n')
    with pytest.raises(fs.ConfigurationError, match=r"\[profiles\] must hold one table per profile"):
        settings(tmp_path)


def test_profiles_in_pyproject(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        [project]
        name = "x"

        [tool.flowstone]
        store = "sqlite:///a.db"

        [tool.flowstone.profiles.dev]
        store = "sqlite:///dev.db"
        """,
        name="pyproject.toml",
    )
    assert settings(tmp_path, profile="dev").store_url.endswith("/dev.db")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[resources.db]\nurl = "sqlite://"\n', r"needs either type = 'sql' \| 'http' or class"),
        ('[resources.db]\ntype = "sql"\nclass = "x:Y"\nurl = "a"\n', "exactly one"),
        ('[resources.db]\ntype = "redis"\n', "unknown type 'redis'"),
        ('[resources.db]\nclass = "no_colon"\n', "class must look like 'package.module:Class'"),
        ('resources = "db"\n', r"\[resources\] must hold one table per resource"),
    ],
)
def test_malformed_resource_tables(tmp_path: Path, table: str, message: str) -> None:
    write(tmp_path, table)
    with pytest.raises(fs.ConfigurationError, match=message):
        settings(tmp_path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'type = "sql"\nurll = "sqlite://"\n',
            "unknown field 'urll' \\(did you mean 'url'\\?\\); missing field 'url'",
        ),
        ('type = "http"\nbase_url = "http://x"\nsleep = "fast"\n', "unknown field 'sleep'"),
        ('class = "no_such_module_here:Thing"\n', "cannot load class 'no_such_module_here:Thing'"),
        ('class = "flowstone:NoSuchThing"\n', "cannot load class 'flowstone:NoSuchThing'"),
    ],
)
def test_resource_tables_that_cannot_be_built(tmp_path: Path, table: str, message: str) -> None:
    write(tmp_path, "[resources.db]\n" + table)
    loaded = settings(tmp_path)
    with pytest.raises(fs.ConfigurationError, match=message) as info:
        build_resources(loaded)
    assert "[resources.db]" in str(info.value) and str(tmp_path) in str(info.value)


def test_a_user_class_that_is_not_a_dataclass_gets_its_keys(tmp_path: Path) -> None:
    module = f"plain_resources_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            class Crm:
                def __init__(self, token, region="eu"):
                    self.token, self.region = token, region

                def setup(self, config):
                    return (self.token, self.region)
            """
        )
    )
    write(tmp_path, f'[resources.crm]\nclass = "{module}:Crm"\ntoken = {{ env = "CRM_TOKEN" }}\n')
    crm = build_resources(settings(tmp_path))["crm"]
    assert crm.token == EnvVar("CRM_TOKEN") and crm.region == "eu"
    write(tmp_path, f'[resources.crm]\nclass = "{module}:Crm"\ncolour = "red"\n')
    with pytest.raises(fs.ConfigurationError, match="unexpected keyword argument 'colour'"):
        build_resources(settings(tmp_path))


def test_configured_resources_serve_a_run(
    tmp_path: Path, pipeline: fs.Pipeline, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa

    write(tmp_path, CONFIG)
    monkeypatch.setenv("WAREHOUSE_URL", f"sqlite:///{tmp_path / 'warehouse.db'}")
    monkeypatch.setenv("POOL_SIZE", "2")

    @pipeline.asset(requires=["warehouse"])
    def answer(context: fs.Context) -> int:
        engine = context.resources.warehouse
        assert engine.pool.size() == 2  # POOL_SIZE, read and converted at setup
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT 41 + 1")).scalar_one())

    resources = build_resources(settings(tmp_path))
    check_resources({"warehouse": resources["warehouse"]})
    run = make_app(pipeline, resources={"warehouse": resources["warehouse"]}).materialize(
        "answer", values=True
    )
    assert run.steps["answer"].value == 42


def test_event_retention_from_file_profile_and_environment(tmp_path: Path) -> None:
    write(tmp_path, 'event_retention = "14d"\n[profiles.short]\nevent_retention = "1h"\n')
    assert settings(tmp_path).event_retention == "14d"
    assert settings(tmp_path, profile="short").event_retention == "1h"
    assert settings(tmp_path, environ={"FLOWSTONE_EVENT_RETENTION": "2d"}).event_retention == "2d"
    (tmp_path / "flowstone.toml").unlink()
    assert settings(tmp_path).event_retention == "30d"


@pytest.mark.parametrize(
    ("text", "environ", "where"),
    [
        ('event_retention = "forever"\n', {}, "event_retention"),
        ('[profiles.x]\nevent_retention = "-1d"\n', {}, "[profiles.x]: event_retention"),
        ("", {"FLOWSTONE_EVENT_RETENTION": "soon"}, "event_retention"),
    ],
)
def test_a_bad_event_retention_names_the_file_and_setting(
    tmp_path: Path, text: str, environ: dict[str, str], where: str
) -> None:
    path = write(tmp_path, text or 'pipeline = "x:y"\n')
    with pytest.raises(fs.ConfigurationError) as caught:
        settings(tmp_path, environ=environ)
    assert str(path) in caught.value.message and where in caught.value.message
    assert caught.value.context["field"] == "event_retention"


def test_the_app_prunes_with_its_retention_by_default(make_app: AppFactory) -> None:
    pipeline = fs.Pipeline("retention")

    @pipeline.asset()
    def a(context: fs.Context) -> int:
        return 1

    clock = FakeClock(datetime.now(UTC))
    app = make_app(pipeline, event_retention="12h", clock=clock)
    app.materialize(["a"])
    stored = len(app.store.list_events(tenant="default"))
    assert stored > 0
    clock.advance(11 * 3600)
    assert app.prune_events() == 0
    clock.advance(2 * 3600)
    assert app.prune_events(older_than="1d") == 0  # an explicit age still wins
    assert app.prune_events() == stored
    with pytest.raises(fs.ConfigurationError, match="event_retention"):
        make_app(fs.Pipeline("bad"), event_retention="never")
