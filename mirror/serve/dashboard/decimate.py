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


def _first_per_segment(hits: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """The first index of ``hits`` (sorted) in each segment it touches."""
    owners = segment[hits]
    first = np.ones(len(hits), dtype=bool)
    first[1:] = owners[1:] != owners[:-1]
    return hits[first]


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
    if not span > 0:
        column = np.zeros(n, dtype=np.int64)
    else:
        column = np.clip(((x - lo) * (width / span)).astype(np.int64), 0, width - 1)
    starts = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
    ends = np.r_[starts[1:], n]
    segment = np.repeat(np.arange(len(starts)), ends - starts)
    lows = np.minimum.reduceat(y, starts)
    highs = np.maximum.reduceat(y, starts)
    keep = np.concatenate(
        [
            starts,
            ends - 1,
            _first_per_segment(np.flatnonzero(y == lows[segment]), segment),
            _first_per_segment(np.flatnonzero(y == highs[segment]), segment),
        ]
    )
    return np.unique(keep)
