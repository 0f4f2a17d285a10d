"""The daemon's job records: one row per scheduled job, written as jobs start and end.

They live in the database rather than in the daemon's memory so that ``wandb-mirror status``,
run from any shell, can say what the daemon did last, why it failed and when it tries next.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from mirror.store.models import daemon_jobs
from mirror.store.upsert import utcnow


@dataclass(frozen=True)
class JobRecord:
    """One job as ``status`` shows it."""

    id: str
    next_run_at: str | None
    last_started_at: str | None
    last_finished_at: str | None
    last_success_at: str | None
    last_failure_at: str | None
    last_error: str | None
    last_summary: str | None
    runs: int
    failures: int


def _upsert(conn: Connection, job_id: str, **values: object) -> None:
    """Update the job's row, or create it first (a job may run before its schedule is saved).

    The daemon's main thread (saving the schedule after a HUP) and its writer thread (a job
    starting) may both create the row of a new job at once. On SQLite their transactions take
    turns; on PostgreSQL both would find no row and the second insert would fail on the key,
    so the row is created with an insert that leaves an existing one alone.
    """
    row = {"id": job_id, "runs": 0, "failures": 0}
    if conn.dialect.name == "postgresql":
        conn.execute(pg_insert(daemon_jobs).values(**row).on_conflict_do_nothing())
    else:
        exists = conn.execute(select(daemon_jobs.c.id).where(daemon_jobs.c.id == job_id)).first()
        if exists is None:
            conn.execute(insert(daemon_jobs).values(**row))
    conn.execute(update(daemon_jobs).where(daemon_jobs.c.id == job_id).values(**values))


def set_schedule(conn: Connection, next_runs: dict[str, str | None]) -> None:
    """The jobs the daemon now has, with their next run; rows of jobs it dropped go."""
    conn.execute(delete(daemon_jobs).where(daemon_jobs.c.id.not_in(list(next_runs))))
    for job_id, when in next_runs.items():
        _upsert(conn, job_id, next_run_at=when)


def job_started(conn: Connection, job_id: str) -> None:
    _upsert(conn, job_id, last_started_at=utcnow(), runs=daemon_jobs.c.runs + 1)


def job_finished(
    conn: Connection, job_id: str, summary: str | None, error: str | None, next_run_at: str | None
) -> int:
    """Record how a run of the job ended; returns its consecutive failures (0 after success)."""
    now = utcnow()
    if error is None:
        values: dict[str, object] = {"last_success_at": now, "failures": 0}
    else:
        values = {
            "last_failure_at": now,
            "last_error": error[:500],
            "failures": daemon_jobs.c.failures + 1,
        }
    if summary is not None:
        values["last_summary"] = summary
    _upsert(conn, job_id, last_finished_at=now, next_run_at=next_run_at, **values)
    return int(
        conn.execute(select(daemon_jobs.c.failures).where(daemon_jobs.c.id == job_id)).scalar_one()
    )


def job_records(conn: Connection, ids: Iterable[str] | None = None) -> list[JobRecord]:
    """Every job row (or those named), by id."""
    query = select(daemon_jobs).order_by(daemon_jobs.c.id)
    if ids is not None:
        query = query.where(daemon_jobs.c.id.in_(list(ids)))
    return [JobRecord(**row._mapping) for row in conn.execute(query)]
