"""One root, N children, one sink, materialized on SQLite with the memory I/O manager.

python benchmarks/wide.py 1000 [--parallel 4]
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

from _common import arg_n, report, temp_store, timed

import flowstone as fs


def build(n: int) -> fs.Pipeline:
    pipeline = fs.Pipeline("wide", default_io_manager="memory")

    def root(context: fs.Context) -> int:
        return 1

    def child(context: fs.Context, **upstream: Any) -> int:
        return int(upstream["root"]) + 1

    def sink(context: fs.Context, **upstream: Any) -> int:
        return sum(upstream.values())

    pipeline.add(fs.AssetDefinition(name="root", fn=root, deps=()))
    children = tuple(f"c{i}" for i in range(n))
    for name in children:
        pipeline.add(fs.AssetDefinition(name=name, fn=child, deps=("root",), takes_var_kwargs=True))
    pipeline.add(fs.AssetDefinition(name="sink", fn=sink, deps=children, takes_var_kwargs=True))
    return pipeline


def main() -> None:
    n = arg_n(1000)
    parallel = int(sys.argv[sys.argv.index("--parallel") + 1]) if "--parallel" in sys.argv else 1
    url, directory = temp_store()
    t0 = time.perf_counter()
    app = fs.FlowStone(build(n), store=url)
    setup_s = time.perf_counter() - t0
    runs: list[fs.RunResult] = []

    def materialize() -> None:
        runs.append(app.materialize(["+sink"], values=True, parallel=parallel, force=True))

    execute_s, warm_execute_s = timed(materialize)
    assert all(r.success and len(r.steps) == n + 2 for r in runs)
    assert runs[0].steps["sink"].value == 2 * n
    app.close()
    shutil.rmtree(directory)
    report(
        benchmark="wide",
        children=n,
        assets=n + 2,
        parallel=parallel,
        setup_s=round(setup_s, 4),
        execute_s=round(execute_s, 4),
        warm_execute_s=round(warm_execute_s, 4),
        per_asset_ms=round(execute_s / (n + 2) * 1000, 4),
        warm_per_asset_ms=round(warm_execute_s / (n + 2) * 1000, 4),
    )


if __name__ == "__main__":
    main()
