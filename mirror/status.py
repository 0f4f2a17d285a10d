"""What ``wandb-mirror status`` says: the daemon, then per project its last pull, failure, lag,
next run and queued edits, then the database and the last backup.

Everything comes from the database and the files beside it, so any shell can ask, whether or
not the daemon is running.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, TextIO

from sqlalchemy import Engine

from mirror.store import backup
from mirror.store.jobs import JobRecord, job_records
from mirror.store.lock import current_holder
from mirror.store.status import ProjectStatus, database_line, project_statuses

if TYPE_CHECKING:
    from mirror.config import Settings


def _when(iso: str | None, now: datetime) -> str:
    """``2026-12-01T18:05:40 (3 min ago)``, or ``(in 12 min)`` for a time to come."""
    if not iso:
        return "never"
    then = datetime.fromisoformat(iso).replace(tzinfo=timezone.utc)
    seconds = (now - then).total_seconds()
    span = abs(seconds)
    if span < 90:
        amount = f"{span:.0f} s"
    elif span < 5400:
        amount = f"{span / 60:.0f} min"
    elif span < 172_800:
        amount = f"{span / 3600:.1f} h"
    else:
        amount = f"{span / 86400:.1f} days"
    return f"{iso} ({amount} ago)" if seconds >= 0 else f"{iso} (in {amount})"


def _project_lines(st: ProjectStatus, pull: JobRecord | None, now: datetime) -> list[str]:
    lines = [f"{st.path}: {st.runs} runs ({st.deleted} deleted), {st.history_rows:,} history rows"]
    lines.append(f"  last success: {_when(st.last_success_at, now)}")
    if st.last_summary:
        lines.append(f"  last pull:    {st.last_summary}")
    failed_at, reason = None, st.last_error
    if pull is not None and pull.last_failure_at and pull.failures:
        failed_at, reason = pull.last_failure_at, pull.last_error
    if reason:
        lines.append(f"  last failure: {_when(failed_at, now) + ': ' if failed_at else ''}{reason}")
    lag = []
    if st.remote_run_count is not None and st.remote_run_count != st.runs:
        lag.append(
            f"W&B listed {st.remote_run_count} runs at the last pull, the mirror has {st.runs}"
        )
    if st.last_success_at:
        lag.append(f"current as of {_when(st.last_success_at, now)}")
    if lag:
        lines.append(f"  lag behind W&B: {'; '.join(lag)}")
    if pull is not None:
        lines.append(f"  next pull:    {_when(pull.next_run_at, now)}")
    if st.failing_runs:
        lines.append(f"  {st.failing_runs} runs failed to sync and are retried next cycle")
    if st.edits:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(st.edits.items()))
        lines.append(f"  queued edits: {counts} (`wandb-mirror outbox list`)")
    return lines


def write_status(engine: Engine, settings: Settings, out: TextIO) -> None:
    """The mirror's state in a few lines per project, then the database and its backups."""
    write_report(engine, settings.backup.dest, out)


def write_report(engine: Engine, backup_dest: str, out: TextIO) -> None:
    """``write_status`` given only the backup directory setting: the dashboard shows the same
    lines, and a server does not load the config (which brings the remote client with it)."""
    now = datetime.now(timezone.utc)
    holder = current_holder(engine)
    print(
        f"daemon: running, {holder.describe()}"
        if holder
        else "daemon: not running (`wandb-mirror daemon` keeps the mirror current)",
        file=out,
    )
    with engine.connect() as conn:
        statuses = project_statuses(conn)
        records = {r.id: r for r in job_records(conn)} if holder else {}
    if not statuses:
        print("the mirror holds no project yet; run `wandb-mirror sync ENTITY/PROJECT`", file=out)
    for st in statuses:
        for line in _project_lines(st, records.get(f"pull:{st.path}"), now):
            print(line, file=out)
    for job_id in ("push", "reconcile", "backup", "export"):
        job = records.get(job_id)
        if job is None:
            continue
        failed = (
            f"; failed {_when(job.last_failure_at, now)}: {job.last_error}" if job.failures else ""
        )
        print(f"{job_id}: next {_when(job.next_run_at, now)}{failed}", file=out)
    with engine.connect() as conn:
        print(database_line(conn), file=out)
    directory = backup.backup_dir(engine, backup_dest)
    snapshots = backup.list_snapshots(directory) if directory.is_dir() else []
    if snapshots:
        newest = snapshots[0]
        taken = newest.taken_at.astimezone(timezone.utc).replace(tzinfo=None)
        kept = f"{len(snapshots)} snapshot{'s' if len(snapshots) != 1 else ''} kept"
        print(
            f"last backup: {newest.path}, taken {_when(taken.isoformat(timespec='seconds'), now)};"
            f" {kept}",
            file=out,
        )
    else:
        print(f"last backup: none in {directory} (`wandb-mirror backup` takes one)", file=out)
