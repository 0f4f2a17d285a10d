"""The official ``wandb`` client from PyPI, unmodified, pointed at the server.

It must see what the offline ``mirror.Api`` sees on the same database: the same runs in the same
order with the same ``len``, the same config and summary (NaN and Infinity included), every
history row, and W&B's merge semantics when it writes back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import requests
from server_process import (
    BOTH,
    DATA,
    ENTITY,
    PROJECT,
    SDK_PROJECT,
    SDK_RUN,
    ServerProcess,
    seed_database,
    wandb_client_env,
)
from sqlalchemy import func, select

from mirror import Api
from mirror.store.engine import make_engine, read_transaction, write_transaction
from mirror.store.fields import loads, unwrap_config
from mirror.store.models import history_chunks
from mirror.store.read import find_project, find_run, iter_rows
from mirror.store.upsert import append_history

pytest_plugins = ["serve_databases"]

wandb = pytest.importorskip("wandb")

KEY = "mirrortest" + "0" * 30  # wandb wants 40 characters
PATH = f"{ENTITY}/{PROJECT}"


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory: pytest.TempPathFactory):
    """Keep the client off the network and out of the user's files."""
    with wandb_client_env(tmp_path_factory.mktemp("wandb-home"), KEY) as env:
        yield env


def client(server: ServerProcess) -> Any:
    return wandb.Api(api_key=KEY, overrides={"base_url": server.url}, timeout=60)


@pytest.fixture(scope="module")
def api(served_on, wandb_env):
    return client(served_on)


@pytest.fixture(scope="module")
def offline(served_database: str):
    return Api(database=served_database)


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


FILTERS: list[dict[str, Any] | None] = [
    None,
    {},
    {"state": "finished"},
    {"state": {"$ne": "finished"}},
    {"state": {"$in": ["crashed", "failed", "killed"]}},
    {"state": {"$nin": ["finished", "running"]}},
    {"$or": [{"state": "crashed"}, {"state": "failed"}]},
    {"$and": [{"state": "finished"}, {"config.lr": {"$lt": 0.001}}]},
    {"$nor": [{"state": "finished"}, {"tags": "debug"}]},
    {"tags": "baseline"},
    {"tags": {"$in": ["v2", "prod"]}},
    {"tags": {"$nin": ["debug"]}},
    {"tags": "重要"},
    {"config.lr": {"$gt": 0.001}},
    {"config.lr.value": {"$gte": 0.001}},
    {"config.optimizer": "adam"},
    {"config.optimizer.value": {"$in": ["adam", "adamw"]}},
    {"config.batch_size": {"$lte": 64}},
    {"config.model.depth": {"$gt": 24}},
    {"config.model.value.act": "gelu"},
    {"config.experiment_name": {"$regex": "^baseline"}},
    {"config.seed": {"$exists": False}},
    {"config.scheduler": {"$exists": True}},
    {"config.use_amp": True},
    {"config.dataset.name": "cifar"},
    {"config.sweep_trial": {"$exists": True}},
    {"summary_metrics.best_acc": {"$gt": 0.8}},
    {"summary_metrics.loss": {"$lt": 0.5}},
    {"summary_metrics.preds": {"$exists": True}},
    {"displayName": {"$regex": "river"}},
    {"jobType": "eval"},
    {"group": {"$exists": True}},
    {"host": "gpu-node-03"},
    {"username": "ada"},
    {"createdAt": {"$gt": "2024-01-01T00:00:00"}},
    {"sweep": {"$exists": True}},
    {"config.nosuchkey": 1},
]

ORDERS = ["+created_at", "-created_at", "-summary_metrics.best_acc", "+config.lr", "+name"]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: json.dumps(f, ensure_ascii=False))
def test_runs_match_the_offline_api(api, offline, filters):
    order = ORDERS[FILTERS.index(filters) % len(ORDERS)]
    per_page = [7, 50, 1000][FILTERS.index(filters) % 3]
    theirs = api.runs(PATH, filters=filters, order=order, per_page=per_page)
    ours = offline.runs(PATH, filters=filters, order=order, per_page=per_page)
    names = [run.id for run in theirs]
    assert len(theirs) == len(ours) == len(names)
    assert names == [run.id for run in ours]


@pytest.mark.parametrize(
    "order", ORDERS + ["-heartbeat_at", "+config.model.depth", "+summary_metrics.loss"]
)
def test_every_order_matches_the_offline_api(api, offline, order):
    theirs = [run.id for run in api.runs(PATH, order=order, per_page=40)]
    assert theirs == [run.id for run in offline.runs(PATH, order=order, per_page=40)]
    assert len(set(theirs)) == len(theirs)


def test_a_summary_filter_key_fails_as_on_wandb(api):
    from wandb.sdk.lib.service.service_connection import WandbApiFailedError

    # len() is not wrapped by the SDK's normalize_exceptions: the raw error comes through
    with pytest.raises((wandb.errors.CommError, WandbApiFailedError), match="summary.loss"):
        len(api.runs(PATH, filters={"summary.loss": {"$lt": 1}}))


def test_run_fields_config_and_summary(api, offline):
    names = [r.id for r in offline.runs(PATH, order="+name", per_page=100)][:6]
    for name in names:
        theirs = api.run(f"{PATH}/{name}")
        ours = offline.run(f"{PATH}/{name}")
        assert theirs.id == ours.id and theirs.name == ours.name
        assert theirs.storage_id == ours.storage_id
        assert theirs.state == ours.state and theirs.tags == ours.tags
        assert theirs.created_at == ours.created_at
        assert same(theirs.config, ours.config)
        assert same(theirs.summary._json_dict, ours.summary._json_dict)
        assert theirs.lastHistoryStep == ours.lastHistoryStep


def test_the_real_sdk_run_keeps_nan_and_infinity(api, served_database):
    run = api.run(f"{ENTITY}/{SDK_PROJECT}/{SDK_RUN}")
    assert math.isnan(run.summary["bad"]) and run.summary["big"] == math.inf
    assert run.config["name.with.dot"] == 1 and run.config["model"] == {"depth": 6, "act": "gelu"}
    engine = make_engine(served_database)
    with read_transaction(engine) as conn:
        row = find_run(conn, find_project(conn, ENTITY, SDK_PROJECT)["id"], SDK_RUN)
        rows = list(iter_rows(conn, row["id"]))
    engine.dispose()
    assert same(run.config, unwrap_config(loads(row["config"])))
    assert same(list(run.scan_history()), rows)


def store_history(db: Path, name: str) -> list[dict[str, Any]]:
    engine = make_engine(db)
    with read_transaction(engine) as conn:
        row = find_run(conn, find_project(conn, ENTITY, PROJECT)["id"], name)
        rows = list(iter_rows(conn, row["id"]))
    engine.dispose()
    return rows


def test_scan_history_returns_every_row(api, offline, served_database):
    name = max(offline.runs(PATH, per_page=1000), key=lambda r: r.lastHistoryStep).id
    rows = store_history(served_database, name)
    assert len(rows) > 100
    scanned = list(api.run(f"{PATH}/{name}").scan_history(page_size=97))
    assert same(scanned, rows)


def test_keyed_history_holds_rows_with_all_keys(api, served_database, offline):
    name = max(offline.runs(PATH, per_page=1000), key=lambda r: r.lastHistoryStep).id
    rows = store_history(served_database, name)
    keys = ["acc", "eval/acc"]  # dense (every row) and sparse (every 10th row)
    holding = [r for r in rows if all(k in r for k in keys)]
    assert 0 < len(holding) < len(rows) // 5  # the sparse key really is sparse
    got = api.run(f"{PATH}/{name}").history(keys=keys, samples=100_000, pandas=False)
    assert all(set(r) == {"_step", *keys} for r in got)
    assert len(got) == len(holding)
    assert same(got, [{k: r[k] for k in ["_step", *keys]} for r in holding])
    sampled = api.run(f"{PATH}/{name}").history(keys=keys[:1], samples=10, pandas=False)
    assert len(sampled) == 10


@pytest.fixture(scope="module", params=BOTH)
def writable(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, wandb_env):
    """A server over its own small database on each database, for the tests that write."""
    tmp = tmp_path_factory.mktemp("writable")
    if request.param == "postgresql":
        where = request.getfixturevalue("pg_server").new_database()
    else:
        where = str(tmp / "mirror.db")
    db = seed_database(where, runs=12, steps=20)
    with ServerProcess(db, tmp / "serve.log") as server:
        yield server


def test_update_merges_config_and_replaces_summary_and_tags(writable):
    first = client(writable)
    name = next(iter(first.runs(PATH, order="+name"))).id
    run = first.run(f"{PATH}/{name}")
    before = dict(run.config)
    del run.config["optimizer"]  # W&B keeps a key missing from the update (issue 11055)
    run.config["lr"] = 0.5
    run.config["new_key"] = {"a": 1}
    run.summary["best_acc"] = 0.123
    run.summary["fresh"] = math.inf
    run.tags = ["edited"]
    run.name = "renamed run"
    run.notes = "notes from the api"
    run.update()

    fresh = client(writable).run(f"{PATH}/{name}")
    assert fresh.config["optimizer"] == before["optimizer"]
    assert fresh.config["lr"] == 0.5 and fresh.config["new_key"] == {"a": 1}
    assert fresh.summary["best_acc"] == 0.123 and fresh.summary["fresh"] == math.inf
    assert fresh.tags == ["edited"]
    assert fresh.name == "renamed run" and fresh.notes == "notes from the api"


def test_delete_removes_the_run_from_listings(writable):
    api = client(writable)
    runs = api.runs(PATH, order="+name")
    count, victim = len(runs), runs[-1].id
    api.run(f"{PATH}/{victim}").delete()
    again = client(writable)
    assert len(again.runs(PATH, order="+name")) == count - 1
    assert victim not in [r.id for r in again.runs(PATH, order="+name")]
    with pytest.raises((ValueError, wandb.errors.CommError)):
        again.run(f"{PATH}/{victim}")


def create_run(server: ServerProcess, name: str, state: str) -> dict[str, Any]:
    """``upsertBucket`` as wandb-core sends it to start a run (name + project + entity)."""
    document = (DATA / "sdk-queries" / "core_mutation_run.graphql").read_text()
    variables = {"name": name, "project": PROJECT, "entity": ENTITY, "state": state}
    variables["config"] = json.dumps({"lr": {"value": 0.1}})
    response = requests.post(server.graphql_url, json={"query": document, "variables": variables})
    return response.json()["data"]["upsertBucket"]


def test_upsert_bucket_creates_a_run_once(writable):
    created = create_run(writable, "newrun01", "running")
    assert created["inserted"] is True
    assert created["bucket"]["project"]["entity"]["name"] == ENTITY
    assert create_run(writable, "newrun01", "running")["inserted"] is False
    run = client(writable).run(f"{PATH}/newrun01")
    assert run.state == "running" and run.config == {"lr": 0.1}
    assert run.storage_id == created["bucket"]["id"]


def test_recreating_a_deleted_run_starts_afresh(writable):
    """On W&B a deleted run is gone: a new run of the same name has none of its history."""
    api = client(writable)
    old = api.runs(PATH, order="+name")[1]
    assert old.lastHistoryStep > 0 and old.tags and len(old.config) > 1
    assert len(list(old.scan_history())) > 0
    api.run(f"{PATH}/{old.id}").delete()

    assert create_run(writable, old.id, "running")["inserted"] is True
    fresh = client(writable).run(f"{PATH}/{old.id}")
    assert fresh.config == {"lr": 0.1}
    assert fresh.tags == [] and fresh.state == "running"
    assert not [k for k in fresh.summary._json_dict if not k.startswith("_")]
    assert fresh.display_name != old.display_name and fresh.created_at >= old.created_at
    assert fresh.lastHistoryStep == -1
    assert list(fresh.scan_history()) == [] and fresh.history(pandas=False) == []
    engine = make_engine(writable.db)
    with read_transaction(engine) as conn:
        row = find_run(conn, find_project(conn, ENTITY, PROJECT)["id"], old.id)
        chunks = conn.execute(
            select(func.count()).where(history_chunks.c.run_id == row["id"])
        ).scalar_one()
    engine.dispose()
    assert chunks == 0 and row["history_line_count"] == 0 and row["deleted_at"] is None


def test_update_state_follows_wandbs_transitions(writable):
    create_run(writable, "state001", "running")
    run = client(writable).run(f"{PATH}/state001")
    assert run.update_state("failed") is True
    assert client(writable).run(f"{PATH}/state001").state == "failed"
    assert run.update_state("pending") is True
    finished = client(writable).runs(PATH, filters={"state": "finished"})[0]
    with pytest.raises(wandb.errors.CommError, match="cannot change run state"):
        finished.update_state("pending")
    with pytest.raises(wandb.errors.CommError, match="cannot set run state"):
        run.update_state("finished")


def test_history_appended_while_serving_is_seen(writable):
    """The server's decoded-chunk cache must notice a sync rewriting a run's last chunk."""
    name = next(iter(client(writable).runs(PATH, order="+name"))).id
    document = (DATA / "sdk-queries" / "sdk_v0.25_HistoryPage.graphql").read_text()
    variables = {"entity": ENTITY, "project": PROJECT, "run": name, "minStep": 0}
    variables.update(maxStep=10**9, pageSize=10**6)

    def page() -> list[dict[str, Any]]:
        body = {"query": document, "variables": variables}
        response = requests.post(writable.graphql_url, json=body, timeout=30)
        return [loads(line) for line in response.json()["data"]["project"]["run"]["history"]]

    engine = make_engine(writable.db)

    def append(step: int) -> None:
        # appending rewrites the run's last chunk; SQLite may hand the new row the old id
        with write_transaction(engine) as conn:
            run_id = find_run(conn, find_project(conn, ENTITY, PROJECT)["id"], name)["id"]
            append_history(conn, run_id, [{"_step": step, "loss": 0.25}])

    last = page()[-1]["_step"]
    append(last + 1)
    before = page()
    append(last + 2)
    after = page()
    engine.dispose()
    assert same(after[:-1], before)
    assert after[-1] == {"_step": last + 2, "loss": 0.25}
