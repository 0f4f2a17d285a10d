"""Decoded history chunks, kept for the next request.

Clients page history in windows of 1,000 steps while the store keeps 10,000 rows per chunk, so a
scan would decode each chunk ten times. A small LRU of decoded rows makes each decode count.
Rows handed out are shared: callers must not mutate them.

A chunk's row id, step span and row count do not name its content: SQLite hands the row id of a
deleted last row to the next insert, so a run deleted and created again with history of the same
shape gets chunks with the very same id, span and count. Each entry is therefore keyed by the
stored bytes as well: their length and the last four, which in a zlib stream are the Adler-32
checksum of the whole decoded content, read with the span in one small query.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, select

from mirror.serve.limits import checkpoint
from mirror.store.history import history_keys_of
from mirror.store.models import history_chunks
from mirror.store.read import ChunkSpan, load_chunk, window

#: chunks kept; a 10,000-row chunk of ~20 keys is ~10 MB of Python objects
CAPACITY = 6
#: computed ``historyKeys`` kept (a few KB each)
KEYS_CAPACITY = 4096


@dataclass(frozen=True)
class StoredChunk:
    """A chunk's span and a fingerprint of its stored bytes: equal only for the same content."""

    span: ChunkSpan
    length: int
    checksum: bytes


def stored_chunks(
    conn: Connection,
    run_id: int,
    stream: str,
    min_step: int | None = None,
    max_step: int | None = None,
) -> list[StoredChunk]:
    """The chunks overlapping ``[min_step, max_step)`` in step order, fingerprinted."""
    c = history_chunks.c
    conds = [c.run_id == run_id, c.stream == stream]
    if min_step is not None:
        conds.append(c.last_step >= min_step)
    if max_step is not None:
        conds.append(c.first_step < max_step)
    size = func.length(c.data)
    query = select(
        c.id, c.first_step, c.last_step, c.row_count, size, func.substr(c.data, size - 3)
    ).where(and_(*conds))
    return [
        StoredChunk(ChunkSpan(*row[:4]), row[4], bytes(row[5]))
        for row in conn.execute(query.order_by(c.first_step))
    ]


class ChunkCache:
    """An LRU of decoded chunk rows for one database, shared by the server's threads."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[StoredChunk, list[dict[str, Any]]] = OrderedDict()
        self._keys: OrderedDict[tuple[StoredChunk, ...], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def history_keys(self, conn: Connection, run_id: int) -> dict[str, Any]:
        """``historyKeys`` computed from a run's rows, once per state of its history.

        Only runs W&B never described need it (an import that lacked the field); keyed by the
        run's chunks, a listing that asks for it again costs one small query, not a decode.
        """
        chunks = tuple(stored_chunks(conn, run_id, "history"))
        with self._lock:
            found = self._keys.get(chunks)
        if found is None:
            rows = (
                row
                for chunk in chunks
                for row in window(self._decoded(conn, chunk), chunk.span.first_step)
            )
            found = history_keys_of(rows)
            with self._lock:
                self._keys[chunks] = found
                while len(self._keys) > KEYS_CAPACITY:
                    self._keys.popitem(last=False)
        return found

    def _decoded(self, conn: Connection, chunk: StoredChunk) -> list[dict[str, Any]]:
        checkpoint()  # decoding is the Python work a request's time limit must reach
        with self._lock:
            rows = self._rows.get(chunk)
            if rows is not None:
                self._rows.move_to_end(chunk)
                return rows
        rows = load_chunk(conn, chunk.span).rows()
        with self._lock:
            self._rows[chunk] = rows
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
        for chunk in stored_chunks(conn, run_id, stream, min_step, max_step):
            yield from window(self._decoded(conn, chunk), chunk.span.first_step, min_step, max_step)

    def count(
        self,
        conn: Connection,
        run_id: int,
        stream: str,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> int:
        """How many rows :meth:`window` yields, from the chunk index: only the chunks the window
        cuts through are decoded (at most two), the others count by their row count."""
        total = 0
        for chunk in stored_chunks(conn, run_id, stream, min_step, max_step):
            span = chunk.span
            after_start = min_step is None or span.first_step >= min_step
            before_end = max_step is None or span.last_step < max_step
            if after_start and before_end:
                total += span.row_count
            else:
                rows = window(self._decoded(conn, chunk), span.first_step, min_step, max_step)
                total += sum(1 for _ in rows)
        return total
