"""Write-back against ``serve`` as a real upstream: edits queued offline reach W&B, merge with
what moved there meanwhile, and never clobber a change made on the other side."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mirror_compare import snapshot
from mirror_db import Database
from sync_env import PATH, PROJECT, Upstream, run_cli, seed_upstream, sync_env

from mirror import Api
from mirror.store.outbox import EditError

RUNS, STEPS = 8, 30


#: for a test whose write-back logic does not depend on the database: SQLite only
SQLITE_ONLY = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@pytest.fixture
def world(tmp_path: Path, database: str):
    """A synced mirror on each database (``SQLITE_ONLY`` narrows a test to one)."""
    db = seed_upstream(tmp_path / "upstream.db", RUNS, STEPS)
    with Upstream(db, tmp_path / "serve.log") as up:
        mirror = database
        env = sync_env(up.url, tmp_path)
        assert run_cli(["--db", str(mirror), "sync", PATH], env).returncode == 0
        yield up, mirror, env


def cli(mirror: Database, env: dict[str, str], *args: str):
    return run_cli(["--db", str(mirror), *args], env)


def upstream_run(up: Upstream, name: str) -> dict:
    return snapshot(up.db, "acme", PROJECT)[name]


def mirror_run(mirror: Database, name: str) -> dict:
    return snapshot(mirror, "acme", PROJECT)[name]


def test_an_edit_reaches_wandb_in_three_requests_and_leaves_the_outbox(world):
    up, mirror, env = world
    name = up.run_with_state("finished")
    edited = cli(
        mirror,
        env,
        "edit",
        f"{PATH}/{name}",
        "--summary",
        "best=0.97",
        "--summary",
        'nested={"a": [1, 2], "b": NaN}',
        "--config",
        "note=from the mirror",
        "--add-tag",
        "reviewed",
        "--notes",
        "looked at it",
    )
    assert edited.returncode == 0, edited.stderr
    shown = mirror_run(mirror, name)  # read your own writes, before any push
    assert shown["summary_metrics"]["best"] == 0.97 and "reviewed" in shown["tags"]
    served = up.requests_served()
    pushed = cli(mirror, env, "push", PATH)
    assert pushed.returncode == 0, pushed.stderr
    assert "4 edits pushed, 0 in conflict, 0 waiting, 0 failed, 3 requests" in pushed.stdout
    assert up.requests_served() - served == 4  # the key check, then read, write, verify
    remote = upstream_run(up, name)
    assert remote["summary_metrics"]["best"] == 0.97
    assert remote["summary_metrics"]["nested"]["a"] == [1, 2]
    assert math.isnan(remote["summary_metrics"]["nested"]["b"])
    assert remote["config"]["note"]["value"] == "from the mirror"
    assert "reviewed" in remote["tags"] and remote["notes"] == "looked at it"
    listed = cli(mirror, env, "outbox", "list")
    assert listed.stdout.strip() == "no queued edits"


def test_keys_that_moved_on_wandb_are_merged_with_the_local_edit(world):
    up, mirror, env = world
    name = up.run_with_state("finished")
    assert cli(mirror, env, "edit", f"{PATH}/{name}", "--summary", "mine=1").returncode == 0
    theirs = {**upstream_run(up, name)["summary_metrics"], "theirs": 2}
    up.edit(name, summaryMetrics=theirs)
    assert cli(mirror, env, "push", PATH).returncode == 0
    remote = upstream_run(up, name)["summary_metrics"]
    assert remote["mine"] == 1 and remote["theirs"] == 2


def test_a_pull_never_overwrites_a_pending_edit(world):
    up, mirror, env = world
    name = up.run_with_state("finished")
    assert cli(mirror, env, "edit", f"{PATH}/{name}", "--summary", "loss=-1").returncode == 0
    up.edit(name, summaryMetrics={**upstream_run(up, name)["summary_metrics"], "loss": 5, "x": 3})
    assert cli(mirror, env, "pull", PATH).returncode == 0
    shown = mirror_run(mirror, name)["summary_metrics"]
    assert shown["loss"] == -1 and shown["x"] == 3  # the remote moved underneath the edit
    api = Api(database=mirror)
    assert [r.id for r in api.runs(PATH, {"summary_metrics.loss": -1})] == [name]
    api.close()


@pytest.mark.parametrize(
    "policy, expected, status, database",
    [
        ("abort", 5, 1, "sqlite"),
        pytest.param("abort", 5, 1, "postgresql", marks=pytest.mark.postgresql),
        ("local-wins", -1, 0, "sqlite"),
        ("remote-wins", 5, 0, "sqlite"),
    ],
    indirect=["database"],
)
def test_the_same_key_moved_on_both_sides_follows_the_policy(world, policy, expected, status):
    up, mirror, env = world
    name = up.run_with_state("finished")
    assert cli(mirror, env, "edit", f"{PATH}/{name}", "--summary", "loss=-1").returncode == 0
    up.edit(name, summaryMetrics={**upstream_run(up, name)["summary_metrics"], "loss": 5})
    pushed = cli(mirror, env, "push", PATH, "--policy", policy)
    assert pushed.returncode == status, pushed.stdout + pushed.stderr
    assert upstream_run(up, name)["summary_metrics"]["loss"] == expected
    listed = cli(mirror, env, "outbox", "list").stdout
    if policy == "abort":
        assert "conflict" in listed and "loss: local -1, W&B 5" in listed
        assert "changed on both sides" in pushed.stderr
        assert mirror_run(mirror, name)["summary_metrics"]["loss"] == -1  # still visible
        assert "queued edits: 1 conflict" in cli(mirror, env, "status").stdout
    else:
        assert listed.strip() == "no queued edits"
        assert mirror_run(mirror, name)["summary_metrics"]["loss"] == expected


def test_a_conflict_is_resolved_by_taking_a_side(world):
    up, mirror, env = world
    first, second = up.names()[:2]
    for name in (first, second):
        assert cli(mirror, env, "edit", f"{PATH}/{name}", "--summary", "loss=-1").returncode == 0
        up.edit(name, summaryMetrics={**upstream_run(up, name)["summary_metrics"], "loss": 5})
    assert cli(mirror, env, "push", PATH).returncode == 1
    ids = [
        int(line.split()[0])
        for line in cli(mirror, env, "outbox", "list").stdout.splitlines()
        if "conflict" in line
    ]
    assert len(ids) == 2
    taken = cli(mirror, env, "outbox", "resolve", str(ids[0]), "--take", "local")
    assert taken.returncode == 0, taken.stderr
    dropped = cli(mirror, env, "outbox", "resolve", str(ids[1]), "--take", "remote")
    assert dropped.returncode == 0, dropped.stderr
    assert mirror_run(mirror, second)["summary_metrics"]["loss"] == 5
    assert cli(mirror, env, "push", PATH).returncode == 0
    assert upstream_run(up, first)["summary_metrics"]["loss"] == -1
    assert upstream_run(up, second)["summary_metrics"]["loss"] == 5


@SQLITE_ONLY
def test_an_edit_of_a_key_a_running_run_logs_waits(world):
    up, mirror, env = world
    name = up.run_with_state("running")
    assert cli(mirror, env, "edit", f"{PATH}/{name}", "--summary", "loss=-1").returncode == 0
    pushed = cli(mirror, env, "push", PATH)
    assert pushed.returncode == 0
    assert "0 edits pushed, 0 in conflict, 1 waiting" in pushed.stdout
    assert "the run is running and logs loss itself" in pushed.stderr
    assert upstream_run(up, name)["summary_metrics"]["loss"] != -1
    up.log_history(name, 5, finish=True)  # W&B writes loss itself once more as it ends
    assert cli(mirror, env, "pull", PATH).returncode == 0
    assert cli(mirror, env, "push", PATH).returncode == 1  # now it conflicts: both sides moved
    assert cli(mirror, env, "push", PATH, "--policy", "local-wins").returncode == 0
    assert upstream_run(up, name)["summary_metrics"]["loss"] == -1


@SQLITE_ONLY
def test_an_edit_of_a_run_deleted_on_wandb_becomes_a_conflict(world):
    up, mirror, env = world
    name = up.run_with_state("finished")
    assert cli(mirror, env, "edit", f"{PATH}/{name}", "--summary", "x=1").returncode == 0
    up.delete(name)
    pushed = cli(mirror, env, "push", PATH)
    assert pushed.returncode == 1
    assert "the run was deleted on W&B" in pushed.stderr
    assert "conflict" in cli(mirror, env, "outbox", "list").stdout


@SQLITE_ONLY
def test_deleting_a_config_key_is_refused_and_a_summary_key_deleted(world):
    up, mirror, env = world
    name = up.run_with_state("finished")
    api = Api(database=mirror)
    run = api.run(f"{PATH}/{name}")
    key = next(iter(run.config))
    del run.config[key]
    with pytest.raises(EditError, match="cannot be deleted: W&B merges config"):
        run.update()
    run = Api(database=mirror).run(f"{PATH}/{name}")
    dropped = next(k for k in run.summary if not k.startswith("_"))
    del run.summary[dropped]
    run.update()
    api.close()
    assert dropped not in mirror_run(mirror, name)["summary_metrics"]
    assert cli(mirror, env, "push", PATH).returncode == 0
    assert dropped not in upstream_run(up, name)["summary_metrics"]


def test_an_edit_of_a_run_deleted_and_created_again_is_never_pushed_to_the_new_run(world):
    up, mirror, env = world
    name = up.run_with_state("finished")
    assert cli(mirror, env, "edit", f"{PATH}/{name}", "--summary", "x=1").returncode == 0
    up.delete(name)
    up.add_run(name, 3)  # the same run id, a different run
    pushed = cli(mirror, env, "sync", PATH)
    assert pushed.returncode == 1
    assert "the run was deleted on W&B and created again" in pushed.stderr
    assert "x" not in upstream_run(up, name)["summary_metrics"]
    assert "conflict" in cli(mirror, env, "outbox", "list").stdout
