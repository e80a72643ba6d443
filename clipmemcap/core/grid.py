"""The absolute frame grid t = k / fps that every sampled frame lies on.

A segment [start, end) owns grid frames k with start <= k / fps < end. Times are rounded to a
microsecond before ``ceil`` so that float noise (0.6 * 5 = 3.0000000000000004) cannot move a
boundary frame in or out.
"""

from __future__ import annotations

import math


def grid_index(t: float, fps: float) -> int:
    """The first grid index k with k / fps >= t."""
    return math.ceil(round(t * fps, 6))


def grid_range(start: float, end: float, fps: float) -> range:
    return range(grid_index(start, fps), max(grid_index(start, fps), grid_index(end, fps)))


def merge_ranges(ranges: list[range]) -> list[range]:
    """Union of grid ranges: overlapping or touching ranges become one, so each grid frame is
    decoded at most once and each merged range needs one seek."""
    merged: list[range] = []
    for r in sorted((r for r in ranges if len(r)), key=lambda r: r.start):
        if merged and r.start <= merged[-1].stop:
            merged[-1] = range(merged[-1].start, max(merged[-1].stop, r.stop))
        else:
            merged.append(r)
    return merged
