"""What resolvers share during one request: the database snapshot, caches, the paging fault,
and where parquet exports live and which base URL their links start with."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from mirror.serve.chunk_cache import ChunkCache
from mirror.serve.parquet_export import ParquetExports
from mirror.store.engine import read_transaction


@dataclass
class RequestContext:
    """Per-request state; the read transaction opens on first use and closes with the request.

    One snapshot per request keeps a page of runs and its ``runCount`` consistent with each
    other while a sync writes.
    """

    engine: Engine
    chunks: ChunkCache
    page_repeat: int = 0
    exports: ParquetExports | None = None  # None: no parquet exports (parquetUrls stay [])
    base_url: str = ""  # scheme://host[:port] as the client addressed the server
    cache: dict[Any, Any] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack)
    _conn: Connection | None = None

    def conn(self) -> Connection:
        """The request's read connection (a consistent snapshot)."""
        if self._conn is None:
            self._conn = self._stack.enter_context(read_transaction(self.engine))
        return self._conn

    def end_read(self) -> None:
        """Close the snapshot, so that a write and the reads after it see fresh data."""
        self._stack.close()
        self._stack = ExitStack()
        self._conn = None

    def close(self) -> None:
        """Release the connection at the end of the request."""
        self.end_read()
