"""One writer per mirror: the lock the daemon holds for its lifetime, and writing commands briefly.

The lock is an ``flock`` on ``<database>.writer.lock``. The kernel drops it when the holder exits,
however it exits, so there is never a stale lock to clean up and the file is never deleted (a
deleted lock file lets two processes each lock their own inode). The holder writes who it is
into the file after locking it, so a refused process can name the holder; that text is only
ever informative, never what decides. ``filelock`` is not used here: it truncates the file on
open, which would erase the holder's name whenever somebody else tries the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from mirror.errors import MirrorError
from mirror.store.engine import database_url, sqlite_path

_PROBE_GRACE_S = 0.5


class LockHeld(MirrorError):
    """Another process is the mirror's writer; the message names it."""


@dataclass(frozen=True)
class Holder:
    """Who holds a writer lock, as it wrote itself into the lock file."""

    pid: int | None
    host: str
    command: str
    since: str

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        return (
            f"{self.command or 'a wandb-mirror process'} ({pid} on {self.host}, since {self.since})"
        )


def lock_path(database: Engine | str) -> Path:
    """The lock file beside an SQLite mirror; other databases get theirs with the team mirror."""
    url = str(database.url) if isinstance(database, Engine) else database_url(database)
    path = sqlite_path(url)
    if path is None:
        raise MirrorError(
            f"the one-writer lock needs an SQLite mirror; {make_url(url).get_backend_name()} is "
            "not supported by the daemon, sync, push or restore yet"
        )
    return path.with_name(path.name + ".writer.lock")


def read_holder(path: Path) -> Holder | None:
    """What the lock file says about its holder (``None``: unreadable or never written)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    return Holder(
        pid if isinstance(pid, int) else None,
        str(data.get("host", "?")),
        str(data.get("command", "")),
        str(data.get("since", "?")),
    )


class WriterLock:
    """The writer lock of one mirror; ``acquire()`` once, ``release()`` (or exit) to give it up."""

    def __init__(self, database: Engine | str, command: str) -> None:
        self.path = lock_path(database)
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        """Take the lock or raise ``LockHeld`` naming the holder.

        It waits only a moment, for a ``status`` that is probing the lock at that instant.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + _PROBE_GRACE_S
        while not _try_flock(fd, fcntl.LOCK_EX):
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            os.close(fd)
            holder = read_holder(self.path)
            who = holder.describe() if holder else "another process"
            database = self.path.name.removesuffix(".writer.lock")
            raise LockHeld(
                f"{who} is writing to {self.path.with_name(database)}; " + _advice(holder)
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up; the file stays, emptied, for the next holder."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _advice(holder: Holder | None) -> str:
    if holder is not None and holder.command.startswith("wandb-mirror daemon"):
        return f"the daemon syncs on its schedule; `kill -USR1 {holder.pid}` makes it pull now"
    return "wait for it to finish, then try again"


def _try_flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def current_holder(database: Engine | str) -> Holder | None:
    """The process holding the writer lock now, or ``None`` when nobody does.

    A shared lock taken for an instant tells without writing anything into the file.
    """
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_flock(fd, fcntl.LOCK_SH):
            return None
        return read_holder(path) or Holder(None, "?", "", "?")
    finally:
        os.close(fd)
