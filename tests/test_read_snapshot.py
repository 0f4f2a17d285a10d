"""A read transaction is one snapshot on both databases: a page a writer commits meanwhile is
seen whole by the next reader, and not at all by one already reading."""

from __future__ import annotations

from sqlalchemy import func, select

from mirror.store.engine import make_engine, read_transaction, write_transaction
from mirror.store.models import runs
from mirror.store.upsert import upsert_runs


def _count(conn) -> int:
    return conn.execute(select(func.count()).select_from(runs)).scalar_one()


def _page(start: int) -> list[dict]:
    return [{"name": f"r{start + i}", "createdAt": "2024-01-01T00:00:00"} for i in range(25)]


def test_a_reader_keeps_its_snapshot_while_a_page_commits(database):
    engine = make_engine(database)
    try:
        with write_transaction(engine) as conn:
            upsert_runs(conn, "acme", "p", _page(0))
        with read_transaction(engine) as reader:
            first = _count(reader)
            with write_transaction(engine) as writer:
                upsert_runs(writer, "acme", "p", _page(25))
            again = _count(reader)
            names = reader.execute(select(runs.c.name)).scalars().all()
        with read_transaction(engine) as later:
            after = _count(later)
    finally:
        engine.dispose()
    assert (first, again, len(names)) == (25, 25, 25)
    assert after == 50
