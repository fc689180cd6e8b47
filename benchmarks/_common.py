"""Shared bits of the benchmark scripts: timing, peak memory, one JSON line out."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def arg_n(default: int) -> int:
    return int(sys.argv[1]) if len(sys.argv) > 1 else default


def temp_store() -> tuple[str, Path]:
    directory = Path(tempfile.mkdtemp(prefix="flowstone-bench-"))
    return f"sqlite:///{directory}/flowstone.db", directory


def calibration_s() -> float:
    """Seconds this host takes for a fixed pure-Python loop (sum of 10 million ints).

    Shared hosts here run anywhere from ~0.12 s to ~0.3 s on it; print it beside every figure so
    two figures from different moments can be compared.
    """
    t0 = time.perf_counter()
    sum(range(10_000_000))
    return round(time.perf_counter() - t0, 4)


def report(**figures: Any) -> None:
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["host_calibration_s"] = calibration_s()
    print(json.dumps(figures))


def timed(fn: Callable[[], Any], *, repeat: int = 3) -> tuple[float, float]:
    """(seconds of the first call, median seconds of ``repeat`` further calls).

    The first call pays one-time costs (compiling the store's SQL, first imports); the later
    ones show the steady per-run cost.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    again = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        again.append(time.perf_counter() - t0)
    return first, statistics.median(again)
