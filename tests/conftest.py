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
