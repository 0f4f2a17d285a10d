"""Read-only status of the mirror's projects: what ``wandb-mirror status`` and the dashboard
show. It lives in the store, not in ``sync``, because readers (``serve``) show it too and never
import the sync engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from mirror.store.engine import shown, sqlite_path
from mirror.store.models import history_chunks, outbox, projects, run_sync, runs, sync_state


@dataclass(frozen=True)
class ProjectStatus:
    """What ``wandb-mirror status`` shows of one project."""

    path: str
    runs: int
    deleted: int
    history_rows: int
    last_success_at: str | None
    last_pull_finished_at: str | None
    last_error: str | None
    last_summary: str | None
    remote_run_count: int | None
    failing_runs: int
    edits: dict[str, int]  # open edits by status: pending, waiting, conflict, failed


def project_statuses(conn: Connection) -> list[ProjectStatus]:
    """One status per mirrored project, in path order."""
    out = []
    for project in conn.execute(select(projects).order_by(projects.c.entity, projects.c.name)):
        pid = project.id
        live, deleted = conn.execute(
            select(
                func.count().filter(runs.c.deleted_at.is_(None)),
                func.count().filter(runs.c.deleted_at.is_not(None)),
            ).where(runs.c.project_id == pid)
        ).one()
        rows = conn.execute(
            select(func.coalesce(func.sum(history_chunks.c.row_count), 0))
            .select_from(history_chunks.join(runs, runs.c.id == history_chunks.c.run_id))
            .where(runs.c.project_id == pid, history_chunks.c.stream == "history")
        ).scalar_one()
        failing = conn.execute(
            select(func.count())
            .select_from(run_sync.join(runs, runs.c.id == run_sync.c.run_id))
            .where(runs.c.project_id == pid, run_sync.c.failures > 0)
        ).scalar_one()
        edits = dict(
            conn.execute(
                select(outbox.c.status, func.count())
                .select_from(outbox.join(runs, runs.c.id == outbox.c.run_id))
                .where(runs.c.project_id == pid)
                .group_by(outbox.c.status)
            ).all()
        )
        state = conn.execute(select(sync_state).where(sync_state.c.project_id == pid)).first()
        out.append(
            ProjectStatus(
                path=f"{project.entity}/{project.name}",
                runs=live,
                deleted=deleted,
                history_rows=int(rows),
                last_success_at=state.last_success_at if state else None,
                last_pull_finished_at=state.last_pull_finished_at if state else None,
                last_error=state.last_error if state else None,
                last_summary=state.last_summary if state else None,
                remote_run_count=state.remote_run_count if state else None,
                failing_runs=failing,
                edits=edits,
            )
        )
    return out


def database_line(conn: Connection) -> str:
    """The ``database:`` line: where the mirror is and how much room it takes.

    An SQLite mirror is its file and WAL; a PostgreSQL one is named without its password and
    sized by the server (``pg_database_size``), which counts its indexes and TOAST too.
    """
    path = sqlite_path(str(conn.engine.url))
    if path is None:
        size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() or 0
        return f"database: {shown(conn.engine.url)} ({int(size) / 1e6:.1f} MB)"
    files = (path, path.with_name(path.name + "-wal"))
    size = sum(p.stat().st_size for p in files if p.is_file())
    return f"database: {path} ({size / 1e6:.1f} MB with its WAL)"
