"""A mirror the tests point a command at, whichever database holds it: an SQLite file's path or
a PostgreSQL URL (what the ``database`` fixture gives). The sync, daemon and push tests ask the
same questions of both, so the answers that depend on the database live here.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from mirror.store.engine import make_engine

Database = str | os.PathLike[str]


def is_postgres(database: Database) -> bool:
    """Whether ``database`` is a PostgreSQL URL (else an SQLite file)."""
    text = os.fspath(database)
    return "://" in text and make_url(text).get_backend_name() == "postgresql"


def tables(database: Database) -> set[str]:
    """The tables of a mirror: none for a file never created, or a database never migrated."""
    if not is_postgres(database) and not Path(database).exists():
        return set()
    engine = make_engine(database, create=False)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def exists(database: Database) -> bool:
    """Whether a command made the mirror: the file on SQLite, the schema on PostgreSQL (where
    the database itself is made by the fixture, before any command runs)."""
    if not is_postgres(database):
        return Path(database).exists()
    try:
        return "alembic_version" in tables(database)
    except OperationalError:
        return False


def lock_file(database: Database) -> Path | None:
    """The writer lock file beside an SQLite mirror; ``None`` on PostgreSQL (an advisory lock)."""
    if is_postgres(database):
        return None
    path = Path(database)
    return path.with_name(path.name + ".writer.lock")
