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
from typing import TYPE_CHECKING, Any

import numpy as np

from mirror.query.sampling import sample_indices
from mirror.store import read as store_read
from mirror.store.history import Chunk, number_rows
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
            steps = step_column.values
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
    Each column is concatenated once from the chunks' arrays (no frame per run, no aligning
    concat), with the dtypes ``pd.concat`` of the runs' ``history()`` frames gives.
    """
    import pandas as pd

    columns = _columns(keys, x_axis)
    by_run: dict[int, list[Piece]] = {}
    chunks = store_read.iter_run_chunks(conn, [r for r, _ in runs], stream, os.cpu_count() or 1)
    for run_row_id, span, chunk in chunks:
        keep = _kept(span, chunk, keys)
        data = chunk_arrays(span, chunk, keys, columns)
        by_run.setdefault(run_row_id, []).append(
            (chunk.n if keep is None else int(keep.sum()), data)
        )
    pieces: list[Piece] = []
    names: list[str] = []
    counts: list[int] = []
    for run_row_id, run_name in runs:
        parts = by_run.pop(run_row_id, [])
        if samples is not None:
            parts = _sampled(parts, samples)
        count = sum(n for n, _ in parts)
        if count:
            pieces.extend(parts)
            names.append(run_name)
            counts.append(count)
    if not pieces:
        return pd.DataFrame()
    keys_seen = dict.fromkeys(k for _, data in pieces for k in data)
    frame = {key: _concatenated(pieces, key) for key in keys_seen}
    frame["run_id"] = np.repeat(np.array(names, dtype=object), counts)
    return pd.DataFrame({key: frame[key] for key in sorted(frame)})


#: a run's rows from one chunk: how many, and their columns
Piece = tuple[int, dict[str, np.ndarray]]


def _sampled(parts: list[Piece], samples: int) -> list[Piece]:
    """The pieces of one run cut to ``sample_indices`` of its rows, as ``history()`` samples."""
    wanted = np.asarray(sample_indices(sum(n for n, _ in parts), samples), dtype=np.int64)
    out: list[Piece] = []
    offset = 0
    for n, data in parts:
        local = wanted[(wanted >= offset) & (wanted < offset + n)] - offset
        out.append((len(local), {k: v[local] for k, v in data.items()}))
        offset += n
    return out


def _concatenated(pieces: list[Piece], key: str) -> np.ndarray:
    """One column over every piece, with the dtype ``pd.concat`` would give it: int64 when
    every piece holds it as ints, float64 (NaN where absent) for numbers, else objects."""
    arrays = [data.get(key) for _, data in pieces]
    kinds = {a.dtype.kind for a in arrays if a is not None}
    absent = any(a is None for a in arrays)
    if kinds == {"i"} and not absent:
        return np.concatenate(arrays)  # type: ignore[arg-type]
    dtype: Any = np.float64 if kinds <= {"i", "f"} else object
    return np.concatenate(
        [
            np.full(n, np.nan, dtype=dtype) if a is None else a.astype(dtype, copy=False)
            for (n, _), a in zip(pieces, arrays, strict=True)
        ]
    )


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
