"""SQL the filter compiler (``mirror.query.sql``) writes differently on each database.

The compiler builds one SQLAlchemy Core tree for every database; the few constructs whose best
(or only) form differs between SQLite and PostgreSQL are these, each compiled per dialect:

* :class:`TextCompare`: a comparison on the field index's texts, which PostgreSQL's index holds
  only a prefix of (``mirror.store.texts.PREFIX_INDEXES``);
* :class:`OneOf`: membership in a long list (SQLite: one JSON parameter; PostgreSQL: ``= ANY``
  of one array);
* :class:`PerDialect`: a condition whose best form differs by planner;
* :class:`Matching`: a ``$regex`` test, RE2's answer on both databases. SQLite calls the
  matcher as an SQL function; PostgreSQL cannot call Python from SQL, so the statement is
  completed just before it runs. The matching itself is the query layer's
  (``mirror.query.regex``), handed in through :func:`use_matchers`, as data flows from the
  store up and never the other way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import (
    ARRAY,
    ClauseElement,
    ColumnElement,
    Connection,
    Engine,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    case,
    event,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import Pool
from sqlalchemy.sql.visitors import InternalTraversal, iterate

from mirror.store.models import run_fields
from mirror.store.texts import INDEXED_CHARS, indexed_prefix

#: the comparisons a filter leaf makes, by operator name
COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": lambda c, v: c == v,
    "gt": lambda c, v: c > v,
    "gte": lambda c, v: c >= v,
    "lt": lambda c, v: c < v,
    "lte": lambda c, v: c <= v,
}
#: the SQLite function that matches distinct texts with RE2 (registered on every connection)
REGEX_FUNCTION = "mirror_regex_matches"
#: the query layer's RE2 matchers (see :func:`use_matchers`)
_matchers: dict[str, Callable[..., Any]] = {}


class GlobForm(Protocol):
    """What :class:`Matching` reads of a pattern's GLOB form (``mirror.query.regex.Glob``)."""

    pattern: str
    exact: bool
    across_lines: bool


def use_matchers(many: Callable[[str, list[str]], list[str]], texts: Callable[..., str]) -> None:
    """Hand in the RE2 matchers :class:`Matching` runs: ``many(pattern, texts)`` gives the texts
    the pattern is found in (PostgreSQL), ``texts(pattern, json_array[, hexed])`` the same as a
    JSON array, as the SQLite function answers."""
    _matchers.update(many=many, texts=texts)


def const(value: int) -> ColumnElement[Any]:
    """An integer of the mirror's own (project id, type bracket, a length) written into the
    SQL, where it costs none of the statement's limited parameters (never a value from a
    filter)."""
    return literal_column(str(int(value)))


#: a comparison of texts → the comparison their prefixes then meet (cutting keeps the order)
_PREFIX_OPS = {"eq": "eq", "gt": "gte", "gte": "gte", "lt": "lte", "lte": "lte"}


def _indexed_prefix(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The indexed expression of ``column`` on PostgreSQL, ``left(column, 600)``, written as
    its index is, with the length in the SQL (a parameter would not match the index)."""
    return func.left(column, const(INDEXED_CHARS))


class TextCompare(ColumnElement[bool]):
    """``run_fields.txt <op> value``: on PostgreSQL also the same bound on the text's prefix,
    which is what its index holds (``mirror.store.texts.PREFIX_INDEXES``), so the index finds
    the rows and the whole text decides; elsewhere the plain comparison."""

    inherit_cache = True
    _traverse_internals = [
        ("op", InternalTraversal.dp_string),
        ("value", InternalTraversal.dp_clauseelement),
        ("prefix", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, op: str, value: str) -> None:
        self.op = op
        self.value = bindparam(None, value, type_=run_fields.c.txt.type)
        self.prefix = bindparam(None, indexed_prefix(value), type_=Text())


@compiles(TextCompare)
def _text_default(element: TextCompare, compiler: Any, **kw: Any) -> str:
    return compiler.process(COMPARISONS[element.op](run_fields.c.txt, element.value), **kw)


@compiles(TextCompare, "postgresql")
def _text_postgresql(element: TextCompare, compiler: Any, **kw: Any) -> str:
    column = run_fields.c.txt
    prefix = COMPARISONS[_PREFIX_OPS[element.op]](_indexed_prefix(column), element.prefix)
    return compiler.process(and_(prefix, COMPARISONS[element.op](column, element.value)), **kw)


class PerDialect(ColumnElement[bool]):
    """One condition in two forms: ``postgresql`` on PostgreSQL, ``default`` elsewhere.

    Its children, for traversals, are the PostgreSQL form's only: the one traversal that looks
    inside (:func:`_match_before_execution`) runs for PostgreSQL, and must not read the texts of
    a form that is not sent.
    """

    inherit_cache = True
    _traverse_internals = [
        ("default", InternalTraversal.dp_clauseelement),
        ("postgresql", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, default: ColumnElement[bool], postgresql: ColumnElement[bool]) -> None:
        self.default = default
        self.postgresql = postgresql

    def get_children(self, **kw: Any) -> list[ColumnElement[bool]]:
        """The PostgreSQL form (see the class)."""
        return [self.postgresql]


@compiles(PerDialect)
def _per_dialect_default(element: PerDialect, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.default, **kw)})"


@compiles(PerDialect, "postgresql")
def _per_dialect_postgresql(element: PerDialect, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.postgresql, **kw)})"


class OneOf(ColumnElement[bool]):
    """``column IN (values)`` for a long list: on SQLite one JSON parameter read by
    ``json_each``, on PostgreSQL ``= ANY`` of one array parameter, elsewhere the usual expanding
    ``IN``.

    Untyped, not Boolean, like :class:`Matching`: SQLAlchemy would write a Boolean element as
    ``(...) = 1`` on SQLite, which hides the ``IN`` from the planner.
    """

    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("listed", InternalTraversal.dp_clauseelement),
        ("as_json", InternalTraversal.dp_clauseelement),
        ("as_array", InternalTraversal.dp_clauseelement),
        ("short", InternalTraversal.dp_boolean),
        ("prefixed", InternalTraversal.dp_boolean),
        ("prefixes", InternalTraversal.dp_clauseelement),
    ]

    def __init__(
        self, column: ColumnElement[Any], values: list[Any], short: bool, prefixed: bool
    ) -> None:
        self.column = column
        self.short = short
        self.prefixed = prefixed
        self.listed = bindparam(None, values, expanding=True, type_=column.type)
        self.as_json = bindparam(None, None if short else json.dumps(values, ensure_ascii=False))
        self.as_array = bindparam(None, values, type_=ARRAY(column.type))
        prefixes = list(dict.fromkeys(map(indexed_prefix, values))) if prefixed else None
        self.prefixes = bindparam(None, prefixes, type_=ARRAY(Text()))


@compiles(OneOf)
def _one_of_default(element: OneOf, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.column.in_(element.listed), **kw)


@compiles(OneOf, "postgresql")
def _one_of_postgresql(element: OneOf, compiler: Any, **kw: Any) -> str:
    """One array parameter: one plan whatever the list's length, and no parameter limit; on
    the field index's texts, their indexed prefixes too (see :class:`TextCompare`)."""
    test = element.column == any_(element.as_array)
    if element.prefixed:
        test = and_(_indexed_prefix(element.column) == any_(element.prefixes), test)
    return compiler.process(test, **kw)


@compiles(OneOf, "sqlite")
def _one_of_sqlite(element: OneOf, compiler: Any, **kw: Any) -> str:
    if element.short:
        return compiler.process(element.column.in_(element.listed), **kw)
    values = func.json_each(element.as_json).table_valued("value")
    return compiler.process(element.column.in_(select(values.c.value)), **kw)


class Matching(ColumnElement[bool]):
    """``column`` holds one of the texts ``texts`` selects (one column, the texts at the path) in
    which RE2 finds ``pattern``.

    On SQLite the pattern's GLOB form (``mirror.query.regex.as_glob``) is tried first, in C:
    when exact it decides the texts without a newline (or all), otherwise it picks candidates.
    The distinct texts left to decide are gathered into one JSON array, matched by one call of
    the query layer's ``matching_texts``, and looked up in what comes back. Texts holding a
    NUL, which GLOB and ``json_each`` cut short, travel as hex, when there are any.

    Elsewhere (PostgreSQL) the database's own regular expressions are not RE2 (``\\b``, ``.``
    and newlines, ``\\pL``, named groups differ), and a database function cannot call Python.
    So the GLOB form, written as the database's regular expression
    (``posix``: ``mirror.query.regex.glob_as_posix``), decides in the database the texts it
    is exact for, or picks the candidates, and the statement is completed just before it runs
    (:func:`_match_before_execution`): the distinct texts left to decide (``candidates``: those
    holding an escape, see ``mirror.store.texts``, or a newline where that matters, or all when
    there is no GLOB form) are read on the same connection, matched in one
    call of the query layer's ``matching``, and bound as ``matched``, one array parameter, for
    ``column = ANY(matched)`` (with their indexed prefixes, ``matched_prefixes``).
    """

    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("pattern", InternalTraversal.dp_clauseelement),
        ("glob", InternalTraversal.dp_clauseelement),
        ("exact", InternalTraversal.dp_boolean),
        ("across_lines", InternalTraversal.dp_boolean),
        ("texts", InternalTraversal.dp_clauseelement),
        ("with_nul", InternalTraversal.dp_clauseelement),
        ("candidates", InternalTraversal.dp_clauseelement),
        ("posix", InternalTraversal.dp_clauseelement),
        ("plain", InternalTraversal.dp_clauseelement),
        ("matched", InternalTraversal.dp_clauseelement),
        ("matched_prefixes", InternalTraversal.dp_clauseelement),
    ]

    def __init__(
        self,
        column: ColumnElement[Any],
        pattern: str,
        texts: Select,
        glob: GlobForm | None,
        posix: str,
    ) -> None:
        self.column = column
        self.pattern = bindparam(None, pattern)
        self.matched = bindparam(None, [], type_=ARRAY(column.type))
        self.matched_prefixes = bindparam(None, [], type_=ARRAY(Text()))
        self.exact = glob is not None and glob.exact
        self.across_lines = glob is not None and glob.across_lines
        self.glob = bindparam(None, "*" if glob is None else glob.pattern)
        self.posix = bindparam(None, posix, type_=Text())
        text = texts.selected_columns[0]
        self.plain = _plain_for_posix(column, self.across_lines)
        if self.exact:
            texts_left = texts.where(~_plain_for_posix(text, self.across_lines))
        elif glob is not None:
            posix_hits = text.op("~")(self.posix)
            texts_left = texts.where(or_(posix_hits, ~_plain_for_posix(text, False)))
        else:
            texts_left = texts
        self.candidates = texts_left.distinct()
        self.with_nul = texts.where(_has(text, 0)).distinct()
        texts = texts.where(~_has(text, 0))
        if self.exact:  # RE2 decides only what GLOB cannot
            texts = texts.where(_has(text, 10))
        elif glob is not None:
            texts = texts.where(or_(text.op("GLOB")(self.glob), _has(text, 10)))
        self.texts = texts.distinct()


def _plain_for_posix(text: ColumnElement[Any], across_lines: bool) -> ColumnElement[bool]:
    """PostgreSQL: ``text``, as stored, is one a GLOB form's regular expression reads as RE2
    would: no escape (a NUL or U+0001, which are two characters stored), and no newline unless
    the form is exact across lines."""
    tests = [func.strpos(text, func.chr(const(1))) == const(0)]
    if not across_lines:
        tests.append(func.strpos(text, func.chr(const(10))) == const(0))
    return and_(*tests)


def _has(text: ColumnElement[Any], code: int) -> ColumnElement[bool]:
    """``text`` holds the character ``code``: a newline (where RE2's ``.`` stops) or a NUL."""
    return func.instr(text, func.char(code)) > 0


@compiles(Matching)
def _matching_default(element: Matching, compiler: Any, **kw: Any) -> str:
    """The texts the GLOB form decides, or those that matched, with their indexed prefixes
    (see :class:`TextCompare`)."""
    prefix = _indexed_prefix(element.column) == any_(element.matched_prefixes)
    test = and_(prefix, element.column == any_(element.matched))
    if element.exact:
        decided = and_(element.plain, element.column.op("~")(element.posix))
        test = or_(decided, test)
    return f"({compiler.process(test, **kw)})"


@compiles(Matching, "sqlite")
def _matching_sqlite(element: Matching, compiler: Any, **kw: Any) -> str:
    column = element.column
    whens = [(_has(column, 0), func.hex(column).in_(_matched(element, element.with_nul, True)))]
    if element.across_lines:
        otherwise = column.op("GLOB")(element.glob)
    else:
        if element.exact:
            whens.append((~_has(column, 10), column.op("GLOB")(element.glob)))
        otherwise = column.in_(_matched(element, element.texts, False))
    return compiler.process(case(*whens, else_=otherwise), **kw)


def _matched(element: Matching, texts: Select, hexed: bool) -> Select:
    """The texts of ``texts`` RE2 finds the pattern in, from one call over all of them (as hex
    both ways when ``hexed``)."""
    text = list(texts.subquery().c)[0]
    gathered = func.json_group_array(func.hex(text) if hexed else text)
    matcher = getattr(func, REGEX_FUNCTION)
    call = matcher(element.pattern, gathered, 1) if hexed else matcher(element.pattern, gathered)
    values = func.json_each(select(call).scalar_subquery()).table_valued("value")
    return select(values.c.value)


@event.listens_for(Pool, "checkout")
def _add_regex_function(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Give every SQLite connection the RE2 matcher the compiled filters call.

    A pool event rather than an engine's: the Api, ``serve`` and the tests each open their own
    engines, and a filter must run on any of them. Done once per connection.
    """
    if REGEX_FUNCTION in record.info or not isinstance(dbapi_connection, sqlite3.Connection):
        return
    for arguments in (2, 3):
        dbapi_connection.create_function(
            REGEX_FUNCTION, arguments, _matchers["texts"], deterministic=True
        )
    record.info[REGEX_FUNCTION] = True


@event.listens_for(Engine, "before_execute", retval=True)
def _match_before_execution(
    conn: Connection,
    statement: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
) -> tuple[Any, Any, Any]:
    """On databases without the SQLite function, complete each :class:`Matching` of a
    statement about to run: its candidate texts are read on the same connection (and in the
    same transaction) and the ones RE2 finds the pattern in are bound as its ``matched``.

    An event on every engine, as the SQLite function is on every connection. The parameter's
    value is set on the statement's own element, which the statement's parameters are read from
    at each execution, so a cached compiled form is reused and each execution matches afresh.
    """
    if conn.dialect.name == "sqlite" or not isinstance(statement, ClauseElement):
        return statement, multiparams, params
    for element in iterate(statement):
        if isinstance(element, Matching):
            texts = conn.execute(element.candidates).scalars().all()
            matched = _matchers["many"](element.pattern.value, list(texts))
            element.matched.value = matched
            element.matched_prefixes.value = list(dict.fromkeys(map(indexed_prefix, matched)))
    return statement, multiparams, params
