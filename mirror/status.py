"""What ``wandb-mirror status`` says: per project, the last pull, its failures and queued edits."""

from __future__ import annotations

from typing import TextIO

from sqlalchemy import Engine

from mirror.config import Settings
from mirror.store.engine import sqlite_path
from mirror.sync.state import project_statuses


def write_status(engine: Engine, settings: Settings, out: TextIO) -> None:
    """The mirror's state in a few lines per project, then the database's size."""
    with engine.connect() as conn:
        statuses = project_statuses(conn)
    if not statuses:
        print("the mirror holds no project yet; run `wandb-mirror sync ENTITY/PROJECT`", file=out)
    for st in statuses:
        lag = ""
        if st.remote_run_count is not None and st.remote_run_count != st.runs:
            lag = f", W&B listed {st.remote_run_count} at the last pull"
        print(
            f"{st.path}: {st.runs} runs ({st.deleted} deleted), {st.history_rows:,} history rows"
            f"{lag}",
            file=out,
        )
        print(f"  last success: {st.last_success_at or 'never'}", file=out)
        if st.last_summary:
            print(f"  last pull:    {st.last_summary}", file=out)
        if st.last_error:
            print(f"  last error:   {st.last_error}", file=out)
        if st.failing_runs:
            print(f"  {st.failing_runs} runs failed to sync and are retried next cycle", file=out)
        if st.edits:
            counts = ", ".join(f"{n} {status}" for status, n in sorted(st.edits.items()))
            print(f"  queued edits: {counts} (`wandb-mirror outbox list`)", file=out)
    path = sqlite_path(str(engine.url))
    if path is not None:
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
        print(f"database: {path} ({size / 1e6:.1f} MB with its WAL)", file=out)
