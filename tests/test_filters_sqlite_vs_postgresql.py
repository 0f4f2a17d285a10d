"""The filter engine gives the same answers on SQLite and PostgreSQL (issue 12).

One project, a seeded one (``mirror.synth``) plus runs holding the values where databases
differ (NaN and ±Infinity, -0.0, integers beyond floats, mixed types at one key, nested arrays,
text in many scripts and cases, NUL and U+0001, long documents), is written to a mirror on each
database, and thousands of random filters and orders must give the same run ids, in the same
order, with the same count, on both; pages too. The filters are drawn from the paths and values
the project holds, so most of them match something. A second test replays the random projects
and filters of ``test_filters_differential`` on both databases.

The PostgreSQL database collates by ICU en-US (``tests/pg_server.py``), so an order or a range
that fell back to the database's own collation, or a ``$regex`` answered by PostgreSQL's own
regular expressions instead of RE2, gives a different answer here.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError
from test_filters_differential import NO_SHRINK, ORDER_KEYS, filters, run_nodes

from mirror import Api
from mirror.errors import FilterError
from mirror.query import regex
from mirror.query.evaluate import values_at
from mirror.query.filters import DATE_PATHS, parse_filter, parse_order
from mirror.query.sql import count_query, fetch_page, runs_query
from mirror.store import migrate
from mirror.store.engine import make_engine, write_transaction
from mirror.store.fields import RUN_ATTRIBUTES, flatten, run_document
from mirror.store.models import projects, runs
from mirror.store.upsert import upsert_runs
from mirror.synth import seed_project

pytestmark = pytest.mark.postgresql

NAN, INF = float("nan"), float("inf")
ENTITY, PROJECT = "acme", "mixed"
_PROJECTS = itertools.count()
#: random filters asked of the seeded project (each of both databases, with its count)
FILTERS = 1_000

NUMBERS = [NAN, INF, -INF, -0.0, 0, 1, 2, 2.5, -3, 1e300, 5e-324, 2**53 + 1, 2**70 + 1, -(2**70)]
TEXTS = [
    *("", "a", "A", "b", "B", "Z", "z", "aB", "Ab", "ab", "AB", "a b", "a-b", "a_b", "-a", "_a"),
    *("ä", "é", "e\u0301", "ß", "SS", "ss", "İ", "ı", "k", "K", "\u212a", "Ω", "ω", "日本"),
    *("😀", "𝔘", "\uffff", "\x7f", "a\nb", "b\n", "x\x00y", "\x00", "x\x01y", "\x01", "\x01\x02"),
    *("1", "10", "9", "2024-01-01T00:00:00", "NaN", "null", "true", "x" * 80, "x" * 79 + "y"),
]
SCALARS: list[Any] = [*NUMBERS, *TEXTS, True, False, None]
NESTED: list[Any] = [
    [],
    [[]],
    [[1, 2], [3]],
    [1, "a", None, [2, "b"]],
    [NAN, INF, -INF],
    [{"b": 1}, {"b": "x"}, {"b": [2, 3]}],
    {"b": {"c": [1, 2]}},
    {"b": None, "a": "ä"},
    {"b": "B"},
    list(range(120)),
    {"long": "y" * 100},
]
PATTERNS = [
    *("^a", "a$", "(?i)^b", ".", "^.$", "(?s)a.b", "a.b", "\\bb", "\\b", "\\pL", "\\p{Greek}"),
    *("(?P<n>a)b", "日", "😀", "^$", "x\\x00y", "\\x01", "[[:alpha:]]", "\\d+", "^\\w+$"),
    *("(?m)^b", "k", "(?i)k", "ß", "\\.", "-", "2024", "é", "(?i)É", "\\s", "\\S+\\s\\S+", "a|B"),
    *("(a)(b)?", "^[^a-z]*$", "\\Ax", "y\\z", "(?i)ss", "\\W"),
]


def _tricky_runs() -> list[dict[str, Any]]:
    """Runs holding each tricky value at a few keys and in a few shapes, W&B node shaped."""
    values = SCALARS + NESTED
    nodes = []
    for i, value in enumerate(values):
        other = values[(i * 7 + 3) % len(values)]
        config = {
            "mix": {"value": value, "desc": None},
            "pair": {"value": [value, other], "desc": None},
            "docs": {"value": [{"b": value}, {"b": other}], "desc": None},
        }
        if i % 3:
            config["lr"] = {"value": other, "desc": None}
        text_value = TEXTS[i % len(TEXTS)]
        node: dict[str, Any] = {
            "name": f"t{i:03d}",
            "displayName": text_value,
            "state": ["running", "finished", "crashed", "Finished"][i % 4],
            "createdAt": f"2024-02-{1 + i % 5:02d}T00:00:00",
            "tags": sorted({TEXTS[i % len(TEXTS)], TEXTS[(i * 3) % len(TEXTS)]}),
            "config": json.dumps(config, allow_nan=True),
            "summaryMetrics": json.dumps({"m": other, "acc": value}, allow_nan=True),
        }
        if i % 2:
            node["group"] = TEXTS[(i * 5) % len(TEXTS)]
            node["notes"] = f"{text_value}\n{other!r}"
        nodes.append(node)
    return nodes


def _load(engine: Engine) -> int:
    seed_project(engine, ENTITY, PROJECT, 120, 2, seed=7)
    with write_transaction(engine) as conn:
        upsert_runs(conn, ENTITY, PROJECT, _tricky_runs())
        return conn.execute(select(projects.c.id).where(projects.c.name == PROJECT)).scalar_one()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, pg_server: Any) -> Iterator[dict[str, Any]]:
    """The same project on an SQLite mirror and a PostgreSQL one, and its documents."""
    sqlite = make_engine(tmp_path_factory.mktemp("vs") / "mirror.db")
    migrate.upgrade(sqlite)
    postgresql = make_engine(pg_server.new_database())
    ids = {"sqlite": _load(sqlite), "postgresql": _load(postgresql)}
    with sqlite.connect() as conn:
        rows = conn.execute(select(runs).where(runs.c.project_id == ids["sqlite"])).mappings()
        docs = [run_document(row) for row in rows]
    yield {"engines": {"sqlite": sqlite, "postgresql": postgresql}, "ids": ids, "docs": docs}
    for conn in _READERS.values():
        conn.close()
    _READERS.clear()
    sqlite.dispose()
    postgresql.dispose()


#: one reading connection per engine for the module (no checkout and ping per question)
_READERS: dict[Engine, Connection] = {}


def _answer(engine: Engine, project_id: int, spec: Any, order: str) -> tuple[list[str], int]:
    """The run ids ``engine``'s mirror lists for a filter and order, and its count."""
    node, parsed = parse_filter(spec), parse_order(order)
    conn = _READERS.get(engine)
    if conn is None:
        conn = _READERS[engine] = engine.connect()
    try:
        names = [row.name for row in conn.execute(runs_query(project_id, node, parsed))]
        count = conn.execute(count_query(project_id, node)).scalar_one()
    finally:
        conn.rollback()  # no snapshot kept: later writes are seen
    return names, count


def _paths(docs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Every path the documents hold (attributes, dotted paths, positions) → values there."""
    found: dict[str, list[Any]] = {key: [] for key in RUN_ATTRIBUTES}
    for doc in docs:
        for key in RUN_ATTRIBUTES:
            if key in doc:
                found[key].append(doc[key])
        for path, *_ in flatten(doc):
            found.setdefault(path, []).extend(v for _, v in values_at(doc, path))
    return {path: values for path, values in found.items() if values or path in RUN_ATTRIBUTES}


class _Filters:
    """Random filters over the project's own paths and values (and the tricky ones)."""

    def __init__(self, docs: list[dict[str, Any]], seed: int) -> None:
        self.rng = random.Random(seed)
        paths = _paths(docs)
        self.paths = sorted(set(paths) - {"config", "summary_metrics"})
        self.values = {path: values[:400] for path, values in paths.items()}

    def value(self, path: str) -> Any:
        rng = self.rng
        if path in DATE_PATHS:
            dates = [v for v in self.values[path] if isinstance(v, str)]
            return rng.choice([*dates[:50], "2024-02-03T00:00:00", "2024", None])
        if self.values[path] and rng.random() < 0.7:
            return rng.choice(self.values[path])
        return rng.choice(SCALARS + NESTED if rng.random() < 0.8 else NESTED)

    def scalar(self, path: str) -> Any:
        value = self.value(path)
        return value if not isinstance(value, (list, dict)) else self.rng.choice(SCALARS)

    def leaf(self) -> dict[str, Any]:
        rng = self.rng
        path = rng.choice(self.paths)
        kind = rng.choice(
            ["value", "$eq", "$ne", "cmp", "cmp", "$in", "$nin", "$exists", "$regex", "$regex"]
            + ["$all", "$size", "$not"]
        )
        if kind == "value":
            spec: Any = self.value(path)
        elif kind in ("$eq", "$ne"):
            spec = {kind: self.value(path)}
        elif kind == "cmp":
            ops = rng.sample(["$gt", "$gte", "$lt", "$lte"], rng.randint(1, 2))
            spec = {op: self.scalar(path) for op in ops}
        elif kind in ("$in", "$nin"):
            spec = {kind: [self.value(path) for _ in range(rng.randint(1, 4))]}
        elif kind == "$exists":
            spec = {"$exists": rng.random() < 0.5}
        elif kind == "$regex":
            spec = {"$regex": rng.choice(PATTERNS)}
            if rng.random() < 0.2:
                spec["$options"] = rng.choice(["i", "m", "s", "im"])
        elif kind == "$all":
            spec = {"$all": [self.scalar(path) for _ in range(rng.randint(1, 2))]}
        elif kind == "$size":
            spec = {"$size": rng.randint(0, 3)}
        else:
            inner = rng.choice(["$gt", "$lte", "$eq", "$regex", "$in"])
            if inner == "$regex":
                spec = {"$not": {"$regex": rng.choice(PATTERNS)}}
            elif inner == "$in":
                spec = {"$not": {"$in": [self.scalar(path), self.scalar(path)]}}
            else:
                spec = {"$not": {inner: self.scalar(path)}}
        return {path: spec}

    def filter(self, depth: int = 0) -> dict[str, Any]:
        rng = self.rng
        if depth < 2 and rng.random() < 0.3:
            op = rng.choice(["$and", "$or", "$nor"])
            return {op: [self.filter(depth + 1) for _ in range(rng.randint(1, 3))]}
        if rng.random() < 0.2:
            merged: dict[str, Any] = {}
            for _ in range(2):
                merged.update(self.leaf())
            return merged
        return self.leaf()

    def order(self) -> str:
        """Half the time an attribute (cheap), else any path (a per-run lookup each)."""
        rng = self.rng
        if rng.random() < 0.5:
            path = rng.choice(["created_at", "name", "display_name", "state", "group"])
        else:
            path = rng.choice(self.paths)
        return rng.choice("+-") + path


def test_thousands_of_random_filters_answer_alike(both: dict[str, Any]) -> None:
    generate = _Filters(both["docs"], seed=12)
    engines, ids = both["engines"], both["ids"]
    asked = matched = 0
    while asked < FILTERS:
        spec, order = generate.filter(), generate.order()
        try:
            parse_filter(spec), parse_order(order)
        except FilterError:
            continue
        asked += 1
        lite = _answer(engines["sqlite"], ids["sqlite"], spec, order)
        pg = _answer(engines["postgresql"], ids["postgresql"], spec, order)
        assert pg == lite, (spec, order)
        assert lite[1] == len(lite[0]), (spec, order)
        matched += bool(lite[0])
        if asked % 50 == 0:  # pages are slices of the same order on both
            node, parsed = parse_filter(spec), parse_order(order)
            pages = {}
            for name, engine in engines.items():
                with engine.connect() as conn:
                    query = runs_query(ids[name], node, parsed)
                    pages[name] = [
                        row["name"]
                        for offset in range(0, len(lite[0]) + 7, 7)
                        for row in fetch_page(conn, query, offset, 7)
                    ]
            assert pages["postgresql"] == pages["sqlite"] == lite[0], (spec, order)
    assert matched > FILTERS // 4  # the filters mostly find something: the test has teeth


def test_every_order_answers_alike(both: dict[str, Any]) -> None:
    """Each path of the project, ascending or descending in turn, over every run."""
    engines, ids = both["engines"], both["ids"]
    generate = _Filters(both["docs"], seed=0)
    for path, sign in zip([*generate.paths, "created_at", "name"], itertools.cycle("+-")):
        lite = _answer(engines["sqlite"], ids["sqlite"], None, sign + path)
        assert _answer(engines["postgresql"], ids["postgresql"], None, sign + path) == lite, path


def test_tricky_texts_read_back_and_match_exactly(both: dict[str, Any]) -> None:
    """NUL and U+0001 survive PostgreSQL's text, in attributes and in the index."""
    engines, ids = both["engines"], both["ids"]
    for value in ("x\x00y", "\x00", "x\x01y", "\x01", "\x01\x02"):
        for spec in ({"displayName": value}, {"config.mix": value}, {"tags": value}):
            lite = _answer(engines["sqlite"], ids["sqlite"], spec, "+name")
            assert lite[0], spec
            assert _answer(engines["postgresql"], ids["postgresql"], spec, "+name") == lite
    api = Api(database=engines["postgresql"])
    shown = {
        run.id: run.name for run in api.runs(f"{ENTITY}/{PROJECT}", {"name": {"$regex": "^t"}})
    }
    assert {shown[f"t{i:03d}"] for i in range(len(TEXTS))} == set(TEXTS)
    api.close()


def test_regex_is_re2_not_postgresqls_own(both: dict[str, Any]) -> None:
    """Where PostgreSQL's regular expressions differ from RE2 (``\\b`` is a backspace there,
    ``.`` crosses newlines, ``(?P<n>)`` and ``\\pL`` are refused), the answer is RE2's."""
    engine, project_id = both["engines"]["postgresql"], both["ids"]["postgresql"]
    tricky = {f"t{i:03d}": TEXTS[i % len(TEXTS)] for i in range(len(SCALARS + NESTED))}
    plain = sorted({t for t in TEXTS if "\x00" not in t})
    for pattern in ("\\bb", "a.b", "(?P<n>a)b", "\\pL", "^[[:alpha:]]$"):
        names, _ = _answer(engine, project_id, {"displayName": {"$regex": pattern}}, "+name")
        got = {tricky[name] for name in names if name in tricky}
        assert got == {t for t in TEXTS if regex.search(pattern, t)}, pattern
        with engine.connect() as conn:
            try:
                own = conn.execute(
                    text("SELECT t FROM unnest(CAST(:texts AS text[])) AS t WHERE t ~ :p"),
                    {"texts": plain, "p": pattern},
                ).scalars()
                differs = set(own) != {t for t in plain if regex.search(pattern, t)}
            except DBAPIError:
                differs = True
        assert differs or pattern == "^[[:alpha:]]$", pattern  # the case tells them apart


def test_postgresql_text_columns_compare_bytes(pg_server: Any) -> None:
    """Migration 0006 collates the compared texts as "C" on PostgreSQL; models agree."""
    engine = make_engine(pg_server.new_database())
    try:
        assert migrate.schema_differences(engine) == []
        with engine.connect() as conn:
            collations = dict(
                conn.execute(
                    text(
                        "SELECT table_name || '.' || column_name, collation_name "
                        "FROM information_schema.columns WHERE table_name IN "
                        "('runs', 'run_fields', 'field_keys') AND data_type = 'text'"
                    )
                ).all()
            )
        assert collations["run_fields.txt"] == "C" and collations["runs.created_at"] == "C"
        assert collations["field_keys.path"] == "C" and collations["runs.display_name"] == "C"
    finally:
        engine.dispose()


def test_0006_escapes_stored_u0001_and_goes_back_down(pg_server: Any) -> None:
    """A U+0001 stored before 0006 reads back as itself after it, and after going back down."""
    from alembic import command

    from mirror.store.engine import schema_transaction

    engine = make_engine(pg_server.new_database(migrated=False))
    try:
        migrate.upgrade(engine, "0005")
        with write_transaction(engine) as conn:
            conn.execute(
                text("INSERT INTO projects (entity, name, created_at) VALUES ('e', 'p', '2024')")
            )
            conn.execute(
                text(
                    "INSERT INTO runs (project_id, name, storage_id, display_name, tags, "
                    "created_at, history_line_count, config, summary_metrics, system_metrics) "
                    "SELECT id, 'r1', 's1', :shown, '[]', '2024-01-01T00:00:00', 0, "
                    "'\\x007b7d'::bytea, '\\x007b7d'::bytea, '\\x007b7d'::bytea FROM projects"
                ),
                {"shown": "a\x01b"},
            )
        migrate.upgrade(engine)
        api = Api(database=engine)
        assert [r.name for r in api.runs("e/p", {"displayName": "a\x01b"})] == ["a\x01b"]
        api.close()
        with write_transaction(engine) as conn:
            upsert_runs(conn, "e", "p", [{"name": "r2", "displayName": "n\x00l"}])
        with schema_transaction(engine) as conn:
            cfg = migrate._config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
        with engine.connect() as conn:
            shown = conn.execute(text("SELECT display_name FROM runs ORDER BY name")).scalars()
            assert list(shown) == ["a\x01b", "n\ufffdl"]
    finally:
        engine.dispose()


@settings(
    max_examples=10,
    phases=NO_SHRINK,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(nodes=run_nodes(), data=st.data())
def test_the_differential_projects_answer_alike(
    both: dict[str, Any], nodes: list[dict[str, Any]], data: st.DataObject
) -> None:
    """``test_filters_differential``'s random projects and filters, on both databases."""
    project = f"d{next(_PROJECTS)}"
    ids = {}
    for name, engine in both["engines"].items():
        with write_transaction(engine) as conn:
            upsert_runs(conn, ENTITY, project, nodes)
            ids[name] = conn.execute(
                select(projects.c.id).where(projects.c.name == project)
            ).scalar_one()
    for _ in range(12):
        spec = data.draw(filters(), label="filter")[0]
        order = data.draw(st.sampled_from("+-")) + data.draw(st.sampled_from(ORDER_KEYS))
        lite = _answer(both["engines"]["sqlite"], ids["sqlite"], spec, order)
        pg = _answer(both["engines"]["postgresql"], ids["postgresql"], spec, order)
        assert pg == lite, (spec, order)


def test_nan_and_infinities_sort_alike(both: dict[str, Any]) -> None:
    """NaN before every number, then -Infinity ... Infinity, ascending; the reverse descending."""
    engines, ids = both["engines"], both["ids"]
    for order in ("+config.mix", "-config.mix", "+summary_metrics.acc", "-summary_metrics.m"):
        spec = {"config.mix": {"$in": [NAN, INF, -INF, 2.5, -0.0]}}
        lite = _answer(engines["sqlite"], ids["sqlite"], spec, order)
        assert len(lite[0]) >= 5
        assert _answer(engines["postgresql"], ids["postgresql"], spec, order) == lite


def test_glob_forms_mean_the_same_on_postgresql_as_glob_on_sqlite(
    pg_server: Any, tmp_path: Any
) -> None:
    """On PostgreSQL a pattern's GLOB form is run as a POSIX regular expression
    (``regex.glob_as_posix``): for every pattern here and every text without an escape (NUL or
    U+0001, which never reach it), it selects exactly what SQLite's GLOB does, newlines,
    classes, punctuation, case and anchors included."""
    patterns = [*PATTERNS, "^a.*b$", "a.+b", "^x{3}", "[*]", "a?b", "[0-9]+-", "(?i)^k", "^$"]
    globs = sorted({g.pattern for p in patterns if (g := regex.as_glob(p)) is not None})
    globs += ["*[*]*", "*[?]*", "*[[]*", "a*", "*a", "?", "", "*.*", "*(*", "*\\*", "*]*", "*$*"]
    texts = [t for t in TEXTS if "\x00" not in t and "\x01" not in t]
    texts += ["a*b", "a?b", "a[b", "a]b", "a.b", "a(b", "a\\b", "a$b", "x\nx\ny", "aXb\n"]
    lite = make_engine(tmp_path / "glob.db")
    pg = make_engine(pg_server.new_database(migrated=False))
    with lite.connect() as sqlite_conn, pg.connect() as pg_conn:
        for glob in globs:
            want = {
                t
                for t in texts
                if sqlite_conn.execute(text("SELECT :t GLOB :g"), {"t": t, "g": glob}).scalar()
            }
            got = pg_conn.execute(
                text('SELECT t FROM unnest(CAST(:texts AS text[])) AS t WHERE t COLLATE "C" ~ :p'),
                {"texts": texts, "p": regex.glob_as_posix(glob)},
            ).scalars()
            assert set(got) == want, (glob, regex.glob_as_posix(glob))
    lite.dispose()
    pg.dispose()


def test_0007_orders_live_runs_by_index_and_stores_documents_out_of_line(pg_server: Any) -> None:
    """Migration 0007 gives PostgreSQL the listing's order as an index over live runs, which
    ``db check`` misses when it is gone, and keeps the packed documents out of the rows."""
    engine = make_engine(pg_server.new_database())
    try:
        with engine.connect() as conn:
            storage = dict(
                conn.execute(
                    text(
                        "SELECT attname, attstorage FROM pg_attribute WHERE attrelid IN "
                        "('runs'::regclass, 'history_chunks'::regclass) AND attname IN "
                        "('config', 'summary_metrics', 'system_metrics', 'history_keys', 'data')"
                    )
                ).all()
            )
            options = conn.execute(
                text("SELECT reloptions FROM pg_class WHERE oid = 'runs'::regclass")
            ).scalar_one()
        assert storage == dict.fromkeys(storage, "e") and len(storage) == 5
        assert options == ["toast_tuple_target=128"]
        assert migrate.schema_differences(engine) == []
        with write_transaction(engine) as conn:
            conn.execute(text("DROP INDEX ix_runs_live_order"))
        assert migrate.schema_differences(engine) == [("add_index", "ix_runs_live_order")]
    finally:
        engine.dispose()
