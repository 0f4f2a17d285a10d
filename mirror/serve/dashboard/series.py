"""A run's history as drawable series: numeric x and y arrays read column-wise from the chunks.

The first chart of a run reads its whole history once (chunks inflated on threads) and keeps
the series it drew in a small LRU, so that zooming (a new window of the same series) and the
next view cost a slice, not a decode. Entries are keyed by the run's storage id and its chunks'
ids, spans, row counts and stored sizes, read from the chunk index alone (a checksum at the end
of each blob would make SQLite walk every blob's pages), so a sync that appends or rewrites
history makes the next request read afresh.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, func, select

from mirror.store.history import Chunk, Column, Packed, number_rows
from mirror.store.models import history_chunks
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
    column = column.unpacked()
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
        return column.unpacked().values.astype(np.float64)
    rows = chunk.rows(["_step"])
    return np.fromiter((s for s, _ in number_rows(rows, span.first_step)), np.float64, chunk.n)


#: a run's stored chunks, each decoded lazily, and the row each starts at (one more: the end)
Pieces = tuple[list[tuple[ChunkSpan, Chunk]], list[int]]


def _gathered(pieces: Pieces, key: str, numbered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(present, values)`` of one key over the whole run, as float64 (``numbered``: the
    rows' steps, as the store numbers them, for ``_step`` on the x axis).

    A float column every row of a chunk holds (the common case) is unpacked straight into its
    rows; others go through ``_numeric``. Only the keys asked for are unpacked at all.
    """
    chunks, offsets = pieces
    present = np.ones(offsets[-1], dtype=bool)
    values = np.empty(offsets[-1])
    for (span, chunk), start, stop in zip(chunks, offsets, offsets[1:], strict=False):
        if numbered:
            values[start:stop] = _steps(span, chunk)
            continue
        column = chunk.columns.get(key)
        if (
            column is not None
            and column.kind == "f"
            and column.mask is None
            and isinstance(column.values, Packed)
        ):
            column.values.into(values[start:stop])
            continue
        present[start:stop], values[start:stop] = _numeric(column, chunk.n)
    return present, values


def _finish(xs: np.ndarray, x_ok: np.ndarray, present: np.ndarray, ys: np.ndarray) -> Series:
    logged = present & x_ok
    dense = bool(logged.all())  # the common case: no copies for a key every row holds
    values = ys if dense else ys[logged]
    finite = np.isfinite(values)
    x = xs if dense else xs[logged]
    if not finite.all():
        x, y = x[finite], values[finite]
    else:
        y = values
    if len(x) > 1 and not bool(np.all(x[1:] >= x[:-1])):
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
    undrawn = values[~finite]
    return Series(
        x,
        y,
        int(np.isnan(undrawn).sum()),
        int(np.isposinf(undrawn).sum()),
        int(np.isneginf(undrawn).sum()),
    )


def read_series(
    conn: Connection, run_id: int, keys: Sequence[str], x_key: str
) -> dict[str, Series]:
    """Every drawable point of ``keys`` over ``x_key`` in a run's history: one read of it,
    unpacking only the columns drawn."""
    chunks = [
        (span, chunk)
        for _run, span, chunk in iter_run_chunks(
            conn, [run_id], "history", os.cpu_count() or 1, lazy=True
        )
    ]
    if not chunks:
        empty = Series(np.empty(0), np.empty(0), 0, 0, 0)
        return dict.fromkeys(keys, empty)
    pieces = (chunks, np.cumsum([0, *(chunk.n for _, chunk in chunks)]).tolist())
    x_present, xs = _gathered(pieces, x_key, numbered=x_key == "_step")
    x_ok = x_present & np.isfinite(xs)
    return {key: _finish(xs, x_ok, *_gathered(pieces, key)) for key in keys}


def history_state(conn: Connection, run_id: int) -> tuple[tuple[int, ...], ...]:
    """What the run's stored history looks like, from the chunk index: changes when it does."""
    c = history_chunks.c
    query = (
        select(c.id, c.first_step, c.last_step, c.row_count, func.length(c.data))
        .where(c.run_id == run_id, c.stream == "history")
        .order_by(c.first_step)
    )
    return tuple(tuple(row) for row in conn.execute(query))


class SeriesCache:
    """Series of whole runs, LRU by bytes, shared by the server's threads."""

    def __init__(self, capacity_bytes: int = CACHE_BYTES) -> None:
        self.capacity = capacity_bytes
        self._series: OrderedDict[tuple[object, ...], Series] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(
        self, conn: Connection, run_id: int, storage_id: str, keys: Sequence[str], x_key: str
    ) -> dict[str, Series]:
        """The run's series of ``keys`` over ``x_key``; only those not kept are read."""
        state = (storage_id, history_state(conn, run_id))
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
