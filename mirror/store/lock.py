"""One writer per mirror: the lock the daemon holds for its lifetime, and writing commands briefly.

On SQLite the lock is an ``flock`` on ``<database>.writer.lock``. The kernel drops it when the
holder exits, however it exits, so there is never a stale lock to clean up, and the file is never
deleted (a deleted lock file lets two processes each lock their own inode). The holder writes who
it is into the file after locking it, so a refused process can name the holder; that text only
informs, it never decides. ``filelock`` is not used here: it truncates the file on open, which
would erase the holder's name whenever somebody else tries the lock.

On PostgreSQL, where other hosts cannot see a file lock, it is a session advisory lock held by
a connection of its own, whose ``application_name`` names the holder; the server drops the lock
when that connection ends, however the holder ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from mirror.errors import MirrorError
from mirror.store.engine import database_url, shown, sqlite_path

_PROBE_GRACE_S = 0.5
#: the PostgreSQL advisory lock key of the writer lock (any constant; "wmw" in ASCII)
PG_WRITER_KEY = 0x776D77
_APP_TAG = "wm-writer"  # application_name "wm-writer|PID|HOST|COMMAND", cut at 63 bytes
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
_HOLDING = text(
    "SELECT count(*) > 0 FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' "
    "AND granted AND classid = 0 AND objid = :key AND objsubid = 1"
)
#: The server drops a session, and with it the lock, once its client is gone. A client that
#: exits, even by ``kill -9``, closes its socket and the server notices at once; a host that
#: vanishes (power cut, network gone) closes nothing, and the server's default keepalives would
#: keep its lock for two hours. These make the server give such a session up after about a
#: minute of silence (30 s idle, then 3 probes 10 s apart).
_KEEPALIVE_OPTIONS = (
    "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
)


class LockHeld(MirrorError):
    """Another process is the mirror's writer; the message names it."""


@dataclass(frozen=True)
class Holder:
    """Who holds a writer lock, as it described itself."""

    pid: int | None
    host: str
    command: str
    since: str

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        return (
            f"{self.command or 'a wandb-mirror process'} ({pid} on {self.host}, since {self.since})"
        )

    def as_json(self) -> str:
        return json.dumps(
            {"pid": self.pid, "host": self.host, "command": self.command, "since": self.since}
        )


def _me(command: str) -> Holder:
    return Holder(os.getpid(), socket.gethostname(), command, time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _parse_holder(text_: str) -> Holder | None:
    try:
        data = json.loads(text_ or "null")
    except ValueError:
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


def _url(database: Engine | str | None) -> str:
    if isinstance(database, Engine):
        return database.url.render_as_string(hide_password=False)
    return database_url(database)


def lock_path(database: Engine | str | None) -> Path:
    """The lock file beside an SQLite mirror."""
    path = sqlite_path(_url(database))
    if path is None:
        raise MirrorError("only an SQLite mirror has a lock file")
    return path.with_name(path.name + ".writer.lock")


def read_holder(path: Path) -> Holder | None:
    """What the lock file says about its holder (``None``: unreadable or never written)."""
    try:
        return _parse_holder(path.read_text(encoding="utf-8"))
    except OSError:
        return None


def _refusal(holder: Holder | None, where: str) -> LockHeld:
    who = holder.describe() if holder else "another process"
    if holder is not None and holder.command.startswith("wandb-mirror daemon"):
        advice = f"the daemon syncs on its schedule; `kill -USR1 {holder.pid}` makes it pull now"
    else:
        advice = "wait for it to finish, then try again"
    return LockHeld(f"{who} is writing to {where}; {advice}")


def _try_flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class WriterLock:
    """The writer lock of one mirror; ``acquire()`` once, ``release()`` (or exit) to give it up."""

    def __init__(self, database: Engine | str | None, command: str) -> None:
        self.url = _url(database)
        self.command = command
        backend = make_url(self.url).get_backend_name()
        if backend not in ("sqlite", "postgresql") or (
            backend == "sqlite" and sqlite_path(self.url) is None
        ):
            raise MirrorError(
                f"the one-writer lock needs an SQLite file or PostgreSQL, not {backend}"
            )
        self._fd: int | None = None
        self._conn: Connection | None = None

    def acquire(self) -> WriterLock:
        """Take the lock or raise ``LockHeld`` naming the holder.

        It waits only a moment: for a ``status`` that is probing the file lock at that instant,
        or, on PostgreSQL, for the server to finish closing the session of a holder that has
        just exited (a restart right after ``kill -9`` would otherwise be refused).
        """
        if sqlite_path(self.url) is not None:
            self._acquire_file()
        else:
            self._acquire_advisory()
        return self

    def _acquire_file(self) -> None:
        path = lock_path(self.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + _PROBE_GRACE_S
        while not _try_flock(fd, fcntl.LOCK_EX):
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            os.close(fd)
            raise _refusal(read_holder(path), str(sqlite_path(self.url)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, _me(self.command).as_json().encode(), 0)
        self._fd = fd

    def _acquire_advisory(self) -> None:
        me = _me(self.command)
        name = f"{_APP_TAG}|{me.pid}|{me.host}|{me.command}"
        engine = create_engine(
            self.url,
            poolclass=NullPool,
            connect_args={"application_name": name[:63], "options": _KEEPALIVE_OPTIONS},
        )
        conn = engine.connect()
        deadline = time.monotonic() + _PROBE_GRACE_S
        while not conn.execute(_TRY_LOCK, {"key": PG_WRITER_KEY}).scalar_one():
            conn.rollback()
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            holder = _advisory_holder(conn)
            conn.close()
            raise _refusal(holder, shown(self.url))
        conn.commit()
        self._conn = conn

    def held(self) -> bool:
        """Whether this process still holds the lock it acquired.

        A file lock lasts as long as the process. An advisory lock lasts as long as its session,
        which a server restart, a failover or an administrator's ``pg_terminate_backend`` ends
        while the holder runs on: a writer that runs for months asks before it writes.
        """
        if self._conn is None:
            return self._fd is not None
        try:
            holding = bool(self._conn.execute(_HOLDING, {"key": PG_WRITER_KEY}).scalar_one())
            self._conn.commit()
        except SQLAlchemyError:
            return False
        return holding

    def release(self) -> None:
        """Give the lock up; on SQLite the file stays, emptied, for the next holder."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):  # a session already gone took it along
                self._conn.close()  # the server drops a session's advisory locks with it
            self._conn = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _advisory_holder(conn: Connection) -> Holder | None:
    """The session holding the writer key, as its ``application_name`` describes it.

    ``pg_locks`` shows the locks of every database on the server, and an advisory lock is one
    database's: the holder is looked for in this database only, so that the daemon of another
    mirror on the same server is not named as this one's writer. A ``bigint`` key shows as its
    high half in ``classid``, its low half in ``objid`` and ``objsubid`` 1.
    """
    row = conn.execute(
        text(
            "SELECT a.application_name, a.client_addr, a.pid, a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = :key "
            "AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"key": PG_WRITER_KEY},
    ).first()
    if row is None:
        return None
    name, addr, backend, started = row
    since = started.strftime("%Y-%m-%dT%H:%M:%S%z") if started else "?"
    parts = (name or "").split("|", 3)
    if len(parts) == 4 and parts[0] == _APP_TAG and parts[1].isdigit():
        return Holder(int(parts[1]), parts[2], parts[3], since)
    return Holder(None, str(addr or "the database host"), f"backend {backend}", since)


def current_holder(database: Engine | str | None) -> Holder | None:
    """The process holding the writer lock now, or ``None`` when nobody does.

    On SQLite a shared lock taken for an instant tells without writing anything into the file.
    """
    url = _url(database)
    if sqlite_path(url) is None:
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return _advisory_holder(conn)
        finally:
            engine.dispose()
    path = lock_path(url)
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
