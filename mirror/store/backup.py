"""Consistent copies of an SQLite mirror, taken while the daemon may be writing.

``VACUUM INTO`` reads one snapshot of the WAL database and writes a compact, self-contained file,
so a copy never mixes two states and needs no lock held across the copy.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine


def snapshot(engine: Engine, dest_dir: Path, label: str = "snapshot") -> Path:
    """Write a consistent copy of the database into ``dest_dir`` and return its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = dest_dir / f"mirror-{stamp}-{label}.db"
    raw = engine.raw_connection()  # VACUUM cannot run inside the transaction SQLAlchemy opens
    try:
        raw.driver_connection.execute("VACUUM INTO ?", (str(target),))
    finally:
        raw.close()
    return target
