"""Crash recovery of the run queue, with real ``flowstone worker`` processes on the real PostgreSQL:
a worker killed with SIGKILL in the middle of a step, a worker killed after storing a value but
before recording it, and a worker whose database connections are terminated under it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlalchemy as sa

import flowstone as fs

from .conftest import QueueProject, assert_successes_have_their_values, pg_rows, wait_until

STALLED_AFTER = 3.0  # the fixture's default [queue] stalled_after = "3s", reap_every = "0.5s"

# ``slow`` signals that it started (started-<pid>) and then blocks until the test writes
# ``release``: the test kills the worker while it blocks.
BLOCKING = """
import os
import time
from pathlib import Path

import flowstone as fs

HERE = Path(__file__).parent
pipeline = fs.Pipeline("crash")


def _block_until_released(tag):
    (HERE / f"{tag}-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not (HERE / "release").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the test never released the step")
        time.sleep(0.02)


@pipeline.asset
def source(context):
    return 1


@pipeline.asset
def slow(context, source):
    _block_until_released("started")
    return {"value": source + 1, "pid": os.getpid()}


@pipeline.asset
def sink(context, slow):
    return slow["value"] * 10
"""

# ``held`` [p1] is stored through an I/O manager that stops right after the value is written
# (stored-<pid>), before the worker records it: the window between "stored" and "recorded".
HOLDING = """
import os
import time
from pathlib import Path

import flowstone as fs
from flowstone.io import FilesystemIOManager

HERE = Path(__file__).parent


class HoldingIO:
    def __init__(self, root):
        self.inner = FilesystemIOManager(root)

    def store(self, ctx, value):
        stored = self.inner.store(ctx, value)
        if ctx.partition_key == "p1":
            (HERE / f"stored-{os.getpid()}").write_text(ctx.materialization_id or "")
            deadline = time.monotonic() + 60
            while not (HERE / "release").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the test never released the step")
                time.sleep(0.02)
        return stored

    def load(self, ctx):
        return self.inner.load(ctx)

    def delete(self, ctx):
        self.inner.delete(ctx)

    def exists(self, ctx):
        return self.inner.exists(ctx)

    def metadata(self, ctx):
        return self.inner.metadata(ctx)


pipeline = fs.Pipeline("holding", io_managers={"holding": HoldingIO(HERE / "held-storage")})
parts = fs.StaticPartitions(["p1", "p2"])


@pipeline.asset(partitioned_by=parts)
def base(context):
    return context.partition_key


@pipeline.asset(partitioned_by=parts, io_manager="holding")
def held(context, base):
    return {"base": base, "pid": os.getpid()}


@pipeline.asset(partitioned_by=parts)
def after(context, held):
    return held["base"] + "!"
"""

# The worker records ``recorded``'s success (QueueDB.finish_and_fetch commits, ending the job in
# the same transaction), then stops before it returns. The hold is fault injection in the worker process
# only (never in the test process that imports pipe.py).
AFTER_RECORD = """
import os
import sys
import time
from pathlib import Path

import flowstone as fs

HERE = Path(__file__).parent
pipeline = fs.Pipeline("after_record")

if Path(sys.argv[0]).name == "flowstone" and "worker" in sys.argv:
    from flowstone.queue import _db

    _finish = _db.QueueDB.finish_and_fetch

    def _finish_then_hold(self, claimed, outcome, **fetch):
        recorded = _finish(self, claimed, outcome, **fetch)
        if claimed.args.asset == "recorded" and not (HERE / "release").exists():
            (HERE / f"recorded-{os.getpid()}").touch()
            deadline = time.monotonic() + 60
            while not (HERE / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return recorded

    _db.QueueDB.finish_and_fetch = _finish_then_hold


@pipeline.asset
def recorded(context):
    return os.getpid()


@pipeline.asset
def downstream(context, recorded):
    return [recorded, os.getpid()]
"""

SIMPLE = """
import os

import flowstone as fs

pipeline = fs.Pipeline("simple")


@pipeline.asset
def first(context):
    return os.getpid()


@pipeline.asset
def second(context, first):
    return [first, os.getpid()]
"""


def _marker(root: Path, prefix: str) -> list[int]:
    """Pids of the processes that wrote ``<prefix>-<pid>`` in the project directory."""
    return sorted(int(p.name.rsplit("-", 1)[1]) for p in root.glob(f"{prefix}-*"))


def _claims(app: fs.FlowStone, asset: str) -> list[tuple[str, int, int, str]]:
    return [
        tuple(r)
        for r in pg_rows(
            app,
            "SELECT worker, job_id, attempt, run_id FROM flowstone_step_claims WHERE asset = :a",
            a=asset,
        )
    ]


def _materializations(app: fs.FlowStone, run_id: str) -> list[tuple[str, str, str, int, int, str]]:
    return [
        tuple(r)
        for r in pg_rows(
            app,
            "SELECT asset, partition_key, status, attempt, pid, id FROM flowstone_materializations"
            " WHERE run_id = :run ORDER BY asset, partition_key, started_at",
            run=run_id,
        )
    ]


def _events(app: fs.FlowStone, run_id: str, type_: str, asset: str) -> list[dict[str, object]]:
    rows = pg_rows(
        app,
        "SELECT data FROM flowstone_events WHERE run_id = :run AND type = :t AND asset = :a ORDER BY id",
        run=run_id,
        t=type_,
        a=asset,
    )
    return [r[0] if isinstance(r[0], dict) else json.loads(r[0] or "{}") for r in rows]


def _up(project: QueueProject, proc: subprocess.Popen[bytes]) -> bool:
    """The worker has started (its log says so; see QueueProject.start_worker)."""
    log = project.root / f"worker-{project.workers.index(proc)}.log"
    return "started (concurrency" in log.read_text(errors="replace")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_a_step_of_a_worker_killed_mid_step_is_rerun_by_another_worker_once(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(BLOCKING)
    app = project.app()
    run_id = app.submit(["sink"])
    first = project.start_worker("--concurrency", "2", "--name", "worker-a")

    wait_until(lambda: _marker(project.root, "started"), timeout=30, what="'slow' to start on worker-a")
    assert _marker(project.root, "started") == [first.pid]
    claims = _claims(app, "slow")
    assert [(c[0], c[2], c[3]) for c in claims] == [("worker-a", 1, run_id)]
    killed_job = claims[0][1]

    # The other worker is up (and idle: 'sink' waits for 'slow') before worker-a dies, so what
    # is timed below is the queue noticing the death, not a process starting.
    second = project.start_worker("--concurrency", "2", "--name", "worker-b")
    wait_until(lambda: _up(project, second), timeout=30, what="worker-b to start")
    _kill(first)
    killed_at = time.monotonic()
    # Nothing of the killed attempt is recorded: no materialization, the step is still running.
    assert [m for m in _materializations(app, run_id) if m[0] == "slow"] == []
    steps = {s.asset: s.status for s in app.run(run_id)[1]}  # type: ignore[index]
    assert steps["slow"] is fs.StepStatus.RUNNING

    wait_until(
        lambda: second.pid in _marker(project.root, "started"),
        timeout=STALLED_AFTER + 15,
        what="'slow' to be re-run by worker-b",
    )
    detected_after = time.monotonic() - killed_at
    # Presumed dead once its last heartbeat (every stalled_after / 4) is stalled_after old,
    # reaped within reap_every, fetched at once (NOTIFY) or within the 1 s poll: never before
    # stalled_after minus one heartbeat interval, and not much after stalled_after.
    assert STALLED_AFTER * 3 / 4 - 0.1 <= detected_after < STALLED_AFTER + 4, (
        f"re-run {detected_after:.1f}s after the kill"
    )

    # While the second attempt runs: the killed attempt's claim is gone, the new one is worker-b's.
    claims = _claims(app, "slow")
    assert [(c[0], c[2], c[3]) for c in claims] == [("worker-b", 2, run_id)]
    assert claims[0][1] != killed_job
    abandoned = _events(app, run_id, "step.abandoned", "slow")
    assert len(abandoned) == 1
    assert abandoned[0]["job_id"] == killed_job and abandoned[0]["attempt"] == 1
    (status,) = pg_rows(app, "SELECT status FROM procrastinate_jobs WHERE id = :j", j=killed_job)[0]
    assert status == "failed"

    (project.root / "release").touch()
    record = app.wait_run(run_id, timeout=30)
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()

    mats = _materializations(app, run_id)
    # Exactly one materialization per step, each a success; the killed attempt recorded nothing.
    assert [(m[0], m[2]) for m in mats] == [("sink", "success"), ("slow", "success"), ("source", "success")]
    slow = next(m for m in mats if m[0] == "slow")
    assert (slow[3], slow[4]) == (2, second.pid)
    assert app.load("slow") == {"value": 2, "pid": second.pid}
    assert app.load("sink") == 20
    assert [d.get("attempt") for d in _events(app, run_id, "step.started", "slow")] == [None, 2]
    assert len(_events(app, run_id, "step.succeeded", "slow")) == 1
    assert _claims(app, "slow") == []
    assert pg_rows(app, "SELECT count(*) FROM flowstone_step_claims")[0][0] == 0
    assert assert_successes_have_their_values(app, run_id) == 3
    # The step ran twice in all (once killed), never at the same time: worker-b began after the kill.
    assert _marker(project.root, "started") == sorted([first.pid, second.pid])


def test_a_value_stored_by_a_killed_worker_is_not_recorded_and_the_success_has_its_value(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(HOLDING)
    app = project.app()
    run_id = app.submit(["after"], partitions=["p1", "p2"])
    first = project.start_worker("--concurrency", "2", "--name", "worker-a")

    wait_until(lambda: _marker(project.root, "stored"), timeout=30, what="'held' [p1] to be stored")
    assert _marker(project.root, "stored") == [first.pid]
    killed_mat = (project.root / f"stored-{first.pid}").read_text()
    _kill(first)
    # The killed attempt's value is on disk, but it is not a success: nothing recorded it.
    assert app.load("held", partition="p1") == {"base": "p1", "pid": first.pid}
    held_p1 = [m for m in _materializations(app, run_id) if m[:2] == ("held", "p1")]
    assert held_p1 == []

    second = project.start_worker("--concurrency", "2", "--name", "worker-b")
    wait_until(
        lambda: second.pid in _marker(project.root, "stored"),
        timeout=STALLED_AFTER + 20,
        what="'held' [p1] to be stored again by worker-b",
    )
    retried_mat = (project.root / f"stored-{second.pid}").read_text()
    assert retried_mat != killed_mat
    (project.root / "release").touch()
    record = app.wait_run(run_id, timeout=30)
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()

    mats = _materializations(app, run_id)
    assert sorted((m[0], m[1], m[2]) for m in mats) == sorted(
        (a, p, "success") for a in ("base", "held", "after") for p in ("p1", "p2")
    )
    success = next(m for m in mats if m[:2] == ("held", "p1"))
    assert (success[3], success[4], success[5]) == (2, second.pid, retried_mat)
    assert app.load("held", partition="p1") == {"base": "p1", "pid": second.pid}
    assert app.load("after", partition="p1") == "p1!"
    # The recorded success is the stored value: checksums match, and the sidecar names it.
    assert assert_successes_have_their_values(app, run_id) == 6
    sidecar = json.loads((project.root / "held-storage" / "held" / "p=p1._asset.json").read_text())
    assert sidecar["materialization_id"] == retried_mat
    # Downstream lineage points at the recorded success, never at the killed attempt's value.
    ups = pg_rows(
        app,
        "SELECT upstream_materialization_id FROM flowstone_lineage WHERE run_id = :run"
        " AND asset = 'after' AND partition_key = 'p1'",
        run=run_id,
    )
    assert [u[0] for u in ups] == [retried_mat]


def test_a_worker_killed_after_recording_a_success_does_not_get_the_step_run_again(
    queue_project: Callable[..., QueueProject],
) -> None:
    """Killed right after QueueDB.finish committed: the job ended in that same transaction, so
    there is no window where the step is recorded but its job still held by a dead worker.
    Nothing may hand the finished step to a new job (a second success, the run counted down
    twice)."""
    project = queue_project(AFTER_RECORD)
    app = project.app()
    run_id = app.submit(["downstream"])
    # One at a time: worker-a must not run 'downstream' while it holds 'recorded'.
    first = project.start_worker("--concurrency", "1", "--name", "worker-a")
    wait_until(lambda: _marker(project.root, "recorded"), timeout=30, what="'recorded' to be recorded")
    (job_id,) = pg_rows(
        app, "SELECT job_id FROM flowstone_run_steps WHERE run_id = :run AND asset = 'recorded'", run=run_id
    )[0]
    assert [(m[0], m[2]) for m in _materializations(app, run_id)] == [("recorded", "success")]
    assert pg_rows(app, "SELECT status FROM procrastinate_jobs WHERE id = :j", j=job_id) == []
    _kill(first)
    (project.root / "release").touch()
    second = project.start_worker("--concurrency", "2", "--name", "worker-b")

    record = app.wait_run(run_id, timeout=30)
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()

    def reaped_and_drained() -> bool:
        """No job is left (none held by the dead worker, none handed on)."""
        rows = pg_rows(app, "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
        return rows[0][0] == 0

    wait_until(reaped_and_drained, timeout=STALLED_AFTER + 15, what="the queue to drain")
    mats = _materializations(app, run_id)
    assert [(m[0], m[2]) for m in mats] == [("downstream", "success"), ("recorded", "success")], mats
    assert app.load("downstream") == [first.pid, second.pid]
    assert len(_events(app, run_id, "step.started", "recorded")) == 1
    assert _events(app, run_id, "step.abandoned", "recorded") == []
    (steps_left, status) = pg_rows(
        app, "SELECT steps_left, status FROM flowstone_runs WHERE id = :run", run=run_id
    )[0]
    assert (steps_left, status) == (0, "succeeded")
    finished = pg_rows(
        app, "SELECT count(*) FROM flowstone_events WHERE run_id = :run AND type = 'run.finished'", run=run_id
    )
    assert finished[0][0] == 1


# ---------------------------------------------------------------------- lost database connections


def _terminate(app: fs.FlowStone, application_name: str, *, idle_only: bool = True) -> int:
    """Terminate the backends of the given application name (only those idle at that instant,
    unless ``idle_only`` is false); returns how many."""
    rows = pg_rows(
        app,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        " AND datname = current_database() AND application_name = :name"
        + (" AND state = 'idle'" if idle_only else ""),
        name=application_name,
    )
    return sum(1 for r in rows if r[0])


def _quiet(app: fs.FlowStone, application_name: str) -> bool:
    """No job waits or runs, and every connection of the worker is idle (between its polls)."""
    (jobs,) = pg_rows(app, "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")[0]
    (busy,) = pg_rows(
        app,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = :name AND state <> 'idle'",
        name=application_name,
    )[0]
    return jobs == 0 and busy == 0


def _backends(app: fs.FlowStone, application_name: str) -> int:
    return int(
        pg_rows(
            app,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = :name",
            name=application_name,
        )[0][0]
    )


def _worker_with_own_connections(project: QueueProject) -> tuple[subprocess.Popen[bytes], str]:
    """A worker whose every connection (the store's pool, the queue's pool and its LISTEN
    connection) carries its own application name, through libpq's PGAPPNAME."""
    name = f"flowstone-worker-{uuid.uuid4().hex[:12]}"
    return project.start_worker("--concurrency", "2", env={"PGAPPNAME": name}), name


def _first_run(app: fs.FlowStone, project: QueueProject, worker: subprocess.Popen[bytes], name: str) -> None:
    run_id = app.submit(["second"])
    assert app.wait_run(run_id, timeout=30).status is fs.RunStatus.SUCCEEDED, project.logs()
    assert app.load("second") == [worker.pid, worker.pid]
    assert _backends(app, name) >= 2  # the test's own connections do not carry the name
    wait_until(lambda: _quiet(app, name), timeout=15, what="the worker to be idle")


@contextlib.contextmanager
def _blocking(app: fs.FlowStone, lock: str, application_name: str, query: str) -> Iterator[None]:
    """Hold ``lock`` in a transaction of its own until the worker's ``query`` waits for it."""
    engine = sa.create_engine(app.store.engine.url)
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text(lock))
            wait_until(
                lambda: pg_rows(
                    app,
                    "SELECT pid FROM pg_stat_activity WHERE application_name = :name"
                    " AND wait_event_type = 'Lock' AND query LIKE :query",
                    name=application_name,
                    query=f"%{query}%",
                ),
                timeout=15,
                what=f"the worker's {query} to wait for the lock",
            )
            yield
    finally:
        engine.dispose()


def _run_or_death(
    app: fs.FlowStone, project: QueueProject, worker: subprocess.Popen[bytes], *, timeout: float
) -> None:
    """Submit a run and wait until it ends or the worker dies; the worker must live and the run
    succeed."""
    run_id = app.submit(["first", "second"], force=True)
    progress = app.run_queue().db
    wait_until(
        lambda: (
            worker.poll() is not None
            or fs.RunStatus(progress.progress(tenant="default", run_id=run_id)[0]).finished
        ),  # type: ignore[index]
        timeout=timeout,
        what="the run to end (or the worker to die)",
    )
    assert worker.poll() is None, f"the worker died (exit {worker.poll()}):\n{project.logs()[-3000:]}"
    record = app.store.get_run(tenant="default", run_id=run_id)
    assert record is not None and record.status is fs.RunStatus.SUCCEEDED, project.logs()[-3000:]
    assert app.load("second") == [worker.pid, worker.pid]
    assert assert_successes_have_their_values(app, run_id) == 2


def test_a_worker_whose_idle_connections_are_terminated_reconnects_and_carries_on(
    queue_project: Callable[..., QueueProject],
) -> None:
    """An idle worker loses every database connection at once (pg_terminate_backend): its pools
    and its LISTEN connection reconnect, and it carries out the next run (default timings:
    stalled_after 30s)."""
    project = queue_project(SIMPLE, queue_toml="")
    app = project.app()
    worker, name = _worker_with_own_connections(project)
    _first_run(app, project, worker, name)

    assert _terminate(app, name) >= 2
    wait_until(lambda: _backends(app, name) > 0, timeout=15, what="the worker to reconnect")
    _run_or_death(app, project, worker, timeout=30)


def test_a_worker_cut_off_while_fetching_a_job_carries_on(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(SIMPLE)
    app = project.app()
    worker, name = _worker_with_own_connections(project)
    _first_run(app, project, worker, name)
    # The worker's next poll for jobs waits on the lock; it is cut off in the middle of it.
    with _blocking(app, "LOCK TABLE procrastinate_jobs IN ACCESS EXCLUSIVE MODE", name, "fetch_job"):
        assert _terminate(app, name, idle_only=False) >= 2
    _run_or_death(app, project, worker, timeout=20)


def test_a_worker_cut_off_while_sending_a_heartbeat_keeps_sending_them(
    queue_project: Callable[..., QueueProject],
) -> None:
    project = queue_project(SIMPLE)
    app = project.app()
    worker, name = _worker_with_own_connections(project)
    _first_run(app, project, worker, name)
    with _blocking(app, "SELECT id FROM procrastinate_workers FOR UPDATE", name, "SET last_heartbeat"):
        assert _terminate(app, name, idle_only=False) >= 2
        (cut_at,) = pg_rows(app, "SELECT clock_timestamp()")[0]
    # Heartbeats come every stalled_after / 4: one must come after the cut, well within stalled_after.
    wait_until(
        lambda: pg_rows(app, "SELECT 1 FROM procrastinate_workers WHERE last_heartbeat > :cut", cut=cut_at),
        timeout=STALLED_AFTER,
        what="a heartbeat after the cut",
    )
    # Past stalled_after the worker is alive, registered and takes runs.
    later = time.monotonic() + STALLED_AFTER + 1
    wait_until(lambda: time.monotonic() >= later or worker.poll() is not None, timeout=10, what="time")
    _run_or_death(app, project, worker, timeout=20)
