"""Questions to partitions definitions of about a million keys, answered without a list of keys.

Three definitions: minute windows over two years (UTC, 1,052,640 keys), the same in Europe/Oslo
(keys carry the UTC offset) and 1,000 x 1,000 static dimensions (1,000,000 keys). For each it
times, in ms (median of 5 calls): count, `in` for a valid and an invalid key, key_at and index_of
in the middle, keys(k1, k2) over 1,000 keys, the first 100 keys of keys(k1, k2) spanning nearly
everything (laziness), and page(37). Target: each under 10 ms. Peak RSS shows nothing big was
built.

    python benchmarks/partition_scale_definitions.py
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from _common import report

import flowstone as fs


def median_ms(fn: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 4)


def measure(definition: fs.PartitionsDefinition, invalid: str) -> dict[str, float]:
    n = definition.count()
    middle = definition.key_at(n // 2)
    k1, k2 = definition.key_at(n // 3), definition.key_at(n // 3 + 999)
    far1, far2 = definition.key_at(10), definition.key_at(n - 10)
    assert len(list(definition.keys(k1, k2))) == 1000
    assert invalid not in definition and middle in definition
    return {
        "count_ms": median_ms(definition.count),
        "contains_ms": median_ms(lambda: middle in definition),
        "contains_invalid_ms": median_ms(lambda: invalid in definition),
        "key_at_ms": median_ms(lambda: definition.key_at(n // 2)),
        "index_of_ms": median_ms(lambda: definition.index_of(middle)),
        "keys_1000_ms": median_ms(lambda: list(definition.keys(k1, k2))),
        "keys_lazy_first_100_ms": median_ms(lambda: list(itertools.islice(definition.keys(far1, far2), 100))),
        "page_37_ms": median_ms(lambda: definition.page(37)),
    }


def main() -> None:
    t0 = time.perf_counter()
    minutes = fs.MinutelyPartitions(start="2024-01-01", end="2026-01-01")
    minutes_oslo = fs.MinutelyPartitions(start="2024-01-01", end="2026-01-01", timezone="Europe/Oslo")
    thousand = fs.StaticPartitions([f"k{i:03d}" for i in range(1000)])
    grid = fs.MultiPartitions({"a": thousand, "b": thousand})
    build_ms = round((time.perf_counter() - t0) * 1000, 3)
    figures: dict[str, Any] = {"benchmark": "partition_scale_definitions", "build_all_ms": build_ms}
    for name, definition, invalid in [
        ("minutely_utc", minutes, "2025-06-01T12:34:00"),
        ("minutely_oslo", minutes_oslo, "2025-06-01T12:34+01:00"),
        ("multi_1000x1000", grid, "k999|k1000"),
    ]:
        figures[f"{name}_keys"] = definition.count()
        results = measure(definition, invalid)
        figures.update({f"{name}_{metric}": value for metric, value in results.items()})
        figures[f"{name}_max_ms"] = max(results.values())
    report(**figures)


if __name__ == "__main__":
    main()
