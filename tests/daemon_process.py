"""``wandb-mirror daemon`` as a real process: its config, its log, signals and the job records
it writes, for the daemon tests and the soak benchmark."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mirror_db import Database, is_postgres
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, ProgrammingError

from mirror.store.engine import make_engine
from mirror.store.models import daemon_jobs

#: fast retries and short intervals: a test's daemon notices everything within a second or two
FAST = """
[remote]
max_attempts = 2
backoff_initial = 0.05
backoff_max = 0.2
timeout = 10
connect_timeout = 2

[sync]
concurrency = 4
lag_window = 0
{sync_extra}

[daemon]
pull_interval = {interval}
push_interval = {interval}
failure_backoff_max = 2
reconcile = "{reconcile}"
{daemon_extra}
[backup]
schedule = "{backup}"
"""


def write_config(
    path: Path,
    projects: list[str],
    interval: float = 1,
    backup: str = "",
    extra: str = "",
    reconcile: str = "",
    daemon_extra: str = "",
    sync_extra: str = "",
) -> Path:
    """A daemon config for ``projects`` with the test's fast settings; ``daemon_extra`` goes
    into its ``[daemon]`` table, ``sync_extra`` into ``[sync]``, ``extra`` after its
    ``[backup]`` table."""
    text = FAST.format(
        interval=interval,
        backup=backup,
        reconcile=reconcile,
        daemon_extra=daemon_extra,
        sync_extra=sync_extra,
    )
    text += extra
    for project in projects:
        text += f'\n[[project]]\npath = "{project}"\n'
    path.write_text(text)
    return path


class DaemonProcess:
    """One daemon over one mirror; stdout and stderr go to ``log_path``."""

    def __init__(self, mirror: Database, config: Path, env: dict[str, str], log_path: Path) -> None:
        self.mirror = mirror
        self.config = config
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mirror.cli",
            "--db",
            str(self.mirror),
            "--config",
            str(self.config),
            "daemon",
        ]

    def start(self) -> DaemonProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_log(self, text: str, timeout: float = 30, after: int = 0) -> None:
        """Until ``text`` appears in the log past character ``after``."""
        deadline = time.monotonic() + timeout
        while text not in self.log()[after:]:
            if not self.alive():
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the daemon's log:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        """TERM, and the exit code (a kill if it does not exit in time, then a failure)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon ignored TERM for {timeout}s:\n{self.log()}") from None
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def job_rows(mirror: Database) -> dict[str, dict[str, Any]]:
    """The daemon's job records, by job id (empty before the first start)."""
    if not is_postgres(mirror) and not Path(mirror).exists():
        return {}
    engine = make_engine(mirror, create=False)
    try:
        with engine.connect() as conn:
            return {row["id"]: dict(row) for row in conn.execute(select(daemon_jobs)).mappings()}
    except (OperationalError, ProgrammingError):  # the daemon has not created the table yet
        return {}
    finally:
        engine.dispose()


def job_runs(mirror: Database, job_id: str) -> int:
    """How many times the job has started."""
    return int(job_rows(mirror).get(job_id, {}).get("runs") or 0)
