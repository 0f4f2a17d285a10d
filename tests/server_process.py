"""Helpers for the server fixtures: a seeded database, and ``python -m mirror.serve`` as a real
process (start, wait until it answers, stop).

A real process, not an in-process WSGI call, so the tests see what a client in another process
sees: sockets, keep-alive, status codes, dropped connections, the access log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from mirror.store import migrate
from mirror.store.engine import make_engine, write_transaction
from mirror.store.fields import dumps, loads
from mirror.store.history import history_keys_of
from mirror.store.upsert import append_history, upsert_runs
from mirror.synth import seed_project

#: the databases a test runs on, for fixtures parametrized by hand; the PostgreSQL runs carry
#: the ``postgresql`` mark
BOTH = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
DATA = Path(__file__).parent / "data" / "wandb"
ENTITY = "acme"
PROJECT = "vision"
RUNS = 150
STEPS = 240
#: the run the official SDK logged (tests/data/wandb/real-sdk-run.json), in its own project
SDK_PROJECT = "sdk"
SDK_RUN = "realsdk1"


def seed_database(path: Path | str, runs: int = RUNS, steps: int = STEPS) -> Path | str:
    """A migrated mirror with a synthetic project and the real SDK run, at ``path`` (a file or
    a database URL)."""
    engine = make_engine(path, create=True)
    try:
        migrate.upgrade(engine)
        seed_project(engine, ENTITY, PROJECT, runs, steps, seed=7)
        example = loads((DATA / "real-sdk-run.json").read_text())
        node = {
            "name": SDK_RUN,
            "displayName": "real sdk run",
            "state": "finished",
            "tags": ["sdk", "ünïcode"],
            "config": dumps(example["config"]),
            "summaryMetrics": dumps(example["summaryMetrics"]),
            "createdAt": "2026-11-05T17:46:35",
            "heartbeatAt": "2026-11-05T17:47:02",
            "historyLineCount": len(example["history"]),
            "historyKeys": history_keys_of(example["history"]),
            "user": {"name": "Real User", "username": "real"},
        }
        with write_transaction(engine) as conn:
            ids = upsert_runs(conn, ENTITY, SDK_PROJECT, [node])
            append_history(conn, ids[SDK_RUN], example["history"])
    finally:
        engine.dispose()
    return path


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without serve settings (keys, faults) unless the test gives them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_MIRROR_SERVE_")}
    env.update(extra)
    return env


class ServerProcess:
    """One server process over one database; its log goes to ``log_path``."""

    def __init__(
        self,
        db: Path | str,
        log_path: Path,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.db = db
        self.log_path = log_path
        self.args = args
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def graphql_url(self) -> str:
        return self.url + "/graphql"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mirror.serve", "--db", str(self.db), "--port"]

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the process and wait until ``/healthz`` answers (or fail with its log)."""
        env = clean_env(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.command(), str(self.port), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """Everything the server wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Terminate, then kill if it does not exit promptly."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def run_serve(args: list[str], env: dict[str, str] | None = None, timeout: float = 30.0):
    """Run ``python -m mirror.serve ARGS`` expecting it to exit; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "mirror.serve", *args],
        capture_output=True,
        text=True,
        env=clean_env(env or {}),
        timeout=timeout,
    )


@contextmanager
def wandb_client_env(home: Path, key: str) -> Iterator[dict[str, str]]:
    """The official ``wandb`` client kept off the network and out of the user's files, with
    ``key`` as its API key, for the length of the block."""
    env = {
        "HOME": str(home),
        "WANDB_DIR": str(home),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_API_KEY": key,
        "NETRC": str(home / "netrc"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.delenv("WANDB_BASE_URL", raising=False)
        mp.delenv("WANDB_ENTITY", raising=False)
        yield env
