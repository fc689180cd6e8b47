"""Resources through real runs: lazy setup once per run, teardown, failures, EnvVar, events, doctor.

Fake resources here are real ``Resource`` objects (they record what FlowStone does with them);
the runs, store and threads are FlowStone's own.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner

import flowstone as fs
from flowstone._doctor import CheckResult, check_resources_health, health, settings_health
from flowstone._events import Event, EventBus
from flowstone._records import StepStatus
from flowstone.resources import (
    RESOURCE_HEALTH,
    RESOURCE_SETUP,
    RESOURCE_TEARDOWN,
    ConfigurableResource,
    EnvVar,
    Health,
    RunResources,
    check_resources,
    healthy,
    unhealthy,
)

from .conftest import AppFactory

DEADLINE_S = 10.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Wait for ``condition`` (polling a threading.Event, not sleeping) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.005)


class Journal:
    """A thread-safe list of what happened, shared by the fakes of one test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[str] = []

    def add(self, entry: str) -> None:
        with self._lock:
            self.entries.append(entry)

    def count(self, entry: str) -> int:
        with self._lock:
            return self.entries.count(entry)


@dataclass(frozen=True)
class Recording(ConfigurableResource):
    """Sets up a dict handle and records setup/teardown in the journal."""

    name: str
    journal: Journal = field(compare=False, metadata={"flowstone_config": False})
    on_setup: Callable[[], None] | None = field(
        default=None, compare=False, metadata={"flowstone_config": False}
    )
    fail_teardown: bool = False

    def setup(self, config: Mapping[str, Any]) -> dict[str, Any]:
        self.journal.add(f"setup {self.name}")
        if self.on_setup is not None:
            self.on_setup()
        return {"name": self.name, "config": dict(config), "closed": False}

    def teardown(self, handle: dict[str, Any]) -> None:
        self.journal.add(f"teardown {self.name}")
        if self.fail_teardown:
            raise RuntimeError(f"cannot close {self.name}")
        handle["closed"] = True


class Broken:
    """A Resource (protocol only, no base class) whose setup always fails."""

    def __init__(self, journal: Journal, error: Exception | None = None) -> None:
        self.journal = journal
        self.error = error or ConnectionError("db down")

    def setup(self, config: Mapping[str, Any]) -> Any:
        self.journal.add("setup broken")
        raise self.error

    def teardown(self, handle: Any) -> None:
        self.journal.add("teardown broken")


def step_threads() -> int:
    return sum(t.name.startswith("flowstone-step") for t in threading.enumerate())


# ---------------------------------------------------------------------- lifecycle through runs
def test_a_resource_is_set_up_once_per_run_for_parallel_steps(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    journal = Journal()
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    # Hold the first setup until all four step threads exist, so the other steps ask for the
    # resource while it is being set up.
    db = Recording("db", journal, on_setup=lambda: wait_until(lambda: step_threads() >= 4, "4 threads"))

    def make(index: int) -> None:
        @pipeline.asset(name=f"part{index}", requires=["db"])
        def part(context: fs.Context) -> str:
            handle = context.resources.db
            with lock:
                seen.append((threading.current_thread().name, id(handle)))
            return str(handle["name"])

    for index in range(4):
        make(index)

    app = make_app(pipeline, resources={"db": db})
    run = app.materialize("*", parallel=4)
    assert run.success
    assert journal.count("setup db") == 1
    assert journal.entries[-1] == "teardown db"
    assert len({handle for _, handle in seen}) == 1  # every step got the same handle
    assert len({thread for thread, _ in seen}) > 1  # and the steps did run on several threads

    # A second run sets it up afresh (and tears it down again).
    assert app.materialize("*", parallel=4, force=True).success
    assert journal.count("setup db") == 2 and journal.count("teardown db") == 2


def test_only_resources_a_run_needs_are_set_up(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    journal = Journal()

    @pipeline.asset(requires=["used"])
    def a(context: fs.Context) -> int:
        return 1

    @pipeline.asset(requires=["unused"])
    def b(context: fs.Context) -> int:
        return 2

    app = make_app(
        pipeline, resources={"used": Recording("used", journal), "unused": Recording("x", journal)}
    )
    assert app.materialize("a").success
    assert journal.entries == ["setup used", "teardown used"]


def test_teardown_runs_last_first_even_when_a_step_fails(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    journal = Journal()

    @pipeline.asset(requires=["first"])
    def a(context: fs.Context) -> int:
        return 1

    @pipeline.asset(requires=["second"])
    def b(context: fs.Context, a: int) -> int:
        raise ValueError("boom")

    app = make_app(
        pipeline, resources={"first": Recording("first", journal), "second": Recording("second", journal)}
    )
    run = app.materialize("b")
    assert not run.success and run.steps["b"].status is StepStatus.FAILED
    assert journal.entries == ["setup first", "setup second", "teardown second", "teardown first"]


def test_a_failing_teardown_is_logged_and_emitted_not_raised(
    pipeline: fs.Pipeline, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal()

    @pipeline.asset(requires=["flaky", "fine"])
    def a(context: fs.Context) -> int:
        return 1

    resources = {"flaky": Recording("flaky", journal, fail_teardown=True), "fine": Recording("fine", journal)}
    app = make_app(pipeline, resources=resources)
    events: list[Event] = []
    app.events.subscribe(events.append)
    with caplog.at_level(logging.ERROR, logger="flowstone.resources"):
        run = app.materialize("a")
    assert run.success
    assert journal.entries == ["setup flaky", "setup fine", "teardown fine", "teardown flaky"]
    assert "teardown of resource 'flaky' failed" in caplog.text
    teardowns = {e.data["resource"]: e.data for e in events if e.type == RESOURCE_TEARDOWN}
    assert teardowns["fine"]["ok"] is True and teardowns["fine"]["error"] is None
    assert teardowns["flaky"]["ok"] is False
    assert teardowns["flaky"]["error"] == "RuntimeError: cannot close flaky"


def test_a_failing_setup_fails_only_the_steps_that_require_it(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    journal = Journal()

    @pipeline.asset(requires=["warehouse"])
    def orders(context: fs.Context) -> int:
        raise AssertionError("must not run without its resource")

    @pipeline.asset()
    def report(context: fs.Context, orders: int) -> int:
        return orders

    @pipeline.asset(requires=["cache"])
    def prices(context: fs.Context) -> str:
        return str(context.resources.cache["name"])

    @pipeline.asset()
    def plain(context: fs.Context) -> int:
        return 3

    app = make_app(pipeline, resources={"warehouse": Broken(journal), "cache": Recording("cache", journal)})
    run = app.materialize("*")
    assert not run.success
    assert run.steps["orders"].status is StepStatus.FAILED
    error = run.steps["orders"].error
    assert isinstance(error, fs.ResourceUnavailable)
    assert error.type == "resource_unavailable" and error.retryable is True
    assert "resource 'warehouse' could not be set up: ConnectionError: db down" in error.message
    assert error.context["resource"] == "warehouse" and error.context["asset"] == "orders"
    assert isinstance(error.original, ConnectionError)
    assert run.steps["report"].status is StepStatus.SKIPPED
    assert run.steps["prices"].status is StepStatus.SUCCEEDED
    assert run.steps["plain"].status is StepStatus.SUCCEEDED
    [mat] = app.store.materializations(tenant="default", asset="orders")
    assert mat.error_type == "resource_unavailable"
    assert "teardown broken" not in journal.entries  # nothing was set up, so nothing to release
    assert journal.entries[-1] == "teardown cache"


def test_each_failing_step_gets_its_own_error_naming_its_asset(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    for name in ("left", "right"):

        @pipeline.asset(name=name, requires=["warehouse"])
        def needs(context: fs.Context) -> int:
            return 1

    run = make_app(pipeline, resources={"warehouse": Broken(Journal())}).materialize("*", parallel=2)
    left, right = run.steps["left"].error, run.steps["right"].error
    assert left is not None and right is not None and left is not right
    assert left.context["asset"] == "left" and right.context["asset"] == "right"


def test_a_configuration_error_in_setup_is_not_retryable(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset(requires=["db"])
    def a(context: fs.Context) -> int:
        return 1

    bad = Broken(Journal(), fs.ConfigurationError("url is not a database URL"))
    error = make_app(pipeline, resources={"db": bad}).materialize("a").steps["a"].error
    assert isinstance(error, fs.ResourceUnavailable) and error.retryable is False


# ---------------------------------------------------------------------- config and EnvVar
@dataclass(frozen=True)
class Warehouse(ConfigurableResource):
    url: str | EnvVar
    pool_size: int | EnvVar = 5
    echo: bool | EnvVar = False
    ratio: float | EnvVar | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    calls: list[Mapping[str, Any]] = field(
        default_factory=list, compare=False, metadata={"flowstone_config": False}
    )

    def setup(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        self.calls.append(config)
        return config


def test_setup_receives_the_resolved_config(
    pipeline: fs.Pipeline, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FS_TEST_WAREHOUSE_URL", "postgresql://etl@warehouse/analytics")
    monkeypatch.setenv("FS_TEST_POOL", "12")
    monkeypatch.setenv("FS_TEST_ECHO", "yes")
    monkeypatch.setenv("FS_TEST_TOKEN", "s3cret")
    monkeypatch.delenv("FS_TEST_UNSET", raising=False)

    @pipeline.asset(requires=["warehouse"])
    def a(context: fs.Context) -> int:
        return int(context.resources.warehouse["pool_size"])

    warehouse = Warehouse(
        url=EnvVar("FS_TEST_WAREHOUSE_URL"),
        pool_size=EnvVar("FS_TEST_POOL"),
        echo=EnvVar("FS_TEST_ECHO"),
        ratio=EnvVar("FS_TEST_UNSET", default=0.25),
        options={"token": EnvVar("FS_TEST_TOKEN"), "tags": ["x", EnvVar("FS_TEST_POOL")]},
    )
    run = make_app(pipeline, resources={"warehouse": warehouse}).materialize("a", values=True)
    assert run.steps["a"].value == 12
    [config] = warehouse.calls
    assert config == {
        "url": "postgresql://etl@warehouse/analytics",
        "pool_size": 12,
        "echo": True,
        "ratio": 0.25,
        "options": {"token": "s3cret", "tags": ["x", "12"]},
    }
    assert "calls" not in config  # runtime-only fields are not settings
    assert warehouse.config == config


def test_check_resources_lists_every_missing_variable_with_resource_and_field() -> None:
    declared = {
        "warehouse": Warehouse(url=EnvVar("WAREHOUSE_URL"), pool_size=EnvVar("POOL_SIZE")),
        "crm": fs.resources.HttpClient(
            base_url=EnvVar("CRM_URL"), headers={"Authorization": EnvVar("CRM_TOKEN")}
        ),
        "fine": Warehouse(url=EnvVar("FINE_URL", default="sqlite://")),
        "fake": "a plain object",
    }
    with pytest.raises(fs.ConfigurationError) as info:
        check_resources(declared, environ={"POOL_SIZE": "many"})
    message = str(info.value)
    assert "resource 'warehouse', field 'url': environment variable WAREHOUSE_URL is not set" in message
    assert (
        "resource 'warehouse', field 'pool_size': environment variable POOL_SIZE='many' is not a valid int"
        in (message)
    )
    assert "resource 'crm', field 'base_url': environment variable CRM_URL is not set" in message
    assert (
        "resource 'crm', field 'headers.Authorization': environment variable CRM_TOKEN is not set" in message
    )
    assert "fine" not in message and "fake" not in message
    problems = info.value.context["resource_problems"]
    assert [(p["resource"], p["field"], p["variable"]) for p in problems] == [
        ("warehouse", "url", "WAREHOUSE_URL"),
        ("warehouse", "pool_size", "POOL_SIZE"),
        ("crm", "base_url", "CRM_URL"),
        ("crm", "headers.Authorization", "CRM_TOKEN"),
    ]
    # With every variable set there is nothing to report.
    environ = {"WAREHOUSE_URL": "sqlite://", "POOL_SIZE": "3", "CRM_URL": "http://x", "CRM_TOKEN": "t"}
    check_resources(declared, environ=environ)


def test_a_variable_gone_by_run_time_fails_the_step_without_retry(
    pipeline: fs.Pipeline, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FS_TEST_NOT_SET", "postgresql://there-at-startup")

    @pipeline.asset(requires=["warehouse"])
    def a(context: fs.Context) -> int:
        return 1

    warehouse = Warehouse(url=EnvVar("FS_TEST_NOT_SET"))
    app = make_app(pipeline, resources={"warehouse": warehouse})  # checked here: it is set
    monkeypatch.delenv("FS_TEST_NOT_SET")  # and gone by the time the run needs it
    error = app.materialize("a").steps["a"].error
    assert isinstance(error, fs.ResourceUnavailable) and error.retryable is False
    assert "environment variable FS_TEST_NOT_SET is not set" in error.message
    assert warehouse.calls == []


def test_a_configurable_resource_must_be_a_dataclass() -> None:
    class NotADataclass(ConfigurableResource):
        def setup(self, config: Mapping[str, Any]) -> Any:
            return None

    with pytest.raises(TypeError, match=r"@dataclass\(frozen=True\)"):
        _ = NotADataclass().config


def test_tests_override_resources_per_app_without_globals(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    @pipeline.asset(requires=["warehouse"])
    def a(context: fs.Context) -> str:
        warehouse = context.resources.warehouse
        return str(warehouse["url"] if isinstance(warehouse, Mapping) else warehouse)

    real = Warehouse(url="postgresql://prod/analytics")
    fake = object()
    assert make_app(pipeline, resources={"warehouse": real}).materialize("a", values=True).steps[
        "a"
    ].value == ("postgresql://prod/analytics")
    # The same pipeline with a plain fake: handed over untouched, never "set up".
    probe = mock.MagicMock()
    app = make_app(pipeline, resources={"warehouse": probe})
    assert app.materialize("a", values=True, force=True).success
    probe.setup.assert_not_called()
    # One field swapped on a copy; the original is unchanged.
    local = dataclasses.replace(real, url="sqlite://")
    run = make_app(pipeline, resources={"warehouse": local}).materialize("a", values=True, force=True)
    assert run.steps["a"].value == "sqlite://" and real.url == "postgresql://prod/analytics"
    assert make_app(pipeline, resources={"warehouse": fake}).resources["warehouse"] is fake


# ---------------------------------------------------------------------- events
def _cache_and_broken_warehouse(pipeline: fs.Pipeline, make_app: AppFactory) -> fs.FlowStone:
    """An app whose asset ``a`` needs a working ``cache`` and ``b`` a ``warehouse`` whose setup fails."""
    journal = Journal()

    @pipeline.asset(requires=["cache"])
    def a(context: fs.Context) -> int:
        return 1

    @pipeline.asset(requires=["warehouse"])
    def b(context: fs.Context) -> int:
        return 1

    return make_app(pipeline, resources={"cache": Recording("cache", journal), "warehouse": Broken(journal)})


def test_setup_and_teardown_events(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    app = _cache_and_broken_warehouse(pipeline, make_app)
    events: list[Event] = []
    app.events.subscribe(events.append)
    app.materialize("*")
    resource_events = [e for e in events if e.type.startswith("resource.")]
    by_kind = {(e.type, e.data["resource"]): e for e in resource_events}
    assert set(by_kind) == {
        (RESOURCE_SETUP, "cache"),
        (RESOURCE_SETUP, "warehouse"),
        (RESOURCE_TEARDOWN, "cache"),
    }
    ok = by_kind[(RESOURCE_SETUP, "cache")].data
    assert ok["ok"] is True and ok["error"] is None and ok["duration_ms"] >= 0
    failed = by_kind[(RESOURCE_SETUP, "warehouse")].data
    assert failed["ok"] is False and failed["error"] == "ConnectionError: db down"
    assert set(failed) == {"resource", "duration_ms", "ok", "error"}
    assert resource_events[-1].type == RESOURCE_TEARDOWN


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_a_runs_resource_events_are_kept_in_its_event_log(
    pipeline: fs.Pipeline, make_app: AppFactory, executor: str
) -> None:
    """Nobody subscribed: the run's setups and teardowns are stored all the same, with the
    run's other events (from step processes too), and no other run's."""
    app = _cache_and_broken_warehouse(pipeline, make_app)
    first = app.materialize("*", executor=executor)
    second = app.materialize(["a"], force=True, executor=executor)

    def stored(run_id: str) -> list[tuple[str, str, bool]]:
        return sorted(
            (e["type"], e["data"]["resource"], e["data"]["ok"])
            for e in app.store.list_events(tenant=app.tenant, run_id=run_id)
            if e["type"].startswith("resource.")
        )

    # a process per step sets up and tears down what that step needs, in that process
    assert stored(first.run_id) == [
        (RESOURCE_SETUP, "cache", True),
        (RESOURCE_SETUP, "warehouse", False),
        (RESOURCE_TEARDOWN, "cache", True),
    ]
    assert stored(second.run_id) == [(RESOURCE_SETUP, "cache", True), (RESOURCE_TEARDOWN, "cache", True)]
    failed = next(
        e
        for e in app.store.list_events(tenant=app.tenant, run_id=first.run_id)
        if e["type"] == RESOURCE_SETUP and not e["data"]["ok"]
    )
    assert failed["data"]["error"] == "ConnectionError: db down"
    assert not app.events.has_subscribers  # the run's keeper of resource events is gone


def test_a_run_without_resources_subscribes_nothing(pipeline: fs.Pipeline, make_app: AppFactory) -> None:
    @pipeline.asset()
    def a(context: fs.Context) -> int:
        return 1

    app = make_app(pipeline)
    seen: list[bool] = []
    app.events.subscribe = lambda *args, **kwargs: seen.append(True)  # type: ignore[method-assign]
    assert app.materialize(["a"]).success
    assert seen == []


# ---------------------------------------------------------------------- RunResources directly
class Arrivals(RunResources):
    """Counts lookups as they start, so a setup can wait until others are waiting on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived = 0
        self._count_lock = threading.Lock()

    def __getitem__(self, name: str) -> Any:
        with self._count_lock:
            self.arrived += 1
        return super().__getitem__(name)


def test_concurrent_lookups_share_one_setup() -> None:
    journal = Journal()
    holder: list[Arrivals] = []
    db = Recording("db", journal, on_setup=lambda: wait_until(lambda: holder[0].arrived >= 8, "8 lookups"))
    run = Arrivals({"db": db})
    holder.append(run)
    handles: list[Any] = []
    threads = [threading.Thread(target=lambda: handles.append(run["db"])) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert len(handles) == 8 and all(h is handles[0] for h in handles)
    assert journal.count("setup db") == 1
    run.teardown()
    assert handles[0]["closed"] is True


def test_different_resources_set_up_at_the_same_time() -> None:
    journal = Journal()
    second_done = threading.Event()
    # "slow" can only finish once "fast" has been set up: a single lock for all setups deadlocks.
    slow = Recording("slow", journal, on_setup=lambda: wait_until(second_done.is_set, "fast's setup"))
    run = RunResources({"slow": slow, "fast": Recording("fast", journal)})
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(run["slow"]))
    thread.start()
    wait_until(lambda: journal.count("setup slow") == 1, "slow's setup to start")
    run["fast"]
    second_done.set()
    thread.join(DEADLINE_S)
    assert result and result[0]["name"] == "slow"
    assert run.teardown() == {}
    # Released in reverse order of readiness: "fast" was ready first, so it goes last.
    assert journal.entries[-2:] == ["teardown slow", "teardown fast"]


def test_a_failed_setup_is_shared_for_a_moment_then_tried_again() -> None:
    attempts: list[int] = []

    class Flaky:
        def setup(self, config: Mapping[str, Any]) -> str:
            attempts.append(1)
            if len(attempts) == 1:
                raise ConnectionError("not yet")
            return "connected"

    now = [100.0]
    run = RunResources({"db": Flaky()}, clock=lambda: now[0], failure_ttl=0.5)
    with pytest.raises(fs.ResourceUnavailable, match="not yet"):
        run["db"]
    now[0] += 0.2  # a step asking right after gets the same failure without a new attempt
    with pytest.raises(fs.ResourceUnavailable) as info:
        run["db"]
    assert info.value.retryable is True and len(attempts) == 1
    now[0] += 1.0  # a retry after its delay tries again, and succeeds
    assert run["db"] == "connected" and len(attempts) == 2
    assert run["db"] == "connected" and len(attempts) == 2


def test_a_configuration_failure_is_kept_for_the_whole_run() -> None:
    journal = Journal()
    now = [0.0]
    run = RunResources({"db": Broken(journal, fs.ConfigurationError("bad url"))}, clock=lambda: now[0])
    for _ in range(2):
        with pytest.raises(fs.ResourceUnavailable) as info:
            run["db"]
        assert info.value.retryable is False
        now[0] += 60
    assert journal.count("setup broken") == 1


def test_lookups_after_teardown_are_refused() -> None:
    journal = Journal()
    run = RunResources({"db": Recording("db", journal), "plain": 42})
    run["db"]
    run.teardown()
    with pytest.raises(fs.ResourceUnavailable, match="after its run ended"):
        run["db"]
    assert run["plain"] == 42
    assert journal.count("setup db") == 1


def test_plain_objects_classes_and_mocks_pass_through() -> None:
    probe = mock.Mock()
    run = RunResources({"mock": probe, "cls": Recording, "text": "conn"})
    assert run["mock"] is probe and run["cls"] is Recording and run["text"] == "conn"
    probe.setup.assert_not_called()
    assert run.teardown() == {}
    assert sorted(run) == ["cls", "mock", "text"] and len(run) == 3 and "mock" in run
    with pytest.raises(KeyError):
        run["missing"]


def test_environ_replaces_the_process_environment() -> None:
    warehouse = Warehouse(url=EnvVar("ONLY_IN_THIS_TEST"), pool_size=EnvVar("POOL"))
    run = RunResources({"w": warehouse}, environ={"ONLY_IN_THIS_TEST": "sqlite://", "POOL": "7"})
    assert run["w"] == {"url": "sqlite://", "pool_size": 7, "echo": False, "ratio": None, "options": {}}


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (None, healthy()),
        (True, healthy()),
        (False, unhealthy("health check returned False")),
        (unhealthy("replica lag 30s"), Health(False, "replica lag 30s")),
        (healthy("42 ms"), Health(True, "42 ms")),
    ],
)
def test_health_check_results(returned: Any, expected: Health) -> None:
    class Probed:
        def setup(self, config: Mapping[str, Any]) -> str:
            return "handle"

        def health_check(self, handle: str) -> Any:
            assert handle == "handle"
            return returned

    events: list[Event] = []
    bus = EventBus()
    bus.subscribe(events.append)
    assert RunResources({"p": Probed()}, events=bus).check("p") == expected
    [event] = [e for e in events if e.type == RESOURCE_HEALTH]
    assert event.data["resource"] == "p" and event.data["ok"] is expected.ok
    assert event.data["detail"] == expected.detail
    assert bool(expected) is expected.ok


def test_a_raising_health_check_is_unhealthy() -> None:
    class Probed:
        def setup(self, config: Mapping[str, Any]) -> str:
            return "handle"

        def health_check(self, handle: str) -> Health:
            raise TimeoutError("no answer")

    health_result = RunResources({"p": Probed()}).check("p")
    assert health_result == unhealthy("health check raised TimeoutError: no answer")


def test_envvar_needs_a_name_and_shows_its_default() -> None:
    with pytest.raises(TypeError):
        EnvVar("")
    assert repr(EnvVar("A")) == "EnvVar('A')" and repr(EnvVar("A", default=1)) == "EnvVar('A', default=1)"
    assert EnvVar("A").required and not EnvVar("A", default=None).required


# ---------------------------------------------------------------------- doctor
@dataclass(frozen=True)
class Probe(ConfigurableResource):
    verdict: str | EnvVar = "ok"
    journal: Journal = field(default_factory=Journal, compare=False, metadata={"flowstone_config": False})

    def setup(self, config: Mapping[str, Any]) -> str:
        self.journal.add("setup")
        if config["verdict"] == "setup fails":
            raise ConnectionError("refused")
        return str(config["verdict"])

    def teardown(self, handle: str) -> None:
        self.journal.add("teardown")

    def health_check(self, handle: str) -> Health:
        return healthy("answers") if handle == "ok" else unhealthy(f"says {handle}")


def rows_by_name(rows: list[CheckResult]) -> dict[str, CheckResult]:
    return {row.name: row for row in rows}


def test_health_checks_store_io_managers_and_every_resource(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    @pipeline.asset(requires=["good"])
    def a(context: fs.Context) -> int:
        return 1

    @pipeline.asset(io_manager="memory")
    def b(context: fs.Context) -> int:
        return 1

    good = Probe("ok")
    resources = {
        "good": good,
        "sick": Probe("overloaded"),
        "down": Probe("setup fails"),
        "fake": object(),
    }
    app = make_app(pipeline, resources=resources)
    events: list[Event] = []
    app.events.subscribe(events.append)
    rows = rows_by_name(health(app))
    assert rows["store"].ok and rows["store"].kind == "store" and "revision" in rows["store"].detail
    assert rows["filesystem"].ok and rows["filesystem"].kind == "io_manager"
    assert rows["memory"].ok
    assert rows["good"] == CheckResult("good", "resource", True, "Probe: answers")
    assert rows["sick"] == CheckResult("sick", "resource", False, "Probe: says overloaded")
    assert not rows["down"].ok and "ConnectionError: refused" in rows["down"].detail
    assert rows["fake"].ok and "plain object" in rows["fake"].detail
    assert good.journal.entries == ["setup", "teardown"]  # set up, checked, released again
    health_events = {e.data["resource"]: e.data for e in events if e.type == RESOURCE_HEALTH}
    assert health_events["good"]["ok"] is True and health_events["sick"]["detail"] == "says overloaded"


def test_health_reports_a_failing_teardown() -> None:
    rows = check_resources_health({"db": Recording("db", Journal(), fail_teardown=True)})
    assert not rows[0].ok and "teardown failed: RuntimeError: cannot close db" in rows[0].detail


def test_doctor_reports_a_missing_io_extra(
    pipeline: fs.Pipeline, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowstone.io import _registry

    @pipeline.asset(io_manager="memory")
    def a(context: fs.Context) -> int:
        return 1

    app = make_app(pipeline)
    original = _registry.missing_modules
    monkeypatch.setattr(
        _registry, "missing_modules", lambda kind: ["pyarrow"] if kind == "memory" else original(kind)
    )
    row = rows_by_name(health(app))["memory"]
    assert not row.ok and "not installed: pyarrow" in row.detail


# ---------------------------------------------------------------------- flowstone doctor (CLI)
def write_project(root: Path, module: str, resources_toml: str, store: str | None = None) -> None:
    (root / f"{module}.py").write_text(
        "import flowstone as fs\n\n"
        f"pipeline = fs.Pipeline('{module}')\n\n\n"
        "@pipeline.asset()\n"
        "def only(context):\n"
        "    return 1\n"
    )
    store_line = f'store = "{store}"\n' if store else ""
    (root / "flowstone.toml").write_text(f'pipeline = "{module}:pipeline"\n{store_line}{resources_toml}')


def invoke_doctor(root: Path, *args: str) -> Any:
    from flowstone._cli_doctor import doctor
    from flowstone.cli import _State

    state = _State(config=root / "flowstone.toml", pipeline=None, store=None, tenant=None, verbose=False)
    return CliRunner().invoke(doctor, list(args), obj=state)


def test_doctor_command_prints_a_table_and_exits_0_when_healthy(tmp_path: Path) -> None:
    write_project(
        tmp_path, "doctor_ok_pipeline", f'[resources.db]\ntype = "sql"\nurl = "sqlite:///{tmp_path}/w.db"\n'
    )
    result = invoke_doctor(tmp_path)
    assert result.exit_code == 0, result.output
    assert "store" in result.output and "filesystem" in result.output
    assert "all checks passed" in result.output
    as_json = invoke_doctor(tmp_path, "--json")
    assert as_json.exit_code == 0
    assert '"ok": true' in as_json.output


def test_doctor_command_exits_1_and_names_what_is_unhealthy(tmp_path: Path) -> None:
    # The app cannot even be built (the store is unreachable): doctor still reports every row.
    write_project(
        tmp_path,
        "doctor_bad_pipeline",
        '[resources.api]\ntype = "http"\nbase_url = "http://127.0.0.1:1"\n',
        store="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
    )
    result = invoke_doctor(tmp_path)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "check(s) failed" in result.output
    rows = rows_by_name(settings_health(_settings(tmp_path)))
    assert not rows["store"].ok and "127.0.0.1" in rows["store"].detail
    assert not rows["api"].ok


def test_doctor_without_a_buildable_app_still_checks_store_and_resources(tmp_path: Path) -> None:
    write_project(
        tmp_path, "doctor_env_pipeline", '[resources.db]\ntype = "sql"\nurl = "${FS_TEST_DOCTOR_MISSING}"\n'
    )
    settings = _settings(tmp_path)
    problem = fs.ConfigurationError("boom elsewhere")
    rows = settings_health(settings, problem)
    assert rows[0] == CheckResult("app", "config", False, "ConfigurationError: boom elsewhere")
    by_name = rows_by_name(rows)
    assert by_name["store"].ok is False and "not migrated" in by_name["store"].detail
    assert "FS_TEST_DOCTOR_MISSING is not set" in by_name["db"].detail
    # A resource configuration problem is already explained by the resource rows.
    try:
        check_resources(fs.resources.build_resources(settings), environ={})
    except fs.ConfigurationError as exc:
        explained = settings_health(settings, exc)
    assert [r.name for r in explained] == ["store", "db"]


def _settings(root: Path) -> Any:
    from flowstone._config import load_settings

    return load_settings(config_file=root / "flowstone.toml", environ={})


def test_flowstone_reports_a_missing_variable_at_startup(
    pipeline: fs.Pipeline, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FS_TEST_WAREHOUSE_URL", raising=False)

    @pipeline.asset(requires=["warehouse"])
    def a(context: fs.Context) -> int:
        return 1

    warehouse = Warehouse(url=EnvVar("FS_TEST_WAREHOUSE_URL"))
    with pytest.raises(fs.ConfigurationError) as info:
        make_app(pipeline, resources={"warehouse": warehouse})
    assert "FS_TEST_WAREHOUSE_URL" in str(info.value)
    assert "warehouse" in str(info.value) and "url" in str(info.value)
    assert warehouse.calls == []
