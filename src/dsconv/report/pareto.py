"""Exact non-dominated filter for two objectives (accuracy up, cost down), shared by the report and the search."""

from __future__ import annotations

import math
from collections.abc import Sequence


def non_dominated(points: Sequence[tuple[float, float]], maximize: tuple[bool, bool] = (True, False)) -> list[int]:
    """Indices (ascending) of the points no other point dominates.

    A point is dominated only if another is at least as good in both objectives and strictly better in
    one, so identical points are all kept: two configurations that tie are both on the front and the
    caller, not this filter, decides between them. One sort and a sweep, O(n log n).
    """
    if len(maximize) != 2:
        raise ValueError(f"maximize needs one flag per objective (2), got {maximize!r}")
    signs = [1.0 if up else -1.0 for up in maximize]
    scored = []
    for index, point in enumerate(points):
        if len(point) != 2:
            raise ValueError(f"points[{index}] = {point!r}: need exactly two objectives")
        a, b = (float(v) * sign for v, sign in zip(point, signs))
        if math.isnan(a) or math.isnan(b):
            raise ValueError(f"points[{index}] = {point!r}: NaN cannot be ranked; drop the point first")
        scored.append((a, b, index))
    # Both objectives now "higher is better". Walk down the first one, a block of equal values at a time:
    # within a block only its best second objective survives; the block's survivors are also dominated if
    # a point with a strictly better first objective is at least as good in the second one.
    scored.sort(key=lambda t: (-t[0], -t[1]))
    keep: list[int] = []
    best_above: float | None = None  # best second objective among points with a strictly larger first one
    start = 0
    while start < len(scored):
        end = start
        while end < len(scored) and scored[end][0] == scored[start][0]:
            end += 1
        block_best = scored[start][1]
        if best_above is None or block_best > best_above:
            keep.extend(i for _, b, i in scored[start:end] if b == block_best)
        best_above = block_best if best_above is None else max(best_above, block_best)
        start = end
    return sorted(keep)
