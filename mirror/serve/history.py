"""History as W&B's GraphQL API hands it out: windows, samples and keyed samples.

W&B samples whenever a request asks for fewer rows than it has. The mirror samples too, but
deterministically and evenly, always keeping the first and the last row, so that two calls give
the same answer and a plot still spans the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection

from mirror.errors import MirrorError
from mirror.query.sampling import sample_indices
from mirror.serve.chunk_cache import ChunkCache
from mirror.serve.errors import shown

DEFAULT_SAMPLES = 500


class SpecError(MirrorError, ValueError):
    """A ``sampledHistory`` spec that cannot be read."""


def _pick(rows: Iterable[dict[str, Any]], wanted: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The rows at the given sorted positions of a stream, holding one row at a time."""
    targets = iter(wanted)
    target = next(targets, None)
    for i, row in enumerate(rows):
        if target is None:
            return
        if i == target:
            yield row
            target = next(targets, None)


def stream_rows(
    conn: Connection,
    cache: ChunkCache,
    run_id: int,
    stream: str,
    samples: int | None,
    min_step: int | None,
    max_step: int | None,
) -> Iterator[dict[str, Any]]:
    """``history``/``events``: rows with ``min_step <= step < max_step``, at most ``samples``.

    ``samples`` defaults to 500 as on W&B, with or without a window (every SDK sends it with a
    window anyway), so no request decodes a whole run into one answer. The rows come one at a
    time, picked by position from a count the chunk index gives (only chunks a window cuts
    through are decoded to count), so ``samples: 1000000`` over a long run holds no more than
    what the caller keeps of it.
    """
    k = DEFAULT_SAMPLES if samples is None else samples
    wanted = sample_indices(cache.count(conn, run_id, stream, min_step, max_step), k)
    return _pick(cache.window(conn, run_id, stream, min_step, max_step), wanted)


#: steps are 64-bit integers in the store (and on W&B)
_STEPS = (-(2**63), 2**63 - 1)


def _int_or_none(spec: dict[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"sampledHistory spec: {key} must be a number, not {shown(value)}")
    if not (math.isfinite(value) and _STEPS[0] <= value <= _STEPS[1]):
        raise SpecError(
            f"sampledHistory spec: {key} must be a 64-bit whole number, not {shown(value)}"
        )
    return int(value)


def sampled_rows(
    conn: Connection, cache: ChunkCache, run_id: int, spec: Any
) -> Iterator[dict[str, Any]]:
    """One ``sampledHistory`` spec: rows holding ALL its keys, only those keys, inclusive max;
    one at a time, as :func:`stream_rows`."""
    if not isinstance(spec, dict):
        raise SpecError("sampledHistory spec must be a JSON object")
    keys = spec.get("keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise SpecError("sampledHistory spec: keys must be a list of strings")
    samples = _int_or_none(spec, "samples")
    min_step = _int_or_none(spec, "minStep")
    max_step = _int_or_none(spec, "maxStep")
    end = None if max_step is None or max_step >= _STEPS[1] else max_step + 1
    wanted_samples = DEFAULT_SAMPLES if samples is None else samples
    if not keys:
        count = cache.count(conn, run_id, "history", min_step, end)
        rows = cache.window(conn, run_id, "history", min_step, end)
        return _pick(rows, sample_indices(count, wanted_samples))

    def holding() -> Iterator[dict[str, Any]]:
        for row in cache.window(conn, run_id, "history", min_step, end):
            if all(k in row for k in keys):
                yield {k: row[k] for k in keys}

    count = sum(1 for _ in holding())  # a first pass: the sample needs the count
    return _pick(holding(), sample_indices(count, wanted_samples))
