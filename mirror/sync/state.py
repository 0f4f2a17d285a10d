"""The sync's bookkeeping in the store: per-run fingerprints and failures, per-project outcomes.

Every function takes the caller's connection, so bookkeeping commits in the same transaction as
the rows it describes: a run's fingerprint is written with its last page of history, never
before, and a kill between the two leaves a run that the next cycle simply fetches again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from mirror.store.models import history_chunks, run_sync, runs, sync_state
from mirror.store.upsert import utcnow
from mirror.sync.plan import LocalRun

_BATCH = 500


def local_runs(conn: Connection, project_id: int) -> list[LocalRun]:
    """Every run the mirror holds for a project, tombstoned ones too, with its fingerprint."""
    query = (
        select(runs.c.id, runs.c.name, runs.c.deleted_at, run_sync.c.fingerprint)
        .select_from(runs.outerjoin(run_sync, run_sync.c.run_id == runs.c.id))
        .where(runs.c.project_id == project_id)
    )
    return [
        LocalRun(row.id, row.name, row.deleted_at is not None, row.fingerprint)
        for row in conn.execute(query)
    ]


def mirrored_history(
    conn: Connection, run_ids: Sequence[int], stream: str = "history"
) -> dict[int, tuple[int, int | None]]:
    """Run id → (rows mirrored, last mirrored step) of one stream; runs with none are left out."""
    c = history_chunks.c
    found: dict[int, tuple[int, int | None]] = {}
    for start in range(0, len(run_ids), _BATCH):
        part = list(run_ids[start : start + _BATCH])
        query = (
            select(c.run_id, func.sum(c.row_count), func.max(c.last_step))
            .where(c.run_id.in_(part), c.stream == stream)
            .group_by(c.run_id)
        )
        found.update({row[0]: (int(row[1]), int(row[2])) for row in conn.execute(query)})
    return found


def drop_history(conn: Connection, run_id: int) -> None:
    """Forget a run's mirrored history and events (W&B rewrote them)."""
    conn.execute(delete(history_chunks).where(history_chunks.c.run_id == run_id))


def _set_run_sync(conn: Connection, run_id: int, **values: Any) -> None:
    done = conn.execute(update(run_sync).where(run_sync.c.run_id == run_id).values(**values))
    if done.rowcount == 0:
        conn.execute(insert(run_sync).values(run_id=run_id, **{"failures": 0, **values}))


def mark_synced(conn: Connection, run_id: int, fingerprint: str | None) -> None:
    """Everything of the run is mirrored as the listing described it."""
    _set_run_sync(
        conn, run_id, fingerprint=fingerprint, synced_at=utcnow(), failures=0, last_error=None
    )


def mark_failed(conn: Connection, run_id: int, reason: str) -> None:
    """The run was skipped this cycle; it stays unfinished, so the next cycle retries it."""
    failures = conn.execute(select(run_sync.c.failures).where(run_sync.c.run_id == run_id)).scalar()
    _set_run_sync(conn, run_id, failures=(failures or 0) + 1, last_error=reason[:500])


def tombstone(conn: Connection, run_ids: Sequence[int]) -> None:
    """Deleted on W&B: hidden from every listing, every row kept."""
    now = utcnow()
    for start in range(0, len(run_ids), _BATCH):
        part = list(run_ids[start : start + _BATCH])
        conn.execute(update(runs).where(runs.c.id.in_(part)).values(deleted_at=now))
        conn.execute(update(run_sync).where(run_sync.c.run_id.in_(part)).values(fingerprint=None))


def record_pull(conn: Connection, project_id: int, **values: Any) -> None:
    """Write a project's ``sync_state`` (created on first use)."""
    done = conn.execute(
        update(sync_state).where(sync_state.c.project_id == project_id).values(**values)
    )
    if done.rowcount == 0:
        conn.execute(insert(sync_state).values(project_id=project_id, **values))
