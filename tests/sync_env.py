"""The sync tests' world: an upstream database served by ``python -m mirror.serve`` as a real
process on 127.0.0.1 (the stand-in for W&B), changes made to it the way W&B would see them, and
``wandb-mirror sync`` run as a real process against it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from server_process import ServerProcess, clean_env
from sqlalchemy import select, update

from mirror.store import migrate
from mirror.store.engine import make_engine, write_transaction
from mirror.store.fields import dumps, loads
from mirror.store.history import history_keys_of
from mirror.store.models import runs
from mirror.store.read import find_project, find_run, iter_rows
from mirror.store.upsert import append_history, upsert_runs, utcnow
from mirror.synth import seed_project

ENTITY = "acme"
PROJECT = "vision"
PATH = f"{ENTITY}/{PROJECT}"
KEY = "synctest" + "0" * 32


def seed_upstream(db: Path, runs_: int = 30, steps: int = 120, seed: int = 3) -> Path:
    """A migrated upstream with one synthetic project."""
    engine = make_engine(db, create=True)
    try:
        migrate.upgrade(engine)
        seed_project(engine, ENTITY, PROJECT, runs_, steps, seed=seed)
    finally:
        engine.dispose()
    return db


def sync_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    """An environment for ``wandb-mirror`` that talks to ``url`` and nothing else."""
    env = clean_env({})
    for name in ("WANDB_MIRROR_DB", "WANDB_MIRROR_CONFIG", "WANDB_ENTITY", "NETRC"):
        env.pop(name, None)
    env.update(
        {
            "WANDB_BASE_URL": url,
            "WANDB_API_KEY": KEY,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
        }
    )
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``wandb-mirror ARGS`` as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "mirror.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def requests_of(line: str) -> int:
    """The request count from a sync's summary line."""
    for part in line.split(","):
        if part.strip().endswith(" requests"):
            return int(part.split()[0])
    raise AssertionError(f"no request count in {line!r}")


def summary_line(result: subprocess.CompletedProcess[str]) -> str:
    """The closing summary line of a one-project sync."""
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(PATH + ":")]
    assert lines, result.stdout + result.stderr
    return lines[-1]


class Upstream:
    """The served upstream and ways to change it as a W&B project changes."""

    def __init__(self, db: Path, log: Path, args: tuple[str, ...] = ()) -> None:
        self.db = db
        self.server = ServerProcess(db, log, args=("--threads", "4", *args))

    def __enter__(self) -> Upstream:
        self.server.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def requests_served(self) -> int:
        """GraphQL requests in the server's access log so far."""
        return sum(1 for ln in self.server.log().splitlines() if "POST /graphql" in ln)

    # --- changes, written straight into the upstream database ---------------------------

    def _write(self, fn: Any) -> Any:
        engine = make_engine(self.db)
        try:
            with write_transaction(engine) as conn:
                project = find_project(conn, ENTITY, PROJECT)
                return fn(conn, project["id"])
        finally:
            engine.dispose()

    def names(self) -> list[str]:
        engine = make_engine(self.db, create=False)
        try:
            with engine.connect() as conn:
                project = find_project(conn, ENTITY, PROJECT)
                query = select(runs.c.name).where(
                    runs.c.project_id == project["id"], runs.c.deleted_at.is_(None)
                )
                return sorted(conn.execute(query.order_by(runs.c.name)).scalars())
        finally:
            engine.dispose()

    def run_with_state(self, state: str) -> str:
        engine = make_engine(self.db, create=False)
        try:
            with engine.connect() as conn:
                project = find_project(conn, ENTITY, PROJECT)
                query = select(runs.c.name).where(
                    runs.c.project_id == project["id"],
                    runs.c.state == state,
                    runs.c.deleted_at.is_(None),
                    runs.c.history_line_count > 0,
                )
                return conn.execute(query.order_by(runs.c.name).limit(1)).scalar_one()
        finally:
            engine.dispose()

    def log_history(self, name: str, rows: int, finish: bool = False) -> None:
        """A running run logs ``rows`` more steps (and an event), as the SDK would."""

        def change(conn, pid):
            run = find_run(conn, pid, name)
            have = list(iter_rows(conn, run["id"]))
            last = have[-1]["_step"] if have else -1
            new = [
                {"_step": last + 1 + i, "loss": 1.0 / (last + 2 + i), "acc": float("nan")}
                for i in range(rows)
            ]
            append_history(conn, run["id"], new)
            events = list(iter_rows(conn, run["id"], "events"))
            append_history(conn, run["id"], [{"system.cpu": 1.5}], "events", start=len(events))
            keys = history_keys_of([*have, *new])
            summary = loads(run["summary_metrics"], {})
            summary.update(new[-1])
            conn.execute(
                update(runs)
                .where(runs.c.id == run["id"])
                .values(
                    history_line_count=len(have) + rows,
                    history_keys=dumps(keys),
                    summary_metrics=dumps(summary),
                    heartbeat_at=utcnow(),
                    updated_at=utcnow(),
                    state="finished" if finish else "running",
                )
            )

        self._write(change)

    def edit(self, name: str, **node: Any) -> None:
        """Change fields of a run as an edit in W&B's UI would (tags, notes, summary...)."""
        self._write(
            lambda conn, pid: upsert_runs(
                conn, ENTITY, PROJECT, [{"name": name, "updatedAt": utcnow(), **node}]
            )
        )

    def add_run(self, name: str, steps: int) -> None:
        rows = [{"_step": i, "loss": 1.0 / (i + 1), "_runtime": i * 0.5} for i in range(steps)]

        def change(conn, pid):
            node = {
                "name": name,
                "displayName": f"new-{name}",
                "state": "running",
                "createdAt": utcnow(),
                "heartbeatAt": utcnow(),
                "tags": ["new"],
                "user": {"name": "Nova User", "username": "nova"},
                "config": dumps({"lr": {"value": 0.1, "desc": None}}),
                "summaryMetrics": dumps(rows[-1] if rows else {}),
                "historyLineCount": steps,
                "historyKeys": history_keys_of(rows),
            }
            ids = upsert_runs(conn, ENTITY, PROJECT, [node])
            append_history(conn, ids[name], rows)

        self._write(change)

    def delete(self, name: str) -> None:
        self._write(
            lambda conn, pid: conn.execute(
                update(runs)
                .where(runs.c.project_id == pid, runs.c.name == name)
                .values(deleted_at=utcnow())
            )
        )
