"""Bulk writes as prepared ``executemany`` batches, at the database's own insert speed.

SQLAlchemy's ``conn.execute(insert(table), [dict, ...])`` builds, checks and processes one
parameter dictionary per row in Python, which costs more than SQLite spends storing the row.
These helpers compile the Core statement once per dialect and table, apply the bind processors
of the columns whose type decides what is stored (a ``PackedText`` column is still packed), and
hand the driver tuples in one ``executemany``: bound parameters throughout, no per-row round
trip, and nothing dialect-specific beyond what the compiled statement already is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

Row = Sequence[Any]
_Processor = Callable[[Any], Any] | None


def insert_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Row]
) -> None:
    """Insert ``rows``, each a sequence of values for ``columns`` in that order."""
    if rows:
        sql, order, processors = _insert(conn.dialect, table, tuple(columns))
        conn.exec_driver_sql(sql, _parameters(conn.dialect, rows, order, processors))


def update_rows(
    conn: Connection, table: Table, key: str, columns: Sequence[str], rows: Sequence[Row]
) -> None:
    """``UPDATE table SET columns WHERE key = ...`` for ``rows`` of ``(key value, *values)``."""
    if rows:
        sql, order, processors = _update(conn.dialect, table, key, tuple(columns))
        conn.exec_driver_sql(sql, _parameters(conn.dialect, rows, order, processors))


def _parameters(
    dialect: Dialect, rows: Sequence[Row], order: list[int], processors: list[_Processor]
) -> list[Any]:
    """The driver's parameters: tuples in the statement's order, or dicts for named styles."""
    if any(processors):
        rows = [
            tuple(v if p is None else p(v) for v, p in zip(row, processors, strict=True))
            for row in rows
        ]
    if not dialect.positional:
        return [{f"p{i}": v for i, v in enumerate(row)} for row in rows]
    if order != list(range(len(order))):
        return [tuple(row[i] for i in order) for row in rows]
    return rows if isinstance(rows, list) else list(rows)


def _processors(dialect: Dialect, table: Table, columns: Sequence[str]) -> list[_Processor]:
    """The bind processors of the columns whose type changes what is stored (``TypeDecorator``
    types such as ``PackedText``). Callers give other values as the driver takes them (floats
    as floats, ...), so the built-in types' coercions, one Python call per value, are skipped."""
    types = [table.c[name].type for name in columns]
    return [t.bind_processor(dialect) if isinstance(t, TypeDecorator) else None for t in types]


@lru_cache(maxsize=64)
def _insert(
    dialect: Dialect, table: Table, columns: tuple[str, ...]
) -> tuple[str, list[int], list[_Processor]]:
    values = {name: bindparam(f"p{i}") for i, name in enumerate(columns)}
    compiled = insert(table).values(values).compile(dialect=dialect)
    return compiled.string, _order(compiled), _processors(dialect, table, columns)


@lru_cache(maxsize=64)
def _update(
    dialect: Dialect, table: Table, key: str, columns: tuple[str, ...]
) -> tuple[str, list[int], list[_Processor]]:
    values = {name: bindparam(f"p{i + 1}") for i, name in enumerate(columns)}
    statement = update(table).where(table.c[key] == bindparam("p0")).values(values)
    compiled = statement.compile(dialect=dialect)
    processors = [None, *_processors(dialect, table, columns)]
    return compiled.string, _order(compiled), processors


def _order(compiled: Any) -> list[int]:
    """Where each of the statement's parameters sits in a row (``p<i>`` is the row's ``i``).

    A parameter of another name (a column default the statement added) fails here: callers
    give every column that has one.
    """
    names = compiled.positiontup if compiled.positional else sorted(compiled.binds)
    return [int(name.removeprefix("p")) for name in names]
