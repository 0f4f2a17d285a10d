"""History as W&B's GraphQL API hands it out: windows, samples and keyed samples.

W&B samples whenever a request asks for fewer rows than it has. The mirror samples too, but
deterministically and evenly, always keeping the first and the last row, so that two calls give
the same answer and a plot still spans the whole run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, func, select

from mirror.errors import MirrorError
from mirror.query.sampling import sample_indices
from mirror.serve.chunk_cache import ChunkCache
from mirror.store.models import history_chunks

DEFAULT_SAMPLES = 500


class SpecError(MirrorError, ValueError):
    """A ``sampledHistory`` spec that cannot be read."""


def _sample(rows: list[dict[str, Any]], samples: int) -> list[dict[str, Any]]:
    return [rows[i] for i in sample_indices(len(rows), samples)]


def _row_count(conn: Connection, run_id: int, stream: str) -> int:
    return conn.execute(
        select(func.coalesce(func.sum(history_chunks.c.row_count), 0)).where(
            history_chunks.c.run_id == run_id, history_chunks.c.stream == stream
        )
    ).scalar_one()


def _pick(rows: Iterator[dict[str, Any]], wanted: Sequence[int]) -> list[dict[str, Any]]:
    """The rows at the given sorted positions of a stream, holding one row at a time."""
    targets = iter(wanted)
    target = next(targets, None)
    out = []
    for i, row in enumerate(rows):
        if target is None:
            break
        if i == target:
            out.append(row)
            target = next(targets, None)
    return out


def stream_rows(
    conn: Connection,
    cache: ChunkCache,
    run_id: int,
    stream: str,
    samples: int | None,
    min_step: int | None,
    max_step: int | None,
) -> list[dict[str, Any]]:
    """``history``/``events``: rows with ``min_step <= step < max_step``, at most ``samples``.

    ``samples`` defaults to 500 as on W&B, with or without a window (every SDK sends it with a
    window anyway), so no request decodes a whole run into one answer. Without a window the
    stream is sampled without loading it whole: the row count comes from the chunk index.
    """
    k = DEFAULT_SAMPLES if samples is None else samples
    if min_step is None and max_step is None:
        wanted = sample_indices(_row_count(conn, run_id, stream), k)
        return _pick(cache.window(conn, run_id, stream), wanted)
    return _sample(list(cache.window(conn, run_id, stream, min_step, max_step)), k)


def _int_or_none(spec: dict[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"sampledHistory spec: {key} must be a number, not {value!r}")
    return int(value)


def sampled_rows(
    conn: Connection, cache: ChunkCache, run_id: int, spec: Any
) -> list[dict[str, Any]]:
    """One ``sampledHistory`` spec: rows holding ALL its keys, only those keys, inclusive max."""
    if not isinstance(spec, dict):
        raise SpecError("sampledHistory spec must be a JSON object")
    keys = spec.get("keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise SpecError("sampledHistory spec: keys must be a list of strings")
    samples = _int_or_none(spec, "samples")
    min_step = _int_or_none(spec, "minStep")
    max_step = _int_or_none(spec, "maxStep")
    end = None if max_step is None else max_step + 1
    if not keys:
        rows = list(cache.window(conn, run_id, "history", min_step, end))
    else:
        rows = [
            {k: row[k] for k in keys}
            for row in cache.window(conn, run_id, "history", min_step, end)
            if all(k in row for k in keys)
        ]
    return _sample(rows, DEFAULT_SAMPLES if samples is None else samples)
