"""Resources in queue workers: set up once per worker process (not per step, not per run),
shared by every step that worker runs, torn down when it stops; a setup that fails fails only
the steps that require it, with ``resource_unavailable``, retried as their policy says.

The resources are declared in the project's flowstone.toml (``class = "pipe:Logged"``) so that
``flowstone worker`` builds them; the app of the test declares the same names to submit runs.
Every setup and teardown appends a JSON line (with its pid) to a file the test reads.
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from typing import Any

import flowstone as fs

from .conftest import PIPE_HELPERS, QueueProject, wait_for

RESOURCES = (
    PIPE_HELPERS
    + '''
import uuid
from dataclasses import dataclass

import flowstone as fs


@dataclass(frozen=True)
class Logged(fs.ConfigurableResource):
    """Records each setup (ok or not) and teardown in ``log``; the first ``fail_times`` setups
    (counted in that file) raise ConnectionError."""

    log: str
    fail_times: int = 0

    def setup(self, config):
        path = ROOT / config["log"]
        tried = len(path.read_text().splitlines()) if path.exists() else 0
        if tried < config["fail_times"]:
            record(config["log"], event="setup", ok=False)
            raise ConnectionError("warehouse is down")
        token = uuid.uuid4().hex
        record(config["log"], event="setup", ok=True, token=token)
        return token

    def teardown(self, handle):
        record(self.log, event="teardown", token=handle)


pipeline = fs.Pipeline("resources")


def _use(context, name):
    record("steps.jsonl", asset=context.asset_name, token=context.resources.conn, run=context.run_id)
    return name


@pipeline.asset(requires=["conn"])
def held_a(context):
    record("started.jsonl", asset="held_a")
    hold(context, "go")
    return _use(context, "held_a")


@pipeline.asset(requires=["conn"])
def held_b(context):
    record("started.jsonl", asset="held_b")
    hold(context, "go")
    return _use(context, "held_b")


@pipeline.asset(requires=["conn"])
def s1(context):
    return _use(context, "s1")


@pipeline.asset(requires=["conn"])
def s2(context, s1):
    return _use(context, "s2")


@pipeline.asset(requires=["conn"])
def s3(context):
    return _use(context, "s3")


@pipeline.asset(requires=["conn"])
def s4(context):
    return _use(context, "s4")


@pipeline.asset(requires=["conn", "down"])
def needs_down(context):
    record("ran.jsonl", asset="needs_down")
    return 1


@pipeline.asset
def after_down(context, needs_down):
    record("ran.jsonl", asset="after_down")
    return needs_down


@pipeline.asset
def plain(context):
    return 2


_RETRY = fs.RetryPolicy(max_attempts=3, backoff="constant", base_delay=1.0, jitter=0.0)


@pipeline.asset(requires=["down"], retry=_RETRY)
def retried_down(context):
    record("ran.jsonl", asset="retried_down")
    return 3


@pipeline.asset(requires=["flaky"], retry=_RETRY)
def recovers(context):
    return context.resources.flaky
'''
)

# Failing setups are retried on the next attempt once RunResources' failure_ttl (0.5 s) has
# passed: the policy's 1 s delay makes every attempt try the setup again.
RESOURCE_TOML = """
[resources.conn]
class = "pipe:Logged"
log = "conn.jsonl"

[resources.down]
class = "pipe:Logged"
log = "down.jsonl"
fail_times = 1000

[resources.flaky]
class = "pipe:Logged"
log = "flaky.jsonl"
fail_times = 1
"""


def _project(queue_project: Callable[..., QueueProject]) -> tuple[QueueProject, fs.FlowStone]:
    project = queue_project(RESOURCES)
    with (project.root / "flowstone.toml").open("a") as toml:
        toml.write(RESOURCE_TOML)
    logged = project.module.Logged
    app = project.app(
        resources={
            "conn": logged(log="conn.jsonl"),
            "down": logged(log="down.jsonl", fail_times=1000),
            "flaky": logged(log="flaky.jsonl", fail_times=1),
        }
    )
    return project, app


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def _steps(app: fs.FlowStone, run_id: str) -> dict[str, fs.StepRecord]:
    found = app.run(run_id)
    assert found is not None
    return {s.asset: s for s in found[1]}


def _events(app: fs.FlowStone, run_id: str, type_: str) -> list[dict[str, Any]]:
    return [e for e in app.store.list_events(tenant=app.tenant, run_id=run_id) if e["type"] == type_]


def test_a_worker_sets_a_resource_up_once_shares_it_across_steps_and_runs_and_tears_it_down_when_it_stops(
    queue_project: Callable[..., QueueProject],
) -> None:
    project, app = _project(queue_project)
    first_run = app.submit(["held_a", "held_b"])
    workers = [project.start_worker("--concurrency", "1") for _ in range(2)]
    pids = {w.pid for w in workers}
    # One worker thread each and both held steps waiting: each worker runs one of them.
    wait_for(lambda: len(project.records("started.jsonl")) == 2, timeout=30, what="both held steps to start")
    assert {r["pid"] for r in project.records("started.jsonl")} == pids
    project.touch("go")
    assert app.wait_run(first_run, timeout=30).status is fs.RunStatus.SUCCEEDED, project.logs()
    second_run = app.submit(["s2", "s3", "s4"])
    assert app.wait_run(second_run, timeout=30).status is fs.RunStatus.SUCCEEDED, project.logs()

    setups = project.records("conn.jsonl")
    assert all(r["event"] == "setup" and r["ok"] for r in setups)  # nothing torn down yet
    assert Counter(r["pid"] for r in setups) == dict.fromkeys(pids, 1), project.logs()
    token_of = {r["pid"]: r["token"] for r in setups}
    steps = project.records("steps.jsonl")
    assert sorted(r["asset"] for r in steps) == ["held_a", "held_b", "s1", "s2", "s3", "s4"]
    assert {r["pid"] for r in steps if r["asset"].startswith("held")} == pids
    for step in steps:  # every step got the handle its worker set up, across both runs
        assert step["token"] == token_of[step["pid"]], step

    for worker in workers:
        _stop(worker)
    teardowns = [r for r in project.records("conn.jsonl") if r["event"] == "teardown"]
    assert sorted((r["pid"], r["token"]) for r in teardowns) == sorted(token_of.items())


def test_a_failing_setup_fails_only_the_steps_that_require_it_without_a_retry_by_default(
    queue_project: Callable[..., QueueProject],
) -> None:
    project, app = _project(queue_project)
    run_id = app.submit(["after_down", "plain", "s1"])
    worker = project.start_worker("--concurrency", "2")
    assert app.wait_run(run_id, timeout=30).status is fs.RunStatus.FAILED, project.logs()

    steps = _steps(app, run_id)
    failed = steps["needs_down"]
    assert failed.status is fs.StepStatus.FAILED
    assert failed.error_type == "resource_unavailable"
    assert failed.error_message == "resource 'down' could not be set up: ConnectionError: warehouse is down"
    # Retryable, but neither the asset nor the pipeline has a retry policy: one attempt only.
    assert failed.attempt == 1
    mats = app.store.materializations(tenant=app.tenant, asset="needs_down", run_id=run_id)
    assert [(m.attempt, m.status, m.error_type, m.retryable) for m in mats] == [
        (1, "failed", "resource_unavailable", True)
    ]
    assert _events(app, run_id, "step.retrying") == []
    assert steps["after_down"].status is fs.StepStatus.SKIPPED
    assert steps["after_down"].error_type == "dependency_failed"
    assert not (project.root / "ran.jsonl").exists()  # neither asset ran
    assert steps["plain"].status is fs.StepStatus.SUCCEEDED
    assert steps["s1"].status is fs.StepStatus.SUCCEEDED

    assert [(r["event"], r["ok"], r["pid"]) for r in project.records("down.jsonl")] == [
        ("setup", False, worker.pid)
    ]
    # "conn" (set up before "down" failed, in the same worker) stays up for the other steps.
    [conn] = project.records("conn.jsonl")
    assert conn["pid"] == worker.pid and conn["ok"]
    assert [r["token"] for r in project.records("steps.jsonl")] == [conn["token"]]

    _stop(worker)
    assert [(r["event"], r["token"]) for r in project.records("conn.jsonl")[1:]] == [
        ("teardown", conn["token"])
    ]
    assert [r["event"] for r in project.records("down.jsonl")] == ["setup"]  # nothing to tear down


def test_a_failing_setup_is_tried_again_by_each_retry_of_the_steps_policy(
    queue_project: Callable[..., QueueProject],
) -> None:
    project, app = _project(queue_project)
    run_id = app.submit(["retried_down", "recovers"])
    worker = project.start_worker("--concurrency", "2")
    assert app.wait_run(run_id, timeout=60).status is fs.RunStatus.FAILED, project.logs()
    steps = _steps(app, run_id)

    # Always down: every attempt of RetryPolicy(max_attempts=3) tries the setup again, then fails.
    down = steps["retried_down"]
    assert down.status is fs.StepStatus.FAILED and down.attempt == 3
    assert down.error_type == "resource_unavailable"
    mats = sorted(
        app.store.materializations(tenant=app.tenant, asset="retried_down", run_id=run_id),
        key=lambda m: m.attempt,
    )
    assert [(m.attempt, m.status, m.error_type, m.retryable) for m in mats] == [
        (n, "failed", "resource_unavailable", True) for n in (1, 2, 3)
    ]
    retrying = [e for e in _events(app, run_id, "step.retrying") if e["asset"] == "retried_down"]
    assert [(e["data"]["attempt"], e["data"]["error"]["type"]) for e in retrying] == [
        (1, "resource_unavailable"),
        (2, "resource_unavailable"),
    ]
    assert [(r["event"], r["ok"], r["pid"]) for r in project.records("down.jsonl")] == [
        ("setup", False, worker.pid)
    ] * 3
    assert not (project.root / "ran.jsonl").exists()

    # Down once: the retry sets it up and the step succeeds with its handle.
    recovers = steps["recovers"]
    assert recovers.status is fs.StepStatus.SUCCEEDED and recovers.attempt == 2
    flaky = project.records("flaky.jsonl")
    assert [(r["event"], r["ok"], r["pid"]) for r in flaky] == [
        ("setup", False, worker.pid),
        ("setup", True, worker.pid),
    ]
    assert app.load("recovers") == flaky[1]["token"]

    _stop(worker)
    assert [(r["event"], r.get("token")) for r in project.records("flaky.jsonl")[2:]] == [
        ("teardown", flaky[1]["token"])
    ]
    assert [r["event"] for r in project.records("down.jsonl")] == ["setup"] * 3


def test_an_isolated_worker_sets_resources_up_and_tears_them_down_in_each_step_process(
    queue_project: Callable[..., QueueProject],
) -> None:
    project, app = _project(queue_project)
    run_id = app.submit(["s2", "after_down"])
    worker = project.start_worker("--concurrency", "1", "--isolate")
    assert app.wait_run(run_id, timeout=30).status is fs.RunStatus.FAILED, project.logs()
    steps = _steps(app, run_id)
    assert steps["s1"].status is steps["s2"].status is fs.StepStatus.SUCCEEDED
    assert steps["needs_down"].error_type == "resource_unavailable"
    assert steps["needs_down"].attempt == 1
    assert steps["after_down"].status is fs.StepStatus.SKIPPED

    conn = project.records("conn.jsonl")
    by_pid: dict[int, list[str]] = {}
    for r in conn:
        by_pid.setdefault(r["pid"], []).append(r["event"])
    # s1, s2 and needs_down each in a process of its own (not the worker), each tearing down
    # what it set up, needs_down included although "down" failed after "conn" was set up.
    assert len(by_pid) == 3 and worker.pid not in by_pid
    assert all(events == ["setup", "teardown"] for events in by_pid.values()), conn
    used = {r["pid"]: r["token"] for r in project.records("steps.jsonl")}
    assert len(used) == 2 and set(used) < set(by_pid)  # s1 and s2
    for pid, token in used.items():
        assert [r["token"] for r in conn if r["pid"] == pid] == [token, token]
    [down] = project.records("down.jsonl")
    assert not down["ok"] and down["pid"] in by_pid and down["pid"] not in used

    _stop(worker)
    assert project.records("conn.jsonl") == conn  # the worker itself set nothing up
