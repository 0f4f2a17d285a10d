"""The official ``wandb`` client sees the same project through the upstream and through a
``serve`` over the mirror that the sync engine filled: two real server processes, one client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from server_process import ServerProcess
from sync_env import PATH, Upstream, run_cli, seed_upstream, summary_line, sync_env

wandb = pytest.importorskip("wandb")

KEY = "mirrortest" + "0" * 30


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch):
    home = tmp_path / "wandb-home"
    for name, value in {
        "HOME": str(home),
        "WANDB_DIR": str(home),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_API_KEY": KEY,
        "NETRC": str(home / "netrc"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    return home


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


def test_the_wandb_client_reads_the_mirror_as_it_reads_the_upstream(tmp_path, wandb_home):
    db = seed_upstream(tmp_path / "upstream.db", 12, 400)
    mirror = tmp_path / "mirror.db"
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
