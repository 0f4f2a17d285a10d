"""Shared fixtures: real SQLite files in a temporary directory, never ``:memory:``."""

from __future__ import annotations

from pathlib import Path

import pytest

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
