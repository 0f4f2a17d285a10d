"""Schema upgrades through the Alembic scripts shipped with the package, run in process.

The scripts live in the top-level ``migrations/`` folder of the source tree and are installed as
``mirror._migrations`` inside the wheel, so an installed mirror can upgrade its own database
without an ``alembic.ini`` or a checkout.

Several processes may open a fresh or older database at once (three ``init`` in parallel, a
``seed`` beside a ``serve``), so an upgrade is one at a time per database: a file lock beside an
SQLite file (an advisory lock on PostgreSQL) is held from the first look at the revision to the
commit, and the scripts run in a transaction that takes SQLite's write lock up front. The second
process waits, then finds the work done.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock, Timeout
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DatabaseError

from mirror.errors import MirrorError
from mirror.store.backup import snapshot
from mirror.store.engine import (
    reclaim_free_pages,
    schema_transaction,
    shown,
    sqlite_path,
)
from mirror.store.models import metadata
from mirror.store.postgresql import INDEXES as pg_indexes
from mirror.store.texts import INDEXED_CHARS, PREFIX_INDEXES

#: how long an upgrade waits for another process's upgrade of the same database
LOCK_TIMEOUT_S = 600.0
#: the PostgreSQL advisory lock key of migrations (any constant; "wm" in ASCII)
_PG_LOCK_KEY = 0x776D


def scripts_dir() -> Path:
    """The migration scripts: inside the installed package, else the source tree's folder."""
    try:
        installed = resources.files("mirror._migrations")
        if installed.joinpath("env.py").is_file():
            return Path(str(installed))
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(scripts_dir()))
    return cfg


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str | None:
    """The newest revision the shipped scripts know."""
    return _scripts().get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


#: what a database can be to this wandb-mirror (see :class:`Diagnosis`)
Kind = Literal["missing", "empty", "not-a-database", "foreign", "behind", "ahead", "current"]
#: tables only a wandb-mirror database holds (other tools have ``runs`` or ``projects`` too)
_MIRROR_TABLES = frozenset({"runs", "run_fields", "history_chunks"})


@dataclass(frozen=True)
class Diagnosis:
    """What a database file (or URL) is, as far as this wandb-mirror is concerned.

    Every command that needs a mirror, and ``init`` that makes one, go by this one finding, so
    a given file gets the same one-line explanation (and the same advice) from each of them.
    """

    kind: Kind
    where: str  # the file, or the URL without its password
    revision: str | None = None  # the schema a mirror is at
    head: str | None = None  # the schema this wandb-mirror writes
    detail: str = ""  # the tables of a foreign database, the driver's words for a broken file

    def line(self) -> str:
        """The finding in one line, with what to do about it."""
        where, revision, head = self.where, self.revision, self.head
        return {
            "missing": f"no mirror at {where}; create one with `wandb-mirror init`",
            "empty": f"no mirror at {where} (an empty database); create one with "
            "`wandb-mirror init`",
            "not-a-database": f"{where} is not an SQLite database (SQLite says: {self.detail}); "
            "choose another --db",
            "foreign": f"{where} is not a wandb-mirror database (it holds {self.detail}); "
            "choose another --db",
            "behind": f"the mirror at {where} is at schema {revision}, this wandb-mirror needs "
            f"{head}; run `wandb-mirror db upgrade`",
            "ahead": f"the mirror at {where} is at schema {revision}, which this wandb-mirror "
            f"does not know (it knows up to {head}): a newer wandb-mirror wrote it; upgrade "
            "wandb-mirror to use it",
            "current": f"the mirror at {where} is at schema {revision}, up to date",
        }[self.kind]


def diagnose(engine: Engine) -> Diagnosis:
    """Find out what the database behind ``engine`` is (see :class:`Diagnosis`)."""
    where = shown(engine.url)
    path = sqlite_path(str(engine.url))
    if path is not None and not path.exists():
        return Diagnosis("missing", where)
    try:
        with engine.connect() as conn:
            revision = MigrationContext.configure(conn).get_current_revision()
            tables = sorted(inspect(conn).get_table_names())
    except DatabaseError as exc:
        reason = str(exc.orig or exc).splitlines()[0]
        if path is None or "not a database" not in reason:
            raise
        return Diagnosis("not-a-database", where, detail=reason)
    scripts = _scripts()
    head = scripts.get_current_head()
    ours = [t for t in tables if t != "alembic_version"]
    if revision is None and not ours:
        return Diagnosis("empty", where, head=head)
    known = {script.revision for script in scripts.walk_revisions()}
    if revision is None or (revision not in known and not _MIRROR_TABLES.issubset(tables)):
        listed = ", ".join(ours[:3]) + (f" and {len(ours) - 3} more" if len(ours) > 3 else "")
        return Diagnosis("foreign", where, revision, head, detail=f"tables {listed}")
    if revision not in known:
        return Diagnosis("ahead", where, revision, head)
    return Diagnosis("current" if revision == head else "behind", where, revision, head)


def require_current(engine: Engine) -> None:
    """Refuse to read or serve a database that is missing, foreign, or at another schema."""
    found = diagnose(engine)
    if found.kind != "current":
        raise MirrorError(found.line())


@contextmanager
def _one_at_a_time(engine: Engine) -> Iterator[None]:
    """Hold this database's migration lock (see the module docstring)."""
    path = sqlite_path(str(engine.url))
    if path is not None:
        lock = FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except Timeout:
            raise MirrorError(
                f"another process has been upgrading {path} for {LOCK_TIMEOUT_S:g} s; "
                f"if none is running, remove {path}.lock"
            ) from None
        try:
            yield
        finally:
            lock.release()
        return
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_LOCK_KEY})")
        conn.commit()
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_LOCK_KEY})")
            conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> Path | None:
    """Bring the database to ``revision``; returns the snapshot taken first, if one was needed.

    A non-empty SQLite database is snapshotted before any upgrade that changes it, so a failed or
    regretted migration can be undone by copying the snapshot back over the database file, and
    compacted after it when the upgrade left much of the file free.
    """
    target = head_revision() if revision == "head" else revision
    with _one_at_a_time(engine):
        found = diagnose(engine)
        if found.kind in ("not-a-database", "foreign", "ahead"):
            raise MirrorError(found.line())
        current = found.revision
        if current == target:
            return None
        taken = None
        path = sqlite_path(str(engine.url))
        if path is not None and found.kind == "behind":
            taken = snapshot(engine, path.parent / "snapshots", label=f"pre-upgrade-{current}")
        cfg = _config()
        with schema_transaction(engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        if found.kind == "behind":
            reclaim_free_pages(engine)
        return taken


def schema_differences(engine: Engine) -> list[object]:
    """What the models declare that the database does not have, or the other way round.

    On PostgreSQL the indexes of :data:`mirror.store.texts.PREFIX_INDEXES` hold a prefix of
    their text column, and those of :data:`mirror.store.postgresql.INDEXES` exist there only,
    which the models (one declaration for every database) cannot say: they are checked here by
    their definition instead of by Alembic's comparison.
    """
    with engine.connect() as conn:
        if conn.dialect.name != "postgresql":
            return list(compare_metadata(MigrationContext.configure(conn), metadata))

        def compared(item: Any, name: str | None, kind: str, *_: Any) -> bool:
            return not (kind == "index" and (name in PREFIX_INDEXES or name in pg_indexes))

        context = MigrationContext.configure(conn, opts={"include_object": compared})
        differences: list[object] = list(compare_metadata(context, metadata))
        found = dict(
            conn.execute(
                text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                )
            ).all()
        )
        expected = {
            **{
                name: (f"left({column}, {INDEXED_CHARS})",)
                for name, (_, column) in PREFIX_INDEXES.items()
            },
            **pg_indexes,
        }
        for name, parts in expected.items():
            definition = found.get(name, "").replace('"', "")
            if not all(part in definition for part in parts):
                differences.append(("modify_index" if name in found else "add_index", name))
        return differences


_DIFFERENCE_WORDS = {"add": "missing", "remove": "unexpected", "modify": "changed"}


def describe_differences(differences: list[object], shown: int = 3) -> str:
    """Alembic's comparison in a few words ("missing table outbox, changed column runs.tags"),
    for a one-line message; its raw tuples hold whole table definitions."""
    words = []
    for difference in differences:
        first = difference[0] if isinstance(difference, list) else difference
        action, _, what = str(first[0]).partition("_")  # type: ignore[index]
        words.append(f"{_DIFFERENCE_WORDS.get(action, action)} {what} {_name_of(first)}")
    more = f" and {len(words) - shown} more" if len(words) > shown else ""
    return ", ".join(words[:shown]) + more


def _name_of(difference: Any) -> str:
    """The table, column or index a difference is about (``table.column`` for columns)."""
    for item in reversed(difference[1:]):
        name = getattr(item, "name", None)
        table = getattr(getattr(item, "table", None), "name", None)
        if name:
            return f"{table}.{name}" if table and hasattr(item, "type") else str(name)
        if table:
            return f"on {table}"
    names = [str(item) for item in difference[1:] if isinstance(item, str)]
    return ".".join(names[-2:]) if names else "?"
