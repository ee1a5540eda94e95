"""Rank statistics: average ranks with ties and Spearman's rank correlation.

Used to compare the order of a set of recipes with the order the paper publishes
(``bench/fidelity.py``, the report's published-baselines section).
"""
from __future__ import annotations

import math
from typing import Sequence


def rankdata(values: Sequence[float]) -> list[float]:
    """Ascending ranks from 1, ties given the average of the ranks they span (scipy's 'average')."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: the Pearson correlation of average ranks (tie-aware, as scipy's
    ``spearmanr``); None when undefined (fewer than 2 values, or one side constant)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    if len(x) < 2:
        return None
    return _pearson(rankdata(x), rankdata(y))
