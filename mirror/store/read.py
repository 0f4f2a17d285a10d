"""Reading projects, runs and history back out of the store, for the offline API and the server."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, select

from mirror.store import history as codec
from mirror.store.models import history_chunks, projects, runs


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


def iter_chunks(
    conn: Connection,
    run_id: int,
    stream: str = "history",
    min_step: int | None = None,
    max_step: int | None = None,
) -> Iterator[tuple[int, int, codec.Chunk]]:
    """``(first_step, last_step, chunk)`` overlapping ``[min_step, max_step)``, in step order.

    One chunk at a time, so a million-step scan holds one chunk in memory, not the run.
    """
    conds = [history_chunks.c.run_id == run_id, history_chunks.c.stream == stream]
    if min_step is not None:
        conds.append(history_chunks.c.last_step >= min_step)
    if max_step is not None:
        conds.append(history_chunks.c.first_step < max_step)
    ids = (
        conn.execute(
            select(history_chunks.c.id).where(and_(*conds)).order_by(history_chunks.c.first_step)
        )
        .scalars()
        .all()
    )
    for chunk_id in ids:
        row = conn.execute(
            select(
                history_chunks.c.first_step, history_chunks.c.last_step, history_chunks.c.data
            ).where(history_chunks.c.id == chunk_id)
        ).one()
        yield row.first_step, row.last_step, codec.decode(row.data)


def iter_rows(
    conn: Connection,
    run_id: int,
    stream: str = "history",
    min_step: int | None = None,
    max_step: int | None = None,
    keys: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows with ``min_step <= step < max_step``; with ``keys``, rows holding any of them."""
    for first, _last, chunk in iter_chunks(conn, run_id, stream, min_step, max_step):
        wanted = None if keys is None else [*keys, "_step"]
        for i, row in enumerate(chunk.rows(wanted)):
            step = codec.step_of(row, first + i)
            if (min_step is not None and step < min_step) or (
                max_step is not None and step >= max_step
            ):
                continue
            if keys is not None and not any(k in row for k in keys):
                continue
            yield row
