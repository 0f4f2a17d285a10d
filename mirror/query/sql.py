"""Filter trees (``mirror.query.filters``) compiled to SQLAlchemy Core over the field index.

A leaf becomes ``runs.id IN (SELECT run_id FROM run_fields WHERE key_id = <path's id> AND ...)``,
which the ``(key_id, kind, num)`` and ``(key_id, kind, txt)`` indexes answer directly; a key id is
a scalar subquery on ``field_keys``, so a path the project has never seen matches as missing.
Negations are ``NOT IN`` of the positive test, which is MongoDB's meaning for missing fields and
for arrays (``$ne: "a"`` excludes runs whose tags contain "a"). Run attributes are compared on
their ``runs`` columns, null-safely, since the document holds exactly those values.

Values are always bound parameters; key paths too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    RowMapping,
    Select,
    and_,
    case,
    false,
    func,
    intersect,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.elements import KeyedColumnElement

from mirror.query.filters import And, Compare, Exists, In, Node, Not, Or, Order, Regex, Size
from mirror.store.fields import MAX_INDEXED_ARRAY, RUN_ATTRIBUTES, Kind, canonical, typed
from mirror.store.models import field_keys, run_fields, runs
from mirror.store.read import iter_runs

_OPS = {
    "eq": lambda c, v: c == v,
    "gt": lambda c, v: c > v,
    "gte": lambda c, v: c >= v,
    "lt": lambda c, v: c < v,
    "lte": lambda c, v: c <= v,
}


def runs_query(project_id: int, node: Node, order: Order) -> Select:
    """All ``runs`` columns of the project's live runs matching ``node``, in ``order``, ties by
    run id ascending, so that pages taken with ``limit``/``offset`` never overlap or skip."""
    compiler = _Compiler(project_id)
    query = select(runs).where(*compiler.scope(), compiler.where(node))
    if order.path in RUN_ATTRIBUTES:
        return query.order_by(*_column_order(order), runs.c.name)
    source, keys = compiler.order(order)
    return query.select_from(source).order_by(*keys, runs.c.name)


def ordered_ids(query: Select) -> Select:
    """The run ids of a :func:`runs_query`, in its order: what is sorted is ids, not rows.

    Sorting whole ``runs`` rows would drag every matching run's config and summary JSON
    (kilobytes each) through the sorter.
    """
    return query.with_only_columns(runs.c.id)


def fetch_page(conn: Connection, query: Select, offset: int, limit: int) -> list[RowMapping]:
    """One page of a :func:`runs_query`: ordered and cut on ids, then rows by primary key."""
    ids = conn.execute(ordered_ids(query).offset(offset).limit(limit)).scalars().all()
    return list(iter_runs(conn, ids))


def count_query(project_id: int, node: Node) -> Select:
    """One statement counting the project's live runs matching ``node``."""
    compiler = _Compiler(project_id)
    return select(func.count()).select_from(runs).where(*compiler.scope(), compiler.where(node))


def _column_order(order: Order) -> list[ColumnElement[Any]]:
    """Run attributes are text or missing: missing (NULL) first ascending, last descending."""
    column = runs.c[RUN_ATTRIBUTES[order.path]]
    if not column.nullable:
        return [column.desc() if order.descending else column.asc()]
    if order.descending:
        return [column.desc().nulls_last()]
    return [column.asc().nulls_first()]


class _Compiler:
    """Compiles one tree for one project (key ids are looked up within the project)."""

    def __init__(self, project_id: int) -> None:
        self.project_id = project_id

    def scope(self) -> list[ColumnElement[bool]]:
        return [runs.c.project_id == self.project_id, runs.c.deleted_at.is_(None)]

    def where(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, And):
            return self._and(node) if node.children else true()
        if isinstance(node, Or):
            return or_(*map(self.where, node.children)) if node.children else false()
        if isinstance(node, Not):
            return not_(self.where(node.child))
        if node.path in RUN_ATTRIBUTES:
            return _column_leaf(runs.c[RUN_ATTRIBUTES[node.path]], node)
        return self._field_leaf(node)

    def key_id(self, path: str) -> ColumnElement[Any]:
        """The path's key id in this project (NULL, matching no row, when never seen)."""
        return (
            select(field_keys.c.id)
            .where(field_keys.c.project_id == self.project_id, field_keys.c.path == path)
            .scalar_subquery()
        )

    def _and(self, node: And) -> ColumnElement[bool]:
        """Field leaves under one AND become one ``IN`` of their intersected id sets.

        ``id IN (a) AND id IN (b)`` makes SQLite walk the larger set and look each run up;
        ``id IN (a INTERSECT b)`` lets the covering indexes answer both and visits only the runs
        that meet every leaf.
        """
        sets: list[Select] = []
        others: list[ColumnElement[bool]] = []
        for child in node.children:
            rows = self._rows_of(child)
            if rows is None:
                others.append(self.where(child))
            else:
                sets.append(rows)
        if len(sets) > 1:
            others.append(runs.c.id.in_(intersect(*sets)))
        elif sets:
            others.append(runs.c.id.in_(sets[0]))
        return and_(*others)

    def rows(self, path: str, *conds: ColumnElement[bool]) -> Select:
        """The ids of runs with an index row at ``path`` (a value, or an array element there)
        meeting ``conds``."""
        return select(run_fields.c.run_id).where(run_fields.c.key_id == self.key_id(path), *conds)

    def has(self, path: str, *conds: ColumnElement[bool]) -> ColumnElement[bool]:
        """Some index row at ``path`` meets ``conds``."""
        return runs.c.id.in_(self.rows(path, *conds))

    def _rows_of(self, node: Node) -> Select | None:
        """The id set of a positive single-path field leaf; ``None`` for anything else."""
        path = getattr(node, "path", None)  # And/Or/Not have none
        if path is None or path in RUN_ATTRIBUTES:
            return None
        if isinstance(node, Compare) and node.value is not None:
            return self.rows(node.path, *_value_test(node.op, node.value))
        if isinstance(node, Exists):
            return self.rows(node.path)
        if isinstance(node, Regex):
            return self.rows(node.path, *_regex_test(node.pattern))
        if isinstance(node, Size):
            kind = run_fields.c.kind == int(Kind.ARRAY)
            return self.rows(node.path, run_fields.c.elem == 0, kind, run_fields.c.num == node.size)
        return None

    def _field_leaf(self, node: Node) -> ColumnElement[bool]:
        rows = self._rows_of(node)
        if rows is not None:
            return runs.c.id.in_(rows)
        if isinstance(node, In):
            return self._in(node)
        assert isinstance(node, Compare) and node.value is None
        return self._null(node.path)

    def _null(self, path: str) -> ColumnElement[bool]:
        """``{path: null}``: missing, or null (an array's null element too)."""
        return or_(not_(self.has(path)), self.has(path, run_fields.c.kind == int(Kind.NULL)))

    def _in(self, node: In) -> ColumnElement[bool]:
        """One indexed ``IN`` per type bracket among the values, OR-ed."""
        groups: dict[tuple[int, str], list[Any]] = {}
        tests: list[ColumnElement[bool]] = []
        for value in node.values:
            if value is None:
                tests.append(self._null(node.path))
                continue
            kind, num, txt = typed(value)
            if kind in (Kind.NUMBER, Kind.BOOL) and num is None:
                tests.append(self.has(node.path, *_value_test("eq", value)))
            elif kind in (Kind.NUMBER, Kind.BOOL):
                groups.setdefault((int(kind), "num"), []).append(num)
            else:
                groups.setdefault((int(kind), "txt"), []).append(txt)
        for (kind, column), values in groups.items():
            member = run_fields.c[column].in_(values)
            tests.append(self.has(node.path, run_fields.c.kind == kind, member))
        return or_(*tests) if tests else false()

    def order(self, order: Order) -> tuple[Any, list[ColumnElement[Any]]]:
        """The runs joined to their value at the order path, and the sort keys.

        MongoDB sorts by type bracket, then value; an array sorts by its smallest element
        ascending and its largest descending, an empty array before null. Only array values
        (and, on paths below a nested key, values reached through arrays) need the per-run
        element lookup; everything else is the one joined row.
        """
        path = order.path
        found = run_fields.alias("order_value")
        source = runs.outerjoin(
            found,
            and_(
                found.c.run_id == runs.c.id,
                found.c.key_id == self.key_id(path),
                found.c.elem == 0,
            ),
        )
        pick = self._element_pick(path, order.descending)
        is_array = found.c.kind == int(Kind.ARRAY)
        expanded = and_(is_array, found.c.num > 0, found.c.num <= MAX_INDEXED_ARRAY)
        missing = found.c.kind.is_(None)
        deep = path.count(".") >= 2
        bracket = case(
            (and_(is_array, found.c.num == 0), 0),
            (expanded, pick("kind")),
            (missing, func.coalesce(pick("kind"), int(Kind.NULL)) if deep else int(Kind.NULL)),
            else_=found.c.kind,
        )
        keys = [bracket]
        for column in ("num", "txt"):
            from_elements = pick(column)
            whens = [(expanded, from_elements), (missing, from_elements if deep else None)]
            keys.append(case(*whens, else_=found.c[column]))
        if order.descending:
            return source, [
                keys[0].desc(),
                keys[1].desc().nulls_last(),
                keys[2].desc().nulls_last(),
            ]
        return source, [keys[0].asc(), keys[1].asc().nulls_first(), keys[2].asc().nulls_first()]

    def _element_pick(self, path: str, descending: bool) -> Callable[[str], ColumnElement[Any]]:
        """A builder of correlated lookups of one column of a run's smallest (or largest) element
        row at ``path``; all three lookups order alike, so they read the same row."""
        element = run_fields.alias("order_element")
        if descending:
            ranking = [
                element.c.kind.desc(),
                element.c.num.desc().nulls_last(),
                element.c.txt.desc().nulls_last(),
            ]
        else:
            ranking = [
                element.c.kind.asc(),
                element.c.num.asc().nulls_first(),
                element.c.txt.asc().nulls_first(),
            ]
        key_id = self.key_id(path)

        def pick(column: str) -> ColumnElement[Any]:
            return (
                select(element.c[column])
                .where(
                    element.c.run_id == runs.c.id, element.c.key_id == key_id, element.c.elem == 1
                )
                .order_by(*ranking)
                .limit(1)
                .scalar_subquery()
            )

        return pick


def _value_test(op: str, value: Any) -> list[ColumnElement[bool]]:
    """Index-row conditions for ``<row> op value`` within ``value``'s type bracket (not null)."""
    kind, num, txt = typed(value)
    test = [run_fields.c.kind == int(kind)]
    if kind in (Kind.NUMBER, Kind.BOOL):
        if num is None:  # NaN: equal to itself only (the parser turned NaN bounds into eq)
            test.append(run_fields.c.num.is_(None))
        else:
            test.append(_OPS[op](run_fields.c.num, num))
    elif kind in (Kind.ARRAY, Kind.OBJECT):
        test.append(run_fields.c.txt == canonical(value))
    else:
        test.append(_OPS[op](run_fields.c.txt, txt))
    return test


def _regex_test(pattern: str) -> list[ColumnElement[bool]]:
    return [run_fields.c.kind == int(Kind.STRING), run_fields.c.txt.regexp_match(pattern)]


def _column_leaf(column: KeyedColumnElement[Any], node: Node) -> ColumnElement[bool]:
    """A leaf on a text attribute column; never NULL, so that ``NOT`` keeps MongoDB's meaning."""
    if isinstance(node, Exists):
        return column.is_not(None)
    if isinstance(node, Compare) and node.value is None:
        return column.is_(None)
    if isinstance(node, Compare):
        if not isinstance(node.value, str):
            return false()
        test = _OPS[node.op](column, node.value)
    elif isinstance(node, In):
        texts = [v for v in node.values if isinstance(v, str)]
        test = column.in_(texts) if texts else false()
        if None in node.values:
            return or_(column.is_(None), _present(column, test))
    elif isinstance(node, Regex):
        test = column.regexp_match(node.pattern)
    else:
        return false()
    return _present(column, test)


def _present(column: KeyedColumnElement[Any], test: ColumnElement[bool]) -> ColumnElement[bool]:
    return and_(column.is_not(None), test) if column.nullable else test
