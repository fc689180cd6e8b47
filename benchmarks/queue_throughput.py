"""The run queue end to end: N trivial steps of a wide graph through real ``flowstone worker``
processes on the local PostgreSQL.

The project (pipe.py + flowstone.toml, written to a temp dir) has ``--layers`` assets (default 2)
over the same ``StaticPartitions`` of N / layers keys: ``layer0`` has no upstream, each
``layer<i>`` partition reads the same partition of ``layer<i-1>``. Values are ints stored by the
filesystem I/O manager (the default, with its fsync and sidecars; ``--no-fsync`` turns the
former off). It works across processes; the memory one would leave each value inside the worker
that computed it (submit does not refuse it yet). Each step loads its input, adds one and stores
a pickle. The store lives in a fresh PostgreSQL schema, dropped at the end (also on SIGTERM).

With the workers started and registered, the plan is submitted (``app.submit_plan``) and the
clock runs until the run's ``finished_at``: ``steps_per_s`` = steps / that. Hand-off latency of
each downstream step = its ``started_at`` (the claim) minus the latest ``finished_at`` of its
upstream steps in the run; median and p95. With a wide graph the downstream jobs are enqueued
behind the whole upstream layer, so this also holds the time a ready step waits in the queue;
``chain_handoff_*`` is the same measured afterwards on a ``--chain``-step chain with idle workers
(the queue's own hand-off: finish transaction, NOTIFY, fetch, claim).

Targets: >= 300 steps/s on a 2-core host, median hand-off under 50 ms.

Also printed: how the wall time divides per step (``claimed_to_compute`` and ``compute`` medians
from the store's timestamps; with ``--split``, ``split_ms_per_step``: mean wall ms of claim,
compute incl. load + store, the transaction that records a step and takes the next, the claim
and finish statements within it, and statements and commits per step, from timers put into the
workers), CPU ms per step of the workers, of the PostgreSQL backends
serving this benchmark (told apart by application_name) and of this process, how busy the host
was and how much of that was ours (a shared host skews ``steps_per_s``; ``cpu_bound_steps_per_s``
= 2 cores / our CPU per step is the steadier figure to compare). Prints one JSON line.

    python benchmarks/queue_throughput.py [--steps 5000] [--workers 2] [--concurrency 4] [--split]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import report

import flowstone as fs
from flowstone.queue import QueueConfig

BASE_URL = os.environ.get("FLOWSTONE_TEST_PG_URL") or "postgresql://postgres@127.0.0.1:5432/test"
FLOWSTONE = str(Path(sys.executable).parent / "flowstone")
SHIM = "--worker-shim"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- the project
def pipe_source(keys: int, layers: int, chain: int) -> str:
    lines = [
        "import flowstone as fs",
        "",
        f'parts = fs.StaticPartitions([f"p{{i:05d}}" for i in range({keys})])',
        'pipeline = fs.Pipeline("queue_bench")',
        "",
        "",
        '@pipeline.asset(partitioned_by=parts, code_version="1")',
        "def layer0(context):",
        "    return 0",
    ]
    for i in range(1, layers):
        lines += [
            "",
            "",
            '@pipeline.asset(partitioned_by=parts, code_version="1")',
            f"def layer{i}(context, layer{i - 1}):",
            f"    return layer{i - 1} + 1",
        ]
    for i in range(chain):
        params = "context" if i == 0 else f"context, chain{i - 1}"
        lines += [
            "",
            "",
            '@pipeline.asset(code_version="1")',
            f"def chain{i}({params}):",
            "    return 0" if i == 0 else f"    return chain{i - 1} + 1",
        ]
    return "\n".join(lines) + "\n"


def write_project(root: Path, url: str, *, keys: int, layers: int, chain: int, fsync: bool) -> None:
    (root / "pipe.py").write_text(pipe_source(keys, layers, chain))
    io = "" if fsync else "\n[io.filesystem]\nfsync = false\n"
    (root / "flowstone.toml").write_text(
        f'pipeline = "pipe:pipeline"\nstore = "{url}"\nstorage = ".flowstone/storage"\n{io}'
    )


def load_pipeline(root: Path) -> fs.Pipeline:
    name = f"queue_bench_pipe_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, root / "pipe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    pipeline: fs.Pipeline = module.pipeline
    return pipeline


def project_app(root: Path, url: str) -> fs.FlowStone:
    """The pipeline bound as ``flowstone worker`` binds it (same store, storage, I/O options)."""
    from flowstone._config import load_settings
    from flowstone.io._registry import create

    settings = load_settings(start=root)
    managers = {
        name: create(name, options, storage_dir=settings.storage_dir, store_url=url, base_dir=root)
        for name, options in settings.io.items()
    }
    return fs.FlowStone(
        load_pipeline(root),
        store=url,
        storage_dir=settings.storage_dir,
        io_managers=managers,
        queue=QueueConfig.from_table(settings.queue),
    )


@contextlib.contextmanager
def fresh_schema() -> Iterator[tuple[str, sa.Engine, str]]:
    """A store URL whose connections live in a new schema (dropped at the end), an engine on it,
    and the schema's name, which is also every connection's application_name (so the server's
    processes that serve this benchmark can be told from those of anyone else on the server)."""
    base = sa.make_url(BASE_URL).set(drivername="postgresql+psycopg")
    schema = f"fs_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base.render_as_string(hide_password=False), poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    query = {"options": f"-csearch_path={schema}", "application_name": schema}
    url = base.update_query_dict(query).render_as_string(hide_password=False)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield url, engine, schema
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


# ---------------------------------------------------------------------------- workers
class Workers:
    """``flowstone worker`` subprocesses in the project directory (through the timing shim with
    ``split``), stopped with SIGTERM as an operator would."""

    def __init__(self, root: Path, count: int, concurrency: int, *, split: bool) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stats = [root / f"worker-{i}.stats.json" for i in range(count)]
        for i in range(count):
            args = ["worker", "--concurrency", str(concurrency)]
            cmd = [sys.executable, __file__, SHIM, str(self.stats[i]), *args] if split else [FLOWSTONE, *args]
            with (root / f"worker-{i}.log").open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
                    )
                )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                log = (self.root / f"worker-{i}.log").read_text(errors="replace")
                raise RuntimeError(f"worker {i} exited with {proc.returncode}:\n{log[-4000:]}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def split(self) -> dict[str, Any] | None:
        found = [json.loads(p.read_text()) for p in self.stats if p.exists()]
        if not found:
            return None
        total: dict[str, Any] = {}
        for stats in found:
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
        return total


def wait_for_workers(engine: sa.Engine, workers: Workers, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers.check_alive()
        with engine.connect() as conn:
            if conn.execute(sa.text("SELECT to_regclass('procrastinate_workers')")).scalar() is not None:
                registered = conn.execute(sa.text("SELECT count(*) FROM procrastinate_workers")).scalar()
                if registered is not None and registered >= count:
                    return
        time.sleep(0.05)
    raise TimeoutError(f"{count} workers did not register within {timeout:g}s")


def wait_for_run(app: fs.FlowStone, workers: Workers, run_id: str, timeout: float) -> fs.RunRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = app.store.get_run(tenant=app.tenant, run_id=run_id)
        assert record is not None
        if record.status.finished:
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {record.status.value} after {timeout:g}s")
        workers.check_alive()
        time.sleep(0.1)


# ---------------------------------------------------------------------------- CPU accounting
def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process, seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def backend_pids(engine: sa.Engine, name: str) -> list[int]:
    """The server processes serving connections named ``name`` (this benchmark's)."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        return [int(pid) for (pid,) in found]


def host_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) jiffies of the whole host since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + steal + idle + iowait


class CpuMeter:
    """CPU seconds of the workers, of the server processes serving this benchmark (by
    application_name; a connection closed meanwhile takes its share along) and of this process,
    against the whole host's."""

    def __init__(self, worker_pids: Sequence[int], backends: Callable[[], list[int]]) -> None:
        self.worker_pids = list(worker_pids)
        self.backends = backends
        self.start_backends = {pid: proc_cpu_s(pid) for pid in backends()}
        self.start = (sum(proc_cpu_s(p) for p in self.worker_pids), time.process_time(), host_cpu())

    def stop(self, steps: int, seconds: float) -> dict[str, Any]:
        postgres = sum(proc_cpu_s(pid) - self.start_backends.get(pid, 0.0) for pid in self.backends())
        workers = sum(proc_cpu_s(p) for p in self.worker_pids) - self.start[0]
        me = time.process_time() - self.start[1]
        busy, steal, total = (host_cpu()[i] - self.start[2][i] for i in range(3))
        ours = workers + postgres + me
        return {
            "cpu_ms_per_step": {
                "workers": round(workers / steps * 1000, 3),
                "postgres": round(postgres / steps * 1000, 3),
                "submitter": round(me / steps * 1000, 3),
            },
            "host_busy_pct": round(100 * busy / total, 1) if total else None,
            "host_steal_pct": round(100 * steal / total, 1) if total else None,
            # Cores busy on the whole host, and how much of that the processes above account for
            # (the rest: the kernel's I/O threads, short-lived connections, other tenants).
            "host_cores_busy": round(busy / CLK_TCK / seconds, 2),
            "cores_accounted": round(ours / seconds, 2),
            # What 2 cores could do if this CPU per step were all there is (no kernel threads,
            # no waiting, no other tenant): an upper bound, steadier than steps_per_s on a
            # shared host.
            "cpu_bound_steps_per_s": round(2 * steps / ours, 1) if ours else None,
        }


# ---------------------------------------------------------------------------- figures
HANDOFF_SQL = """
SELECT EXTRACT(EPOCH FROM s.started_at - u.done) * 1000
FROM flowstone_run_steps s
JOIN (SELECT d.step_id, max(up.finished_at) AS done
      FROM flowstone_run_step_deps d JOIN flowstone_run_steps up ON up.id = d.upstream_step_id
      WHERE d.run_id = :run GROUP BY d.step_id) u ON u.step_id = s.id
"""

# Per step, from the store's own timestamps: claim (started_at) -> compute start -> value stored.
TIMELINE_SQL = """
SELECT EXTRACT(EPOCH FROM m.started_at - s.started_at) * 1000, m.duration_ms
FROM flowstone_run_steps s JOIN flowstone_materializations m ON m.id = s.materialization_id
WHERE s.run_id = :run
"""


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def handoffs(engine: sa.Engine, run_id: str) -> list[float]:
    with engine.connect() as conn:
        return [float(v) for (v,) in conn.execute(sa.text(HANDOFF_SQL), {"run": run_id})]


def timeline(engine: sa.Engine, run_id: str) -> dict[str, float]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(TIMELINE_SQL), {"run": run_id}).all()
    return {
        "claimed_to_compute_median_ms": round(statistics.median(float(r[0]) for r in rows), 3),
        "compute_median_ms": round(statistics.median(float(r[1]) for r in rows), 3),
    }


def run_and_measure(
    app: fs.FlowStone, workers: Workers, engine: sa.Engine, plan: Any, timeout: float
) -> tuple[str, float, float]:
    """Submit ``plan``; (run id, seconds of submit_plan, seconds until the run's finished_at)."""
    t0 = datetime.now(UTC)
    p0 = time.perf_counter()
    run_id = app.submit_plan(plan)
    submit_s = time.perf_counter() - p0
    record = wait_for_run(app, workers, run_id, timeout)
    if record.status is not fs.RunStatus.SUCCEEDED:
        raise RuntimeError(f"run {run_id} ended {record.status.value}")
    assert record.finished_at is not None
    return run_id, submit_s, (record.finished_at - t0).total_seconds()


def ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    if args.steps % args.layers:
        raise SystemExit(f"--steps {args.steps} is not a multiple of --layers {args.layers}")
    keys = args.steps // args.layers
    with (
        fresh_schema() as (url, engine, name),
        tempfile.TemporaryDirectory(prefix="flowstone-qbench-") as tmp,
    ):
        root = Path(tmp)
        write_project(root, url, keys=keys, layers=args.layers, chain=args.chain, fsync=not args.no_fsync)
        app = project_app(root, url)  # creates the store's tables before the workers start
        workers = Workers(root, args.workers, args.concurrency, split=args.split)
        try:
            wait_for_workers(engine, workers, args.workers)
            p0 = time.perf_counter()
            plan = plan_wide(app, args.layers)
            plan_s = time.perf_counter() - p0
            assert len(plan.steps) == args.steps, len(plan.steps)
            cpu = CpuMeter(workers.pids, lambda: backend_pids(engine, name))
            run_id, submit_s, seconds = run_and_measure(app, workers, engine, plan, args.timeout)
            usage = cpu.stop(args.steps, seconds)
            wide = handoffs(engine, run_id)
            steps_timeline = timeline(engine, run_id)
            chain: list[float] = []
            if args.chain:
                chain_plan = app.plan([f"chain{args.chain - 1}"])
                chain_id, _, _ = run_and_measure(app, workers, engine, chain_plan, args.timeout)
                chain = handoffs(engine, chain_id)
        finally:
            workers.stop()
            app.close()
        split = workers.split()
    figures: dict[str, Any] = {
        "benchmark": "queue_throughput",
        "steps": args.steps,
        "layers": args.layers,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "fsync": not args.no_fsync,
        "seconds": round(seconds, 3),
        "steps_per_s": round(args.steps / seconds, 1),
        "handoff_median_ms": ms(statistics.median(wide)),
        "handoff_p95_ms": ms(percentile(wide, 0.95)),
        "chain_steps": args.chain,
        "chain_handoff_median_ms": ms(statistics.median(chain)) if chain else None,
        "chain_handoff_p95_ms": ms(percentile(chain, 0.95)),
        "plan_s": round(plan_s, 3),
        "submit_s": round(submit_s, 3),
        **steps_timeline,
        **usage,
    }
    if split is not None:
        figures["split_ms_per_step"] = split_per_step(split)
    return figures


def plan_wide(app: fs.FlowStone, layers: int) -> Any:
    definition = app.pipeline.assets["layer0"].partitioned_by
    assert definition is not None
    return app.plan([f"layer{i}" for i in range(layers)], partitions=list(definition.keys()))


def split_per_step(split: dict[str, Any]) -> dict[str, Any]:
    jobs = max(1, int(split.get("job_n", 0)))
    out: dict[str, Any] = {"jobs_timed": jobs}
    for key in ("job", "fetch", "compute", "finish_and_fetch", "claim_stmt", "finish_stmts"):
        if f"{key}_s" in split:
            out[key] = round(split[f"{key}_s"] / max(1, split.get(f"{key}_n", 0)) * 1000, 3)
    for key in ("sql", "commit"):
        if key in split:
            out[f"{key}_per_step"] = round(split[key] / jobs, 2)
    return out


# ---------------------------------------------------------------------------- the worker shim
class Timers:
    """Seconds and calls per name, from several threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.values[f"{name}_s"] = self.values.get(f"{name}_s", 0.0) + seconds
            self.values[f"{name}_n"] = self.values.get(f"{name}_n", 0) + 1

    def count(self, name: str) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + 1

    def timed(self, owner: Any, attr: str, name: str) -> None:
        original: Callable[..., Any] = getattr(owner, attr)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)

        setattr(owner, attr, wrapper)

    def counted(self, owner: Any, attr: str, name: str) -> None:
        original: Callable[..., Any] = getattr(owner, attr)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.count(name)
            return original(*args, **kwargs)

        setattr(owner, attr, wrapper)


def worker_shim(stats_path: str, cli_args: list[str]) -> None:
    """``flowstone worker`` with timers around each stage of a job; writes them at exit."""
    import psycopg

    from flowstone import cli
    from flowstone.queue import _db, _worker

    timers = Timers()
    timers.timed(_worker.Worker, "run_claimed", "job")  # compute and build the record
    timers.timed(_db.QueueDB, "fetch", "fetch")  # when idle: fetch and claim alone
    timers.timed(_worker, "_compute", "compute")
    timers.timed(_db.QueueDB, "finish_and_fetch", "finish_and_fetch")  # the transaction per step
    timers.timed(_db.QueueDB, "_claim_fast", "claim_stmt")
    timers.timed(_db.QueueDB, "_finish_in", "finish_stmts")
    timers.counted(psycopg.Cursor, "execute", "sql")
    timers.counted(psycopg.Cursor, "executemany", "sql")
    timers.counted(psycopg.Connection, "commit", "commit")
    try:
        cli.main(cli_args, standalone_mode=False)
    finally:
        Path(stats_path).write_text(json.dumps(timers.values))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [SHIM]:
        worker_shim(argv[1], argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=5000, help="steps in the wide run (default 5000)")
    parser.add_argument("--layers", type=int, default=2, help="assets in depth (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="steps per worker at once (default 4)")
    parser.add_argument("--chain", type=int, default=50, help="steps of the idle hand-off chain (0: none)")
    parser.add_argument("--no-fsync", action="store_true", help="[io.filesystem] fsync = false")
    parser.add_argument("--split", action="store_true", help="time each stage inside the workers")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take")
    args = parser.parse_args(argv)
    # Stopped with SIGTERM: still stop the workers and drop the schema.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report(**benchmark(args))


if __name__ == "__main__":
    main()
