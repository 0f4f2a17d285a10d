"""The compact store (schema 0005): lossless packing, bounded document keys, the fast flattening
held to a plain reference, bulk writes, statistics refreshed when stale, and the upgrade of an
older mirror that keeps every run and row."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from legacy_mirror import legacy_history, legacy_runs, write_legacy_project
from sqlalchemy import func, select

from mirror import Api
from mirror.query.evaluate import matches, sort_docs
from mirror.query.filters import parse_filter, parse_order
from mirror.store import history as codec
from mirror.store import migrate
from mirror.store.engine import (
    analyze_if_stale,
    make_engine,
    read_transaction,
    schema_transaction,
    write_transaction,
)
from mirror.store.fields import (
    MAX_INDEXED_ARRAY,
    SHORT_DOCUMENT,
    Kind,
    canonical,
    document_key,
    flatten,
    run_document,
    typed,
)
from mirror.store.models import history_chunks, run_fields, runs
from mirror.store.packing import pack_text, unpack_text
from mirror.store.read import find_project, iter_rows
from mirror.store.upsert import append_histories, append_history, upsert_runs

# ---------------------------------------------------------------- flattening


def reference_flatten(doc: dict[str, Any]) -> list[tuple[str, int, int, Any, Any]]:
    """The flattening rules written plainly, one ``typed`` call per value (the old generator)."""
    seen: set[str] = set()
    out = []
    for key, value in doc.items():
        for path, elem, kind, num, txt in _reference(key, value, 0):
            if elem == 0:
                if path in seen:
                    elem = 1
                else:
                    seen.add(path)
            out.append((path, elem, kind, num, txt))
    return out


def _reference(path: str, value: Any, elem: int) -> Iterator[tuple[str, int, int, Any, Any]]:
    kind, num, txt = typed(value)
    yield path, elem, int(kind), num, txt
    if kind is Kind.OBJECT:
        if "_type" in value:
            yield from _reference(f"{path}._type", value["_type"], elem)
            return
        for key, sub in value.items():
            yield from _reference(f"{path}.{key}", sub, elem)
    elif kind is Kind.ARRAY and len(value) <= MAX_INDEXED_ARRAY:
        for i, item in enumerate(value):
            ikind, inum, itxt = typed(item)
            yield path, 1, int(ikind), inum, itxt
            if ikind is Kind.OBJECT:
                if "_type" in item:
                    yield from _reference(f"{path}._type", item["_type"], 1)
                else:
                    for key, sub in item.items():
                        yield from _reference(f"{path}.{key}", sub, 1)
            yield from _reference(f"{path}.{i}", item, elem)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 2.0, 1e16, 1e300, 0.5, 1e-5]),
    st.text(max_size=8),
    st.sampled_from(["a.b", "1.0", "e+5", '"q"', "\\", "\x1f", "é", "a\nb"]),
)
keys = st.one_of(st.sampled_from(["a", "b", "a.b", "_type", "0", "1", "x y"]), st.text(max_size=4))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=40,
)


def _same(a: list[Any], b: list[Any]) -> bool:
    return json.dumps(a, allow_nan=True) == json.dumps(b, allow_nan=True)


@settings(max_examples=300, deadline=None)
@given(config=st.dictionaries(keys, values, max_size=6), summary=st.dictionaries(keys, values))
def test_flatten_matches_the_plain_rules(config: dict[str, Any], summary: dict[str, Any]) -> None:
    doc = {"tags": ["a", "b"], "config": config, "summary_metrics": summary}
    assert _same(flatten(doc), reference_flatten(doc))


def test_flatten_leaves_out_run_attributes_and_expands_long_arrays_whole() -> None:
    doc = {"name": "r", "state": "finished", "tags": [], "config": {"big": list(range(101))}}
    rows = flatten(doc)
    assert {path for path, *_ in rows} == {"tags", "config", "config.big"}


@settings(max_examples=300, deadline=None)
@given(a=values, b=values)
def test_document_keys_are_equal_exactly_when_the_values_are(a: Any, b: Any) -> None:
    if not isinstance(a, (list, dict)) or not isinstance(b, (list, dict)):
        return
    assert (document_key(a) == document_key(b)) == (canonical(a) == canonical(b))
    for value in (a, b):
        key, text = document_key(value), canonical(value)
        assert len(key) <= SHORT_DOCUMENT
        assert key == text if len(text) <= SHORT_DOCUMENT else key[:40] == text[:40]


def test_document_keys_sort_like_their_text_unless_a_long_prefix_is_shared() -> None:
    values = [[1, 2], [1, 10], {"a": 1}, list(range(40)), [2] * 30, [1] * 40, [1] * 40 + [0]]
    short = [v for v in values if len(canonical(v)) <= SHORT_DOCUMENT]
    assert sorted(short, key=document_key) == sorted(short, key=canonical)
    assert document_key([1, 2.0]) == document_key([1, 2])  # MongoDB: 2.0 == 2
    assert document_key([1] * 40) != document_key([1] * 40 + [0])


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        "",
        '{"a": NaN, "b": -Infinity, "c": -0.0, "d": 123456789012345678901234567890}',
        '{  "spaced" :  [1,2 , 3] ,"é": "日本語"}\n',
        json.dumps({f"key{i}": i / 7 for i in range(500)}),
    ],
)
def test_packing_gives_back_the_exact_text(text: str) -> None:
    packed = pack_text(text)
    assert unpack_text(packed) == text
    if len(text) > 1000:
        assert len(packed) < len(text) / 2


def test_runs_documents_are_stored_packed_and_read_back_byte_exact(db_engine) -> None:
    engine = db_engine
    config = '{"lr": {"value": 1e-3, "desc": null},   "n": {"value": NaN}}'
    summary = json.dumps({f"m{i}": i * 0.125 for i in range(200)})
    with write_transaction(engine) as conn:
        upsert_runs(conn, "e", "p", [{"name": "r", "config": config, "summaryMetrics": summary}])
    with read_transaction(engine) as conn:
        row = conn.execute(select(runs)).mappings().one()
        stored = conn.exec_driver_sql("SELECT length(summary_metrics) FROM runs").scalar()
    assert (row["config"], row["summary_metrics"], row["system_metrics"]) == (config, summary, "{}")
    assert stored < len(summary) / 2


# ---------------------------------------------------------------- writing


def test_a_partial_update_keeps_or_rebuilds_the_index_as_its_fields_say(db_engine) -> None:
    engine = db_engine
    node = {"name": "r", "tags": ["a"], "config": {"lr": {"value": 0.1}}, "summaryMetrics": {}}
    with write_transaction(engine) as conn:
        run_id = upsert_runs(conn, "e", "p", [node])["r"]
        before = _index_rows(conn, run_id)
        upsert_runs(conn, "e", "p", [{"name": "r", "notes": "only notes"}])
        assert _index_rows(conn, run_id) == before
        upsert_runs(conn, "e", "p", [{"name": "r", "tags": ["b"]}])  # config stays as stored
        texts = {txt for *_, txt in _index_rows(conn, run_id)}
    assert "b" in texts and "a" not in texts and '{"lr":0.1}' in texts


def _index_rows(conn: Any, run_id: int) -> list[tuple[Any, ...]]:
    c = run_fields.c
    query = select(c.key_id, c.elem, c.kind, c.num, c.txt).where(c.run_id == run_id)
    return sorted(conn.execute(query.order_by(c.seq)).all(), key=repr)


def test_appending_many_streams_at_once_is_appending_each(db_engine, monkeypatch) -> None:
    engine = db_engine
    monkeypatch.setattr(codec, "CHUNK_ROWS", 4)
    rows = [{"_step": s, "loss": s / 3} for s in range(10)]
    with write_transaction(engine) as conn:
        ids = upsert_runs(conn, "e", "p", [{"name": n} for n in ("a", "b", "c")])
        append_history(conn, ids["c"], rows[:3])
        items = [
            (ids["a"], "history", rows, 0),
            (ids["a"], "events", [{"cpu": 1.0}, {"cpu": 2.0}], 0),
            (ids["b"], "history", [*rows[:5], rows[2], *rows[5:]], 0),  # a step going back
            (ids["c"], "history", rows, 0),  # appended after what it holds
            (ids["a"], "history", [{"_step": 10, "loss": 1.0}], 0),  # the same stream again
        ]
        assert append_histories(conn, items) == [10, 2, 10, 7, 1]
        assert list(iter_rows(conn, ids["a"])) == [*rows, {"_step": 10, "loss": 1.0}]
        assert list(iter_rows(conn, ids["b"])) == rows == list(iter_rows(conn, ids["c"]))
        assert list(iter_rows(conn, ids["a"], "events")) == [{"cpu": 1.0}, {"cpu": 2.0}]
        counts = conn.execute(
            select(history_chunks.c.row_count)
            .where(history_chunks.c.run_id == ids["a"], history_chunks.c.stream == "history")
            .order_by(history_chunks.c.first_step)
        ).scalars()
        assert list(counts) == [4, 4, 2, 1]  # a short tail is merged once it fills a chunk


def test_statistics_are_refreshed_only_when_the_runs_have_grown_or_shrunk(engine) -> None:
    assert analyze_if_stale(engine) is False  # nothing to gather
    for count, refreshed in ((10, True), (15, False), (25, True), (30, False)):
        with write_transaction(engine) as conn:
            upsert_runs(conn, "e", "p", [{"name": f"r{i}"} for i in range(count)])
        assert analyze_if_stale(engine) is refreshed, count


def test_old_history_chunks_are_read_beside_new_ones() -> None:
    rows = legacy_history(3)
    chunk = codec.decode(codec.encode(rows))
    legacy = codec.decode(legacy_chunk_of(rows))
    assert _same(legacy.rows(), rows) and _same(chunk.rows(), rows)


def legacy_chunk_of(rows: list[dict[str, Any]]) -> bytes:
    from legacy_mirror import legacy_chunk

    return legacy_chunk(rows)


# ---------------------------------------------------------------- the upgrade


FILTERS = [
    {},
    {"config.model.depth": 1},
    {"config.model": {"depth": 2, "act": "gelu"}},
    {"config.big": 2**70 + 3},
    {"config.zero": 0},
    {"tags": "b"},
    {"summary_metrics.best": float("nan")},
    {"summary.top": {"$gt": 10**300}},
    {"display_name": {"$regex": "^legacy-1"}},
    {"state": "crashed", "config.lr": {"$lt": 0.005}},
]


def test_an_upgrade_from_0004_keeps_every_run_and_row_and_answers_alike(
    empty_database: str,
) -> None:
    db = empty_database
    engine = make_engine(db)
    migrate.upgrade(engine, "0004")
    write_legacy_project(engine, "e", "p", 12)
    migrate.upgrade(engine)
    assert migrate.schema_differences(engine) == []
    expected = legacy_runs(12)
    with read_transaction(engine) as conn:
        rows = conn.execute(select(runs).order_by(runs.c.id)).mappings().all()
        for row, old in zip(rows, expected, strict=True):
            for column in ("config", "summary_metrics", "system_metrics", "history_keys"):
                assert row[column] == old[column]  # byte for byte
            assert _same(list(iter_rows(conn, row["id"])), legacy_history(int(row["name"][3:])))
        docs = [run_document(row) for row in rows]
        project_id = find_project(conn, "e", "p")["id"]
        indexed = conn.execute(select(func.count()).select_from(run_fields)).scalar_one()
    assert len(rows) == 12 and indexed > 12 * 10 and project_id
    api = Api(database=db)
    for spec in FILTERS:
        got = [run.id for run in api.runs("e/p", spec, order="+config.lr")]
        node = parse_filter(spec)
        oracle = [
            d["name"]
            for d in sort_docs([d for d in docs if matches(node, d)], parse_order("+config.lr"))
        ]
        assert got == oracle and got, spec
    engine.dispose()


def _downgrade(engine: Any, revision: str) -> None:
    from alembic import command

    with schema_transaction(engine) as conn:
        cfg = migrate._config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_a_downgrade_to_0004_and_back_keeps_the_texts(empty_database: str) -> None:
    engine = make_engine(empty_database)
    migrate.upgrade(engine, "0004")
    write_legacy_project(engine, "e", "p", 3)
    migrate.upgrade(engine)
    _downgrade(engine, "0004")
    with engine.connect() as conn:
        texts = conn.exec_driver_sql("SELECT config, summary_metrics FROM runs ORDER BY id").all()
        index = conn.exec_driver_sql("SELECT count(*) FROM run_fields").scalar()
    assert [tuple(t) for t in texts] == [
        (r["config"], r["summary_metrics"]) for r in legacy_runs(3)
    ]
    assert index > 3 * 10  # the 0004 index, attributes and all
    migrate.upgrade(engine)
    assert migrate.schema_differences(engine) == []
    api = Api(database=empty_database)
    assert [r.id for r in api.runs("e/p", {"config.model.depth": 2}, order="name")] == ["old002"]
    assert math.isnan(api.run("e/p/old001").summary["best"])
    engine.dispose()


def test_an_upgrade_that_frees_much_of_the_file_gives_it_back(tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    engine = make_engine(db)
    migrate.upgrade(engine, "0004")
    write_legacy_project(engine, "e", "p", 200)
    with write_transaction(engine) as conn:  # a fat 0004 index, as attributes and copies made it
        conn.exec_driver_sql("INSERT INTO field_keys (id, project_id, path) VALUES (1, 1, 'x')")
        conn.exec_driver_sql(
            "INSERT INTO run_fields (run_id, key_id, elem, kind, num, txt) "
            "SELECT runs.id, 1, 0, 3, NULL, runs.config || runs.summary_metrics FROM runs, "
            "(SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4)"
        )
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    before = db.stat().st_size
    migrate.upgrade(engine)
    with engine.connect() as conn:
        free = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
    assert free == 0 and db.stat().st_size < before
    engine.dispose()
