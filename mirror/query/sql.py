"""Filter trees (``mirror.query.filters``) compiled to SQLAlchemy Core over the field index.

A leaf becomes ``runs.id IN (SELECT run_id FROM run_fields WHERE key_id = <path's id> AND ...)``,
which the covering ``(key_id, kind, num, txt, run_id)`` index answers directly (a test on text
pins ``num IS NULL``, true of every text row, so it is a range of that index); a key id is a
scalar subquery on ``field_keys``, so a path the project has never seen matches as missing.
Negations are ``NOT IN`` of the positive test, which is MongoDB's meaning for missing fields and
for arrays (``$ne: "a"`` excludes runs whose tags contain "a"). Run attributes are compared on
their ``runs`` columns, null-safely, since the document holds exactly those values.

Values are always bound parameters; key paths too. Only integers of the mirror's own making (the
project id, type brackets) are written into the SQL, so that a filter of 10,000 terms stays far
below SQLite's 32,766 parameters.

SQLite also bounds a statement's shape: 500 terms in a compound SELECT, an expression tree 1,000
deep, a parser that overflows at about 15 nested parentheses, and a preparation time that grows
with the square of compounds nested in compounds. Hence leaves on one path that an OR unites are
one lookup (equalities one ``IN``, bounds the loosest), equalities an AND intersects are one
grouped lookup, other id sets go ``_PIECE`` to a compound SELECT and conditions ``_PIECE`` to a
parenthesised AND/OR, and logical levels deeper than ``_LEVELS`` become common table
expressions, which the statement lists side by side instead of nesting.

``$regex`` runs through RE2 (``mirror.query.regex``): a GLOB form of the pattern answers what it
can in C, the database gathers the distinct texts left to decide, one SQLite function call
matches them all, and the index is searched for the texts that matched, so a pattern costs at
most one RE2 pass over distinct values, not a Python call per row. PostgreSQL cannot call
Python from SQL and its own regular expressions are not RE2, so there the distinct texts are
read and matched just before the statement runs, and the statement tests ``= ANY`` of those
that matched. The constructs written per database are ``mirror.store.dialect_sql``'s;
everything else is the same SQL on both, and the texts it compares are byte-ordered on both
(``mirror.store.texts``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
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
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import KeyedColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from mirror.query import regex
from mirror.query.filters import And, Compare, Exists, In, Node, Not, Or, Order, Regex, Size
from mirror.store.dialect_sql import (
    COMPARISONS,
    Matching,
    OneOf,
    PerDialect,
    TextCompare,
    const,
    use_matchers,
)
from mirror.store.fields import MAX_INDEXED_ARRAY, RUN_ATTRIBUTES, Kind, typed
from mirror.store.models import field_keys, run_fields, runs
from mirror.store.read import iter_runs

#: id sets per compound SELECT, and clauses per parenthesised AND/OR
_PIECE = 50
#: logical levels (AND, OR, NOT) written nested before a level becomes a common table expression
_LEVELS = 4
#: longer lists of values travel as one JSON parameter
_SHORT_LIST = 50
#: filters with more leaves than this are compiled afresh each time, not cached
_CACHED_LEAVES = 100

Ids = Select | CompoundSelect


def runs_query(project_id: int, node: Node, order: Order) -> Select:
    """All ``runs`` columns of the project's live runs matching ``node``, in ``order``, ties by
    run id ascending, so that pages taken with ``limit``/``offset`` never overlap or skip."""
    compiler = _Compiler(project_id)
    query = select(runs).where(*compiler.scope(), _cached(compiler.where(node), node))
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
    condition = _cached(compiler.where(node), node)
    return select(func.count()).select_from(runs).where(*compiler.scope(), condition)


def _cached(condition: ColumnElement[bool], node: Node) -> ColumnElement[bool]:
    """``condition``, kept out of SQLAlchemy's statement cache when the filter is large: its
    cache key would cost more to compute than compiling, and no other filter would share it."""
    leaves, pending = 0, [node]
    while pending and leaves <= _CACHED_LEAVES:
        item = pending.pop()
        if isinstance(item, (And, Or)):
            pending.extend(item.children)
        elif isinstance(item, Not):
            pending.append(item.child)
        else:
            leaves += 1
    return condition if leaves <= _CACHED_LEAVES else _Uncached(condition)


def _column_order(order: Order) -> list[ColumnElement[Any]]:
    """Run attributes are text or missing: missing (NULL) first ascending, last descending."""
    column = runs.c[RUN_ATTRIBUTES[order.path]]
    if not column.nullable:
        return [column.desc() if order.descending else column.asc()]
    if order.descending:
        return [column.desc().nulls_last()]
    return [column.asc().nulls_first()]


def _matching(column: ColumnElement[Any], pattern: str, texts: Select) -> Matching:
    """A ``$regex`` test of ``column`` against the texts ``texts`` selects, with the pattern's
    GLOB form for the database to decide what it can (:class:`mirror.store.dialect_sql.Matching`)."""
    glob = regex.as_glob(pattern)
    posix = regex.glob_as_posix("*" if glob is None else glob.pattern)
    return Matching(column, pattern, texts, glob, posix)


use_matchers(regex.matching, regex.matching_texts)


class _Compiler:
    """Compiles one tree for one project (key ids are looked up within the project)."""

    def __init__(self, project_id: int) -> None:
        self.project_id = project_id
        self._key_ids: dict[str, ColumnElement[Any]] = {}

    def scope(self) -> list[ColumnElement[bool]]:
        return [runs.c.project_id == const(self.project_id), runs.c.deleted_at.is_(None)]

    def where(self, node: Node, level: int = 0) -> ColumnElement[bool]:
        """``node`` as a condition on ``runs``; ``level`` counts the logical levels written
        nested so far, and a deeper one is listed as a common table expression instead."""
        if isinstance(node, (And, Or, Not)) and level >= _LEVELS:
            return runs.c.id.in_(self._listed(node))
        if isinstance(node, And):
            return self._combine(node.children, True, level + 1) if node.children else true()
        if isinstance(node, Or):
            return self._combine(node.children, False, level + 1) if node.children else false()
        if isinstance(node, Not):
            return not_(self.where(node.child, level + 1))
        rows = self._rows_of(node)
        if rows is not None and node.path in RUN_ATTRIBUTES:  # a regex
            # ``+ 0`` keeps SQLite from looking each matching run up by id (a read of a wide row
            # apiece): it walks the (project, deleted_at, created_at) index and probes the set.
            # PostgreSQL's planner would rather hash the whole set first; tested on the run
            # itself, the match lets it walk the order's index and stop at a page.
            assert isinstance(node, Regex)
            column = runs.c[RUN_ATTRIBUTES[node.path]]
            own = _matching(column, node.pattern, self._column_texts(column))
            return PerDialect((runs.c.id + const(0)).in_(rows), postgresql=_present(column, own))
        if rows is not None:
            return runs.c.id.in_(rows)
        if node.path in RUN_ATTRIBUTES:
            return _column_leaf(runs.c[RUN_ATTRIBUTES[node.path]], node)
        return self._field_leaf(node)

    def key_id(self, path: str) -> ColumnElement[Any]:
        """The path's key id in this project (NULL, matching no row, when never seen)."""
        if path not in self._key_ids:
            self._key_ids[path] = (
                select(field_keys.c.id)
                .where(field_keys.c.project_id == const(self.project_id), field_keys.c.path == path)
                .scalar_subquery()
            )
        return self._key_ids[path]

    def _listed(self, node: Node) -> Select:
        """The ids of the project's runs meeting ``node``, as a common table expression: listed
        beside the statement, not nested in it."""
        body = select(runs.c.id.label("run_id")).where(
            runs.c.project_id == const(self.project_id), self.where(node)
        )
        return select(body.cte().c.run_id)

    def _combine(self, children: tuple[Node, ...], every: bool, level: int) -> ColumnElement[bool]:
        """AND (``every``) or OR of ``children``, as set algebra on the field index.

        ``id IN (a) AND id IN (b)`` makes SQLite walk the larger set and look each run up;
        ``id IN (a INTERSECT b)`` lets the covering indexes answer both and visits only the runs
        that meet every leaf. Negated leaves combine the other way round (``NOT IN a AND NOT IN
        b`` is ``NOT IN (a UNION b)``). Leaves on one path are one index lookup where the sets
        are united (an OR of equalities is one ``IN``), and one grouped lookup where equalities
        are intersected (``$all``), so that 10,000 terms are not 10,000 subqueries.
        """
        children = _merged_leaves(children, every)
        positive: list[Ids] = []
        negative: list[Ids] = []
        others: list[ColumnElement[bool]] = []
        united: dict[str, list[ColumnElement[bool]]] = {}  # row tests of one lookup, per path
        all_of: dict[str, list[Any]] = {}  # values a run must hold every one of, per path
        for child in children:
            negated = isinstance(child, Not)
            leaf = child.child if isinstance(child, Not) else child
            test = self._row_test(leaf)
            if test is None:
                rows = self._rows_of(leaf)
                if rows is None:
                    others.append(self.where(child, level))
                else:
                    (negative if negated else positive).append(rows)
                continue
            path, conditions = test
            if negated == every:  # OR of positive, AND of negated leaves: sets to unite
                united.setdefault(path, []).append(and_(true(), *conditions))
            elif isinstance(leaf, Compare) and leaf.op == "eq":
                all_of.setdefault(path, []).append(leaf.value)
            else:
                (negative if negated else positive).append(self.rows(path, *conditions))
        for path, tests in united.items():
            (negative if every else positive).append(self.rows(path, _joined(tests, False)))
        for path, values in all_of.items():
            (positive if every else negative).extend(self._holding_all(path, values))
        if positive:
            others.append(_in_sets(positive, every))
        if negative:
            others.append(not_(_in_sets(negative, not every)))
        return _joined(others, every)

    def _holding_all(self, path: str, values: list[Any]) -> list[Ids]:
        """The runs holding every one of ``values`` (not null) at ``path``: per type bracket, the
        runs whose rows there take as many distinct of them as there are."""
        groups: dict[tuple[int, str], set[Any]] = {}
        sets: list[Ids] = []
        for value in values:
            kind, num, txt = typed(value)
            if kind in (Kind.NUMBER, Kind.BOOL) and (num is None or not math.isfinite(num)):
                sets.append(self.rows(path, *_value_test("eq", value)))
            elif kind in (Kind.NUMBER, Kind.BOOL):
                groups.setdefault((int(kind), "num"), set()).add(num)
            else:
                groups.setdefault((int(kind), "txt"), set()).add(txt)
        for (kind, name), members in groups.items():
            column = run_fields.c[name]
            kind_test = [run_fields.c.kind == const(kind), *_pinned(kind)]
            held = self.rows(path, *kind_test, _one_of(column, list(members)))
            if len(members) > 1:
                held = held.group_by(run_fields.c.run_id)
                held = held.having(func.count(column.distinct()) == len(members))
            sets.append(held)
        return sets

    def rows(self, path: str, *conds: ColumnElement[bool]) -> Select:
        """The ids of runs with an index row at ``path`` (a value, or an array element there)
        meeting ``conds``."""
        return select(run_fields.c.run_id).where(run_fields.c.key_id == self.key_id(path), *conds)

    def has(self, path: str, *conds: ColumnElement[bool]) -> ColumnElement[bool]:
        """Some index row at ``path`` meets ``conds``."""
        return runs.c.id.in_(self.rows(path, *conds))

    def _rows_of(self, node: Node) -> Select | None:
        """The id set of a positive single-path field leaf or attribute regex; ``None`` for
        anything else."""
        if isinstance(node, Regex) and node.path in RUN_ATTRIBUTES:
            return self._column_regex(RUN_ATTRIBUTES[node.path], node.pattern)
        test = self._row_test(node)
        if test is None:
            return None
        path, conditions = test
        return self.rows(path, *conditions)

    def _row_test(self, node: Node) -> tuple[str, list[ColumnElement[bool]]] | None:
        """``(path, conditions)`` when ``node`` holds for a run exactly if one of its index rows
        at ``path`` meets ``conditions`` (a positive field leaf); ``None`` for anything else."""
        path = getattr(node, "path", None)  # And/Or/Not have none
        if path is None or path in RUN_ATTRIBUTES:
            return None
        if isinstance(node, Compare) and node.value is not None:
            return path, _value_test(node.op, node.value)
        if isinstance(node, In) and None not in node.values:
            return path, [_membership(node.values)]
        if isinstance(node, Exists):
            return path, []
        if isinstance(node, Regex):
            return path, self._regex_test(node)
        if isinstance(node, Size):
            return path, self._size(node)
        return None

    def _size(self, node: Size) -> list[ColumnElement[bool]]:
        """``$size``: the array at the path, or, where the path has no value of its own, an array
        reached through an array of documents (``{"a": [{"b": [1, 2]}]}`` for ``a.b``).

        The index cannot tell such an array from an array *element* of one, so an array nested
        in an array reached that way counts too (documented as a limit).
        """
        array = [run_fields.c.kind == const(int(Kind.ARRAY)), run_fields.c.num == node.size]
        if node.path.count(".") < 2:  # directly below config or summary: nothing to reach through
            return [run_fields.c.elem == 0, *array]
        values = run_fields.alias("own_values")
        own = select(values.c.run_id).where(
            values.c.key_id == self.key_id(node.path), values.c.elem == 0
        )
        return [*array, or_(run_fields.c.elem == 0, run_fields.c.run_id.not_in(own))]

    def _field_leaf(self, node: Node) -> ColumnElement[bool]:
        """The field leaves that also match a missing path."""
        if isinstance(node, In):  # with null among its values
            values = tuple(v for v in node.values if v is not None)
            present = [self.has(node.path, _membership(values))] if values else []
            return or_(self._null(node.path), *present)
        assert isinstance(node, Compare) and node.value is None
        return self._null(node.path)

    def _null(self, path: str) -> ColumnElement[bool]:
        """``{path: null}``: missing, or null (an array's null element too)."""
        null = run_fields.c.kind == const(int(Kind.NULL))
        return or_(not_(self.has(path)), self.has(path, null))

    def _regex_test(self, node: Regex) -> list[ColumnElement[bool]]:
        """Index-row conditions for a text at the regex's path that the pattern is found in."""
        texts = run_fields.alias("regex_texts")
        string = const(int(Kind.STRING))
        distinct = select(texts.c.txt).where(
            texts.c.key_id == self.key_id(node.path), texts.c.kind == string, texts.c.num.is_(None)
        )
        matching = _matching(run_fields.c.txt, node.pattern, distinct)
        return [run_fields.c.kind == string, *_pinned(Kind.STRING), matching]

    def _column_regex(self, column: str, pattern: str) -> Select:
        """The ids of runs whose ``column`` RE2 finds ``pattern`` in: a set read from the
        column's index when it has one (``display_name``), so no run row is visited."""
        other = runs.alias("regex_runs")
        matching = _matching(other.c[column], pattern, self._column_texts(other.c[column]))
        return select(other.c.id).where(other.c.project_id == const(self.project_id), matching)

    def _column_texts(self, column: KeyedColumnElement[Any]) -> Select:
        """The texts a regex on a ``runs`` column (of the table or an alias) is matched
        against: the column's values in this project."""
        table = runs.alias("regex_texts")
        return select(table.c[column.key]).where(
            table.c.project_id == const(self.project_id), table.c[column.key].is_not(None)
        )

    def order(self, order: Order) -> tuple[Any, list[ColumnElement[Any]]]:
        """The runs joined to their value at the order path, and the sort keys.

        MongoDB sorts by type bracket, then value; an array sorts by its smallest element
        ascending and its largest descending, an empty array before null. Only array values
        (and, on paths below a nested key, values reached through arrays) need the per-run
        element lookup; everything else is the one joined row. An array reached through an
        array of documents (``b`` in ``{"a": [{"b": [1, 2]}]}``) sorts by its elements, as in
        MongoDB, not as an array.
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
        pick = self._element_pick(path, order.descending, False)
        reached = self._element_pick(path, order.descending, True)
        is_array = found.c.kind == int(Kind.ARRAY)
        expanded = and_(is_array, found.c.num > 0, found.c.num <= MAX_INDEXED_ARRAY)
        missing = found.c.kind.is_(None)
        deep = path.count(".") >= 2
        bracket = case(
            (and_(is_array, found.c.num == 0), 0),
            (expanded, pick("kind")),
            (missing, func.coalesce(reached("kind"), int(Kind.NULL)) if deep else int(Kind.NULL)),
            else_=found.c.kind,
        )
        keys = [bracket]
        for column in ("num", "txt"):
            whens = [(expanded, pick(column)), (missing, reached(column) if deep else None)]
            keys.append(case(*whens, else_=found.c[column]))
        if order.descending:
            return source, [
                keys[0].desc(),
                keys[1].desc().nulls_last(),
                keys[2].desc().nulls_last(),
            ]
        return source, [keys[0].asc(), keys[1].asc().nulls_first(), keys[2].asc().nulls_first()]

    def _element_pick(
        self, path: str, descending: bool, unwound: bool
    ) -> Callable[[str], ColumnElement[Any]]:
        """A builder of correlated lookups of one column of a run's smallest (or largest) element
        row at ``path``; all three lookups order alike, so they read the same row. ``unwound``
        skips non-empty arrays (their elements are rows of their own), for values reached
        through arrays of documents."""
        element = run_fields.alias("order_element")
        conditions = [element.c.run_id == runs.c.id, element.c.key_id == self.key_id(path)]
        conditions.append(element.c.elem == 1)
        if unwound:
            array = element.c.kind == int(Kind.ARRAY)
            conditions.append(
                not_(and_(array, element.c.num > 0, element.c.num <= MAX_INDEXED_ARRAY))
            )
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

        def pick(column: str) -> ColumnElement[Any]:
            return (
                select(element.c[column])
                .where(*conditions)
                .order_by(*ranking)
                .limit(1)
                .scalar_subquery()
            )

        return pick


def _column_leaf(column: KeyedColumnElement[Any], node: Node) -> ColumnElement[bool]:
    """A leaf on a text attribute column; never NULL, so that ``NOT`` keeps MongoDB's meaning."""
    if isinstance(node, Exists):
        return column.is_not(None)
    if isinstance(node, Compare) and node.value is None:
        return column.is_(None)
    if isinstance(node, Compare):
        if not isinstance(node.value, str):
            return false()
        test = COMPARISONS[node.op](column, node.value)
    elif isinstance(node, In):
        texts = [v for v in node.values if isinstance(v, str)]
        test = _one_of(column, texts) if texts else false()
        if None in node.values:
            return or_(column.is_(None), _present(column, test))
    else:
        return false()
    return _present(column, test)


def _merged_leaves(children: tuple[Node, ...], every: bool) -> tuple[Node, ...]:
    """The leaves whose sets are united (positive ones in an OR, negated ones in an AND), merged
    per path, so that 10,000 alternatives are one indexed lookup, not 10,000 subqueries:
    equalities and ``$in`` tests as one :class:`In` (MongoDB's ``$in`` is exactly that OR, and
    ``$ne`` of each is ``$nin`` of all), and bounds of one kind as the loosest of them (some
    value above 3 or some value above 5 is some value above 3)."""

    def key(child: Node) -> tuple[Any, ...] | None:
        if isinstance(child, Not) != every:
            return None
        leaf = child.child if isinstance(child, Not) else child
        if isinstance(leaf, In) or (isinstance(leaf, Compare) and leaf.op == "eq"):
            return ("in", leaf.path)
        if isinstance(leaf, Compare):
            return ("bound", leaf.path, typed(leaf.value)[0], leaf.op in ("gt", "gte"))
        return None

    groups: dict[tuple[Any, ...], list[Compare | In]] = {}
    for child in children:
        found = key(child)
        if found is not None:
            groups.setdefault(found, []).append(child.child if isinstance(child, Not) else child)
    merged: list[Node] = []
    for child in children:
        found = key(child)
        leaves = None if found is None else groups.pop(found, None)
        if found is None or (leaves is not None and len(leaves) == 1):
            merged.append(child)
        elif leaves is not None:  # the first of several: all of them, merged
            union = _union_in(leaves) if found[0] == "in" else _loosest(leaves, found[3])
            merged.append(Not(union) if every else union)
    return tuple(merged)


def _union_in(leaves: list[Compare | In]) -> In:
    values = [v for leaf in leaves for v in (leaf.values if isinstance(leaf, In) else [leaf.value])]
    return In(leaves[0].path, tuple(values))


def _loosest(leaves: list[Compare | In], lower: bool) -> Compare:
    """Of bounds on one path in one type bracket, the one every other implies: the smallest
    lower bound (the largest upper one), inclusive before exclusive."""
    bounds = [leaf for leaf in leaves if isinstance(leaf, Compare)]

    def rank(bound: Compare) -> tuple[Any, bool]:
        _, num, txt = typed(bound.value)
        return (txt if num is None else num, (bound.op in ("gte", "lte")) != lower)

    return min(bounds, key=rank) if lower else max(bounds, key=rank)


def _in_sets(sets: list[Ids], every: bool) -> ColumnElement[bool]:
    """The run is in every one (or some) of the id ``sets``: one compound SELECT per ``_PIECE``
    of them, the pieces' ``IN`` tests joined by AND (OR). SQLite takes at most 500 terms in a
    compound, and its time to prepare compounds nested in compounds grows with their square."""
    combine = intersect if every else union_all
    tests = [
        runs.c.id.in_(piece[0] if len(piece) == 1 else combine(*piece))
        for piece in (sets[i : i + _PIECE] for i in range(0, len(sets), _PIECE))
    ]
    return _joined(tests, every)


def _joined(tests: list[ColumnElement[bool]], every: bool) -> ColumnElement[bool]:
    """An AND (``every``) or OR of many tests, parenthesised ``_PIECE`` at a time: SQLite parses
    a flat one into a tree as deep as it is long, and refuses one deeper than 1,000."""
    join = and_ if every else or_
    while len(tests) > _PIECE:
        tests = [_Grouped(join(*tests[i : i + _PIECE])) for i in range(0, len(tests), _PIECE)]
    return tests[0] if len(tests) == 1 else join(*tests)


def _value_test(op: str, value: Any) -> list[ColumnElement[bool]]:
    """Index-row conditions for ``<row> op value`` within ``value``'s type bracket (not null)."""
    kind, num, txt = typed(value)
    test = [run_fields.c.kind == const(int(kind))]
    if kind in (Kind.NUMBER, Kind.BOOL):
        if num is None:  # NaN: equal to itself only (the parser turned NaN bounds into eq)
            test.append(run_fields.c.num.is_(None))
        else:
            test.append(COMPARISONS[op](run_fields.c.num, num))
    elif kind is Kind.ARRAY:  # an equal array has the same length: the index's next column
        test += [run_fields.c.num == num, TextCompare("eq", txt)]
    else:
        test += [*_pinned(kind), TextCompare(op, txt)]
    return test


def _pinned(kind: int) -> list[ColumnElement[bool]]:
    """``num IS NULL`` for the brackets where it always holds (texts and documents): it pins the
    index's ``num`` column, so a test on ``txt`` is a range of the index, not a scan of the key."""
    return [run_fields.c.num.is_(None)] if kind in (Kind.STRING, Kind.OBJECT) else []


def _membership(values: tuple[Any, ...]) -> ColumnElement[bool]:
    """Index-row conditions for "equals one of ``values``" (no null): one ``IN`` per bracket."""
    groups: dict[tuple[int, str], list[Any]] = {}
    tests: list[ColumnElement[bool]] = []
    for value in values:
        kind, num, txt = typed(value)
        if kind in (Kind.NUMBER, Kind.BOOL) and (num is None or not math.isfinite(num)):
            tests.append(and_(*_value_test("eq", value)))  # NaN and infinities have no JSON
        elif kind in (Kind.NUMBER, Kind.BOOL):
            groups.setdefault((int(kind), "num"), []).append(num)
        else:
            groups.setdefault((int(kind), "txt"), []).append(txt)
    for (kind, column), members in groups.items():
        kind_test = [run_fields.c.kind == const(kind), *_pinned(kind)]
        tests.append(and_(*kind_test, _one_of(run_fields.c[column], members)))
    return _joined(tests, False) if tests else false()


def _one_of(column: ColumnElement[Any], values: list[Any]) -> ColumnElement[bool]:
    """``column IN values``; a long list as one JSON parameter (see :class:`mirror.store.dialect_sql.OneOf`); on the
    field index's texts with the prefix its PostgreSQL index holds."""
    unique = list(dict.fromkeys(values))
    indexed_text = column is run_fields.c.txt
    if len(unique) == 1:
        return TextCompare("eq", unique[0]) if indexed_text else column == unique[0]
    if len(unique) <= _SHORT_LIST and not indexed_text:
        return column.in_(unique)
    return OneOf(column, unique, short=len(unique) <= _SHORT_LIST, prefixed=indexed_text)


def _present(column: KeyedColumnElement[Any], test: ColumnElement[bool]) -> ColumnElement[bool]:
    return and_(column.is_not(None), test) if column.nullable else test


class _Grouped(ColumnElement[bool]):
    """A condition in parentheses of its own (SQLAlchemy would merge an OR into the one around
    it, parentheses and all)."""

    inherit_cache = True
    _traverse_internals = [("condition", InternalTraversal.dp_clauseelement)]

    def __init__(self, condition: ColumnElement[bool]) -> None:
        self.condition = condition


@compiles(_Grouped)
def _compile_grouped(element: _Grouped, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.condition, **kw)})"


class _Uncached(ColumnElement[bool]):
    """A condition SQLAlchemy compiles each time: not cacheable, so computing the statement's
    cache key stops here instead of walking thousands of subqueries."""

    inherit_cache = False

    def __init__(self, condition: ColumnElement[bool]) -> None:
        self.condition = condition

    def get_children(self, **kw: Any) -> list[ColumnElement[bool]]:
        """The condition, for traversals (a regex inside is completed before execution)."""
        return [self.condition]


@compiles(_Uncached)
def _compile_uncached(element: _Uncached, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.condition, **kw)
