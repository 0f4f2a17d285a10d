"""Shared fixtures: real SQLite files in a temporary directory, never ``:memory:``, and a real
PostgreSQL server started for the session (``tests/pg_server.py``).

``database`` is the fixture a test takes to run on both: the test runs once per database with
a fresh, migrated mirror, given as what ``--db`` and ``make_engine`` accept (a file path or a
PostgreSQL URL). The PostgreSQL runs carry the ``postgresql`` mark.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mirror.store import migrate
from mirror.store.engine import make_engine


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh, migrated SQLite mirror file."""
    path = tmp_path / "mirror.db"
    engine = make_engine(path)
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """This worker's PostgreSQL server, or a skip saying how to get one."""
    from pg_server import SKIP_REASON, PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


BOTH = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


@pytest.fixture(params=BOTH)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated mirror on each database: an SQLite file's path or a PostgreSQL URL."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_server").new_database()
    path = tmp_path / "mirror.db"
    engine = make_engine(path)
    migrate.upgrade(engine)
    engine.dispose()
    return str(path)


@pytest.fixture(scope="module", params=BOTH)
def module_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """``database`` shared by a module's tests (for a module that loads one store and only
    reads it): loading once per database, not once per test."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_server").new_database()
    path = tmp_path_factory.mktemp("module-db") / "mirror.db"
    engine = make_engine(path)
    migrate.upgrade(engine)
    engine.dispose()
    return str(path)


@pytest.fixture
def db_engine(database: str) -> Iterator[Engine]:
    """An engine on ``database`` (each database in turn)."""
    eng = make_engine(database)
    yield eng
    eng.dispose()


@pytest.fixture(params=BOTH)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a mirror can be made on each database: a path with no file yet, or an empty
    PostgreSQL database."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_server").new_database(migrated=False)
    return str(tmp_path / "mirror.db")


@pytest.fixture
def engine(db_path: Path):
    """An engine on the fresh mirror file."""
    eng = make_engine(db_path)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def served_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded mirror file the read-only server tests share (see tests/server_process.py)."""
    from server_process import seed_database

    return seed_database(tmp_path_factory.mktemp("served") / "mirror.db")


@pytest.fixture(scope="session")
def served(served_db: Path, tmp_path_factory: pytest.TempPathFactory):
    """``python -m mirror.serve`` over ``served_db``, started once for the session."""
    from server_process import ServerProcess

    log = tmp_path_factory.mktemp("served-log") / "serve.log"
    with ServerProcess(served_db, log, args=("--threads", "4")) as server:
        yield server


@pytest.fixture(scope="session")
def dashboard_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded mirror the dashboard tests share (see tests/dashboard_data.py)."""
    from dashboard_data import seed_dashboard

    return seed_dashboard(tmp_path_factory.mktemp("dashboard") / "mirror.db")
