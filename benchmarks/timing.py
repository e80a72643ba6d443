"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_times(measurements: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each measurement over ``repeats`` rounds. The rounds interleave the
    measurements, so a slow spell of a shared machine does not favour one of them."""
    best = {name: float("inf") for name in measurements}
    for _ in range(repeats):
        for name, fn in measurements.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def print_table(rows: list[dict], columns: list[tuple[str, str, str]], note: str) -> None:
    """``columns``: (key, header, format spec) per column."""
    widths = [max(len(header), 8, *(len(format(row[k], spec)) for row in rows)) for k, header, spec in columns]
    print("  ".join(f"{h:>{w}}" for (_, h, _), w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(f"{format(row[k], spec):>{w}}" for (k, _, spec), w in zip(columns, widths)))
    print(note)
