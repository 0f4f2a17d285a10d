"""The filter engine, operator by operator, key by key: every answer from SQL and the oracle alike.

Also the places where mongomock departs from MongoDB (see test_filters_differential.py): each is
checked here against MongoDB's documented behaviour.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import mongomock
import pytest
from sqlalchemy import inspect, select

from mirror.errors import FilterError
from mirror.query.evaluate import matches, sort_docs
from mirror.query.filters import Order, parse_filter, parse_order
from mirror.query.sql import count_query, runs_query
from mirror.store.engine import make_engine
from mirror.store.fields import run_document
from mirror.store.models import projects, runs
from mirror.store.upsert import upsert_runs

NAN = float("nan")
EVIL = "x'; DROP TABLE runs;--"


def _config(**values: Any) -> dict[str, Any]:
    return {key: {"value": value, "desc": None} for key, value in values.items()}


NODES = [
    {
        "name": "r1",
        "displayName": "alpha",
        "state": "finished",
        "group": "g1",
        "jobType": "train",
        "notes": "first",
        "description": "d1",
        "sweepName": "sw1",
        "host": "h1",
        "commit": "c1",
        "user": {"username": "ann", "name": "Ann"},
        "createdAt": "2024-01-01T00:00:00",
        "heartbeatAt": "2024-01-01T01:00:00",
        "updatedAt": "2024-01-01T02:00:00",
        "tags": ["a", "b"],
        "config": _config(
            lr=0.1,
            flag=True,
            experiment_name="foo",
            model={"depth": 3, "act": "relu"},
            lst=[3, 1, 2],
            docs=[{"b": 1}, {"b": [5, 6]}],
            **{"name.with.dot": 7, EVIL: "evil"},
        ),
        "summaryMetrics": {"acc": 0.5, "loss": NAN},
    },
    {
        "name": "r2",
        "displayName": "beta",
        "state": "running",
        "jobType": "eval",
        "createdAt": "2024-01-02T00:00:00",
        "tags": ["b"],
        "config": _config(lr=1, flag=False, experiment_name="bar", lst=[], model={"depth": 5}),
        "summaryMetrics": {"acc": 0.9, "loss": 0.2},
    },
    {
        "name": "r3",
        "displayName": "Gamma",
        "state": "crashed",
        "createdAt": "2024-01-03T00:00:00",
        "tags": [],
        "config": _config(lr="high", lst=[[1, 2]], flag=None),
        "summaryMetrics": {"acc": "n/a", "loss": float("inf")},
    },
    {
        "name": "r4",
        "createdAt": "2024-01-04T00:00:00",
        "tags": ["c", "') OR 1=1 --"],
        "config": _config(lr=float("-inf"), lst=7, model={"act": "tanh", "depth": 3}),
        "summaryMetrics": {"acc": None, "loss": 1},
    },
]


@pytest.fixture(scope="module")
def store(module_database: str):
    """A mirror on each database with the runs above, one of them deleted, another project
    beside."""
    engine = make_engine(module_database)
    with engine.begin() as conn:
        upsert_runs(conn, "e", "p", NODES)
        upsert_runs(conn, "e", "p", [{"name": "gone", "createdAt": "2024-01-05T00:00:00"}])
        conn.execute(runs.update().where(runs.c.name == "gone").values(deleted_at="2024-02-01"))
        upsert_runs(conn, "e", "other", [{**NODES[0], "name": "elsewhere"}])
        project_id = conn.execute(select(projects.c.id).where(projects.c.name == "p")).scalar_one()
        rows = conn.execute(select(runs).where(runs.c.project_id == project_id)).mappings()
        docs = [run_document(row) for row in rows if row["deleted_at"] is None]
    yield engine, project_id, docs
    engine.dispose()


def names(store, filters: dict[str, Any] | None, order: str | None = "+name") -> list[str]:
    """The SQL answer, after checking that the count and the oracle agree with it."""
    engine, project_id, docs = store
    node, parsed = parse_filter(filters), parse_order(order)
    with engine.connect() as conn:
        got = [row.name for row in conn.execute(runs_query(project_id, node, parsed))]
        assert conn.execute(count_query(project_id, node)).scalar_one() == len(got)
    oracle = [d["name"] for d in sort_docs([d for d in docs if matches(node, d)], parsed)]
    assert got == oracle
    return got


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (None, ["r1", "r2", "r3", "r4"]),
        ({}, ["r1", "r2", "r3", "r4"]),
        ({"config.lr": 0.1}, ["r1"]),
        ({"config.lr": {"$eq": 1.0}}, ["r2"]),
        ({"config.lr": {"$ne": 1}}, ["r1", "r3", "r4"]),
        ({"config.lr": {"$gt": 0.1}}, ["r2"]),
        ({"config.lr": {"$gte": 0.1}}, ["r1", "r2"]),
        ({"config.lr": {"$lt": 0.1}}, ["r4"]),
        ({"config.lr": {"$lte": 0.1}}, ["r1", "r4"]),
        ({"config.lr": {"$gt": "a"}}, ["r3"]),
        ({"config.lr": {"$gt": 0, "$lt": 0.5}}, ["r1"]),
        ({"config.lr": {"$in": [1, "high"]}}, ["r2", "r3"]),
        ({"config.lr": {"$nin": [1, "high"]}}, ["r1", "r4"]),
        ({"config.lr": {"$in": []}}, []),
        ({"config.lr": {"$nin": []}}, ["r1", "r2", "r3", "r4"]),
        ({"config.model": {"$exists": True}}, ["r1", "r2", "r4"]),
        ({"config.model": {"$exists": False}}, ["r3"]),
        ({"config.flag": {"$exists": True}}, ["r1", "r2", "r3"]),
        ({"config.lr": {"$regex": "^HI", "$options": "i"}}, ["r3"]),
        ({"config.lr": {"$regex": "^HI"}}, []),
        ({"config.lr": re.compile("^h")}, ["r3"]),
        ({"displayName": {"$regex": "^g", "$options": "i"}}, ["r3"]),
        ({"displayName": {"$not": {"$regex": "^g", "$options": "i"}}}, ["r1", "r2", "r4"]),
        ({"displayName": {"$not": re.compile("a$")}}, ["r4"]),
        ({"config.lr": {"$not": {"$gt": 0.5}}}, ["r1", "r3", "r4"]),
        ({"tags": {"$all": ["a", "b"]}}, ["r1"]),
        ({"tags": {"$all": []}}, []),
        ({"tags": {"$size": 0}}, ["r3"]),
        ({"tags": {"$size": 2}}, ["r1", "r4"]),
        ({"config.lst": {"$size": 1}}, ["r3"]),
        ({"tags": "b"}, ["r1", "r2"]),
        ({"tags": {"$ne": "b"}}, ["r3", "r4"]),
        ({"tags": {"$in": ["a", "c"]}}, ["r1", "r4"]),
        ({"tags": {"$nin": ["a", "c"]}}, ["r2", "r3"]),
        ({"tags": ["a", "b"]}, ["r1"]),
        ({"tags": ["b", "a"]}, []),
        ({"tags.0": "c"}, ["r4"]),
        ({"config.lst": 2}, ["r1"]),
        ({"config.lst": [1, 2]}, ["r3"]),
        ({"config.lst": 1}, ["r1"]),
        ({"config.lst.1": 1}, ["r1"]),
        ({"config.lst.0.1": 2}, ["r3"]),
        ({"config.lst": []}, ["r2"]),
        ({"config.model.depth": 3}, ["r1", "r4"]),
        ({"config.model": {"depth": 3, "act": "relu"}}, ["r1"]),
        ({"config.model": {"act": "relu", "depth": 3}}, []),
        ({"config.docs.b": 5}, ["r1"]),
        ({"config.docs.b": 1}, ["r1"]),
        ({"config.docs.1.b": 6}, ["r1"]),
        ({"config.flag": None}, ["r3", "r4"]),
        ({"config.flag": {"$ne": None}}, ["r1", "r2"]),
        ({"summary.acc": None}, ["r4"]),
        ({"summary.acc": {"$in": [None, 0.9]}}, ["r2", "r4"]),
        ({"summary.acc": {"$gt": 0}}, ["r1", "r2"]),
        ({"summary.loss": {"$gt": 100}}, ["r3"]),
        ({"summary.loss": {"$lt": 0.5}}, ["r2"]),
        ({"$and": [{"tags": "b"}, {"config.lr": {"$lt": 1}}]}, ["r1"]),
        (
            {"$or": [{"config.experiment_name": "foo"}, {"config.experiment_name": "bar"}]},
            ["r1", "r2"],
        ),
        ({"$nor": [{"tags": "b"}, {"state": "crashed"}]}, ["r4"]),
        ({"tags": "b", "state": "running"}, ["r2"]),
        ({"config.name.with.dot": 7}, ["r1"]),
        ({"config.nothing": None}, ["r1", "r2", "r3", "r4"]),
        ({"config.nothing": {"$exists": True}}, []),
        ({"config.nothing": {"$ne": 3}}, ["r1", "r2", "r3", "r4"]),
    ],
)
def test_operators(store, filters: dict[str, Any] | None, expected: list[str]) -> None:
    assert names(store, filters) == expected


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("name", "r2", ["r2"]),
        ("displayName", "alpha", ["r1"]),
        ("display_name", "alpha", ["r1"]),
        ("state", "running", ["r2"]),
        ("group", "g1", ["r1"]),
        ("jobType", "eval", ["r2"]),
        ("job_type", "eval", ["r2"]),
        ("notes", "first", ["r1"]),
        ("description", "d1", ["r1"]),
        ("sweep", "sw1", ["r1"]),
        ("sweepName", "sw1", ["r1"]),
        ("sweep_name", "sw1", ["r1"]),
        ("host", "h1", ["r1"]),
        ("commit", "c1", ["r1"]),
        ("username", "ann", ["r1"]),
        ("createdAt", "2024-01-02T00:00:00", ["r2"]),
        ("created_at", "2024-01-02T00:00:00", ["r2"]),
        ("heartbeatAt", "2024-01-01T01:00:00", ["r1"]),
        ("heartbeat_at", "2024-01-01T01:00:00", ["r1"]),
        ("updatedAt", "2024-01-01T02:00:00", ["r1"]),
        ("updated_at", "2024-01-01T02:00:00", ["r1"]),
        ("tags", "c", ["r4"]),
        ("config.experiment_name", "foo", ["r1"]),
        ("config.lr.value", 1, ["r2"]),
        ("config.model.value.depth", 5, ["r2"]),
        ("config.model.value", {"depth": 5}, ["r2"]),
        ("summary_metrics.acc", 0.9, ["r2"]),
        ("summary.acc", 0.9, ["r2"]),
        ("summaryMetrics.acc", 0.9, ["r2"]),
    ],
)
def test_every_key_and_alias(store, key: str, value: Any, expected: list[str]) -> None:
    assert names(store, {key: value}) == expected


def test_run_attributes_missing_and_null(store) -> None:
    assert names(store, {"group": None}) == ["r2", "r3", "r4"]
    assert names(store, {"group": {"$exists": False}}) == ["r2", "r3", "r4"]
    assert names(store, {"group": {"$ne": "g1"}}) == ["r2", "r3", "r4"]
    assert names(store, {"group": {"$nin": ["g1", None]}}) == []
    assert names(store, {"group": {"$in": ["g1", None]}}) == ["r1", "r2", "r3", "r4"]
    assert names(store, {"displayName": {"$gt": "b"}}) == ["r2"]
    assert names(store, {"displayName": 5}) == []
    assert names(store, {"displayName": {"$size": 1}}) == []


def test_dates_compare_as_text_and_datetimes_are_accepted(store) -> None:
    assert names(store, {"createdAt": {"$gte": "2024-01-03"}}) == ["r3", "r4"]
    since = datetime(2024, 1, 2, 1, tzinfo=timezone.utc)
    assert names(store, {"created_at": {"$lt": since}}) == ["r1", "r2"]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (None, ["r4", "r3", "r2", "r1"]),
        ("created_at", ["r1", "r2", "r3", "r4"]),
        ("+createdAt", ["r1", "r2", "r3", "r4"]),
        ("-heartbeat_at", ["r1", "r2", "r3", "r4"]),
        ("displayName", ["r4", "r3", "r1", "r2"]),
        ("-display_name", ["r2", "r1", "r3", "r4"]),
        ("summary.acc", ["r4", "r1", "r2", "r3"]),
        ("-summary_metrics.acc", ["r3", "r2", "r1", "r4"]),
        ("summary.loss", ["r1", "r2", "r4", "r3"]),
        ("-summary.loss", ["r3", "r4", "r2", "r1"]),
        ("config.lr", ["r4", "r1", "r2", "r3"]),
        ("config.lr.value", ["r4", "r1", "r2", "r3"]),
        ("-config.model.value.depth", ["r2", "r1", "r4", "r3"]),
        ("config.lst", ["r2", "r1", "r4", "r3"]),
        ("-config.lst", ["r3", "r4", "r1", "r2"]),
        ("tags", ["r3", "r4", "r1", "r2"]),
        ("-tags", ["r4", "r1", "r2", "r3"]),
        ("config.flag", ["r3", "r4", "r2", "r1"]),
    ],
)
def test_order(store, order: str | None, expected: list[str]) -> None:
    assert names(store, None, order) == expected


def test_only_the_projects_live_runs(store) -> None:
    assert "gone" not in names(store, None)
    assert "elsewhere" not in names(store, {"config.lr": 0.1})


# MongoDB behaviour where mongomock departs from it (named in test_filters_differential.py)


def _mongomock(docs: list[dict[str, Any]], filters: dict[str, Any]) -> list[str]:
    collection = mongomock.MongoClient().db.runs
    collection.insert_many([dict(doc) for doc in docs])
    return sorted(doc["name"] for doc in collection.find(filters))


def test_bool_is_not_a_number(store) -> None:
    """MongoDB: true is in the bool bracket, 1 in the numbers; mongomock has True == 1."""
    assert names(store, {"config.lr": 1}) == ["r2"]
    assert names(store, {"config.flag": 1}) == []
    assert names(store, {"config.flag": True}) == ["r1"]
    assert names(store, {"config.flag": {"$gte": 0}}) == []
    assert names(store, {"config.flag": {"$gt": False}}) == ["r1"]
    assert _mongomock(store[2], {"config.flag": 1}) == ["r1"]  # the departure, still there


def test_nan_equals_itself_and_compares_with_nothing(store) -> None:
    """MongoDB: {x: NaN} matches NaN; NaN fails every $gt/$lt against numbers."""
    assert names(store, {"summary.loss": NAN}) == ["r1"]
    assert names(store, {"summary.loss": {"$in": [NAN, 1]}}) == ["r1", "r4"]
    assert names(store, {"summary.loss": {"$gte": NAN}}) == ["r1"]
    assert names(store, {"summary.loss": {"$gt": NAN}}) == []
    assert names(store, {"summary.loss": {"$lt": float("inf")}}) == ["r2", "r4"]
    assert names(store, {"summary.loss": {"$ne": NAN}}) == ["r2", "r3", "r4"]
    assert _mongomock(store[2], {"summary_metrics.loss": NAN}) == []  # the departure


def test_nan_sorts_before_all_numbers(store) -> None:
    assert names(store, None, "summary.loss")[:2] == ["r1", "r2"]
    assert names(store, None, "-summary.loss")[-1] == "r1"


def test_arrays_sort_by_smallest_ascending_and_largest_descending(store) -> None:
    """MongoDB: [3, 1, 2] sorts as 1 ascending and as 3 descending; mongomock uses the first."""
    docs = [
        {"name": "x", "v": [3, 1, 2]},
        {"name": "y", "v": 2},
        {"name": "z", "v": []},
        {"name": "w"},
    ]
    up = sort_docs(docs, Order("v", False))
    down = sort_docs(docs, Order("v", True))
    assert [d["name"] for d in up] == ["z", "w", "x", "y"]
    assert [d["name"] for d in down] == ["x", "y", "w", "z"]


def test_null_on_a_dead_end_path_is_missing(store) -> None:
    """MongoDB: a path through a scalar or past an array's end is missing, so it matches null;
    mongomock finds no value at all there."""
    docs = store[2]
    assert names(store, {"config.lr.x": None}) == ["r1", "r2", "r3", "r4"]
    assert names(store, {"config.lst.5": None}) == ["r1", "r2", "r3", "r4"]
    assert names(store, {"config.lst.0": {"$not": {"$gt": 100}}}) == ["r1", "r2", "r3", "r4"]
    assert _mongomock(docs, {"config.lst.5": None}) == []  # the departure
    assert names(store, {"config.nothing": {"$gte": None}}) == ["r1", "r2", "r3", "r4"]
    assert names(store, {"config.nothing": {"$gt": None}}) == []


def test_size_only_matches_arrays(store) -> None:
    """MongoDB: $size is for arrays; mongomock takes the length of objects too."""
    assert names(store, {"config.model": {"$size": 2}}) == []
    assert _mongomock(store[2], {"config.model": {"$size": 2}}) == ["r1", "r4"]


def test_eq_operator_looks_inside_arrays(store) -> None:
    """MongoDB: {$eq: [1, 2]} also matches an array holding [1, 2], as the implicit form does."""
    assert names(store, {"config.lst": {"$eq": [1, 2]}}) == ["r3"]
    assert _mongomock(store[2], {"config.lst": {"$eq": [1, 2]}}) == []


def test_document_equality_keeps_key_order(store) -> None:
    """MongoDB compares documents field by field in order; Python dicts ignore order."""
    assert names(store, {"config.model": {"depth": 3, "act": "tanh"}}) == []
    assert names(store, {"config.model": {"act": "tanh", "depth": 3}}) == ["r4"]


def test_literal_dotted_config_key(store) -> None:
    """A W&B config key may contain dots; MongoDB would not reach it, the mirror does."""
    assert names(store, {"config.name.with.dot": {"$gt": 5}}) == ["r1"]
    assert names(store, None, "-config.name.with.dot")[0] == "r1"


def test_sql_looking_keys_and_values_are_plain_data(store) -> None:
    engine = store[0]
    assert names(store, {f"config.{EVIL}": "evil"}) == ["r1"]
    assert names(store, {"tags": "') OR 1=1 --"}) == ["r4"]
    assert names(store, {"displayName": "') OR 1=1 --"}) == []
    assert names(store, {"config.lr": {"$regex": re.escape("') OR 1=1 --")}}) == []
    assert names(store, {"state": {"$in": ["x'; DROP TABLE runs;--", "running"]}}) == ["r2"]
    assert names(store, None, f"-config.{EVIL}")[0] == "r1"
    with engine.connect() as conn:
        assert "runs" in inspect(conn).get_table_names()
        assert conn.execute(select(runs.c.id)).first() is not None
    query = runs_query(store[1], parse_filter({f"config.{EVIL}": EVIL}), parse_order(None))
    compiled = query.compile(engine)
    assert EVIL not in str(compiled)  # the key path and the value travel as parameters
    assert f"config.{EVIL}" in compiled.params.values() and EVIL in compiled.params.values()


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (
            {"$or": [{}, {"config.lr": {"$gt": [1]}}]},
            "filters.$or[1].config.lr: $gt needs a single value",
        ),
        ({"foo": {"$bogus": 1}}, "filters.foo: unknown operator $bogus"),
        ({"config.lr": {"$bogus": 1}}, "filters.config.lr: unknown operator $bogus"),
        ({"$and": {}}, "filters.$and: needs a list of filters"),
        ({"$or": []}, "filters.$or: needs a list of filters"),
        ({"$nor": [{"tags": 1}, 3]}, "filters.$nor[1]: needs a filter object, got int"),
        ({"$where": "1"}, "filters.$where: $where is not supported by the mirror"),
        ({"$not": {"tags": "a"}}, "filters.$not: $not applies to a field"),
        ({"foo": 1}, "filters.foo: unknown key foo; valid keys are name, displayName"),
        ({"summary": {"$gt": 1}, "bar.baz": 1}, "filters.bar.baz: unknown key bar"),
        ({"state.x": 1}, "filters.state.x: state is a text field"),
        ({"config..a": 1}, "filters.config..a: 'config..a' is not a field path"),
        ({"config.a": {"$gt": 1, "b": 2}}, "filters.config.a: cannot mix operators and plain keys"),
        ({"tags": {"$in": "a"}}, "filters.tags: $in needs a list"),
        ({"tags": {"$nin": 3}}, "filters.tags: $nin needs a list"),
        ({"tags": {"$all": "a"}}, "filters.tags: $all needs a list"),
        ({"tags": {"$size": -1}}, "filters.tags: $size needs a whole number >= 0"),
        ({"tags": {"$size": 1.5}}, "filters.tags: $size needs a whole number >= 0"),
        ({"tags": {"$exists": "yes"}}, "filters.tags: $exists needs true or false"),
        ({"tags": {"$regex": 3}}, "filters.tags: $regex needs a text pattern"),
        ({"tags": {"$regex": "("}}, "filters.tags: $regex: invalid pattern '('"),
        ({"tags": {"$regex": "a", "$options": "z"}}, "filters.tags: $regex: unknown option 'z'"),
        ({"tags": {"$options": "i"}}, "filters.tags: $options needs $regex"),
        ({"tags": {"$not": "a"}}, "filters.tags.$not: needs an operator object"),
        ({"tags": {"$not": {}}}, "filters.tags.$not: needs an operator object"),
        ({"tags": {"$not": {"$bogus": 1}}}, "filters.tags.$not: unknown operator $bogus"),
        ({"tags": {"$eq": {1, 2}}}, "filters.tags: $eq: cannot compare with a set"),
        ({"config.a": {"$gte": {"b": 1}}}, "filters.config.a: $gte needs a single value"),
        ([{"tags": "a"}], "filters: needs a filter object, got list"),
    ],
)
def test_filter_errors_name_the_path(filters: Any, message: str) -> None:
    with pytest.raises(FilterError) as raised:
        parse_filter(filters)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ("foo", "order: unknown key foo"),
        ("-created_at,name", "order: '-created_at,name' names more than one key"),
        ("-", "order: '-' needs a key after its sign"),
        ("+config", "order: config needs a key below it"),
        ("-summary", "order: summary needs a key below it"),
        (3, "order: needs a key such as '-created_at', got int"),
    ],
)
def test_order_errors(order: Any, message: str) -> None:
    with pytest.raises(FilterError) as raised:
        parse_order(order)
    assert str(raised.value).startswith(message)


def test_parse_order_forms() -> None:
    assert parse_order(None) == Order("createdAt", True)
    assert parse_order("") == Order("createdAt", True)
    assert parse_order(None, default="+name") == Order("name", False)
    assert parse_order("summary.acc") == Order("summary_metrics.acc", False)
    assert parse_order("-config.a.value.b") == Order("config.a.b", True)


def test_tree_is_immutable_and_independent_of_the_input() -> None:
    value = {"depth": 3}
    node = parse_filter({"config.model": value})
    value["depth"] = 4
    assert node.value == {"depth": 3}
    with pytest.raises(AttributeError):
        node.path = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"createdAt": {"$gt": 1704067200}}, "filters.createdAt: $gt: dates are ISO text"),
        ({"created_at": "yesterday"}, "'yesterday' is not an ISO date"),
        ({"config.x": {"$in": [{"$regex": "a"}]}}, "cannot nest operators ($regex)"),
        ({"tags": {"$all": [{"$elemMatch": {"a": 1}}]}}, "cannot nest operators ($elemMatch)"),
    ],
)
def test_filters_that_would_silently_match_nothing_are_errors(filters, message) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(filters)
    assert message in str(info.value)


def test_zoned_dates_and_numpy_values_mean_what_they_say() -> None:
    import numpy as np

    zoned = parse_filter({"createdAt": {"$gte": "2024-01-02T01:00:00+01:00"}})
    assert zoned.value == "2024-01-02T00:00:00"
    node = parse_filter({"config.seed": np.int64(5), "config.on": np.bool_(True)})
    assert [c.value for c in node.children] == [5, True]
    assert type(node.children[1].value) is bool


def test_a_literal_dotted_key_beside_a_nested_one_lists_the_run_once(db_engine) -> None:
    import json

    engine = db_engine
    config = {"a.b": {"value": 1}, "a": {"value": {"b": 9}}}
    nodes = [
        {"name": "r1", "createdAt": "2024-01-01T00:00:00", "config": json.dumps(config)},
        {"name": "r2", "createdAt": "2024-01-01T00:00:00", "config": '{"a": {"value": {"b": 5}}}'},
    ]
    with engine.begin() as conn:
        upsert_runs(conn, "e", "p", nodes)
        project_id = conn.execute(select(projects.c.id)).scalar()
        for order in ("+config.a.b", "-config.a.b"):
            query = runs_query(project_id, parse_filter(None), parse_order(order))
            listed = [row.name for row in conn.execute(query)]
            assert sorted(listed) == ["r1", "r2"]
        assert [
            r.name
            for r in conn.execute(
                runs_query(project_id, parse_filter({"config.a.b": 9}), parse_order(None))
            )
        ] == ["r1"]
