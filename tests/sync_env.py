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
from sqlalchemy import select

from mirror.store import migrate
from mirror.store.engine import make_engine
from mirror.store.models import runs
from mirror.synth import seed_project
from mirror.synth_activity import add_run, delete_run, edit_run, log_steps

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

    def _change(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        engine = make_engine(self.db)
        try:
            fn(engine, ENTITY, PROJECT, *args, **kwargs)
        finally:
            engine.dispose()

    def _read(self, query: Any) -> Any:
        engine = make_engine(self.db, create=False)
        try:
            with engine.connect() as conn:
                return conn.execute(query).scalars().all()
        finally:
            engine.dispose()

    def names(self) -> list[str]:
        """The live runs' names, sorted."""
        return self._read(
            select(runs.c.name).where(runs.c.deleted_at.is_(None)).order_by(runs.c.name)
        )

    def run_with_state(self, state: str) -> str:
        """The first live run in ``state`` that has history."""
        return self._read(
            select(runs.c.name)
            .where(
                runs.c.state == state, runs.c.deleted_at.is_(None), runs.c.history_line_count > 0
            )
            .order_by(runs.c.name)
            .limit(1)
        )[0]

    def log_history(self, name: str, rows: int, finish: bool = False) -> None:
        """A running run logs ``rows`` more steps and an event."""
        self._change(log_steps, name, rows, finish=finish)

    def edit(self, name: str, **node: Any) -> None:
        """Fields changed as an edit in W&B's UI would (tags, notes, summary...)."""
        self._change(edit_run, name, **node)

    def add_run(self, name: str, steps: int) -> None:
        self._change(add_run, name, steps)

    def delete(self, name: str) -> None:
        self._change(delete_run, name)
