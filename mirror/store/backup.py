"""Consistent copies of an SQLite mirror, taken while the daemon may be writing, and their restore.

``VACUUM INTO`` reads one snapshot of the WAL database and writes a compact, self-contained file,
so a copy never mixes two states and needs no lock held across the copy: a backup is a reader,
and the daemon keeps writing while it runs.

A snapshot is only ever visible under its final name (``mirror-YYYYMMDDTHHMMSSZ.db``) once it is
complete: it is written under a hidden ``.partial`` name, checked, fsynced and then linked to the
final name in one step, so a backup killed at any moment leaves at most a partial file that
nothing mistakes for a snapshot. A small JSON manifest beside each snapshot records what it held
(schema revision, row counts, sha256), which lets ``verify`` tell a damaged or altered copy from
a good one long after the live mirror has moved on.

These are store-level functions (an engine in, values out, nothing printed); the CLI and the
daemon decide what to say. A PostgreSQL mirror's snapshots are ``pg_dump`` archives
(``mirror-...dump``, :mod:`mirror.store.pg_backup`), named, listed, pruned and verified here
like the SQLite ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from mirror.errors import MirrorError
from mirror.store import pg_backup
from mirror.store.engine import default_db_path, shown, sqlite_path

#: how a snapshot's final name is spelled; nothing else in a backup directory is ever touched
SNAPSHOT_NAME = re.compile(
    r"^mirror-(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<seq>[1-9]\d{0,3}))?\.(?:db|dump)$"
)
#: the hidden names a backup in progress writes to (``.mirror-<stamp>-<pid>-<random>...partial``)
PARTIAL_NAME = re.compile(r"^\.mirror-\d{8}T\d{6}Z-[0-9a-z-]+\.(?:db|dump|json)\.partial$")
#: partial files younger than this may belong to a backup still running, and are left alone
PARTIAL_MAX_AGE = timedelta(days=1)
MANIFEST_SUFFIX = ".json"
MANIFEST_FORMAT = 1
_STAMP = "%Y%m%dT%H%M%SZ"
_SQLITE_HEADER = b"SQLite format 3\x00"
_CHUNK = 1 << 20


def snapshot(engine: Engine, dest_dir: Path, label: str = "snapshot") -> Path:
    """Write a consistent copy of the database into ``dest_dir`` and return its path.

    The quick copy the migration code takes before an upgrade (no manifest, no retention; its
    microsecond stamp and label keep it out of ``list_snapshots``). Scheduled and command-line
    backups use ``take_backup``.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = dest_dir / f"mirror-{stamp}-{label}.db"
    _vacuum_into(engine, target)
    return target


# --- what a snapshot is -------------------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    """A snapshot just taken: where it is, when its data was read, and what it holds."""

    path: Path
    taken_at: datetime  # UTC, to the second, as in the file name
    bytes: int
    counts: dict[str, int]
    seconds: float
    revision: str | None = None
    sha256: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A file in a backup directory whose name says it is a snapshot, and when it was taken."""

    path: Path
    taken_at: datetime  # UTC, parsed from the name
    seq: int = 1  # 2, 3, ... for snapshots taken within the same second

    @property
    def manifest(self) -> Path:
        """The JSON manifest beside the snapshot (it may be missing)."""
        return manifest_path(self.path)


@dataclass
class Verification:
    """What checking a snapshot found; ``ok`` only when ``problems`` is empty.

    ``notes`` are information, never failures: a missing manifest, an older schema that a
    restore upgrades, how far the live mirror has moved on since the snapshot.
    """

    path: Path
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    revision: str | None = None
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    live_differences: dict[str, int] = field(default_factory=dict)


def manifest_path(snapshot_path: Path) -> Path:
    """``mirror-...db`` → ``mirror-...db.json``."""
    return snapshot_path.with_name(snapshot_path.name + MANIFEST_SUFFIX)


def parse_snapshot_name(path: Path) -> Snapshot | None:
    """The snapshot a file name describes, or ``None`` for any other file."""
    found = SNAPSHOT_NAME.match(path.name)
    if found is None:
        return None
    try:
        taken_at = datetime.strptime(found["stamp"], _STAMP).replace(tzinfo=timezone.utc)
    except ValueError:  # the right shape but no real time (month 13): not ours
        return None
    return Snapshot(path, taken_at, int(found["seq"] or 1))


# --- where and how ------------------------------------------------------------------------------


def _sqlite_file(engine: Engine) -> Path | None:
    """The mirror's file, or ``None`` for PostgreSQL; other databases are refused."""
    path = sqlite_path(str(engine.url))
    if path is None and engine.dialect.name != "postgresql":
        raise MirrorError(
            f"backups need an SQLite or PostgreSQL mirror; {engine.dialect.name} is neither"
        )
    return path


def backup_dir(engine: Engine, dest: str) -> Path:
    """Where snapshots of this mirror go: ``dest`` (``~`` and ``$VARS`` expanded), else
    ``backups/`` beside the database file, so a mirror and its backups move together; for
    PostgreSQL, which has no file to sit beside, ``backups/HOST-PORT-DATABASE`` in the data
    directory the default SQLite mirror would use."""
    db = _sqlite_file(engine)
    if dest:
        return Path(os.path.expandvars(dest)).expanduser().resolve()
    if db is None:
        url = engine.url
        name = f"{url.host or 'localhost'}-{url.port or 5432}-{url.database}"
        return default_db_path().parent / "backups" / re.sub(r"[^\w.-]", "_", name)
    return db.parent / "backups"


def row_counts(engine: Engine) -> dict[str, int]:
    """The live mirror's row counts, read in one transaction (the keys of a manifest's counts)."""
    with engine.connect() as conn, conn.begin():
        return _live_counts(conn)


def _live_counts(conn: Connection) -> dict[str, int]:
    if conn.dialect.name == "postgresql":
        names = pg_backup.tables(conn)
    else:
        names = {r[0] for r in conn.exec_driver_sql(_SQLITE_TABLES)}
    return _count_rows(lambda sql: conn.exec_driver_sql(sql).fetchall(), names)


_SQLITE_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"


def _count_rows(query: Callable[[str], Sequence[Any]], tables: set[str]) -> dict[str, int]:
    """What a mirror holds, table by table, for manifests and their comparison.

    Tables an older schema lacks are left out rather than counted as zero, so a snapshot of an
    older mirror compares only what it could have held.
    """
    counts: dict[str, int] = {}
    if "projects" in tables:
        counts["projects"] = int(query("SELECT count(*) FROM projects")[0][0])
    if "runs" in tables:
        live, deleted = query("SELECT count(*) - count(deleted_at), count(deleted_at) FROM runs")[0]
        counts["runs"] = int(live or 0)
        counts["runs_deleted"] = int(deleted or 0)
    if "history_chunks" in tables:
        chunks, rows, events = query(
            "SELECT count(*), "
            "coalesce(sum(CASE WHEN stream = 'history' THEN row_count END), 0), "
            "coalesce(sum(CASE WHEN stream <> 'history' THEN row_count END), 0) "
            "FROM history_chunks"
        )[0]
        counts["history_chunks"] = int(chunks)
        counts["history_rows"] = int(rows)
        counts["event_rows"] = int(events)
    if "outbox" in tables:
        for status, n in query("SELECT status, count(*) FROM outbox GROUP BY status"):
            counts[f"outbox_{status}"] = int(n)
    return counts


def take_backup(engine: Engine, dest_dir: Path) -> Backup:
    """Take one consistent snapshot of the mirror into ``dest_dir``; safe while others write.

    ``VACUUM INTO`` copies one read snapshot of the WAL database (writers carry on meanwhile)
    into a hidden ``.partial`` file. That copy is integrity-checked, counted and hashed, fsynced,
    and only then hard-linked to its final name ``mirror-YYYYMMDDTHHMMSSZ.db`` (``-2``, ``-3``
    when several land in one second; linking never replaces an existing snapshot), so a kill at
    any moment never leaves an incomplete file under a snapshot name. The manifest
    (``<name>.json``) is written the same way right after; a snapshot without one is still a
    complete snapshot, verified without the manifest's checks.
    """
    db = _sqlite_file(engine)
    started = time.monotonic()
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MirrorError(f"cannot create the backup directory {dest_dir}: {exc}") from None
    taken_at = datetime.now(timezone.utc).replace(microsecond=0)
    stamp = taken_at.strftime(_STAMP)
    token = f"{os.getpid()}-{secrets.token_hex(3)}"
    suffix = ".db" if db is not None else pg_backup.SUFFIX
    partial = dest_dir / f".mirror-{stamp}-{token}{suffix}.partial"
    try:
        if db is None:
            counts, revision = pg_backup.dump(engine, partial, _snapshot_facts)
            _fsync_file(partial)
        else:
            counts, revision = _copy_sqlite(engine, db, partial, dest_dir)
        digest = _sha256(partial)
        size = partial.stat().st_size
        final = _claim_name(partial, dest_dir, stamp, suffix)
        manifest = {
            "format": MANIFEST_FORMAT,
            "file": final.name,
            "taken_at": taken_at.isoformat().replace("+00:00", "Z"),
            "revision": revision,
            "bytes": size,
            "sha256": digest,
            "counts": counts,
            "source": shown(engine.url),
        }
        _write_durably(
            manifest_path(final),
            dest_dir / f".mirror-{stamp}-{token}.json.partial",
            json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n",
        )
    finally:
        partial.unlink(missing_ok=True)  # after the link the snapshot lives on under its name
    _fsync_dir(dest_dir)
    return Backup(
        path=final,
        taken_at=taken_at,
        bytes=size,
        counts=counts,
        seconds=time.monotonic() - started,
        revision=revision,
        sha256=digest,
    )


def _copy_sqlite(
    engine: Engine, db: Path, partial: Path, dest_dir: Path
) -> tuple[dict[str, int], str | None]:
    """``VACUUM INTO`` the partial file, fsynced and integrity-checked; its counts and revision."""
    try:
        _vacuum_into(engine, partial)
    except sqlite3.Error as exc:  # a full disk, an unwritable directory, a damaged mirror
        raise MirrorError(f"the backup of {db} into {dest_dir} failed: {exc}") from None
    _fsync_file(partial)
    with _open_snapshot(partial) as conn:
        problems = _integrity_problems(conn)
        if problems:
            raise MirrorError(
                f"the copy of {db} failed SQLite's integrity check ({problems[0]}); the "
                "mirror itself may be damaged, so no snapshot was kept"
            )
        return _file_counts(conn), _revision_of(conn)


def _file_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = {r[0] for r in conn.execute(_SQLITE_TABLES)}
    return _count_rows(lambda sql: conn.execute(sql).fetchall(), names)


def _snapshot_facts(conn: Connection) -> tuple[dict[str, int], str | None]:
    """A PostgreSQL mirror's counts and revision, inside the transaction the dump reads."""
    revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return _live_counts(conn), revision


def _vacuum_into(engine: Engine, target: Path) -> None:
    raw = engine.raw_connection()  # VACUUM cannot run inside the transaction SQLAlchemy opens
    try:
        raw.driver_connection.execute("VACUUM INTO ?", (str(target),))
    finally:
        raw.close()


def _claim_name(partial: Path, dest_dir: Path, stamp: str, suffix: str) -> Path:
    """Give the finished copy its final name, never replacing another snapshot.

    A hard link appears atomically with the complete file behind it and fails if the name is
    taken (two backups in one second); where hard links are not supported, a rename onto a name
    checked free is the fallback.
    """
    for seq in range(1, 10_000):
        final = dest_dir / (
            f"mirror-{stamp}{suffix}" if seq == 1 else f"mirror-{stamp}-{seq}{suffix}"
        )
        try:
            os.link(partial, final)
        except FileExistsError:
            continue
        except OSError:
            if final.exists():
                continue
            os.replace(partial, final)
        return final
    raise MirrorError(f"{dest_dir} already holds 9,999 snapshots stamped {stamp}")


def _write_durably(target: Path, temporary: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that ``target`` is either absent or complete."""
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, target)


def _fsync_file(path: Path) -> None:
    # VACUUM INTO does not fsync its output; a rename of unsynced data can survive a power cut
    # as an empty or torn file under the final name.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- listing and retention ----------------------------------------------------------------------


def list_snapshots(dest_dir: Path) -> list[Snapshot]:
    """The snapshots in ``dest_dir``, newest first; files not named like a snapshot are ignored."""
    try:
        entries = list(Path(dest_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [s for s in map(parse_snapshot_name, entries) if s is not None and s.path.is_file()]
    return sorted(found, key=lambda s: (s.taken_at, s.seq), reverse=True)


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(timezone.utc)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def retained(
    snapshots: Iterable[Snapshot],
    keep_last: int,
    keep_daily: int,
    keep_weekly: int,
    now: datetime,
) -> set[Path]:
    """The snapshots a retention policy keeps (everything else may be deleted).

    Kept, as the union of:
    - the newest ``keep_last`` snapshots;
    - for each of the last ``keep_daily`` calendar days in UTC, counting today, the newest
      snapshot taken that day (a day without one keeps nothing extra);
    - for each of the last ``keep_weekly`` ISO weeks (Monday to Sunday, UTC), counting this
      week, the newest snapshot taken that week;
    - always the newest snapshot, whatever the numbers (``0, 0, 0`` keeps just that one);
    - any snapshot stamped after ``now`` (a clock set back): its age cannot be judged.

    A pure function of the names' times, so the rule is tested without touching files.
    """
    now = _utc(now)
    ordered = sorted(snapshots, key=lambda s: (s.taken_at, s.seq), reverse=True)
    keep = {s.path for s in ordered[: max(keep_last, 1)]}
    keep |= {s.path for s in ordered if s.taken_at > now}
    today = now.date()
    days = {today - timedelta(days=i) for i in range(keep_daily)}
    weeks = {_iso_week(today - timedelta(weeks=i)) for i in range(keep_weekly)}
    days_seen: set[date] = set()
    weeks_seen: set[tuple[int, int]] = set()
    for snap in ordered:  # newest first: the first one met in a day or week is its newest
        day = snap.taken_at.date()
        if day in days and day not in days_seen:
            days_seen.add(day)
            keep.add(snap.path)
        week = _iso_week(day)
        if week in weeks and week not in weeks_seen:
            weeks_seen.add(week)
            keep.add(snap.path)
    return keep


def _iso_week(day: date) -> tuple[int, int]:
    year, week, _ = day.isocalendar()
    return year, week


def prune(
    dest_dir: Path,
    keep_last: int,
    keep_daily: int,
    keep_weekly: int,
    now: datetime | None = None,
) -> list[Path]:
    """Delete the snapshots ``retained`` does not keep, with their manifests; returns them.

    Only files named like snapshots are considered. Also removed: manifests whose snapshot is
    gone, and partial files of an interrupted backup once they are a day old by their
    modification time (a younger one may belong to a backup still running).
    """
    dest_dir = Path(dest_dir)
    snapshots = list_snapshots(dest_dir)
    keep = retained(snapshots, keep_last, keep_daily, keep_weekly, _utc(now))
    removed = []
    for snap in snapshots:
        if snap.path in keep:
            continue
        snap.path.unlink(missing_ok=True)
        snap.manifest.unlink(missing_ok=True)
        removed.append(snap.path)
    _sweep_leftovers(dest_dir)
    if removed:
        _fsync_dir(dest_dir)
    return removed


def _sweep_leftovers(dest_dir: Path) -> None:
    try:
        entries = list(dest_dir.iterdir())
    except OSError:
        return
    cutoff = time.time() - PARTIAL_MAX_AGE.total_seconds()
    for entry in entries:
        try:
            if PARTIAL_NAME.match(entry.name):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
            elif entry.name.endswith(MANIFEST_SUFFIX):
                db = entry.with_name(entry.name[: -len(MANIFEST_SUFFIX)])
                if parse_snapshot_name(db) is not None and not db.exists():
                    entry.unlink()
        except OSError:  # gone meanwhile, or not ours to delete: never worth failing a prune
            continue


# --- verification -------------------------------------------------------------------------------


def _header_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an intact SQLite database, judged from its size and header alone.

    SQLite's own error for these ("file is not a database", "database disk image is malformed")
    says less than the header does: a copy cut short is told apart from a file of another kind.
    """
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    size = path.stat().st_size
    if size == 0:
        return "the file is empty, not an SQLite database"
    with open(path, "rb") as src:
        header = src.read(100)
    if not header.startswith(_SQLITE_HEADER):
        if _SQLITE_HEADER.startswith(header):
            return f"truncated: only {size} bytes, less than an SQLite header"
        return "not an SQLite database (it does not start with SQLite's header)"
    if len(header) < 100:
        return f"truncated: only {size} bytes, less than an SQLite header"
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"damaged: its header gives an impossible page size ({page_size})"
    changes, pages = struct.unpack(">II", header[24:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    if pages and changes == valid_for and size < pages * page_size:
        return f"truncated: {size:,} bytes where its header says {pages * page_size:,}"
    if size % page_size:
        return (
            f"truncated or padded: {size:,} bytes is not a whole number of {page_size}-byte pages"
        )
    return None


def _archive_header_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a ``pg_dump`` custom-format archive, judged from its first bytes."""
    if not path.is_file():
        return "no such file" if not path.exists() else "not a file"
    with open(path, "rb") as src:
        head = src.read(5)
    if head != b"PGDMP":
        return "not a pg_dump archive (it does not start with PGDMP)" if head else "empty file"
    return None


@contextmanager
def _open_snapshot(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a snapshot file that writes nothing, not even -wal or -shm.

    ``immutable=1`` tells SQLite the file cannot change under it, so it takes no locks and
    creates no side files; true of a snapshot, which nothing writes once it is taken.
    """
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def _integrity_problems(conn: sqlite3.Connection, limit: int = 20) -> list[str]:
    """SQLite's findings, one line each (a row can hold several, under a "*** in database" title)."""
    rows = conn.execute(f"PRAGMA integrity_check({limit})").fetchall()
    found = [
        line.strip()
        for row in rows
        for line in str(row[0]).splitlines()
        if line.strip() and not line.startswith("*** in database")
    ]
    return [] if found == ["ok"] else [f"integrity check: {text}" for text in found]


def _revision_of(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:  # no such table: not a wandb-mirror database
        return None
    return None if row is None else str(row[0])


def known_revisions() -> tuple[list[str], str | None]:
    """The revisions the shipped migration scripts know, oldest first, and the newest."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from mirror.store import migrate  # imported here: migrate imports this module

    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.scripts_dir()))
    script = ScriptDirectory.from_config(cfg)
    known = [rev.revision for rev in script.walk_revisions()]
    return list(reversed(known)), script.get_current_head()


def verify_snapshot(path: Path, live_engine: Engine | None = None) -> Verification:
    """Check that a snapshot is a complete, intact mirror this code can restore.

    Checked, each failure a readable line in ``problems`` (never an exception): that the file is
    an SQLite database at all and not cut short, ``PRAGMA integrity_check``, a schema revision
    this code knows (a newer one would be refused by this code after a restore), and, when a
    manifest lies beside it, its sha256, revision and row counts. With ``live_engine``, how the
    live mirror's counts differ from the snapshot's goes into ``notes``: information only, the
    live mirror moves on. The file is opened read-only and immutable: nothing is written.
    A PostgreSQL archive (``.dump``) is read back whole by ``pg_restore`` instead, and its rows
    counted from what it holds.
    """
    path = Path(path)
    result = Verification(path)
    archive = path.name.endswith(pg_backup.SUFFIX)
    problem = _archive_header_problem(path) if archive else _header_problem(path)
    if problem is not None:
        result.problems.append(problem)
        return result
    result.sha256 = _sha256(path)
    manifest = _load_manifest(result)
    if manifest is not None and manifest.get("sha256") != result.sha256:
        # first: it says what happened (the bytes changed since); SQLite's findings say where
        result.problems.append(
            f"its sha256 differs from the one in {manifest_path(path).name}: the file changed "
            "after the backup was taken"
        )
    if archive:
        try:
            contents = pg_backup.read_archive(path)
        except MirrorError as exc:
            result.problems.append(str(exc))
            return result
        result.counts, result.revision = contents.counts, contents.revision
    else:
        try:
            with _open_snapshot(path) as conn:
                integrity = _integrity_problems(conn)
                result.problems.extend(integrity)
                result.revision = _revision_of(conn)
                if not integrity:
                    result.counts = _file_counts(conn)
        except sqlite3.DatabaseError as exc:
            result.problems.append(f"SQLite cannot read it: {str(exc).splitlines()[0]}")
            return result
    _check_revision(result)
    if manifest is not None:
        _check_manifest(result, manifest)
    if live_engine is not None and result.counts:
        _compare_live(result, live_engine)
    result.ok = not result.problems
    return result


def _check_revision(result: Verification) -> None:
    known, head = known_revisions()
    if result.revision is None:
        result.problems.append(
            "not a wandb-mirror database: it records no schema revision (alembic_version)"
        )
    elif result.revision not in known:
        result.problems.append(
            f"its schema revision {result.revision} is unknown to this wandb-mirror (newest "
            f"{head}): a newer wandb-mirror wrote it; restore it with that version"
        )
    elif result.revision != head:
        result.notes.append(
            f"schema {result.revision} is older than this wandb-mirror's {head}; a restore "
            "upgrades it"
        )


def _load_manifest(result: Verification) -> dict[str, Any] | None:
    """The manifest beside the snapshot; its absence is a note, an unreadable one a problem."""
    manifest = manifest_path(result.path)
    if not manifest.exists():
        result.notes.append(f"no manifest ({manifest.name}) beside it: sha256 and counts unchecked")
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        result.problems.append(f"its manifest {manifest.name} is unreadable: {exc}")
        return None
    return data


def _check_manifest(result: Verification, data: dict[str, Any]) -> None:
    """The manifest's revision and counts against the file's (its sha256 is checked first)."""
    name = manifest_path(result.path).name
    if data.get("revision") != result.revision:
        result.problems.append(
            f"its schema revision is {result.revision}, its manifest says {data.get('revision')}"
        )
    expected = data.get("counts")
    if not isinstance(expected, dict):
        result.problems.append(f"its manifest {name} records no row counts")
        return
    if not result.counts:
        return  # the integrity check already failed; counting a damaged file proves nothing
    for key in sorted(set(expected) | set(result.counts)):
        want, have = expected.get(key, 0), result.counts.get(key, 0)
        if want != have:
            result.problems.append(f"{key}: its manifest says {want}, the file holds {have}")


def _compare_live(result: Verification, live_engine: Engine) -> None:
    try:
        live = row_counts(live_engine)
    except Exception as exc:  # the live mirror is only compared against, never required
        result.notes.append(f"the live mirror could not be counted: {str(exc).splitlines()[0]}")
        return
    diffs = {
        key: live.get(key, 0) - result.counts.get(key, 0)
        for key in sorted(set(live) | set(result.counts))
        if live.get(key, 0) != result.counts.get(key, 0)
    }
    result.live_differences = diffs
    if diffs:
        moved = ", ".join(f"{key} {n:+,}" for key, n in diffs.items())
        result.notes.append(f"the live mirror has moved on since: {moved}")
    else:
        result.notes.append("the live mirror holds the same counts")


# --- restore ------------------------------------------------------------------------------------


def restore(engine: Engine, snapshot: Path) -> Path | None:
    """Replace the mirror's database with ``snapshot``; returns where the old one was kept.

    The caller holds the ``WriterLock``, and no connection of ``engine`` may be checked out (it
    is disposed, so its pooled connections let go of the old file). In order:
    1. the snapshot is verified; a failure refuses with its first problem, nothing touched;
    2. it is copied beside the database (same filesystem, so the swap is a rename), its sha256
       checked against the verified one, switched to WAL and fsynced;
    3. the live database's WAL is checkpointed and emptied (``wal_checkpoint(TRUNCATE)``);
       another process with the mirror open refuses the restore, naming it: its connections
       would keep reading the old file, or keep its WAL from emptying;
    4. the current database is kept as ``<db>.before-restore-<stamp>`` (a hard link, so the
       database path never disappears), its ``-wal``/``-shm`` moved along so that copy stays
       consistent and no stale WAL or index can be applied to the new file;
    5. ``os.replace`` swaps the copy onto the database path, atomically;
    6. a snapshot at an older schema is upgraded at once, so the mirror is usable right away.
    ``None`` is returned when there was no database to keep (restoring onto a new machine).
    A PostgreSQL mirror is restored from a ``.dump`` archive (:func:`_restore_postgresql`).
    """
    db = _sqlite_file(engine)
    snapshot = Path(snapshot)
    where = shown(engine.url)
    if snapshot.name.endswith(pg_backup.SUFFIX) != (db is None):
        kind = "a PostgreSQL archive" if db is not None else "an SQLite snapshot"
        raise MirrorError(
            f"{snapshot} is {kind}, which restores only onto a mirror of its own database kind; "
            f"{where} is unchanged (`wandb-mirror import` moves data between the two)"
        )
    checked = verify_snapshot(snapshot)
    if not checked.ok:
        more = len(checked.problems) - 1
        also = f" (and {more} more problems: `wandb-mirror verify` lists them)" if more else ""
        raise MirrorError(
            f"{snapshot} cannot be restored: {checked.problems[0]}{also}; {where} is unchanged"
        )
    stamp = datetime.now(timezone.utc).strftime(_STAMP)
    if db is None:
        return _restore_postgresql(engine, snapshot, checked, stamp)
    temporary = db.with_name(f".{db.name}.restore-{stamp}-{os.getpid()}.partial")
    db.parent.mkdir(parents=True, exist_ok=True)
    for leftover in db.parent.glob(f".{db.name}.restore-*.partial*"):
        leftover.unlink(missing_ok=True)  # of a restore killed part-way; the lock says none runs
    try:
        if _copy_durably(snapshot, temporary) != checked.sha256:
            raise MirrorError(f"{snapshot} changed while it was being restored; {db} is unchanged")
        _switch_to_wal(temporary)
        engine.dispose()
        aside = _set_aside(db, stamp)
        os.replace(temporary, db)
        _fsync_dir(db.parent)
    finally:
        for leftover in (temporary, _side(temporary, "-wal"), _side(temporary, "-shm")):
            leftover.unlink(missing_ok=True)
    _upgrade_restored(engine, checked)
    return aside


def _upgrade_restored(engine: Engine, checked: Verification) -> None:
    """Bring a mirror restored from an older schema up to date, so it is usable at once."""
    from mirror.store import migrate  # imported here: migrate imports this module

    engine.dispose()
    _, head = known_revisions()
    if checked.revision != head:
        migrate.upgrade(engine)
        engine.dispose()


def _restore_postgresql(
    engine: Engine, snapshot: Path, checked: Verification, stamp: str
) -> Path | None:
    """Dump the mirror as it is beside the snapshot, then replace its tables in one transaction.

    The dump (``before-restore-<stamp>.dump``, outside the snapshots' names and so never
    pruned) is what the SQLite restore's kept file is: the way back. Readers holding a table
    are waited for up to ``pg_backup.LOCK_TIMEOUT_MS``, then the restore fails, changing nothing.
    """
    from mirror.store import migrate

    aside = None
    if migrate.current_revision(engine) is not None:
        aside = snapshot.parent / f"before-restore-{stamp}{pg_backup.SUFFIX}"
        pg_backup.dump(engine, aside, lambda _conn: ({}, None))
    pg_backup.restore_archive(engine, snapshot)
    _upgrade_restored(engine, checked)
    return aside


def _side(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _copy_durably(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target``, fsynced; returns the sha256 of the bytes written."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _switch_to_wal(path: Path) -> None:
    """Put the restored file in WAL mode now, so its first readers never block a writer."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
    finally:
        conn.close()  # the last connection removes the (empty) -wal and -shm it made
    _fsync_file(path)


def _set_aside(db: Path, stamp: str) -> Path | None:
    """Empty the live database's WAL and keep the database under a ``before-restore`` name."""
    if not db.exists():
        for suffix in ("-wal", "-shm"):  # leftovers of a database deleted by hand
            side = _side(db, suffix)
            if side.exists():
                os.replace(side, db.with_name(f"{db.name}.orphan-{stamp}{suffix}"))
        return None
    others = processes_using(db)
    if others:
        raise MirrorError(
            f"{'; '.join(others)} {'has' if len(others) == 1 else 'have'} the mirror open; stop "
            f"{'it' if len(others) == 1 else 'them'} and restore again ({db} is unchanged)"
        )
    wal = _side(db, "-wal")
    try:
        conn = sqlite3.connect(db, timeout=30)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise MirrorError(f"cannot open {db} to empty its WAL: {exc}") from None
        busy = 1
    except sqlite3.DatabaseError:
        # the current database is damaged (the usual reason to restore): it is kept aside as
        # it is, its WAL moved along with it, and nothing of it is applied to the new file
        busy, wal = 0, None
    if busy or (wal is not None and wal.exists() and wal.stat().st_size):
        raise MirrorError(
            f"the mirror's WAL ({wal}) cannot be emptied: another process is reading or "
            "writing it (a `serve`, a notebook using mirror.Api, a `wandb-mirror` command); "
            f"stop it and restore again ({db} is unchanged)"
        )
    aside = db.with_name(f"{db.name}.before-restore-{stamp}")
    n = 1
    while aside.exists() or _side(aside, "-wal").exists():
        n += 1
        aside = db.with_name(f"{db.name}.before-restore-{stamp}-{n}")
    try:
        os.link(db, aside)
    except OSError:  # no hard links on this filesystem: the database path is briefly absent
        os.replace(db, aside)
    for suffix in ("-wal", "-shm"):
        side = _side(db, suffix)
        if side.exists():
            os.replace(side, _side(aside, suffix))
    return aside


def processes_using(db: Path) -> list[str]:
    """Other processes that have the database (or its WAL) open, as ``pid N (command)``.

    Read from ``/proc`` on Linux; elsewhere the list is empty and the WAL checkpoint is what
    notices a reader. Processes of other users that cannot be inspected are not listed.
    """
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return []
    wanted = {os.path.realpath(p) for p in (db, _side(db, "-wal"), _side(db, "-shm"))}
    found = []
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted:
                found.append(f"pid {entry.name} ({_command_of(entry)})")
                break
    return found


def _command_of(proc_dir: Path) -> str:
    try:
        raw = (proc_dir / "cmdline").read_bytes()
    except OSError:
        return "?"
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return text if len(text) <= 80 else text[:77] + "..."
