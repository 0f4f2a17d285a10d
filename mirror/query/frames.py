"""History and run listings as DataFrames, built column by column from the stored chunks.

W&B's docs teach users to loop over runs, call ``run.history()`` one run at a time and build a
listing's DataFrame by hand; offline that loop is the slow part (a query, a decode and a
DataFrame per run, then a concat that aligns hundreds of frames). Here a listing's history is
read in one pass (``iter_run_chunks``: a few hundred runs a statement) and assembled once, with
the same rows, values and dtypes as concatenating each run's ``history()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from mirror.query.sampling import sample_indices
from mirror.store import read as store_read
from mirror.store.history import Chunk, Column, Packed, number_rows
from mirror.store.read import ChunkSpan

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy import Connection

    from mirror.query.api import Run

FORMATS = ("pandas", "polars", "default")

#: the listing's columns that are plain run attributes, by column name → ``Run`` attribute
RUN_COLUMNS: dict[str, str] = {
    "id": "id",
    "name": "name",
    "state": "state",
    "group": "group",
    "tags": "tags",
    "created_at": "created_at",
    "job_type": "job_type",
    "notes": "notes",
    "host": "host",
    "sweep_name": "sweep_name",
    "heartbeat_at": "heartbeat_at",
    "storage_id": "storage_id",
    "history_line_count": "history_line_count",
}
DEFAULT_RUN_COLUMNS = ("id", "name", "state", "group", "tags", "created_at")
_DATES = ("created_at", "heartbeat_at")


def check_format(format: str) -> None:
    """A ValueError naming the formats, before any work is done."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")


def to_polars(frame: pd.DataFrame) -> Any:
    """The pandas frame as polars, or one line saying how to get polars."""
    try:
        import polars as pl
    except ImportError:
        raise ImportError(
            "format='polars' needs polars: pip install polars (or use format='pandas')"
        ) from None
    return pl.from_pandas(frame)


def _columns(keys: Sequence[str] | None, x_axis: str) -> list[str] | None:
    """Which columns a keyed read keeps: the keys, ``_step`` and the x axis (as W&B adds it)."""
    if keys is None:
        return None
    return list(dict.fromkeys([*keys, "_step", x_axis]))


def _kept(
    span: ChunkSpan,
    chunk: Chunk,
    keys: Sequence[str] | None,
    min_step: int | None = None,
    max_step: int | None = None,
) -> np.ndarray | None:
    """Which of the chunk's rows are in ``[min_step, max_step)`` and (with ``keys``) hold any
    of them; None when every row is."""
    keep = np.ones(chunk.n, dtype=bool)
    if min_step is not None or max_step is not None:
        step_column = chunk.columns.get("_step")
        if step_column is not None and step_column.kind == "i" and step_column.mask is None:
            steps = step_column.unpacked().values
        else:  # rows without a whole _step: number them as the store does
            steps = np.fromiter(
                (step for step, _ in number_rows(chunk.rows(["_step"]), span.first_step)),
                dtype=np.int64,
                count=chunk.n,
            )
        if min_step is not None:
            keep &= steps >= min_step
        if max_step is not None:
            keep &= steps < max_step
    if keys is not None:
        held = np.zeros(chunk.n, dtype=bool)
        for k in keys:
            col = chunk.columns.get(k)
            if col is not None:
                held |= True if col.mask is None else col.mask
        keep &= held
    return None if keep.all() else keep


def chunk_arrays(
    span: ChunkSpan,
    chunk: Chunk,
    keys: Sequence[str] | None,
    columns: Sequence[str] | None,
    min_step: int | None = None,
    max_step: int | None = None,
) -> dict[str, np.ndarray]:
    """One chunk's kept rows as column arrays (missing values NaN), in key order."""
    names = list(chunk.columns) if columns is None else columns
    data = {k: chunk.columns[k].full(chunk.n) for k in names if k in chunk.columns}
    keep = _kept(span, chunk, keys, min_step, max_step)
    if keep is None:
        return data
    return {k: v[keep] for k, v in data.items()}


def chunk_frame(
    span: ChunkSpan,
    chunk: Chunk,
    keys: Sequence[str] | None,
    columns: Sequence[str] | None,
    min_step: int | None = None,
    max_step: int | None = None,
) -> pd.DataFrame:
    """One chunk's rows in ``[min_step, max_step)`` (with ``keys``: rows holding any of them)."""
    import pandas as pd

    return pd.DataFrame(chunk_arrays(span, chunk, keys, columns, min_step, max_step))


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    if not frames:
        return pd.DataFrame()
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True)


def history_frame(
    conn: Connection,
    run_id: int,
    stream: str,
    min_step: int | None,
    max_step: int | None,
    keys: Sequence[str] | None,
    x_axis: str = "_step",
) -> pd.DataFrame:
    """One run's history as a DataFrame: no per-row Python work."""
    columns = _columns(keys, x_axis)
    return _joined(
        [
            chunk_frame(span, chunk, keys, columns, min_step, max_step)
            for span, chunk in store_read.iter_chunks(conn, run_id, stream, min_step, max_step)
        ]
    )


#: a run's rows from one chunk: the (lazily decoded) chunk and which of its rows, None for all
Piece = tuple[Chunk, np.ndarray | None]


def histories_frame(
    conn: Connection,
    runs: Sequence[tuple[int, str]],
    stream: str,
    keys: Sequence[str] | None,
    samples: int | None,
    x_axis: str = "_step",
) -> pd.DataFrame:
    """The history of many runs, ``(row id, run id)`` each, in their order, with ``run_id``.

    Runs without rows are left out (as W&B's ``histories`` does); columns are sorted, as
    W&B's are, so that the same call gives the same frame whatever the runs logged first.
    Chunks are decoded lazily on threads; then each column is allocated once, at its final
    length and dtype (the one ``pd.concat`` of the runs' ``history()`` frames gives), and
    every chunk's values are unpacked straight into their rows: no frame per run, no concat,
    no copy of a value through an intermediate array.
    """
    import pandas as pd

    by_run = _run_pieces(conn, [r for r, _ in runs], stream, keys)
    pieces: list[Piece] = []
    names: list[str] = []
    counts: list[int] = []
    for run_row_id, run_name in runs:
        parts = by_run.pop(run_row_id, [])
        if samples is not None:
            parts = _sampled(parts, samples)
        count = sum(_count(piece) for piece in parts)
        if count:
            pieces.extend(parts)
            names.append(run_name)
            counts.append(count)
    if not pieces:
        return pd.DataFrame()
    frame: dict[str, Any] = _assembled(pieces, _columns(keys, x_axis))
    frame["run_id"] = _run_ids(names, counts)
    # copy=False: the arrays are fresh, so each stays a block of its own; consolidating them
    # into one 2-D block per dtype would copy every value again
    return pd.DataFrame({key: frame[key] for key in sorted(frame)}, copy=False)


def _workers() -> int:
    return os.cpu_count() or 1


def _run_pieces(
    conn: Connection, run_ids: list[int], stream: str, keys: Sequence[str] | None
) -> dict[int, list[Piece]]:
    """Every chunk of the runs, by run, in step order, with the rows ``keys`` keep."""
    by_run: dict[int, list[Piece]] = {}
    chunks = store_read.iter_run_chunks(conn, run_ids, stream, _workers(), lazy=True)
    for run_row_id, span, chunk in chunks:
        keep = _kept(span, chunk, keys)
        rows = None if keep is None else np.flatnonzero(keep)
        by_run.setdefault(run_row_id, []).append((chunk, rows))
    return by_run


def _count(piece: Piece) -> int:
    chunk, rows = piece
    return chunk.n if rows is None else len(rows)


def _sampled(parts: list[Piece], samples: int) -> list[Piece]:
    """The pieces of one run cut to ``sample_indices`` of its rows, as ``history()`` samples."""
    wanted = np.asarray(sample_indices(sum(map(_count, parts)), samples), dtype=np.int64)
    out: list[Piece] = []
    offset = 0
    for chunk, rows in parts:
        n = _count((chunk, rows))
        local = wanted[(wanted >= offset) & (wanted < offset + n)] - offset
        out.append((chunk, local if rows is None else rows[local]))
        offset += n
    return out


def _assembled(pieces: list[Piece], columns: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Every column over every piece, the columns filled on threads (numpy's copies let go
    of the GIL, so the unpacking of two columns runs on two cores)."""
    names = dict.fromkeys(
        k for chunk, _ in pieces for k in chunk.columns if columns is None or k in columns
    )
    offsets = np.cumsum([0, *map(_count, pieces)]).tolist()
    with ThreadPoolExecutor(_workers()) as pool:
        arrays = pool.map(lambda key: _column(pieces, offsets, key), names)
        return dict(zip(names, arrays, strict=True))


def _column(pieces: list[Piece], offsets: list[int], key: str) -> np.ndarray:
    """One column over every piece, each piece's values unpacked into its rows."""
    cols = [chunk.columns.get(key) for chunk, _ in pieces]
    out = _allocated(cols, offsets[-1])
    for (chunk, rows), col, start, stop in zip(pieces, cols, offsets, offsets[1:], strict=False):
        if col is not None and stop > start:
            _write(out[start:stop], col, chunk.n, rows)
    return out


def _allocated(cols: list[Column | None], total: int) -> np.ndarray:
    """The column's array, with the dtype ``pd.concat`` would give it: int64 when every piece
    holds it as ints, float64 (NaN where absent) for numbers, else objects; NaN-filled unless
    every row will be written."""
    kinds = {_kind(c) for c in cols if c is not None}
    gaps = any(c is None or c.mask is not None for c in cols)
    if kinds == {"i"} and not gaps:
        return np.empty(total, dtype=np.int64)
    if kinds <= {"i", "f"}:
        return np.full(total, np.nan) if gaps else np.empty(total)
    return np.full(total, np.nan, dtype=object)


def _kind(col: Column) -> str:
    """The dtype kind of the column's array in a chunk's frame (a masked int one is float)."""
    if col.kind == "j":
        return "O"
    return "i" if col.kind == "i" and col.mask is None else "f"


def _write(out: np.ndarray, col: Column, n: int, rows: np.ndarray | None) -> None:
    """The column's values for ``rows`` of its chunk of ``n`` (None: all) into ``out``."""
    if (
        rows is None
        and col.mask is None
        and isinstance(col.values, Packed)
        and out.dtype == col.values.dtype
    ):
        col.values.into(out)  # the common case: straight from the stored bytes
        return
    full = col.full(n)
    out[:] = full if rows is None else full[rows]


def _run_ids(names: list[str], counts: list[int]) -> Any:
    """The ``run_id`` column: each name repeated, as the array type pandas infers for
    strings (taking from it costs far less than inferring a million strings)."""
    import pandas as pd

    inferred = pd.Series(np.array(names, dtype=object)).array
    return inferred.take(np.repeat(np.arange(len(names)), counts))


def lookup(values: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """``values[dotted]``, else a walk down nested dicts (``optimizer.lr``); (found, value)."""
    if dotted in values:
        return True, values[dotted]
    head, sep, rest = dotted.partition(".")
    while sep:
        inner = values.get(head)
        if isinstance(inner, dict):
            found, value = lookup(inner, rest)
            if found:
                return found, value
        more, sep, rest = rest.partition(".")
        head = f"{head}.{more}"
    return False, None


def run_record(run: Run, columns: Sequence[str]) -> dict[str, Any]:
    """One run's row of the listing's frame: a column the run lacks is left out (NaN)."""
    record: dict[str, Any] = {}
    for column in columns:
        attribute = RUN_COLUMNS.get(column)
        if attribute is not None:
            record[column] = getattr(run, attribute)
            continue
        source, _, key = column.partition(".")
        values = run.config if source == "config" else run.summary
        found, value = lookup(values, key)
        if found:
            record[column] = value
    return record


def check_columns(columns: Sequence[str]) -> None:
    """A ValueError for a column the frame cannot have, naming the ones it can."""
    for column in columns:
        source, _, key = column.partition(".")
        if column in RUN_COLUMNS or (source in ("config", "summary") and key):
            continue
        raise ValueError(
            f"columns: unknown column {column!r}; use {', '.join(RUN_COLUMNS)}, "
            "config.<key> or summary.<key>"
        )


def default_columns(runs: Iterable[Run]) -> list[str]:
    """The run attributes, then every top-level config and summary key the runs hold, sorted."""
    config: set[str] = set()
    summary: set[str] = set()
    for run in runs:
        config.update(run.config)
        summary.update(run.summary)
    return [
        *DEFAULT_RUN_COLUMNS,
        *(f"config.{k}" for k in sorted(config)),
        *(f"summary.{k}" for k in sorted(summary)),
    ]


def runs_frame(runs: Sequence[Run], columns: Sequence[str] | None) -> pd.DataFrame:
    """The listing as a DataFrame, one row per run in listing order; dates as datetimes."""
    import pandas as pd

    if columns is None:
        columns = default_columns(runs)
    else:
        columns = list(columns)
        check_columns(columns)
    frame = pd.DataFrame.from_records([run_record(run, columns) for run in runs], columns=columns)
    for column in _DATES:
        if column in frame.columns:
            frame[column] = pd.to_datetime(frame[column])
    return frame
