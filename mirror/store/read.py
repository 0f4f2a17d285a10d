"""Reading projects, runs and history back out of the store, for the offline API and the server."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, or_, select

from mirror.store import history as codec
from mirror.store.models import field_keys, history_chunks, projects, runs


def find_project(conn: Connection, entity: str, name: str) -> RowMapping | None:
    """The project row, or ``None`` when the mirror has never seen it."""
    return (
        conn.execute(select(projects).where(projects.c.entity == entity, projects.c.name == name))
        .mappings()
        .first()
    )


def find_run(
    conn: Connection, project_id: int, name: str, include_deleted: bool = False
) -> RowMapping | None:
    """One run by its run id (``name``); tombstoned runs only when asked for."""
    query = select(runs).where(runs.c.project_id == project_id, runs.c.name == name)
    if not include_deleted:
        query = query.where(runs.c.deleted_at.is_(None))
    return conn.execute(query).mappings().first()


def find_run_by_storage_id(conn: Connection, storage_id: str) -> RowMapping | None:
    """One run by W&B's storage id (what ``upsertBucket`` and ``deleteRun`` name it by)."""
    return conn.execute(select(runs).where(runs.c.storage_id == storage_id)).mappings().first()


def iter_runs(conn: Connection, ids: Sequence[int]) -> Iterator[RowMapping]:
    """``runs`` rows by id, in the order given, a few hundred at a time (an export of 100,000
    runs never holds them all); ids deleted meanwhile are left out."""
    for start in range(0, len(ids), 500):
        part = list(ids[start : start + 500])
        rows = conn.execute(select(runs).where(runs.c.id.in_(part))).mappings().all()
        by_id = {row["id"]: row for row in rows}
        yield from (by_id[run_id] for run_id in part if run_id in by_id)


@dataclass(frozen=True)
class ChunkSpan:
    """Where a stored chunk sits: enough to fetch it, and to tell when it was rewritten."""

    id: int
    first_step: int
    last_step: int
    row_count: int


def chunk_spans(
    conn: Connection,
    run_id: int,
    stream: str = "history",
    min_step: int | None = None,
    max_step: int | None = None,
) -> list[ChunkSpan]:
    """The chunks overlapping ``[min_step, max_step)``, in step order (no blobs read)."""
    c = history_chunks.c
    conds = [c.run_id == run_id, c.stream == stream]
    if min_step is not None:
        conds.append(c.last_step >= min_step)
    if max_step is not None:
        conds.append(c.first_step < max_step)
    query = select(c.id, c.first_step, c.last_step, c.row_count).where(and_(*conds))
    return [ChunkSpan(*row) for row in conn.execute(query.order_by(c.first_step))]


def load_chunk(conn: Connection, span: ChunkSpan) -> codec.Chunk:
    """Read and decode one chunk."""
    data = conn.execute(
        select(history_chunks.c.data).where(history_chunks.c.id == span.id)
    ).scalar_one()
    return codec.decode(data)


def iter_chunks(
    conn: Connection,
    run_id: int,
    stream: str = "history",
    min_step: int | None = None,
    max_step: int | None = None,
) -> Iterator[tuple[ChunkSpan, codec.Chunk]]:
    """Chunks overlapping ``[min_step, max_step)``, one decoded at a time (bounded memory)."""
    for span in chunk_spans(conn, run_id, stream, min_step, max_step):
        yield span, load_chunk(conn, span)


def window(
    rows: Iterable[dict[str, Any]],
    first_step: int,
    min_step: int | None = None,
    max_step: int | None = None,
    keys: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """A chunk's rows with ``min_step <= step < max_step``; with ``keys``, holding any of them."""
    for step, row in codec.number_rows(rows, first_step):
        if (min_step is not None and step < min_step) or (
            max_step is not None and step >= max_step
        ):
            continue
        if keys is not None and not any(k in row for k in keys):
            continue
        yield row


def iter_rows(
    conn: Connection,
    run_id: int,
    stream: str = "history",
    min_step: int | None = None,
    max_step: int | None = None,
    keys: Sequence[str] | None = None,
    x_axis: str = "_step",
) -> Iterator[dict[str, Any]]:
    """Rows with ``min_step <= step < max_step``; with ``keys``, rows holding any of them
    (their ``_step`` and ``x_axis`` kept too)."""
    wanted = None if keys is None else [*keys, "_step", x_axis]
    for span, chunk in iter_chunks(conn, run_id, stream, min_step, max_step):
        yield from window(chunk.rows(wanted), span.first_step, min_step, max_step, keys)


def iter_run_chunks(
    conn: Connection,
    run_ids: Sequence[int],
    stream: str = "history",
    workers: int = 1,
    lazy: bool = False,
) -> Iterator[tuple[int, ChunkSpan, codec.Chunk]]:
    """``(run id, span, chunk)`` for many runs' chunks, a few hundred runs a statement and
    each run's in step order: one pass for a listing's history, not one query per run.

    With ``workers`` > 1, that many chunks are decoded at once on threads: inflating is most
    of the work, and zstd lets go of the GIL while it inflates. ``lazy`` is ``decode``'s.
    """
    decode = partial(codec.decode, lazy=lazy)
    c = history_chunks.c
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(run_ids), 500):
            part = list(run_ids[start : start + 500])
            query = (
                select(c.run_id, c.id, c.first_step, c.last_step, c.row_count, c.data)
                .where(c.run_id.in_(part), c.stream == stream)
                .order_by(c.run_id, c.first_step)
            )
            result = conn.execute(query)
            while rows := result.fetchmany(2 * max(1, workers)):
                decoded = pool.map(decode, [row.data for row in rows])
                for row, chunk in zip(rows, decoded, strict=True):
                    span = ChunkSpan(row.id, row.first_step, row.last_step, row.row_count)
                    yield row.run_id, span, chunk


def field_paths(conn: Connection, project_id: int) -> list[str]:
    """Every config and summary path the project's runs have held (the filter index's keys),
    sorted: what a user can filter, sort and show a column by."""
    path = field_keys.c.path
    query = select(path).where(
        field_keys.c.project_id == project_id,
        or_(path.like("config.%"), path.like("summary_metrics.%")),
    )
    return sorted(conn.execute(query).scalars())
