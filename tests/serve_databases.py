"""The serve tests' seeded mirrors on both databases: a pytest plugin the serve test modules load
with ``pytest_plugins = ["serve_databases"]``.

``served_db``, ``served`` and ``dashboard_db`` (tests/conftest.py) are SQLite files; the
fixtures here give each a PostgreSQL twin with the same data, seeded once per session (per
pytest worker) and only read by the tests, and a fixture parametrized over both for the tests
to take. A plugin rather than each test module importing the fixtures: an imported
session-scoped fixture is set up once per module that imports it, and seeding is what costs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server_process import BOTH, ServerProcess, seed_database
from sqlalchemy import Engine

from mirror.store.engine import make_engine


@pytest.fixture(scope="session")
def served_pg_db(pg_server) -> str:
    """``served_db``'s data in a PostgreSQL database of its own, as a URL."""
    return str(seed_database(pg_server.new_database()))


@pytest.fixture(scope="session", params=BOTH)
def served_database(request: pytest.FixtureRequest) -> str:
    """The read-only serve tests' seeded mirror on each database (a path or a URL)."""
    if request.param == "postgresql":
        return request.getfixturevalue("served_pg_db")
    return str(request.getfixturevalue("served_db"))


@pytest.fixture(scope="session")
def served_pg(served_pg_db: str, tmp_path_factory: pytest.TempPathFactory):
    """``python -m mirror.serve`` over ``served_pg_db``, started once for the session."""
    log = tmp_path_factory.mktemp("served-pg-log") / "serve.log"
    with ServerProcess(served_pg_db, log, args=("--threads", "4")) as server:
        yield server


@pytest.fixture(scope="session")
def served_on(served_database: str, request: pytest.FixtureRequest) -> ServerProcess:
    """The shared server over ``served_database``: ``served`` or ``served_pg``."""
    name = "served_pg" if "://" in served_database else "served"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def dashboard_pg_db(pg_server) -> str:
    """``dashboard_db``'s data in a PostgreSQL database of its own, as a URL."""
    from dashboard_data import seed_dashboard

    return str(seed_dashboard(pg_server.new_database()))


@pytest.fixture(scope="session", params=BOTH)
def dashboard_database(request: pytest.FixtureRequest) -> str:
    """The dashboard tests' seeded mirror on each database (a path or a URL)."""
    if request.param == "postgresql":
        return request.getfixturevalue("dashboard_pg_db")
    return str(request.getfixturevalue("dashboard_db"))


@pytest.fixture
def database_engine(database: str) -> Iterator[Engine]:
    """An engine on a fresh, migrated mirror on each database (``database``)."""
    engine = make_engine(database)
    yield engine
    engine.dispose()
