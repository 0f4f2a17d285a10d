"""Comparing a mirror with its upstream, field by field and row by row.

Both databases are read through the store (``runs`` rows, every history and events row), so a
difference names the run and the field; NaN equals NaN, and an int equals the same float (W&B's
parquet exports cannot tell ``1`` from ``1.0`` in a column that holds both).
"""

from __future__ import annotations

import math
from typing import Any

from mirror_db import Database
from sqlalchemy import select

from mirror.store.engine import make_engine
from mirror.store.fields import loads
from mirror.store.models import projects, runs
from mirror.store.read import iter_rows

#: columns that describe the local copy, not the run
LOCAL_COLUMNS = {"id", "project_id", "synced_at"}
JSON_COLUMNS = {"config", "summary_metrics", "system_metrics", "history_keys", "tags"}


def same(a: Any, b: Any) -> bool:
    """Equal as W&B values: NaN equals NaN, containers compared deeply."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) in (type(b), int, float) and type(b) in (type(a), int, float)


def snapshot(db: Database, entity: str, project: str) -> dict[str, dict[str, Any]]:
    """Run name → its live columns (JSON parsed) and its history and events rows."""
    engine = make_engine(db, create=False)
    try:
        with engine.connect() as conn:
            pid = conn.execute(
                select(projects.c.id).where(projects.c.entity == entity, projects.c.name == project)
            ).scalar()
            if pid is None:
                return {}
            out = {}
            query = select(runs).where(runs.c.project_id == pid, runs.c.deleted_at.is_(None))
            for row in conn.execute(query).mappings():
                record = {
                    k: (loads(v) if k in JSON_COLUMNS and v is not None else v)
                    for k, v in row.items()
                    if k not in LOCAL_COLUMNS and k != "deleted_at"
                }
                record["history"] = list(iter_rows(conn, row["id"], "history"))
                record["events"] = list(iter_rows(conn, row["id"], "events"))
                out[row["name"]] = record
            return out
    finally:
        engine.dispose()


def differences(
    upstream: Database, mirror: Database, entity: str, project: str, limit: int = 10
) -> list[str]:
    """Where the mirror differs from the upstream (empty: an exact mirror)."""
    want = snapshot(upstream, entity, project)
    got = snapshot(mirror, entity, project)
    found = []
    for name in sorted(want.keys() ^ got.keys()):
        found.append(f"{name}: {'missing from' if name in want else 'extra in'} the mirror")
    for name in sorted(want.keys() & got.keys()):
        for key in want[name]:
            if not same(want[name][key], got[name].get(key)):
                a, b = want[name][key], got[name].get(key)
                if key in ("history", "events"):
                    detail = f"{len(a)} rows upstream, {len(b)} in the mirror"
                    for i, (x, y) in enumerate(zip(a, b, strict=False)):
                        if not same(x, y):
                            detail += f"; first difference at row {i}: {x!r} vs {y!r}"
                            break
                else:
                    detail = f"{str(a)[:120]!r} vs {str(b)[:120]!r}"
                found.append(f"{name}.{key}: {detail}")
        if len(found) >= limit:
            break
    return found[:limit]
