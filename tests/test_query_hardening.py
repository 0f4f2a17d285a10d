"""The filter engine under hostile or outsized filters (issue 9): RE2 for ``$regex``, filters of
10,000 terms, one-line errors instead of tracebacks, and MongoDB's meaning on paths through arrays
of documents. Every answer is checked three ways, as in test_filters.py: SQL, its count, and the
Python oracle; where mongomock agrees with MongoDB, against mongomock too.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from typing import Any

import mongomock
import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from mirror.errors import CommError, FilterError
from mirror.query import regex
from mirror.query.api import Api
from mirror.query.evaluate import matches, sort_docs
from mirror.query.filters import MAX_DEPTH, parse_filter, parse_order
from mirror.query.sql import count_query, runs_query
from mirror.store import migrate
from mirror.store.dialect_sql import use_matchers
from mirror.store.engine import make_engine
from mirror.store.fields import run_document
from mirror.store.models import projects, runs
from mirror.store.upsert import upsert_runs

INF = float("inf")
BACKTRACKER = "a" * 5_000  # ``^(.*)*!`` takes Python's re exponential time on it


def _config(**values: Any) -> dict[str, Any]:
    return {key: {"value": value, "desc": None} for key, value in values.items()}


def _node(name: str, day: int, **fields: Any) -> dict[str, Any]:
    return {"name": name, "createdAt": f"2024-01-{day:02d}T00:00:00", **fields}


NODES = [
    _node(
        "r1",
        1,
        displayName="swift-comet-1",
        commit=BACKTRACKER,
        notes="first line\nSecond line",
        tags=["a", "b"],
        config=_config(experiment_name="name-7", k=1, x=INF, a=[{"b": [1, 2]}], s="ab"),
    ),
    _node(
        "r2",
        2,
        displayName="calm-river-12",
        commit="c0ffee",
        notes="second\nfirst",
        tags=["b"],
        config=_config(experiment_name="name-8", k=2, x=-INF, a=[{"b": 5}], s="a\nb"),
    ),
    _node(
        "r3",
        3,
        displayName="\u212aelvin-glade-3",  # KELVIN SIGN: RE2 and Python fold it with k
        notes="no newline",
        tags=["a"],
        config=_config(k=3, x=2.5, a=[{"b": 1.5}, {"c": 1}], s=""),
    ),
    _node(
        "r4",
        4,
        displayName="",
        tags=[],
        config=_config(k=4, x=1e300, a=[{"b": "text"}], s="x\x00y"),
    ),
]


@pytest.fixture(scope="module")
def store(module_database: str):
    """A mirror on each database holding the runs above."""
    engine = make_engine(module_database)
    with engine.begin() as conn:
        upsert_runs(conn, "e", "p", NODES)
        project_id = conn.execute(select(projects.c.id)).scalar_one()
        docs = [run_document(row) for row in conn.execute(select(runs)).mappings()]
    yield engine, project_id, docs
    engine.dispose()


def names(store, filters: dict[str, Any] | None, order: str = "+name") -> list[str]:
    """The SQL answer, after checking that its count and the oracle agree with it."""
    engine, project_id, docs = store
    node, parsed = parse_filter(filters), parse_order(order)
    with engine.connect() as conn:
        got = [row.name for row in conn.execute(runs_query(project_id, node, parsed))]
        assert conn.execute(count_query(project_id, node)).scalar_one() == len(got)
    oracle = [d["name"] for d in sort_docs([d for d in docs if matches(node, d)], parsed)]
    assert got == oracle
    return got


def mongo(store, filters: dict[str, Any]) -> list[str]:
    collection = mongomock.MongoClient().db.runs
    collection.insert_many([dict(doc) for doc in store[2]])
    return sorted(d["name"] for d in collection.find(filters))


# 1. $regex is RE2: linear time, RE2's syntax, clear refusals


def test_a_backtracking_pattern_runs_in_linear_time(store) -> None:
    """Python's re needs exponential time for this on the 5,000-character commit; RE2 does
    not, in the SQL path and in the oracle alike."""
    started = time.perf_counter()
    assert names(store, {"commit": {"$regex": "^(.*)*!"}}) == []
    assert names(store, {"config.s": {"$regex": "^(a|aa)*c$"}}) == []
    assert names(store, {"commit": {"$regex": "^(a+)+$"}}) == ["r1"]
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"config.s": {"$regex": "(a)\\1"}}, "filters.config.s: $regex: '(a)\\\\1' uses backref"),
        ({"config.s": {"$regex": "a(?=b)"}}, "filters.config.s: $regex: 'a(?=b)' uses lookahead"),
        ({"notes": {"$regex": "(?<!a)b"}}, "filters.notes: $regex: '(?<!a)b' uses lookahead"),
        ({"config.s": {"$regex": "a\\Z"}}, "uses \\Z (RE2 writes the end of the text as \\z)"),
        ({"config.s": {"$regex": "(?>a)"}}, "filters.config.s: $regex: '(?>a)' uses atomic"),
        ({"config.s": re.compile("(?=a)")}, "filters.config.s: regex: '(?=a)' uses lookahead"),
        ({"tags": {"$in": ["a", re.compile(r"(\w)\1")]}}, "filters.tags: $in: '(\\\\w)\\\\1' uses"),
        ({"tags": {"$not": re.compile("a(?!b)")}}, "filters.tags.$not: regex: 'a(?!b)' uses"),
        ({"tags": {"$regex": "a{2,1}"}}, "filters.tags: $regex: invalid pattern 'a{2,1}'"),
    ],
)
def test_python_only_regex_syntax_is_refused_naming_the_path(filters, message) -> None:
    with pytest.raises(FilterError) as raised:
        parse_filter(filters)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "filters",
    [
        {"notes": {"$regex": "^second", "$options": "im"}},
        {"notes": {"$regex": "line.second", "$options": "si"}},
        {"notes": {"$regex": "line$", "$options": "m"}},
        {"notes": {"$regex": "first \\s+ line  # a comment", "$options": "x"}},
        {"notes": re.compile("^SECOND", re.I | re.M)},
        {"notes": re.compile("first [ ] line", re.X)},
        {"displayName": {"$regex": "^kelvin", "$options": "i"}},
        {"displayName": {"$regex": "^$"}},
        {"displayName": {"$regex": "-1|glade"}},
        {"config.s": {"$regex": "^a$", "$options": "m"}},
        {"config.s": {"$regex": "x.y", "$options": "s"}},
        {"config.a.b": {"$regex": "^t"}},
        {"tags": {"$in": [re.compile("^A", re.I), "b"]}},
    ],
)
def test_regex_options_and_python_patterns_mean_what_they_say(store, filters) -> None:
    assert names(store, filters) == mongo(store, filters)


def test_a_regex_costs_one_call_per_statement_not_one_per_row(database, monkeypatch) -> None:
    """The distinct texts at the path reach Python once, together, whatever the row count."""
    calls: list[int] = []
    matching = regex.matching

    def counting(pattern: str, texts: list[str]) -> list[str]:
        calls.append(1)
        return matching(pattern, texts)

    use_matchers(counting, regex.matching_texts)  # what PostgreSQL's statements call
    monkeypatch.setattr(regex, "matching", counting)  # and SQLite's (through matching_texts)
    engine = make_engine(database)
    nodes = [_node(f"r{i}", 1 + i % 28, displayName=f"run-{i % 50}") for i in range(500)]
    with engine.begin() as conn:
        upsert_runs(conn, "e", "p", nodes)
        project_id = conn.execute(select(projects.c.id)).scalar_one()
    with engine.connect() as conn:
        node = parse_filter({"displayName": {"$regex": "(?i)RUN-(4|7)"}})
        try:
            assert conn.execute(count_query(project_id, node)).scalar_one() == 120
        finally:
            use_matchers(matching, regex.matching_texts)
    engine.dispose()
    assert len(calls) == 1


_PIECES = ["a", "b", "ab", ".", "^", "$", "\\w", "\\s", "[a-c]", "[^a]", "a*", "b+", "(a|b)"]
_PIECES += ["\\bk", "x?", "(?i)K", "(?s).", "(?m)^b", "\\d{2}", "\\z", "\\A", ".*", "\u212a"]
_TEXTS = ["", "a", "b", "ab", "ba\nab", "a\nb", "x\x00a", "k", "\u212a", "12", "a b", "b\n"]


def _pattern(pieces: list[str]) -> str:
    text = "".join(pieces)
    for flag in ("(?i)", "(?s)", "(?m)"):  # inline flags only lead the pattern in RE2
        if flag in text:
            text = flag + text.replace(flag, "")
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=4),
    texts=st.lists(st.sampled_from(_TEXTS), min_size=1, max_size=12),
)
def test_batched_and_glob_matching_agree_with_re2_value_by_value(pieces, texts) -> None:
    """What the database is told (one newline-joined scan, a GLOB pre-test) selects exactly
    the texts RE2 finds the pattern in, one by one."""
    pattern = _pattern(pieces)
    try:
        re2.compile(pattern)
    except re2.error:
        return
    expected = {t for t in texts if regex.search(pattern, t)}
    assert set(json.loads(regex.matching_texts(pattern, json.dumps(texts)))) == expected
    glob = regex.as_glob(pattern)
    if glob is None:
        return
    db = sqlite3.connect(":memory:")
    for value in texts:
        if "\x00" in value or ("\n" in value and not glob.across_lines):
            continue  # always decided by RE2
        globbed = db.execute("SELECT ? GLOB ?", (value, glob.pattern)).fetchone()[0] == 1
        if glob.exact:
            assert globbed == (value in expected), (pattern, glob, value)
        elif value in expected:
            assert globbed, (pattern, glob, value)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=3))
def test_sql_regex_agrees_with_the_oracle_on_awkward_texts(store, pieces) -> None:
    pattern = _pattern(pieces)
    try:
        re2.compile(pattern)
    except re2.error:
        return
    for key in ("config.s", "notes", "displayName", "config.a.b"):
        names(store, {key: {"$regex": pattern}})
        names(store, {key: {"$not": {"$regex": pattern}}})


# 3. filters of 10,000 terms


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"$or": [{"config.experiment_name": f"name-{i}"} for i in range(10_000)]}, ["r1", "r2"]),
        ({"$nor": [{"displayName": f"calm-river-{i}"} for i in range(10_000)]}, ["r1", "r3", "r4"]),
        ({"tags": {"$all": ["a", "b"] * 5_000}}, ["r1"]),
        ({"$and": [{"tags": t} for t in ["a", "b"] * 5_000]}, ["r1"]),
        ({"tags": {"$all": [f"t{i}" for i in range(10_000)]}}, []),
        ({"$and": [{"config.k": {"$ne": i}} for i in range(3, 10_003)]}, ["r1", "r2"]),
        ({"$or": [{"config.k": {"$ne": i}} for i in range(10_000)]}, ["r1", "r2", "r3", "r4"]),
        ({"$or": [{"config.k": {"$gte": 4 + i}} for i in range(10_000)]}, ["r4"]),
        ({"$or": [{"config.k": {"$lt": 2 - i}} for i in range(10_000)]}, ["r1"]),
        ({"config.k": {"$nin": list(range(2, 10_002))}}, ["r1"]),
        ({"config.experiment_name": {"$in": [f"name-{i}" for i in range(8, 10_008)]}}, ["r2"]),
    ],
)
def test_filters_of_ten_thousand_terms(store, filters, expected) -> None:
    assert names(store, filters) == expected


def test_large_unions_and_intersections_over_many_paths(store) -> None:
    """Leaves on 500 different paths cannot share a lookup: they are combined in pieces."""
    keys = [f"config.k{i}" for i in range(500)] + ["config.k"]
    assert names(store, {"$or": [{key: 3} for key in keys]}) == ["r3"]
    assert names(store, {"$and": [{key: {"$ne": 3}} for key in keys]}) == ["r1", "r2", "r4"]
    either = [{"config.k": i, "tags": "a"} for i in range(500)]
    assert names(store, {"$or": either}) == ["r1", "r3"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"$or": [{"config.k": {"$gt": 3}}, {"config.k": {"$gte": 3}}]}, ["r3", "r4"]),
        ({"$or": [{"config.k": {"$lte": 2}}, {"config.k": {"$lt": 2}}]}, ["r1", "r2"]),
        ({"$or": [{"config.k": {"$gt": 3}}, {"config.k": {"$lt": 2}}]}, ["r1", "r4"]),
        ({"$nor": [{"config.k": {"$gt": 3}}, {"config.k": {"$gte": "a"}}]}, ["r1", "r2", "r3"]),
        (
            {
                "$or": [
                    {"createdAt": {"$lte": "2024-01-01T00:00:00"}},
                    {"createdAt": {"$lt": "2024-01-02T00:00:00"}},
                ]
            },
            ["r1"],
        ),
        (
            {"$and": [{"config.k": {"$not": {"$gt": 2}}}, {"config.k": {"$not": {"$gt": 3}}}]},
            ["r1", "r2"],
        ),
    ],
)
def test_bounds_on_one_path_merge_into_the_loosest(store, filters, expected) -> None:
    assert names(store, filters) == expected == mongo(store, filters)


# 4. one line, never a traceback


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"config.x": 10**400}, []),
        ({"config.x": {"$ne": 10**400}}, ["r1", "r2", "r3", "r4"]),
        ({"config.x": {"$gt": 10**400}}, ["r1"]),
        ({"config.x": {"$gte": -(10**400)}}, ["r1", "r3", "r4"]),
        ({"config.x": {"$lt": 10**400}}, ["r2", "r3", "r4"]),
        ({"config.x": {"$lte": -(10**400)}}, ["r2"]),
        ({"config.x": {"$in": [10**400, 2.5]}}, ["r3"]),
        ({"config.k": {"$all": [10**400]}}, []),
        ({"tags": {"$size": 10**400}}, []),
        ({"config.a": [{"b": 10**400}]}, []),
    ],
)
def test_integers_beyond_floats_compare_exactly(store, filters, expected) -> None:
    assert names(store, filters) == expected


def test_nesting_is_bounded_with_its_own_message() -> None:
    deep: dict[str, Any] = {"config.k": 1}
    for _ in range(250):
        deep = {"$nor": [deep]}
    with pytest.raises(FilterError) as raised:
        parse_filter(deep)
    message = str(raised.value)
    assert message.startswith("filters.$nor[0].$nor[0]")
    assert f"nests more than {MAX_DEPTH} levels deep" in message and "\n" not in message
    negations: dict[str, Any] = {"$gt": 1}
    for _ in range(250):
        negations = {"$not": negations}
    with pytest.raises(FilterError, match="nests more than"):
        parse_filter({"config.k": negations})
    value: Any = 1
    for _ in range(5_000):
        value = [value]
    with pytest.raises(FilterError, match=f"nests more than {MAX_DEPTH} lists or objects"):
        parse_filter({"config.a": value})


def test_the_deepest_filter_allowed_runs(store) -> None:
    """SQLite's parser overflows at about 15 nested parentheses; the statement is built flat."""
    deep: dict[str, Any] = {"config.k": {"$gt": 1}}
    for level in range(MAX_DEPTH):
        if level % 2:
            deep = {"$nor": [{"config.k": level}, {"displayName": {"$regex": "^c"}}, deep]}
        else:
            deep = {"$or": [{"tags": "b"}, deep, {"config.s": {"$regex": "b"}}]}
    names(store, deep)  # exactly at the limit
    with pytest.raises(FilterError, match="nests more than"):
        parse_filter({"$and": [deep]})


def test_database_errors_name_no_sql_and_no_values(tmp_path) -> None:
    path = tmp_path / "m.db"
    engine = make_engine(path)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        upsert_runs(conn, "e", "p", [_node("r1", 1)])
        conn.execute(text("ALTER TABLE run_fields RENAME TO broken"))
    engine.dispose()
    api = Api(database=str(path))
    runs_ = api.runs("e/p", {"config.secret": "s3cr3t-value"})
    with pytest.raises(CommError) as raised:
        len(runs_)
    message = str(raised.value)
    assert message == "cannot read the mirror database: no such table: run_fields"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    api.close()


# 5. paths through arrays of documents


def test_size_of_an_array_reached_through_an_array_of_documents(store) -> None:
    filters = {"config.a.b": {"$size": 2}}
    assert names(store, filters) == ["r1"] == mongo(store, filters)
    assert names(store, {"config.a.b": {"$size": 1}}) == []


def test_sorting_by_a_path_through_an_array_of_documents_unwinds_arrays_there(store) -> None:
    """MongoDB sorts ``a.b`` of ``{"a": [{"b": [1, 2]}]}`` by 1 ascending and by 2 descending,
    among the numbers, not after them as an array."""
    assert names(store, None, "-config.a.b") == ["r4", "r2", "r1", "r3"]
    ascending = names(store, None, "+config.a.b")  # r3 lacks b in one document: see below
    assert [name for name in ascending if name != "r3"] == ["r1", "r2", "r4"]


@pytest.mark.xfail(strict=True, reason="known limit: the index does not record the missing b")
def test_null_on_a_path_some_documents_of_an_array_lack(store) -> None:
    assert names(store, {"config.a.b": None}) == mongo(store, {"config.a.b": None}) == ["r3"]
