"""Backups of a PostgreSQL mirror with PostgreSQL's own tools: ``pg_dump`` and ``pg_restore``.

A team's administrator already knows these archives (custom format: compressed, restorable
table by table, readable by any newer ``pg_restore``), so a snapshot is one, named and kept as
SQLite snapshots are (``mirror-YYYYMMDDTHHMMSSZ.dump`` with its JSON manifest, under a hidden
partial name until complete; :mod:`mirror.store.backup` does the naming and retention).

The dump is taken from a snapshot this module exports from a repeatable-read transaction, and
the manifest's counts are read in that same transaction, so they describe exactly what the
archive holds while the daemon keeps writing. ``verify`` reads the whole archive back through
``pg_restore`` (every block decompressed) and counts its rows itself, so a verified archive is
known to be readable and complete, not only unchanged since it was written.

The password never reaches a command line (other users can read those): the tools get it
through ``PGPASSWORD`` in their environment, or find it in ``PGPASSFILE``/``~/.pgpass``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, make_url

from mirror.errors import MirrorError
from mirror.store.engine import shown

SUFFIX = ".dump"
#: the client programs' directory may be named here when they are not on PATH
BIN_ENV = "WANDB_MIRROR_PG_BIN"
#: how long a restore waits for readers' locks on the tables it replaces
LOCK_TIMEOUT_MS = 60_000
_TABLES_SQL = (
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
)


def tool(name: str) -> str:
    """The path of ``pg_dump`` or ``pg_restore``, or a MirrorError saying how to get it.

    ``WANDB_MIRROR_PG_BIN`` when set, else PATH, else Debian's versioned directories (newest
    first: a newer client reads and dumps older servers, not the other way round).
    """
    if os.environ.get(BIN_ENV):
        candidates = [Path(os.environ[BIN_ENV]) / name]
    else:
        found = shutil.which(name)
        candidates = [Path(found)] if found else []
        debian = Path("/usr/lib/postgresql")
        if debian.is_dir():
            versions = [p for p in debian.iterdir() if p.name.isdigit()]
            for version in sorted(versions, key=lambda p: int(p.name), reverse=True):
                candidates.append(version / "bin" / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    where = f" in {os.environ[BIN_ENV]} ({BIN_ENV})" if os.environ.get(BIN_ENV) else ""
    raise MirrorError(
        f"backups of a PostgreSQL mirror need {name}, which is not installed{where}: install "
        "PostgreSQL's client programs (Debian: apt-get install postgresql-client) or name their "
        f"directory in {BIN_ENV}"
    )


def _conninfo(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection string without the password, and the environment carrying it."""
    parts = {
        "host": url.host,
        "port": str(url.port) if url.port else None,
        "user": url.username,
        "dbname": url.database,
    }
    parts.update({k: str(v) for k, v in url.query.items() if isinstance(v, str)})
    text = " ".join(f"{k}='{_quoted(v)}'" for k, v in parts.items() if v)
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return text, env


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _run(command: list[str], env: dict[str, str], what: str, url: URL) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise MirrorError(f"{what} of {shown(url)} failed: {_first_error(done.stderr)}")


def _first_error(stderr: str) -> str:
    """The line of a tool's output that says what went wrong (its name and "error:" dropped)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[0] if lines else "no message"


def tables(conn: Connection) -> set[str]:
    """The tables of the mirror's schema."""
    return {row[0] for row in conn.exec_driver_sql(_TABLES_SQL)}


Counted = Callable[[Connection], tuple[dict[str, int], str | None]]


def dump(engine: Engine, target: Path, counted: Counted) -> tuple[dict[str, int], str | None]:
    """Write the mirror into ``target`` as one consistent archive; returns its counts and
    schema revision, read from the very snapshot the archive holds.

    ``counted(conn)`` gives the counts and revision inside the exporting transaction.
    """
    pg_dump = tool("pg_dump")
    url = make_url(engine.url.render_as_string(hide_password=False))
    conninfo, env = _conninfo(url)
    reader = engine.connect().execution_options(isolation_level="REPEATABLE READ")
    with reader as conn, conn.begin():
        exported = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        counts, revision = counted(conn)
        command = [pg_dump, "--format=custom", f"--snapshot={exported}", "--no-owner"]
        _run([*command, f"--file={target}", f"--dbname={conninfo}"], env, "the backup", url)
    return counts, revision


@dataclass
class ArchiveContents:
    """What an archive holds, read from the archive alone: its tables, rows and revision."""

    tables: set[str]
    counts: dict[str, int]
    revision: str | None


def read_archive(path: Path) -> ArchiveContents:
    """Read every row of an archive back through ``pg_restore`` and count what it holds.

    The counts mean what :func:`mirror.store.backup.row_counts` means on a live mirror, so a
    manifest's counts and the live database's compare key by key. A damaged or cut-short
    archive raises a MirrorError with ``pg_restore``'s reason.
    """
    pg_restore = tool("pg_restore")
    names = archive_tables(path)
    process = subprocess.Popen(
        [pg_restore, "--data-only", "--file=-", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert process.stdout is not None and process.stderr is not None
    counts, revision = _count_copy_data(process.stdout)
    stderr = process.stderr.read()
    if process.wait() != 0:
        raise MirrorError(f"pg_restore cannot read it: {_first_error(stderr)}")
    return ArchiveContents(names, {k: counts[k] for k in _present(counts, names)}, revision)


def archive_tables(path: Path) -> set[str]:
    """The tables an archive creates, from its table of contents."""
    listing = subprocess.run(
        [tool("pg_restore"), "--list", str(path)], capture_output=True, text=True
    )
    if listing.returncode != 0:
        raise MirrorError(f"pg_restore cannot read it: {_first_error(listing.stderr)}")
    names = set()
    for line in listing.stdout.splitlines():
        fields = line.split()
        if not line.startswith(";") and len(fields) >= 6 and fields[3:4] == ["TABLE"]:
            names.add(fields[5])
    return names


def _present(counts: dict[str, int], names: set[str]) -> Iterator[str]:
    """The count keys of the tables the archive has (an older schema's lacks some)."""
    owners = {
        "projects": "projects",
        "runs": "runs",
        "runs_deleted": "runs",
        "history_chunks": "history_chunks",
        "history_rows": "history_chunks",
        "event_rows": "history_chunks",
    }
    for key in counts:
        if owners.get(key, "outbox") in names:
            yield key


def _count_copy_data(lines: Iterator[str]) -> tuple[dict[str, int], str | None]:
    """Counts from the COPY blocks of a data-only script (one line per row, ``\\N`` for NULL)."""
    counts = {
        "projects": 0,
        "runs": 0,
        "runs_deleted": 0,
        "history_chunks": 0,
        "history_rows": 0,
        "event_rows": 0,
    }
    revision = None
    table: str | None = None
    columns: list[str] = []
    for line in lines:
        if table is None:
            if line.startswith("COPY "):
                head, _, rest = line[5:].partition(" (")
                table = head.rsplit(".", 1)[-1].strip('"')
                columns = [c.strip().strip('"') for c in rest.split(")", 1)[0].split(",")]
            continue
        if line == "\\.\n":
            table = None
            continue
        values = line.rstrip("\n").split("\t")
        row = dict(zip(columns, values, strict=True))
        if table == "projects":
            counts["projects"] += 1
        elif table == "runs":
            deleted = row.get("deleted_at", "\\N") != "\\N"
            counts["runs_deleted" if deleted else "runs"] += 1
        elif table == "history_chunks":
            counts["history_chunks"] += 1
            stream = "history_rows" if row.get("stream") == "history" else "event_rows"
            counts[stream] += int(row.get("row_count") or 0)
        elif table == "outbox":
            key = f"outbox_{row.get('status')}"
            counts[key] = counts.get(key, 0) + 1
        elif table == "alembic_version":
            revision = row.get("version_num")
    return counts, revision


def restore_archive(engine: Engine, path: Path) -> None:
    """Replace the mirror's tables with the archive's, in one transaction.

    Tables the archive lacks (a newer schema's) are dropped first so that the upgrade after
    the restore can create them again. Grants are not restored: the roles of the server the
    archive came from may not exist here, and the README's default privileges give the
    readers' role its SELECT on the tables as they are created again.
    """
    pg_restore = tool("pg_restore")
    url = make_url(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        extra = sorted(tables(conn) - archive_tables(path))
        for name in extra:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}" CASCADE')
    conninfo, env = _conninfo(url)
    env["PGOPTIONS"] = f"-c lock_timeout={LOCK_TIMEOUT_MS}"
    command = [pg_restore, "--clean", "--if-exists", "--no-owner", "--no-acl"]
    command += ["--single-transaction", "--exit-on-error", f"--dbname={conninfo}", str(path)]
    _run(command, env, "the restore", url)
