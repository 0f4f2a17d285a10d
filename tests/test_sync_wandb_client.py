"""The official ``wandb`` client sees the same project through the upstream and through a
``serve`` over the mirror that the sync engine filled: two real server processes, one client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mirror_compare import snapshot
from server_process import ServerProcess, wandb_client_env
from sync_env import PATH, PROJECT, Upstream, run_cli, seed_upstream, summary_line, sync_env

wandb = pytest.importorskip("wandb")

KEY = "mirrortest" + "0" * 30


@pytest.fixture
def wandb_home(tmp_path: Path):
    with wandb_client_env(tmp_path / "wandb-home", KEY) as env:
        yield env


def text(value: Any) -> str:
    """Canonical JSON, NaN and Infinity as tokens, so equal values compare equal."""
    return json.dumps(value, sort_keys=True, default=str)


def view(api: Any) -> list[dict[str, Any]]:
    """What a user's script reads of the project through ``wandb.Api``."""
    out = []
    for run in api.runs(PATH, order="+created_at", per_page=17):
        out.append(
            {
                "id": run.id,
                "name": run.name,
                "state": run.state,
                "tags": run.tags,
                "created_at": run.created_at,
                "config": text(run.config),
                "summary": text(dict(run.summary)),
                "history": text(list(run.scan_history(page_size=150))),
            }
        )
    return out


def test_the_wandb_client_reads_the_mirror_as_it_reads_the_upstream(tmp_path, wandb_home, database):
    db = seed_upstream(tmp_path / "upstream.db", 12, 400)
    mirror = database
    with Upstream(db, tmp_path / "up.log") as up:
        result = run_cli(["--db", str(mirror), "sync", PATH], sync_env(up.url, tmp_path))
        assert result.returncode == 0, result.stderr
        assert "12 runs new" in summary_line(result)
        upstream_view = view(wandb.Api(api_key=KEY, overrides={"base_url": up.url}, timeout=60))
    with ServerProcess(mirror, tmp_path / "mirror.log") as served:
        mirror_view = view(wandb.Api(api_key=KEY, overrides={"base_url": served.url}, timeout=60))
    assert len(upstream_view) == 12
    assert mirror_view == upstream_view
    # the data held NaN and Infinity, and they survived both hops
    assert any("NaN" in run["history"] for run in mirror_view)
    assert any("Infinity" in run["summary"] + run["history"] for run in mirror_view)


def test_the_wandb_clients_edits_through_a_mirror_serve_reach_wandb_with_the_next_sync(
    tmp_path, wandb_home, database
):
    """``serve`` over a synced mirror takes the mirror role: the official client's
    ``run.summary.update`` and ``run.update()`` land in the outbox, show at once, and the next
    ``sync`` pushes them to the upstream."""
    db = seed_upstream(tmp_path / "upstream.db", 4, 20)
    mirror = database
    with Upstream(db, tmp_path / "up.log") as up:
        env = sync_env(up.url, tmp_path)
        assert run_cli(["--db", str(mirror), "sync", PATH], env).returncode == 0
        name = up.run_with_state("finished")
        with ServerProcess(mirror, tmp_path / "mirror.log") as served:
            assert "(mirror role)" in served.log()
            api = wandb.Api(api_key=KEY, overrides={"base_url": served.url}, timeout=60)
            run = api.run(f"{PATH}/{name}")
            run.summary.update({"best": 0.5, "nan": float("nan")})
            run = wandb.Api(api_key=KEY, overrides={"base_url": served.url}).run(f"{PATH}/{name}")
            assert run.summary["best"] == 0.5  # read your own writes, through serve
            run.config["note"] = "from wandb"
            run.tags = [*run.tags, "via-serve"]
            run.update()
        listed = run_cli(["--db", str(mirror), "outbox", "list"], env)
        assert "pending  acme/vision/" + name in listed.stdout, listed.stdout
        assert "acme/vision: 0 runs new" in run_cli(["--db", str(mirror), "sync", PATH], env).stdout
        remote = snapshot(db, "acme", PROJECT)[name]
    assert remote["summary_metrics"]["best"] == 0.5
    assert remote["config"]["note"]["value"] == "from wandb"
    assert "via-serve" in remote["tags"]
