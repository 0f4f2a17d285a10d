"""Differential test of the filter engine: SQL over the field index == Python oracle == mongomock.

Hypothesis writes random projects of runs (W&B node shape, through ``upsert_runs`` into a real
SQLite file, one project per example) and asks random filters and orders of all three. The SQL
result (names, in order, and the count) must equal the oracle's always, and mongomock's except where
mongomock departs from MongoDB's documented behaviour. Each departure is named in
``mongomock_departs``/``mongomock_sort_departs`` and checked the MongoDB way in test_filters.py:

* bool is not a number: mongomock matches ``true`` for ``1`` (Python's ``True == 1``). The
  generators never use 0 or 1, so the two cannot meet here;
* NaN: mongomock never matches it by equality and sorts it anywhere; MongoDB matches
  ``{x: NaN}`` and sorts NaN before all numbers;
* ``{"a.b": null}`` where the path dead-ends (``a`` is a scalar, null, an array of scalars, or an
  index past the end): mongomock treats it as no value at all, MongoDB as missing (so null);
  ``$gte``/``$lte`` null: MongoDB matches missing fields, mongomock does not;
* ``$size`` on a non-array: mongomock compares it with the length of objects and takes a
  truthy scalar as size 1; MongoDB's ``$size`` only matches arrays;
* several operators on a path fanning out over an array of documents: MongoDB tests each one
  on all the values there, mongomock wants one value to pass them all;
* ``$all`` on a path fanning out over an array of documents (mongomock flattens only the first
  value); ``$all: []`` (MongoDB: matches nothing, mongomock: everything);
* sorting by arrays: mongomock uses the first element, MongoDB the smallest ascending and the
  largest descending; documents within their bracket sort by BSON in MongoDB and by canonical
  JSON here (a documented approximation), and an array reached through an array of documents
  (``a.b`` in ``{"a": [{"b": []}]}``) sorts as an array here, by its elements in MongoDB (another
  approximation), so such orders are compared as sets;
* ``{"$eq": [...]}`` and ``{"$ne": [...]}``: mongomock compares the whole value only, MongoDB
  also each element of an array (as the implicit form does in both);
* ``{"$not": {"$regex": ..., "$options": ...}}`` is valid MongoDB (4.0.7+) that mongomock
  rejects;
* limits of the mirror, not of mongomock (see the report of ``mirror.query``): ``$size`` only
  sees arrays at the path itself, not ones reached through an array of documents
  (``{"a.b": {"$size": 0}}`` on ``{"a": [{"b": []}]}``); ``{"a.b": null}`` does not match when
  only some documents of ``a`` lack ``b`` (the generator gives them all one), and a filter on
  an array of more than ``MAX_INDEXED_ARRAY`` elements sees the whole array only;
* keys with a literal dot (``config.name.with.dot``) resolve here on purpose (a W&B config key),
  not in MongoDB or mongomock.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import mongomock
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mongomock.filtering import iter_key_candidates
from sentinels import NOTHING
from sqlalchemy import select

from mirror.query.evaluate import matches, sort_docs, values_at
from mirror.query.filters import DATE_PATHS, parse_filter, parse_order, resolve_key
from mirror.query.sql import count_query, fetch_page, runs_query
from mirror.store.engine import make_engine
from mirror.store.fields import run_document
from mirror.store.models import projects, runs
from mirror.store.upsert import upsert_runs

NAN = float("nan")
INF = float("inf")
NUMBERS = [-2, 2, 2.0, 2.5, 3, 10, -0.5, 1e20, INF, -INF, NAN]  # no 0/1: see the docstring
TEXTS = ["a", "b", "B", "ab", "", "x'; DROP TABLE runs;--", "2024-01-02T00:00:00"]
SCALARS = [*NUMBERS, *TEXTS, True, False, None]
TAGS = ["a", "b", "c", "') OR 1=1 --"]
DATES = [f"2024-01-0{d}T00:00:00" for d in range(1, 6)]

scalar = st.sampled_from(SCALARS)
short_list = st.lists(scalar, max_size=3)
#: objects always have the same key order, so Python's order-blind dict equality agrees
model = st.fixed_dictionaries({"depth": scalar}, optional={"act": st.sampled_from(TEXTS)})
loose = st.one_of(scalar, short_list, st.lists(short_list, max_size=2), model)

#: (key as the user writes it, canonical path mongomock is given)
KEYS = [
    ("name", "name"),
    ("displayName", "displayName"),
    ("display_name", "displayName"),
    ("state", "state"),
    ("group", "group"),
    ("jobType", "jobType"),
    ("job_type", "jobType"),
    ("tags", "tags"),
    ("tags.0", "tags.0"),
    ("createdAt", "createdAt"),
    ("created_at", "createdAt"),
    ("heartbeat_at", "heartbeatAt"),
    ("config.lr", "config.lr"),
    ("config.lr.value", "config.lr"),
    ("config.opt", "config.opt"),
    ("config.lst", "config.lst"),
    ("config.lst.0", "config.lst.0"),
    ("config.lst.1", "config.lst.1"),
    ("config.model", "config.model"),
    ("config.model.depth", "config.model.depth"),
    ("config.model.value.depth", "config.model.depth"),
    ("config.docs.b", "config.docs.b"),
    ("config.docs.0.b", "config.docs.0.b"),
    ("config.name.with.dot", "config.name.with.dot"),
    ("config.absent", "config.absent"),
    ("summary.acc", "summary_metrics.acc"),
    ("summary_metrics.loss", "summary_metrics.loss"),
    ("summary.best", "summary_metrics.best"),
]
ORDER_KEYS = [k for k, _ in KEYS if k not in ("config.model", "tags.0")]


@st.composite
def run_node(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """One run as W&B's GraphQL sends it (config values wrapped, JSON text or objects)."""
    config: dict[str, Any] = {}
    for key, values in (
        ("lr", st.one_of(scalar, short_list)),
        ("opt", st.sampled_from(TEXTS)),
        ("lst", loose),
        ("model", st.one_of(model, scalar)),
        (
            "docs",
            st.lists(
                st.fixed_dictionaries({"b": st.one_of(scalar, short_list)}), min_size=1, max_size=3
            ),
        ),
        ("name.with.dot", scalar),
    ):
        if draw(st.booleans()):
            config[key] = {"value": draw(values), "desc": None}
    summary = draw(
        st.fixed_dictionaries({}, optional={"acc": scalar, "loss": scalar, "best": loose})
    )
    node: dict[str, Any] = {
        "name": name,
        "createdAt": draw(st.sampled_from(DATES)),
        "tags": draw(st.lists(st.sampled_from(TAGS), max_size=3, unique=True)),
        "config": config,
        "summaryMetrics": summary,
    }
    optional = {
        "displayName": st.sampled_from(TEXTS),
        "state": st.sampled_from(["running", "finished", "crashed"]),
        "group": st.sampled_from(["g1", "g2"]),
        "jobType": st.sampled_from(["train", "eval"]),
        "heartbeatAt": st.sampled_from(DATES),
    }
    for key, values in optional.items():
        if draw(st.booleans()):
            node[key] = draw(values)
    return node


@st.composite
def run_nodes(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 40))
    return [draw(run_node(f"run{i:03d}")) for i in draw(st.permutations(range(count)))]


def _pattern() -> st.SearchStrategy[dict[str, Any]]:
    patterns = st.sampled_from(["^a", "b$", "A", ".", "x'", "a|B", "^$", "2024"])
    return st.builds(
        lambda p, o: {"$regex": p, **({"$options": o} if o else {})},
        patterns,
        st.sampled_from(["", "i"]),
    )


date_scalar = st.sampled_from([*DATES, None])


@st.composite
def operators(draw: st.DrawFn, dates: bool = False) -> dict[str, Any]:
    """One field's operator object (or a plain value, for implicit equality). Date attributes
    take only dates (a number there is a FilterError, tested in test_filters.py)."""
    scalar_values = date_scalar if dates else scalar
    loose_values = date_scalar if dates else loose
    kind = draw(
        st.sampled_from(
            [
                "value",
                "$eq",
                "$ne",
                "cmp",
                "$in",
                "$nin",
                "$exists",
                "$regex",
                "$all",
                "$size",
                "$not",
            ]
        )
    )
    if kind == "value":
        return draw(loose_values)
    if kind in ("$eq", "$ne"):
        return {kind: draw(loose_values)}
    if kind == "cmp":
        ops = draw(
            st.lists(
                st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), min_size=1, max_size=2, unique=True
            )
        )
        return {op: draw(scalar_values) for op in ops}
    if kind in ("$in", "$nin"):
        return {kind: draw(st.lists(scalar_values, max_size=3))}
    if kind == "$exists":
        return {"$exists": draw(st.booleans())}
    if kind == "$regex":
        return draw(_pattern())
    if kind == "$all":
        return {"$all": draw(st.lists(scalar_values, min_size=1, max_size=2))}
    if kind == "$size":
        return {"$size": draw(st.integers(0, 3))}
    inner = draw(
        st.one_of(
            _pattern(),
            st.builds(
                lambda op, v: {op: v}, st.sampled_from(["$gt", "$lte", "$in", "$eq"]), scalar_values
            ),
        )
    )
    if "$in" in inner:
        inner["$in"] = [inner["$in"]]
    return {"$not": inner}


@st.composite
def filters(draw: st.DrawFn, depth: int = 2) -> tuple[dict[str, Any], dict[str, Any]]:
    """A filter as the user writes it (aliases) and the same filter on canonical paths."""
    user: dict[str, Any] = {}
    canon: dict[str, Any] = {}
    for _ in range(draw(st.integers(0 if depth == 2 else 1, 2))):
        if depth and draw(st.integers(0, 3)) == 0:
            op = draw(st.sampled_from(["$and", "$or", "$nor"]))
            pairs = draw(st.lists(filters(depth - 1), min_size=1, max_size=3))
            user[op] = [u for u, _ in pairs]
            canon[op] = [c for _, c in pairs]
        else:
            key, path = draw(st.sampled_from(KEYS))
            if path in canon:
                continue
            spec = draw(operators(dates=path in DATE_PATHS))
            user[key] = spec
            canon[path] = spec
    return user, canon


def _leaves(canon: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``(path, operator, argument)`` of every field test in a canonical filter."""
    found: list[tuple[str, str, Any]] = []
    for key, spec in canon.items():
        if key in ("$and", "$or", "$nor"):
            for sub in spec:
                found.extend(_leaves(sub))
        elif isinstance(spec, dict) and any(k.startswith("$") for k in spec):
            if len(set(spec) - {"$options"}) > 1:
                found.append((key, "several", None))
            for op, arg in spec.items():
                if op == "$not":
                    found.extend((key, f"$not.{inner}", a) for inner, a in arg.items())
                found.append((key, op, arg))
        else:
            found.append((key, "=", spec))
    return found


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return isinstance(value, list) and any(_has_nan(v) for v in value)


def _null_test(op: str, arg: Any) -> bool:
    return (op in ("=", "$eq", "$ne") and arg is None) or (op in ("$in", "$nin") and None in arg)


def mongomock_departs(canon: dict[str, Any], docs: list[dict[str, Any]]) -> str | None:
    """Why mongomock's answer to this filter differs from MongoDB's, or None (see the docstring)."""
    for path, spelled, arg in _leaves(canon):
        if spelled == "$not.$options":
            return "$not with $options"
        op = spelled.removeprefix("$not.")
        candidates = [list(iter_key_candidates(path, doc)) for doc in docs]
        if _has_nan(arg):
            return "NaN equality"
        if path.startswith("config.name.with.dot"):
            return "literal dotted key"
        if op in ("$eq", "$ne") and isinstance(arg, list):
            return "explicit $eq/$ne with an array"
        if op in ("$gte", "$lte") and arg is None:
            return "$gte/$lte null on missing"
        if (_null_test(op, arg) or spelled != op) and any(not c for c in candidates):
            return "null or $not on a dead-end path"
        if op == "$size" and any(
            e == 1 and isinstance(v, list) for d in docs for e, v in values_at(d, path)
        ):
            return "$size on arrays reached through an array (a limit of the mirror)"
        if op == "$size" and any(
            not isinstance(v, list) for c in candidates for v in c if v is not NOTHING
        ):
            return "$size on a non-array"
        if op == "several" and any(len(c) > 1 for c in candidates):
            return "several operators over an array of documents"
        if op == "$all" and (None in arg or any(len(c) > 1 for c in candidates)):
            return "$all with null or over an array of documents"
    return None


def mongomock_sort_departs(path: str, docs: list[dict[str, Any]]) -> str | None:
    """Why mongomock sorts these documents by ``path`` unlike MongoDB (see the docstring)."""
    for doc in docs:
        candidates = list(iter_key_candidates(path, doc))
        rows = values_at(doc, path)
        values = [v for _, v in rows]
        if not any(e == 0 for e, _ in rows) and any(isinstance(v, list) for v in values):
            return "arrays reached through an array of documents"
        if len(candidates) > 1 or any(isinstance(v, list) and len(v) > 1 for v in candidates):
            return "array sort key"
        if _has_nan(values) or any(isinstance(v, (dict, list)) for v in values if v != []):
            return "NaN or document sort key"
        if path.startswith("config.name.with.dot"):
            return "literal dotted key"
    return None


@pytest.fixture(scope="module")
def engine(module_database: str):
    """One mirror per database for the module; every example writes its own project."""
    eng = make_engine(module_database)
    yield eng
    eng.dispose()


PROJECTS = itertools.count()
#: each example loads a project, so shrinking a failure would take minutes; the failing example
#: is printed whole instead, with the filter and order in the assertion message
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]


def _load(engine, nodes: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    project = f"p{next(PROJECTS)}"
    with engine.begin() as conn:
        upsert_runs(conn, "entity", project, nodes)
        project_id = conn.execute(
            select(projects.c.id).where(projects.c.name == project)
        ).scalar_one()
        rows = conn.execute(select(runs).where(runs.c.project_id == project_id)).mappings()
        docs = [run_document(row) for row in rows]
    return project_id, docs


@settings(
    max_examples=200,
    phases=NO_SHRINK,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(nodes=run_nodes(), data=st.data())
def test_sql_matches_oracle_and_mongomock(
    engine, nodes: list[dict[str, Any]], data: st.DataObject
) -> None:
    project_id, docs = _load(engine, nodes)
    collection = mongomock.MongoClient().db.runs
    collection.insert_many([dict(doc) for doc in docs])
    for _ in range(12):
        user, canon = data.draw(filters(), label="filter")
        sign, key = data.draw(st.sampled_from("+-")), data.draw(st.sampled_from(ORDER_KEYS))
        node, order = parse_filter(user), parse_order(sign + key)
        with engine.connect() as conn:
            got = [r.name for r in conn.execute(runs_query(project_id, node, order))]
            count = conn.execute(count_query(project_id, node)).scalar_one()
        oracle = [d["name"] for d in sort_docs([d for d in docs if matches(node, d)], order)]
        assert got == oracle, (user, sign + key)
        assert count == len(got)
        if mongomock_departs(canon, docs):
            continue
        direction = -1 if order.descending else 1
        cursor = collection.find(canon).sort([(order.path, direction), ("name", 1)])
        mongo = [d["name"] for d in cursor]
        if mongomock_sort_departs(order.path, docs):
            assert sorted(got) == sorted(mongo), (user, canon)
        else:
            assert got == mongo, (user, canon, sign + key)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(nodes=run_nodes(), data=st.data())
def test_pages_are_slices_of_the_order(
    engine, nodes: list[dict[str, Any]], data: st.DataObject
) -> None:
    project_id, docs = _load(engine, nodes)
    order = parse_order(data.draw(st.sampled_from("+-")) + data.draw(st.sampled_from(ORDER_KEYS)))
    node = parse_filter(data.draw(filters())[0])
    expected = [d["name"] for d in sort_docs([d for d in docs if matches(node, d)], order)]
    size = data.draw(st.integers(1, 7))
    pages = []
    with engine.connect() as conn:
        for offset in range(0, len(expected) + size, size):
            page = fetch_page(conn, runs_query(project_id, node, order), offset, size)
            pages.extend(r["name"] for r in page)
    assert pages == expected


def test_resolve_key_covers_the_generated_keys() -> None:
    """The generator's canonical paths are what the parser resolves the user keys to."""
    for key, path in KEYS:
        assert resolve_key(key, "filters") == path
