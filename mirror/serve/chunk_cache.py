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

from sqlalchemy import Connection

from mirror.store.history import history_keys_of
from mirror.store.read import ChunkSpan, chunk_spans, load_chunk, window

#: chunks kept; a 10,000-row chunk of ~20 keys is ~10 MB of Python objects
CAPACITY = 6
#: computed ``historyKeys`` kept (a few KB each)
KEYS_CAPACITY = 4096


class ChunkCache:
    """An LRU of decoded chunk rows for one database, shared by the server's threads."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[ChunkSpan, list[dict[str, Any]]] = OrderedDict()
        self._keys: OrderedDict[tuple[ChunkSpan, ...], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def history_keys(self, conn: Connection, run_id: int) -> dict[str, Any]:
        """``historyKeys`` computed from a run's rows, once per state of its history.

        Only runs W&B never described need it (an import that lacked the field); keyed by the
        run's chunk spans, a listing that asks for it again costs one small query, not a decode.
        """
        spans = tuple(chunk_spans(conn, run_id, "history"))
        with self._lock:
            found = self._keys.get(spans)
        if found is None:
            rows = (
                row for span in spans for row in window(self._decoded(conn, span), span.first_step)
            )
            found = history_keys_of(rows)
            with self._lock:
                self._keys[spans] = found
                while len(self._keys) > KEYS_CAPACITY:
                    self._keys.popitem(last=False)
        return found

    def _decoded(self, conn: Connection, span: ChunkSpan) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._rows.get(span)
            if rows is not None:
                self._rows.move_to_end(span)
                return rows
        rows = load_chunk(conn, span).rows()
        with self._lock:
            self._rows[span] = rows
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
        for span in chunk_spans(conn, run_id, stream, min_step, max_step):
            yield from window(self._decoded(conn, span), span.first_step, min_step, max_step)
