"""The store: migrations, WAL readers beside a writer, lossless history chunks, idempotent appends."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from legacy_mirror import write_legacy_project
from sqlalchemy import func, inspect, select

from mirror.errors import MirrorError
from mirror.store import history as codec
from mirror.store import migrate
from mirror.store.engine import make_engine, read_transaction, write_transaction
from mirror.store.fields import Kind, flatten, run_document
from mirror.store.models import history_chunks, run_fields, runs
from mirror.store.read import find_run, iter_rows
from mirror.store.texts import escape_nul, unescape_nul
from mirror.store.upsert import append_history, storage_id, upsert_runs


def node(name: str, **extra):
    base = {
        "name": name,
        "displayName": f"run-{name}",
        "state": "finished",
        "tags": ["a"],
        "createdAt": "2024-01-01T00:00:00",
        "config": json.dumps({"lr": {"value": 0.1, "desc": None}, "_wandb": {"value": {}}}),
        "summaryMetrics": json.dumps({"loss": 0.5}),
    }
    base.update(extra)
    return base


def test_models_and_migrations_agree(db_engine):
    engine = db_engine
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert migrate.schema_differences(engine) == []


def test_upgrading_a_mirror_with_data_snapshots_it_first(tmp_path: Path):
    engine = make_engine(tmp_path / "old.db")
    assert migrate.upgrade(engine, "0001") is None  # an empty database needs no snapshot
    write_legacy_project(engine, "e", "p", 1)
    snapshot = migrate.upgrade(engine)
    assert snapshot is not None and snapshot.parent == tmp_path / "snapshots"
    assert migrate.current_revision(engine) == migrate.head_revision() != "0001"
    assert migrate.schema_differences(engine) == []
    with read_transaction(engine) as conn:
        assert conn.execute(select(runs.c.name)).scalars().all() == ["old000"]
    old = make_engine(snapshot, create=False)
    assert migrate.current_revision(old) == "0001"
    with old.connect() as conn:  # the 0001 schema, read as it is: no model of it remains
        assert conn.exec_driver_sql("SELECT name FROM runs").scalars().all() == ["old000"]


def test_a_foreign_database_is_refused_untouched(empty_database: str, tmp_path: Path):
    engine = make_engine(empty_database)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (body TEXT)")
    with pytest.raises(MirrorError, match="not a wandb-mirror database"):
        migrate.upgrade(engine)
    assert not (tmp_path / "snapshots").exists()
    assert inspect(engine).get_table_names() == ["notes"]
    engine.dispose()


def test_sqlite_runs_in_wal_mode(engine):
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_reader_is_not_blocked_by_a_writer_in_another_process(engine, db_path: Path):
    with write_transaction(engine) as conn:
        upsert_runs(conn, "e", "p", [node("r1")])
    holder = textwrap.dedent(
        f"""
        import sys, time, json
        from mirror.store.engine import make_engine, write_transaction
        from mirror.store.upsert import upsert_runs
        engine = make_engine({str(db_path)!r})
        with write_transaction(engine) as conn:
            upsert_runs(conn, "e", "p", [{{"name": "r2", "createdAt": "2024-01-02T00:00:00"}}])
            print("holding", flush=True)
            time.sleep(5)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        started = time.monotonic()
        with read_transaction(engine) as conn:
            names = conn.execute(select(runs.c.name)).scalars().all()
        assert time.monotonic() - started < 1.0
        assert names == ["r1"]  # the uncommitted run is invisible, the read did not wait
    finally:
        proc.wait(timeout=30)
    with read_transaction(engine) as conn:
        assert sorted(conn.execute(select(runs.c.name)).scalars()) == ["r1", "r2"]


def test_upsert_keeps_row_ids_and_reindexes(db_engine):
    engine = db_engine
    with write_transaction(engine) as conn:
        first = upsert_runs(conn, "e", "p", [node("r1")])
        again = upsert_runs(conn, "e", "p", [node("r1", state="crashed", tags=["b", "c"])])
        assert first == again
        row = find_run(conn, conn.execute(select(runs.c.project_id)).scalar(), "r1")
        assert row["state"] == "crashed"
        assert row["storage_id"] == storage_id("e", "p", "r1")
        tag_rows = conn.execute(
            select(run_fields.c.txt).where(run_fields.c.run_id == row["id"], run_fields.c.elem == 1)
        ).scalars()
        assert sorted(t for t in tag_rows if t in ("a", "b", "c")) == ["b", "c"]


def test_a_page_naming_a_run_twice_writes_it_once_and_revives_tombstones(db_engine):
    engine = db_engine
    with write_transaction(engine) as conn:
        ids = upsert_runs(conn, "e", "p", [node("r1"), node("r1", state="crashed")])
        conn.execute(runs.update().values(deleted_at="2024-01-02T00:00:00"))
        assert upsert_runs(conn, "e", "p", [node("r1")]) == ids
        row = conn.execute(select(runs)).mappings().one()
        assert row["deleted_at"] is None and row["state"] == "finished"


def test_flatten_reaches_dotted_keys_arrays_and_nan():
    doc = run_document(
        {
            "name": "r",
            "tags": '["x"]',
            "config": json.dumps({"name.with.dot": {"value": 1}, "layers": {"value": [64, 128]}}),
            "summary_metrics": '{"m": NaN, "img": {"_type": "image-file", "path": "p.png"}}',
            **{c: None for c in ("display_name", "state", "group_name", "job_type", "notes")},
            **{c: None for c in ("description", "sweep_name", "created_at", "heartbeat_at")},
            **{c: None for c in ("updated_at", "username", "host", "commit")},
        }
    )
    rows = {(p, e): (k, n, t) for p, e, k, n, t in flatten(doc)}
    assert rows[("config.name.with.dot", 0)][:2] == (Kind.NUMBER, 1.0)
    assert rows[("config.layers.1", 0)][:2] == (Kind.NUMBER, 128.0)
    assert rows[("summary_metrics.m", 0)] == (Kind.NUMBER, None, "NaN")
    assert rows[("summary_metrics.img._type", 0)] == (Kind.STRING, None, "image-file")
    assert ("summary_metrics.img.path", 0) not in rows  # media insides are not indexed


def _rows(n: int, start: int = 0, every: int = 1):
    out = []
    for i in range(n):
        step = start + i * every
        row = {"_step": step, "loss": 1 / (step + 1), "acc": step % 2, "_runtime": step * 0.5}
        if step % 10 == 0:
            row["eval/f1"] = float("nan") if step % 20 == 0 else 0.5
        if step == 3:
            row["weights"] = {"_type": "histogram", "values": [1, 2], "bins": [0.0, 0.5, 1.0]}
            row["big"] = 2**62
            row["flag"] = True
            row["inf"] = float("-inf")
        out.append(row)
    return out


def _same(a, b) -> bool:
    return json.dumps(a, allow_nan=True) == json.dumps(b, allow_nan=True)


def test_chunk_round_trip_is_lossless():
    rows = _rows(500)
    chunk = codec.decode(codec.encode(rows))
    assert _same(chunk.rows(), rows)
    back = chunk.rows()
    assert type(back[3]["acc"]) is int and type(back[3]["loss"]) is float
    assert back[3]["flag"] is True and back[3]["big"] == 2**62
    assert math.isnan(back[0]["eval/f1"]) and back[3]["inf"] == float("-inf")
    assert "eval/f1" not in back[1]


def test_append_history_is_idempotent_and_keeps_chunks_full(db_engine, monkeypatch):
    engine = db_engine
    monkeypatch.setattr(codec, "CHUNK_ROWS", 100)
    with write_transaction(engine) as conn:
        run_id = upsert_runs(conn, "e", "p", [node("r1")])["r1"]
        rows = _rows(250, start=7, every=3)  # starts late, has gaps
        assert append_history(conn, run_id, rows[:130]) == 130
        assert append_history(conn, run_id, rows[:130]) == 0  # a re-sent page adds nothing
        assert append_history(conn, run_id, rows[100:]) == 120
        counts = conn.execute(
            select(history_chunks.c.row_count).order_by(history_chunks.c.first_step)
        ).scalars()
        assert list(counts) == [100, 100, 50]
        assert _same(list(iter_rows(conn, run_id)), rows)
        window = list(iter_rows(conn, run_id, min_step=10, max_step=31))
        assert [r["_step"] for r in window] == [10, 13, 16, 19, 22, 25, 28]
        keyed = list(iter_rows(conn, run_id, keys=["eval/f1"]))
        assert [r["_step"] for r in keyed] == [r["_step"] for r in rows if "eval/f1" in r]
        assert all(set(r) <= {"_step", "eval/f1"} for r in keyed)


def test_events_are_kept_apart_from_history(db_engine):
    engine = db_engine
    with write_transaction(engine) as conn:
        run_id = upsert_runs(conn, "e", "p", [node("r1")])["r1"]
        append_history(conn, run_id, _rows(5))
        events = [{"system.cpu": 10.0 + i, "_runtime": i} for i in range(3)]
        append_history(conn, run_id, events, stream="events")
        assert list(iter_rows(conn, run_id, "events")) == events
        more = [*events, {"system.cpu": 99.0, "_runtime": 3}]
        assert append_history(conn, run_id, more, stream="events") == 1  # the whole stream again
        assert list(iter_rows(conn, run_id, "events")) == more
        assert len(list(iter_rows(conn, run_id))) == 5
        total = conn.execute(select(func.sum(history_chunks.c.row_count))).scalar()
        assert total == 9


def test_storage_id_is_w_and_b_form():
    import base64

    assert base64.b64decode(storage_id("ent", "proj", "abc123")) == b"Run:v1:abc123:proj:ent"


@settings(max_examples=300)
@given(
    a=st.text(alphabet=st.sampled_from("\x00\x01\x02ab\U0001f600")),
    b=st.text(alphabet=st.sampled_from("\x00\x01\x02ab\U0001f600")),
)
def test_the_nul_escape_keeps_equality_and_byte_order(a: str, b: str) -> None:
    """PostgreSQL's text holds no NUL: the escape stored there holds none, reads back exactly,
    and compares as the UTF-8 bytes of the original do (MongoDB's string order)."""
    ea, eb = escape_nul(a), escape_nul(b)
    assert "\x00" not in ea and unescape_nul(ea) == a
    assert (ea == eb) == (a == b)
    assert (ea.encode() < eb.encode()) == (a.encode() < b.encode())


def test_nul_and_the_escape_character_survive_every_database(db_engine) -> None:
    texts = ["x\x00y", "\x00", "\x01", "x\x01\x02y", "\x01\x01"]
    with write_transaction(db_engine) as conn:
        nodes = [
            node(f"r{i}", displayName=t, tags=[t], config=json.dumps({"s": {"value": t}}))
            for i, t in enumerate(texts)
        ]
        upsert_runs(conn, "e", "p", nodes)
        assert (
            conn.execute(select(runs.c.display_name).order_by(runs.c.name)).scalars().all() == texts
        )
        stored = conn.execute(select(run_fields.c.txt).where(run_fields.c.elem == 1)).scalars()
        assert set(texts) <= set(stored)
        for text_value in texts:
            found = conn.execute(select(runs.c.name).where(runs.c.display_name == text_value))
            assert found.scalars().all() == [f"r{texts.index(text_value)}"]


def test_long_texts_are_indexed_and_compared_whole(db_engine) -> None:
    """A config string of 20 kB that does not compress (PostgreSQL's indexes hold only its
    prefix) is stored, found by equality, and ordered and bounded by its whole text."""
    import base64
    import os

    from mirror.query.filters import parse_filter, parse_order
    from mirror.query.sql import count_query, runs_query

    # "long-" first: the random rest must not decide whether "short" sorts after it
    shared = "long-" + base64.b64encode(os.urandom(15_000)).decode() + "-"
    texts = {"r1": shared + "a", "r2": shared + "b", "r3": shared, "r4": "short"}
    nodes = [
        node(name, displayName=value, config=json.dumps({"s": {"value": value}}))
        for name, value in texts.items()
    ]
    with write_transaction(db_engine) as conn:
        upsert_runs(conn, "e", "p", nodes)
    with read_transaction(db_engine) as conn:
        project_id = conn.execute(select(runs.c.project_id)).scalars().first()

        def names(spec, order="+name"):
            node_ = parse_filter(spec)
            found = [
                r.name for r in conn.execute(runs_query(project_id, node_, parse_order(order)))
            ]
            assert conn.execute(count_query(project_id, node_)).scalar_one() == len(found)
            return found

        assert names({"config.s": shared + "a"}) == ["r1"]
        assert names({"config.s": {"$in": [shared + "b", "short", "x"]}}) == ["r2", "r4"]
        assert names({"config.s": {"$gt": shared}}) == ["r1", "r2", "r4"]
        assert names({"config.s": {"$lte": shared + "a"}}) == ["r1", "r3"]
        assert names({"config.s": {"$regex": "b$"}}) == ["r2"]
        assert names({"displayName": {"$regex": "a$"}}) == ["r1"]
        assert names({"displayName": shared}) == ["r3"]
        assert names(None, "+config.s") == ["r3", "r1", "r2", "r4"]
