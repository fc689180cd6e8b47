"""Chaos: three real ``flowstone worker`` processes carry out one run of a 200-asset partitioned
pipeline while a random busy worker is killed with SIGKILL every 2-3 s (and replaced), 10 times.

Afterwards every requested (asset, partition) has exactly one successful materialization in the
run, each success has the lineage of all its inputs (pointing at the run's own successes), each
recorded value is the one stored, and no step ever ran at the same time as itself (from the
start/end times every attempt appends to its process's span file; an attempt killed mid-step
ends, at the latest, when its process was killed)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import flowstone as fs

from .conftest import QueueProject, assert_successes_have_their_values, pg_rows, wait_until

ASSETS = 200
PARTITIONS = ("p1", "p2", "p3")
KILLS = 10
WORKERS = 3
CONCURRENCY = 3

# Layers of 10 assets; an asset of layer L depends on one asset of layer L-1 and, for every
# other asset, on one more of any earlier layer: a DAG 20 steps deep. The layout is drawn from a
# fixed seed so the worker processes build the very same pipeline as the test.
#
# Every asset may be attempted up to 12 times: each SIGKILL abandons at most one attempt of a
# given step and an abandoned attempt counts (Worker._max_attempts: max(3, the policy's
# max_attempts), 3 without a policy). With 10 kills no step can run out of attempts.
CHAOS = f"""
import os
import random
import threading
import time
from pathlib import Path

import flowstone as fs

HERE = Path(__file__).parent
SPANS = HERE / "spans"
SPANS.mkdir(exist_ok=True)
ASSETS = {ASSETS}
LAYER = 10

pipeline = fs.Pipeline("chaos", retry_policy=fs.RetryPolicy(max_attempts=12, base_delay=0.1))
parts = fs.StaticPartitions({list(PARTITIONS)!r})
_lock = threading.Lock()


def _span(line):
    with _lock, open(SPANS / f"{{os.getpid()}}.log", "a") as out:
        out.write(line)
        out.flush()


def layout():
    rng = random.Random(20240611)
    deps = {{}}
    for i in range(ASSETS):
        layer = i // LAYER
        if layer == 0:
            deps[i] = []
            continue
        first = rng.randrange((layer - 1) * LAYER, layer * LAYER)
        chosen = [first]
        if i % 2 == 0:
            other = rng.randrange(0, layer * LAYER)
            if other != first:
                chosen.append(other)
        deps[i] = sorted(chosen)
    return deps


def name(i):
    return f"a{{i:03d}}"


def _make(i, ups):
    def compute(context, **upstream):
        start = time.time()
        _span(f"S\\t{{context.asset_name}}\\t{{context.partition_key}}\\t{{os.getpid()}}\\t{{start!r}}\\n")
        total = i + sum(upstream[name(u)] for u in ups)
        deadline = time.perf_counter() + 0.004  # a little work
        while time.perf_counter() < deadline:
            total += 0
        end = time.time()
        _span(
            f"E\\t{{context.asset_name}}\\t{{context.partition_key}}\\t{{os.getpid()}}\\t{{start!r}}\\t{{end!r}}\\n"
        )
        return total

    pipeline.asset(
        name=name(i), depends_on=[name(u) for u in ups], partitioned_by=parts, code_version="1"
    )(compute)


DEPS = layout()
for _i, _ups in DEPS.items():
    _make(_i, _ups)
"""


def _pace(seconds: float) -> None:
    """Let ``seconds`` pass (the interval between two kills), polled against a deadline."""
    due = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= due, timeout=seconds + 1, what="the next kill")


def _expected_values(deps: dict[int, list[int]]) -> dict[int, int]:
    values: dict[int, int] = {}
    for i in sorted(deps):
        values[i] = i + sum(values[u] for u in deps[i])
    return values


def test_workers_killed_at_random_leave_exactly_one_success_per_step_and_no_overlap(
    queue_project: Callable[..., QueueProject],
) -> None:
    began = time.monotonic()
    project = queue_project(CHAOS, queue_toml='stalled_after = "2s"\nreap_every = "0.5s"\n')
    app = project.app()
    module = project.module
    deps: dict[int, list[int]] = module.DEPS
    assert len(app.pipeline.assets) == ASSETS

    run_id = app.submit("*", partitions=list(PARTITIONS))
    (steps,) = pg_rows(app, "SELECT step_count FROM flowstone_runs WHERE id = :run", run=run_id)[0]
    assert steps == ASSETS * len(PARTITIONS)

    alive: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    killed_at: dict[int, float] = {}  # pid -> wall time by which it was dead

    def start() -> None:
        name = f"chaos-{len(logs)}"
        alive[name] = project.start_worker("--concurrency", str(CONCURRENCY), "--name", name)
        logs[name] = project.root / f"worker-{len(project.workers) - 1}.log"

    for _ in range(WORKERS):
        start()

    def finished() -> bool:
        return app.store.get_run(tenant="default", run_id=run_id).status.finished  # type: ignore[union-attr]

    def busy() -> list[str]:
        """The live workers running a step right now."""
        rows = pg_rows(app, "SELECT DISTINCT worker FROM flowstone_step_claims")
        return sorted({r[0] for r in rows} & set(alive))

    def up() -> list[str]:
        """The live workers that have started (a worker takes a few seconds to start)."""
        return sorted(n for n in alive if "started (concurrency" in logs[n].read_text())

    # The chaos starts with the run.
    wait_until(busy, timeout=60, what="a worker to start running steps")
    rng = random.Random()
    busy_kills = 0
    for _ in range(KILLS):
        _pace(rng.uniform(2.0, 3.0))
        # A random worker among those started, once two are (one carries on while the victim's
        # replacement starts).
        candidates = wait_until(lambda: len(up()) >= 2 and up(), timeout=60, what="two started workers")
        victim = rng.choice(candidates)
        busy_kills += victim in busy()
        proc = alive.pop(victim)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        killed_at[proc.pid] = time.time()
        start()
    chaos_over = time.monotonic()
    killed_while_running = not finished()

    record = app.wait_run(run_id, timeout=60)
    run_done = time.monotonic()
    assert record.status is fs.RunStatus.SUCCEEDED, project.logs()[-5000:]
    # The workers never killed are all still running: none died of the chaos on its own.
    assert {n: p.poll() for n, p in alive.items()} == dict.fromkeys(alive), project.logs()[-5000:]

    # Exactly one success per requested (asset, partition), and nothing else recorded as success.
    successes = pg_rows(
        app,
        "SELECT asset, partition_key, id FROM flowstone_materializations"
        " WHERE run_id = :run AND status = 'success'",
        run=run_id,
    )
    by_status = pg_rows(
        app,
        "SELECT status, count(*) FROM flowstone_materializations WHERE run_id = :run GROUP BY status",
        run=run_id,
    )
    assert dict(by_status) == {"success": ASSETS * len(PARTITIONS)}  # a killed attempt records nothing
    counts = Counter((a, k) for a, k, _id in successes)
    requested = {(module.name(i), p) for i in range(ASSETS) for p in PARTITIONS}
    assert set(counts) == requested
    assert {key: n for key, n in counts.items() if n != 1} == {}
    success_id = {(a, k): mat for a, k, mat in successes}
    statuses = Counter(
        r[0] for r in pg_rows(app, "SELECT status FROM flowstone_run_steps WHERE run_id = :run", run=run_id)
    )
    assert statuses == {"succeeded": len(requested)}
    (steps_left,) = pg_rows(app, "SELECT steps_left FROM flowstone_runs WHERE id = :run", run=run_id)[0]
    assert steps_left == 0
    assert pg_rows(app, "SELECT count(*) FROM flowstone_step_claims")[0][0] == 0

    # Lineage: each success names the run's success of every one of its inputs, and only those.
    lineage: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for mat, up_asset, up_key, up_mat in pg_rows(
        app,
        "SELECT materialization_id, upstream_asset, upstream_partition_key, upstream_materialization_id"
        " FROM flowstone_lineage WHERE run_id = :run",
        run=run_id,
    ):
        lineage[mat].add((up_asset, up_key, up_mat))
    for i, ups in deps.items():
        for p in PARTITIONS:
            expected = {(module.name(u), p, success_id[(module.name(u), p)]) for u in ups}
            assert lineage.get(success_id[(module.name(i), p)], set()) == expected, (module.name(i), p)

    # Every recorded value is stored, is the recorded bytes, and is what the DAG computes.
    assert assert_successes_have_their_values(app, run_id) == len(requested)
    values = _expected_values(deps)
    for i in range(ASSETS):
        for p in PARTITIONS:
            assert app.load(module.name(i), partition=p) == values[i]

    # No step ever ran concurrently with itself, across all attempts and processes.
    spans: dict[tuple[str, str], list[tuple[float, float, int]]] = defaultdict(list)
    ended: dict[tuple[str, str, int, str], float] = {}
    opened: list[tuple[str, str, int, str]] = []
    for path in sorted((project.root / "spans").glob("*.log")):
        for line in path.read_text().splitlines():
            kind, asset, key, pid, start, *end = line.split("\t")
            if kind == "S":
                opened.append((asset, key, int(pid), start))
            else:
                ended[(asset, key, int(pid), start)] = float(end[0])
    cut_short = 0
    for asset, key, pid, start in opened:
        end = ended.get((asset, key, pid, start))
        if end is None:  # the attempt was killed mid-step: it ended when its process died
            assert pid in killed_at, (
                f"{asset} [{key}] started on {pid} and never ended, yet it was not killed"
            )
            end = killed_at[pid]
            cut_short += 1
        spans[(asset, key)].append((float(start), end, pid))
    overlaps = []
    for key, runs in spans.items():
        runs.sort()
        overlaps.extend((key, a, b) for a, b in itertools.pairwise(runs) if b[0] < a[1])
    assert overlaps == []
    assert set(spans) == requested

    abandoned = pg_rows(
        app,
        "SELECT count(*) FROM flowstone_events WHERE run_id = :run AND type = 'step.abandoned'",
        run=run_id,
    )[0][0]
    (max_attempt,) = pg_rows(
        app, "SELECT max(attempt) FROM flowstone_run_steps WHERE run_id = :run", run=run_id
    )[0]
    print(
        f"\nchaos: {len(requested)} steps, {KILLS} kills ({busy_kills} of busy workers, run still going after"
        f" them: {killed_while_running}), {cut_short} attempts killed mid-step, {abandoned} step.abandoned,"
        f" max attempt {max_attempt}, {sum(len(r) for r in spans.values())} attempts in all;"
        f" kills over after {chaos_over - began:.1f}s, run done after {run_done - began:.1f}s,"
        f" checks done after {time.monotonic() - began:.1f}s"
    )
    # Kills landed on workers in the middle of steps (else this test proves little).
    assert abandoned >= 2
