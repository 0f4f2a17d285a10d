"""The offline Api: the read side of wandb.Api over a real mirror file."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mirror import Api, CommError
from mirror.errors import FilterError
from mirror.query.api import NotFound
from mirror.store.engine import write_transaction
from mirror.store.upsert import append_history, upsert_runs

RUNS = 23


def _node(i: int) -> dict:
    return {
        "name": f"run{i:04d}",
        "displayName": f"display-{i}",
        "state": ["finished", "crashed", "running"][i % 3],
        "tags": ["even"] if i % 2 == 0 else ["odd", "x"],
        "group": "g1" if i < 10 else None,
        "createdAt": f"2024-01-01T00:00:{i // 2:02d}",  # pairs share a timestamp: tie-break
        "config": json.dumps(
            {
                "lr": {"value": 0.001 * i, "desc": None},
                "experiment_name": {"value": "foo" if i % 4 == 0 else "bar", "desc": None},
                "_wandb": {"value": {"cli_version": "0.31.0"}},
            }
        ),
        "summaryMetrics": json.dumps({"val_acc": i / 100, "_step": 99, "nan": math.nan}),
    }


def _history(n: int) -> list[dict]:
    rows = []
    for step in range(5, 5 + n):
        row = {"_step": step, "loss": 1 / step, "_runtime": float(step)}
        if step % 10 == 0:
            row["eval"] = step // 10
        rows.append(row)
    return rows


@pytest.fixture
def engine(db_engine):
    """The mirror on each database in turn."""
    return db_engine


@pytest.fixture
def api(engine, database: str) -> Iterator[Api]:
    with write_transaction(engine) as conn:
        ids = upsert_runs(conn, "ent", "proj", [_node(i) for i in range(RUNS)])
        append_history(conn, ids["run0003"], _history(2500))
        append_history(conn, ids["run0003"], [{"system.cpu": 1.5}], stream="events")
    api = Api(database=database)
    yield api
    api.close()


def test_runs_default_order_is_newest_first_with_deterministic_ties(api: Api):
    runs = api.runs("ent/proj")
    assert len(runs) == RUNS
    by_name = sorted((_node(i) for i in range(RUNS)), key=lambda n: n["name"])
    newest_first = sorted(by_name, key=lambda n: n["createdAt"], reverse=True)  # stable: ties by id
    assert [r.id for r in runs] == [n["name"] for n in newest_first]
    assert runs[1].created_at == runs[2].created_at and runs[1].id < runs[2].id


def test_runs_filter_order_and_paging(api: Api):
    filters = {"$or": [{"config.experiment_name": "foo"}, {"config.experiment_name": "baz"}]}
    runs = api.runs("ent/proj", filters, order="-summary_metrics.val_acc", per_page=2)
    assert len(runs) == 6
    assert [r.id for r in runs] == [f"run{i:04d}" for i in (20, 16, 12, 8, 4, 0)]
    assert runs[0].id == "run0020" and runs[-1].id == "run0000"
    assert [r.id for r in runs[1:3]] == ["run0016", "run0012"]
    with pytest.raises(IndexError):
        runs[6]


def test_run_attributes_follow_wandb_names(api: Api):
    run = api.run("ent/proj/run0004")
    assert run.id == "run0004" and run.name == "display-4"
    assert run.path == ["ent", "proj", "run0004"]
    assert run.config == {"lr": 0.004, "experiment_name": "foo"}
    assert "_wandb" in run.rawconfig and run.rawconfig["lr"] == {"value": 0.004, "desc": None}
    assert run.summary["val_acc"] == 0.04 and math.isnan(run.summary["nan"])
    assert run.tags == ["even"] and run.group == "g1" and run.state == "crashed"
    for form in ("ent/proj/runs/run0004", "https://wandb.ai/ent/proj/runs/run0004"):
        assert api.run(form).storage_id == run.storage_id


def test_history_returns_every_row_unless_sampled(api: Api):
    run = api.run("ent/proj/run0003")
    rows = run.history(pandas=False)
    assert rows == _history(2500)
    frame = run.history()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2500
    assert frame["_step"].tolist() == list(range(5, 2505))
    assert frame["eval"].isna().sum() == 2500 - 250
    sampled = run.history(samples=7, pandas=False)
    assert len(sampled) == 7 and sampled[0]["_step"] == 5 and sampled[-1]["_step"] == 2504
    assert run.history(samples=7, pandas=False) == sampled  # deterministic


def test_history_keys_select_rows_holding_any_key(api: Api):
    run = api.run("ent/proj/run0003")
    rows = run.history(keys=["eval"], pandas=False)
    assert [r["_step"] for r in rows] == list(range(10, 2505, 10))
    frame = run.history(keys=["eval"], min_step=100, max_step=200)
    assert frame["_step"].tolist() == list(range(100, 200, 10))
    assert set(frame.columns) == {"eval", "_step"}
    system = run.history(stream="system", pandas=False)
    assert system == [{"system.cpu": 1.5}]


def test_scan_history_streams_every_row_in_a_window(api: Api):
    run = api.run("ent/proj/run0003")
    scanned = list(run.scan_history(min_step=1000, max_step=1500))
    assert [r["_step"] for r in scanned] == list(range(1000, 1500))
    assert list(run.scan_history()) == _history(2500)


def test_flush_shows_new_data(api: Api, engine):
    assert len(api.runs("ent/proj")) == RUNS
    with write_transaction(engine) as conn:
        upsert_runs(conn, "ent", "proj", [_node(RUNS)])
    assert len(api.runs("ent/proj")) == RUNS  # cached, as wandb.Api caches
    api.flush()
    assert len(api.runs("ent/proj")) == RUNS + 1


def test_missing_things_and_bad_input(api: Api, tmp_path: Path):
    with pytest.raises(NotFound, match="ent/nope"):
        api.runs("ent/nope")
    with pytest.raises(ValueError, match="run9999"):
        api.run("ent/proj/run9999")
    with pytest.raises(FilterError, match=r"filters\.\$or"):
        api.runs("ent/proj", {"$or": "nope"})
    with pytest.raises(ValueError, match="ENTITY/PROJECT/RUN_ID"):
        api.run("just-one-part")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CommError) as info:
        len(Api(database=str(blocker / "sub" / "m.db")).runs("ent/proj"))
    assert info.value.exc is not None
    with pytest.raises(CommError, match="wandb-mirror init"):
        Api(database=str(tmp_path / "empty.db")).runs("ent/proj")


def test_a_paused_scan_pins_no_snapshot(api: Api, engine):
    scan = api.run("ent/proj/run0003").scan_history()
    assert next(scan)["_step"] == 5
    with write_transaction(engine) as conn:
        upsert_runs(conn, "ent", "proj", [_node(RUNS)])
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            busy, _log, _done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
            assert busy == 0  # an open read transaction would keep the WAL from being truncated
        else:
            pinned = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND (state <> 'idle' OR backend_xmin IS NOT NULL) "
                "AND pid <> pg_backend_pid()"
            ).scalar()
            assert pinned == 0  # no other session holds a transaction or a snapshot open
    assert sum(1 for _ in scan) == 2499


def test_a_listing_is_one_snapshot_even_when_a_sync_writes_between_pages(api: Api, engine):
    runs = api.runs("ent/proj", per_page=5)
    first_page = [r.id for r in runs[:5]]
    with write_transaction(engine) as conn:  # a newer run lands between two page reads
        upsert_runs(conn, "ent", "proj", [{**_node(RUNS), "createdAt": "2030-01-01T00:00:00"}])
    names = [r.id for r in runs]
    assert names[:5] == first_page  # what was shown stays where it was
    assert len(names) == len(set(names)) == RUNS + 1 == len(runs)  # no repeat, no skip
    fresh = [r.id for r in Api(database=engine).runs("ent/proj")]
    assert names == first_page + [i for i in fresh if i not in first_page]
    api.flush()
    assert api.runs("ent/proj")[0].id == _node(RUNS)["name"]
