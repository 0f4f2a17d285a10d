"""What resolvers share during one request: the database snapshot, caches, the paging fault,
where parquet exports live and which base URL their links start with, and the request's budget
(time and response size, see ``mirror.serve.limits``)."""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLResolveInfo
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from mirror.errors import ReadOnlyRoleError, database_reason, permission_denied
from mirror.serve.chunk_cache import ChunkCache
from mirror.serve.jsonout import RawJSON
from mirror.serve.limits import PROGRESS_STEPS, Budget, Limits
from mirror.serve.parquet_export import ParquetExports
from mirror.store.engine import read_transaction, write_transaction
from mirror.store.fields import dumps

Resolver = Callable[..., Any]
#: how long stopping the server waits for PostgreSQL to confirm a statement's cancellation
CANCEL_TIMEOUT_S = 2.0


@dataclass
class RequestContext:
    """Per-request state; the read transaction opens on first use and closes with the request.

    One snapshot per request keeps a page of runs and its ``runCount`` consistent with each
    other while a sync writes. Every connection the request uses is bound to its budget, so a
    statement still running at the deadline is interrupted.
    """

    engine: Engine
    chunks: ChunkCache
    page_repeat: int = 0
    exports: ParquetExports | None = None  # None: no parquet exports (parquetUrls stay [])
    base_url: str = ""  # scheme://host[:port] as the client addressed the server
    role: str = "upstream"  # "mirror": writes become outbox edits (mirror.serve.mutations)
    budget: Budget = field(default_factory=lambda: Budget(Limits()))
    cache: dict[Any, Any] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack)
    _conn: Connection | None = None

    @property
    def limits(self) -> Limits:
        """The server's limits, as the request's budget holds them."""
        return self.budget.limits

    def conn(self) -> Connection:
        """The request's read connection (a consistent snapshot)."""
        if self._conn is None:
            self.budget.check()
            conn = self._stack.enter_context(read_transaction(self.engine))
            self._stack.enter_context(_bounded(conn, self.budget))
            self._conn = conn
        return self._conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (the lock taken up front), bound to the request's budget.

        A database role that may only read is refused as the client's error, with one line
        saying the server needs the writer role, rather than as an internal error: that is a
        deployment choice (``serve`` over a read-only role), not a bug.
        """
        self.budget.check()
        try:
            with write_transaction(self.engine) as conn, _bounded(conn, self.budget):
                yield conn
        except DBAPIError as exc:
            if permission_denied(exc):
                raise ReadOnlyRoleError(
                    f"this server cannot write: {database_reason(exc)}"
                ) from None
            raise

    def end_read(self) -> None:
        """Close the snapshot, so that a write and the reads after it see fresh data."""
        self._stack.close()
        self._stack = ExitStack()
        self._conn = None

    def close(self) -> None:
        """Release the connection at the end of the request."""
        self.end_read()


@contextmanager
def _bounded(conn: Connection, budget: Budget) -> Iterator[None]:
    """Interrupt the connection's statements once ``budget`` runs out.

    SQLite checks a progress handler every few thousand virtual-machine steps (the statement
    then fails with "interrupted"); PostgreSQL gets the time left as ``statement_timeout`` for
    this transaction, rounded up so that the statement never ends before the budget says it is
    out of time (the error is then reported as the time limit), and a cancel request should the
    server stop. The handler is removed before the connection goes back to the pool.
    """
    raw = conn.connection.dbapi_connection
    if isinstance(raw, sqlite3.Connection):
        raw.set_progress_handler(budget.progress, PROGRESS_STEPS)
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)
        return
    if conn.dialect.name != "postgresql":
        yield
        return
    milliseconds = max(math.ceil(budget.remaining() * 1000), 1)
    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
    driver = getattr(raw, "driver_connection", raw)
    if hasattr(driver, "cancel_safe"):  # psycopg 3.2+: bounded, where cancel() may hang
        cancel = functools.partial(driver.cancel_safe, timeout=CANCEL_TIMEOUT_S)
    else:
        cancel = driver.cancel
    remove = budget.on_cancel(cancel)
    try:
        yield
    finally:
        remove()


def text_size(value: Any) -> int:
    """The response bytes of a text field (characters: near enough, and cheap)."""
    return len(value) if isinstance(value, str) else 0


def json_size(value: Any) -> int:
    """The response bytes of a JSON value (stored JSON text counts as its length)."""
    if isinstance(value, RawJSON):
        return len(value.text)
    return len(dumps(value)) if value is not None else 0


def sized(resolver: Resolver, size: Callable[[Any], int]) -> Resolver:
    """``resolver``'s answers counted against the response size: for the per-run fields that
    only hand out stored text, where a time check per field would cost more than it saves
    (the page they belong to is bounded)."""

    @functools.wraps(resolver)
    def run(root: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        value = resolver(root, info, **args)
        info.context.budget.charge(size(value))
        return value

    return run


def guarded(resolver: Resolver, size: Callable[[Any], int] | None = None) -> Resolver:
    """``resolver`` within the request's budget: refused once out of time, its answer counted
    against the response size (``size``), and a statement the budget interrupted reported as
    the time limit rather than as a database error.

    Only resolvers that query the database or hand out large values are wrapped: wrapping all of
    them (a graphql-core middleware) costs a fifth of a 1,000-run page.
    """

    @functools.wraps(resolver)
    def run(root: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        budget: Budget = info.context.budget
        budget.check()
        try:
            value = resolver(root, info, **args)
        except SQLAlchemyError:
            budget.check()
            raise
        if size is not None:
            budget.charge(size(value))
        return value

    return run
