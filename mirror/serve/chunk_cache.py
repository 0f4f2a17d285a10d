"""Decoded history chunks, kept for the next request.

Clients page history in windows of 1,000 steps while the store keeps 10,000 rows per chunk, so a
scan would decode each chunk ten times. A small LRU of decoded rows, keyed by everything that
changes when a chunk is rewritten (its id, step span and row count), makes each decode count.
Rows handed out are shared: callers must not mutate them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, select

from mirror.store import history as codec
from mirror.store.models import history_chunks

#: chunks kept; a 10,000-row chunk of ~20 keys is ~10 MB of Python objects
CAPACITY = 6

_Key = tuple[int, int, int, int]


class ChunkCache:
    """An LRU of decoded chunk rows for one database, shared by the server's threads."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[_Key, list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def _decoded(self, conn: Connection, key: _Key) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._rows.get(key)
            if rows is not None:
                self._rows.move_to_end(key)
                return rows
        blob = conn.execute(
            select(history_chunks.c.data).where(history_chunks.c.id == key[0])
        ).scalar_one()
        rows = codec.decode(blob).rows()
        with self._lock:
            self._rows[key] = rows
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
        return rows

    def window(
        self,
        conn: Connection,
        run_id: int,
        stream: str,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Rows with ``min_step <= step < max_step`` in step order (as ``store.read.iter_rows``)."""
        c = history_chunks.c
        query = select(c.id, c.first_step, c.last_step, c.row_count).where(
            c.run_id == run_id, c.stream == stream
        )
        if min_step is not None:
            query = query.where(c.last_step >= min_step)
        if max_step is not None:
            query = query.where(c.first_step < max_step)
        for chunk_id, first, last, count in conn.execute(query.order_by(c.first_step)).all():
            for i, row in enumerate(self._decoded(conn, (chunk_id, first, last, count))):
                step = codec.step_of(row, first + i)
                if min_step is not None and step < min_step:
                    continue
                if max_step is not None and step >= max_step:
                    continue
                yield row
