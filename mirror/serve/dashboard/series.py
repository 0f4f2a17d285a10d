"""A run's history as drawable series: numeric x and y arrays read column-wise from the chunks.

The first chart of a run reads its whole history once (chunks inflated on threads) and keeps
the series it drew in a small LRU, keyed by the chunks' fingerprints, so that zooming (a new
window of the same series) and the other charts of the page cost a slice, not a decode, and a
sync that appends history makes the next request read afresh.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection

from mirror.serve.chunk_cache import stored_chunks
from mirror.store.history import Chunk, Column, number_rows
from mirror.store.read import ChunkSpan, iter_run_chunks

#: bytes of series kept (a 1,000,000-point series is 16 MB)
CACHE_BYTES = 192 * 1024 * 1024


@dataclass(frozen=True)
class Series:
    """The drawable points of one key against one x key: ``x`` ascending, both finite; and how
    many logged values could not be drawn (NaN, ±Infinity)."""

    x: np.ndarray
    y: np.ndarray
    nan: int
    posinf: int
    neginf: int

    @property
    def nbytes(self) -> int:
        return int(self.x.nbytes + self.y.nbytes)

    def window(self, lo: float | None, hi: float | None) -> Series:
        """The points with ``lo <= x <= hi`` (counts of undrawable values stay the whole run's)."""
        start = 0 if lo is None else int(np.searchsorted(self.x, lo, side="left"))
        stop = len(self.x) if hi is None else int(np.searchsorted(self.x, hi, side="right"))
        return Series(self.x[start:stop], self.y[start:stop], self.nan, self.posinf, self.neginf)


def _numeric(column: Column | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(present, values)`` of a column: where it holds a number (not a bool), as float64."""
    if column is None:
        return np.zeros(n, dtype=bool), np.full(n, np.nan)
    if column.kind in ("i", "f"):
        present = np.ones(n, dtype=bool) if column.mask is None else column.mask
        values = np.full(n, np.nan)
        values[present] = column.values
        return present, values
    where = range(n) if column.mask is None else np.flatnonzero(column.mask).tolist()
    present = np.zeros(n, dtype=bool)
    values = np.full(n, np.nan)
    for i, v in zip(where, column.values, strict=True):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            present[i] = True
            values[i] = float(v)
    return present, values


def _steps(span: ChunkSpan, chunk: Chunk) -> np.ndarray:
    """Each row's step, as the store numbers rows."""
    column = chunk.columns.get("_step")
    if column is not None and column.kind == "i" and column.mask is None:
        return column.values.astype(np.float64)
    rows = chunk.rows(["_step"])
    return np.fromiter((s for s, _ in number_rows(rows, span.first_step)), np.float64, chunk.n)


def _finish(xs: np.ndarray, x_ok: np.ndarray, present: np.ndarray, ys: np.ndarray) -> Series:
    logged = present & x_ok
    values = ys[logged]
    finite = np.isfinite(values)
    x, y = xs[logged][finite], values[finite]
    if len(x) > 1 and not bool(np.all(x[1:] >= x[:-1])):
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
    return Series(
        x,
        y,
        int(np.isnan(values).sum()),
        int(np.isposinf(values).sum()),
        int(np.isneginf(values).sum()),
    )


def read_series(
    conn: Connection, run_id: int, keys: Sequence[str], x_key: str
) -> dict[str, Series]:
    """Every drawable point of ``keys`` over ``x_key`` in a run's history: one read of it."""
    x_parts: list[tuple[np.ndarray, np.ndarray]] = []
    y_parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {key: [] for key in keys}
    for _run, span, chunk in iter_run_chunks(conn, [run_id], "history", os.cpu_count() or 1):
        if x_key == "_step":
            x_parts.append((np.ones(chunk.n, dtype=bool), _steps(span, chunk)))
        else:
            x_parts.append(_numeric(chunk.columns.get(x_key), chunk.n))
        for key in keys:
            y_parts[key].append(_numeric(chunk.columns.get(key), chunk.n))
    if not x_parts:
        empty = Series(np.empty(0), np.empty(0), 0, 0, 0)
        return dict.fromkeys(keys, empty)
    x_present = np.concatenate([p for p, _ in x_parts])
    xs = np.concatenate([v for _, v in x_parts])
    x_ok = x_present & np.isfinite(xs)
    out = {}
    for key in keys:
        present = np.concatenate([p for p, _ in y_parts[key]])
        ys = np.concatenate([v for _, v in y_parts[key]])
        out[key] = _finish(xs, x_ok, present, ys)
    return out


class SeriesCache:
    """Series of whole runs, LRU by bytes, shared by the server's threads."""

    def __init__(self, capacity_bytes: int = CACHE_BYTES) -> None:
        self.capacity = capacity_bytes
        self._series: OrderedDict[tuple[object, ...], Series] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(
        self, conn: Connection, run_id: int, keys: Sequence[str], x_key: str
    ) -> dict[str, Series]:
        """The run's series of ``keys`` over ``x_key``; only those not kept are read."""
        state = tuple(stored_chunks(conn, run_id, "history"))
        found: dict[str, Series] = {}
        with self._lock:
            for key in keys:
                entry = (run_id, state, x_key, key)
                if entry in self._series:
                    self._series.move_to_end(entry)
                    found[key] = self._series[entry]
        missing = [key for key in keys if key not in found]
        if missing:
            fresh = read_series(conn, run_id, missing, x_key)
            with self._lock:
                for key, series in fresh.items():
                    self._add((run_id, state, x_key, key), series)
            found.update(fresh)
        return found

    def _add(self, entry: tuple[object, ...], series: Series) -> None:
        if entry in self._series:
            return
        self._series[entry] = series
        self._bytes += series.nbytes
        while self._bytes > self.capacity and len(self._series) > 1:
            _, dropped = self._series.popitem(last=False)
            self._bytes -= dropped.nbytes
