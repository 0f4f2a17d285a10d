"""Min/max-preserving decimation (M4) for drawing a long series in a chart a few hundred pixels
wide.

A chart of width W pixels can show at most W distinct columns of pixels; M4 (Jugel et al.,
VLDB 2014) keeps, for each pixel column, the first, last, lowest and highest point, which draws
the very same line as every point would, in at most 4·W points. So every spike, NaN-free extreme
and the first and last point survive, which plain every-Nth sampling (and W&B's random sampling)
loses. Decimation is only for drawing: the data stays whole, and a zoomed window is fetched again.
"""

from __future__ import annotations

import numpy as np

#: points per pixel column M4 keeps at most
PER_COLUMN = 4


def m4(x: np.ndarray, y: np.ndarray, width: int, lo: float, hi: float) -> np.ndarray:
    """Indices of the points to draw, ascending: all of them when they number at most
    ``4 * width``, else the first, last, minimum and maximum of each of ``width`` equal
    x-columns over ``[lo, hi]``.

    ``x`` must be ascending and finite, ``y`` finite (non-finite values cannot be drawn and are
    counted apart by the caller).
    """
    n = len(x)
    width = max(1, int(width))
    if n <= PER_COLUMN * width:
        return np.arange(n)
    span = hi - lo
    if span > 0:  # column k holds lo + span*k/width <= x < lo + span*(k+1)/width
        edges = lo + span * np.arange(1, width) / width
        bounds = np.searchsorted(x, edges, side="left")
        starts = _distinct(np.r_[0, bounds])
        starts = starts[starts < n]
    else:
        starts = np.zeros(1, dtype=np.int64)
    ends = np.r_[starts[1:], n]
    # per column, its first lowest and first highest point: a loop over at most ``width``
    # columns, each a C pass over its slice (no index array as long as the series)
    extremes = np.empty(2 * len(starts), dtype=np.int64)
    for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        part = y[start:end]
        extremes[2 * i] = start + int(part.argmin())
        extremes[2 * i + 1] = start + int(part.argmax())
    return _distinct(np.sort(np.concatenate([starts, ends - 1, extremes])))


def _distinct(ascending: np.ndarray) -> np.ndarray:
    """An ascending array without repeats: ``np.unique`` without its cost on a server's first
    request (it imports ``numpy.ma``, 40 ms of the first chart's time)."""
    if len(ascending) == 0:
        return ascending
    return ascending[np.r_[True, ascending[1:] != ascending[:-1]]]
