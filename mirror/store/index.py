"""Writing the field index (``run_fields``): a run's document flattened into typed rows.

Every writer of runs ends here (upserts, edits, imports), with the run's tags, config and
summary as the text just stored, so the index always says what the ``runs`` row says. Rows go in
as one prepared ``executemany`` per batch (``mirror.store.bulk``); ``seq`` is a row's position
in its run's list, which makes the clustered key ``(run_id, key_id, seq)`` unique.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from mirror.store.bulk import insert_rows
from mirror.store.fields import flatten, index_document
from mirror.store.models import field_keys, run_fields, runs

COLUMNS = ("run_id", "key_id", "seq", "elem", "kind", "num", "txt")
#: index rows handed to the database at once (bounded memory for a page of wide runs)
_BATCH_ROWS = 50_000
#: run ids per ``IN`` list
_IDS = 500

IndexSource = tuple[int, str | None, str | None, str | None]  # run id, tags, config, summary


class FieldKeys:
    """Ids of a project's field paths, loaded once and extended as new paths appear."""

    def __init__(self, conn: Connection, project_id: int) -> None:
        self.conn = conn
        self.project_id = project_id
        rows = conn.execute(
            select(field_keys.c.path, field_keys.c.id).where(field_keys.c.project_id == project_id)
        )
        self.ids: dict[str, int] = dict(rows.all())

    def id(self, path: str) -> int:
        found = self.ids.get(path)
        if found is None:
            found = self.conn.execute(
                insert(field_keys)
                .values(project_id=self.project_id, path=path)
                .returning(field_keys.c.id)
            ).scalar_one()
            self.ids[path] = found
        return found


def write_index(
    conn: Connection, keys: FieldKeys, sources: Iterable[IndexSource], replace: bool
) -> None:
    """Index runs from their stored texts; with ``replace``, their old rows go first."""
    sources = list(sources)
    if replace:
        ids = [source[0] for source in sources]
        for start in range(0, len(ids), _IDS):
            conn.execute(
                delete(run_fields).where(run_fields.c.run_id.in_(ids[start : start + _IDS]))
            )
    known = keys.ids
    rows: list[tuple[Any, ...]] = []
    for run_id, tags, config, summary in sources:
        flat = flatten(index_document(tags, config, summary))
        rows += [
            (run_id, known.get(path) or keys.id(path), seq, elem, kind, num, txt)
            for seq, (path, elem, kind, num, txt) in enumerate(flat)
        ]
        if len(rows) >= _BATCH_ROWS:
            _insert(conn, rows)
            rows = []
    _insert(conn, rows)


def _insert(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert index rows grouped by key, the value index's first column: each insert then lands
    beside the previous one in that B-tree, where rows in run order would land all over it
    (10-20% less time; the table itself is ordered by run, and new runs go at its end). Sorting
    by the whole index key as well saves no more than it costs in Python (an integer key sorts
    at C speed, a tuple built per row takes three times as long)."""
    rows.sort(key=_KEY_ID)
    insert_rows(conn, run_fields, COLUMNS, rows)


_KEY_ID = itemgetter(1)


def reindex(conn: Connection, project_id: int, run_ids: Sequence[int]) -> None:
    """Rebuild the index rows of some runs from their stored columns."""
    keys = FieldKeys(conn, project_id)
    c = runs.c
    for start in range(0, len(run_ids), _IDS):
        part = list(run_ids[start : start + _IDS])
        query = select(c.id, c.tags, c.config, c.summary_metrics).where(c.id.in_(part))
        write_index(conn, keys, [tuple(row) for row in conn.execute(query)], replace=True)
