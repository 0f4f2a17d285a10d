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
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock, Timeout
from sqlalchemy import Engine, inspect

from mirror.errors import MirrorError
from mirror.store.backup import snapshot
from mirror.store.engine import reclaim_free_pages, schema_transaction, sqlite_path
from mirror.store.models import metadata

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


def head_revision() -> str | None:
    """The newest revision the shipped scripts know."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_current(engine: Engine) -> None:
    """Refuse to read or serve a database that is missing, foreign, or at another schema."""
    current = current_revision(engine)
    head = head_revision()
    if current is None:
        raise MirrorError(f"no mirror at {_shown(engine)}; create one with `wandb-mirror init`")
    if current != head:
        raise MirrorError(
            f"the mirror at {_shown(engine)} is at schema {current}, this wandb-mirror needs "
            f"{head}; run `wandb-mirror db upgrade`"
        )


def _shown(engine: Engine) -> str:
    path = sqlite_path(str(engine.url))
    return str(path) if path is not None else engine.url.render_as_string(hide_password=True)


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
        current = current_revision(engine)
        if current == target:
            return None
        tables = inspect(engine).get_table_names()
        if current is None and tables:
            raise MirrorError(
                f"{_shown(engine)} holds other tables ({', '.join(tables[:3])}) and is not a "
                "wandb-mirror database; choose another --db"
            )
        taken = None
        path = sqlite_path(str(engine.url))
        if path is not None and tables:
            taken = snapshot(engine, path.parent / "snapshots", label=f"pre-upgrade-{current}")
        cfg = _config()
        with schema_transaction(engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        if tables:
            reclaim_free_pages(engine)
        return taken


def schema_differences(engine: Engine) -> list[object]:
    """What the models declare that the database does not have, or the other way round."""
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))
