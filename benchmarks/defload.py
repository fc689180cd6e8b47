"""Import, build and validate a generated pipeline module of N assets.

The module is written to a temporary directory as real source (one decorated function per asset,
each depending on up to three earlier ones) and imported fresh, so the figure includes importing
flowstone, decorating every function and validating the whole graph.

    python benchmarks/defload.py 10000
"""

from __future__ import annotations

import importlib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import arg_n, report


def write_module(n: int, directory: Path) -> None:
    rng = random.Random(7)
    lines = ["import flowstone as fs", "", 'pipeline = fs.Pipeline("generated")', ""]
    for i in range(n):
        deps = sorted({f"a{rng.randrange(i)}" for _ in range(min(i, rng.randint(0, 3)))})
        params = "".join(f", {d}" for d in deps)
        body = " + ".join(deps) if deps else "1"
        lines += ["", "@pipeline.asset", f"def a{i}(context{params}):", f"    return {body}", ""]
    (directory / "generated_pipeline.py").write_text("\n".join(lines))


def main() -> None:
    n = arg_n(10_000)
    directory = Path(tempfile.mkdtemp(prefix="flowstone-defload-"))
    write_module(n, directory)
    # Compile once so the figure measures flowstone, not CPython parsing a 60k-line file.
    sys.path.insert(0, str(directory))
    import py_compile

    py_compile.compile(str(directory / "generated_pipeline.py"), doraise=True)
    t0 = time.perf_counter()
    import flowstone

    import_s = time.perf_counter() - t0
    module = importlib.import_module("generated_pipeline")
    build_s = time.perf_counter() - t0 - import_s
    t2 = time.perf_counter()
    module.pipeline.validate()
    order = module.pipeline.graph.topological_order()
    validate_s = time.perf_counter() - t2
    total_s = time.perf_counter() - t0
    assert len(order) == n and isinstance(module.pipeline, flowstone.Pipeline)
    shutil.rmtree(directory)
    report(
        benchmark="defload",
        assets=n,
        import_flowstone_s=round(import_s, 4),
        build_s=round(build_s, 4),
        validate_s=round(validate_s, 4),
        wall_s=round(total_s, 4),
        per_asset_ms=round(total_s / n * 1000, 4),
    )


if __name__ == "__main__":
    main()
