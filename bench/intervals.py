"""The interval a bench quotes beside a median of rounds."""

from __future__ import annotations

import math


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of what `values` sample: the k-th
    smallest and k-th largest, k the largest for which each tail holds at most half of
    1 - confidence (the binomial count of values below the true median). With fewer than 6
    values no such k exists, and the interval is the whole range."""
    ordered = sorted(values)
    n, tail, below, k = len(ordered), (1 - confidence) / 2, 0.0, 0
    while k < n // 2:
        below += math.comb(n, k) / 2**n  # P(exactly k values below the median)
        if below > tail:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]
