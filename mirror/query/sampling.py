"""Deterministic, even sampling that keeps the first and the last row.

W&B samples history randomly, so two calls give different rows; the mirror's sample is a pure
function of the row count, so a plot made twice is the same plot.
"""

from __future__ import annotations


def sample_indices(n: int, samples: int) -> list[int]:
    """``samples`` indices spread evenly over ``range(n)``, first and last included."""
    if samples <= 0 or n <= 0:
        return []
    if samples >= n:
        return list(range(n))
    if samples == 1:
        return [0]
    return [round(i * (n - 1) / (samples - 1)) for i in range(samples)]
