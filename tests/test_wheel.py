"""The wheel carries its migrations: built, installed into a fresh venv, it initialises a mirror."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_installs_and_initialises_a_database(tmp_path: Path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("wandb_mirror-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mirror/_migrations/env.py" in names
    assert any(n.startswith("mirror/_migrations/versions/0001") for n in names)
    assert "mirror/serve/schema.graphql" in names
    for asset in ("uPlot.iife.min.js", "uPlot.LICENSE.txt", "charts.js", "dashboard.css"):
        assert f"mirror/serve/dashboard/static/{asset}" in names  # no CDN: the assets ship

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True
    )
    cli = env_dir / "bin" / "wandb-mirror"
    db = tmp_path / "fresh.db"
    outside = tmp_path / "elsewhere"  # far from the source tree, so only the wheel can answer
    outside.mkdir()
    init = subprocess.run(
        [str(cli), "--db", str(db), "init"], cwd=outside, capture_output=True, text=True
    )
    assert init.returncode == 0, init.stderr
    check = subprocess.run(
        [str(cli), "--db", str(db), "db", "check"], cwd=outside, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    where = subprocess.run(
        [str(python), "-c", "from mirror.store.migrate import scripts_dir; print(scripts_dir())"],
        cwd=outside,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(env_dir) in where.stdout
