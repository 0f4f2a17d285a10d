"""Backups of a PostgreSQL mirror: ``pg_dump`` archives taken while a writer writes, verified by
reading them back whole, and restored in one transaction with the previous state kept.

Real ``wandb-mirror`` processes against the throwaway server of ``tests/pg_server.py``; the
counts the tests compare against are read with plain SQL through psycopg, not by the code under
test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from cli_process import cli_env as clean_cli_env
from sync_env import run_cli

from mirror.store import migrate
from mirror.store.engine import make_engine
from mirror.synth import seed_project

pytestmark = pytest.mark.postgresql

ENTITY, PROJECT = "acme", "vision"
PASSWORD = "s3cret-Passw0rd"

# Adds runs of 10, each batch in one transaction, until told to stop: a consistent copy holds
# a whole number of batches on top of the seeded runs.
WRITER = """
import sys, time
from pathlib import Path
from mirror.store.engine import make_engine, write_transaction
from mirror.store.upsert import upsert_runs

db, stop = sys.argv[1], Path(sys.argv[2])
engine = make_engine(db)
i = 0
deadline = time.monotonic() + 60
while not stop.exists() and time.monotonic() < deadline:
    nodes = [{"name": f"w{i}-{j}", "createdAt": "2024-01-01T00:00:00"} for j in range(10)]
    with write_transaction(engine) as conn:
        upsert_runs(conn, "acme", "vision", nodes)
    i += 1
    print(i, flush=True)
"""


def cli_env(tmp_path: Path) -> dict[str, str]:
    return clean_cli_env(home=tmp_path / "home")


def _with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.fixture
def mirror_url(pg_server) -> str:
    """A seeded PostgreSQL mirror, named by a URL with a password (trust auth ignores it)."""
    url = pg_server.new_database()
    engine = make_engine(url)
    seed_project(engine, ENTITY, PROJECT, 40, 30, seed=3)
    engine.dispose()
    return _with_password(url)


def _plain_counts(url: str) -> dict[str, int]:
    """Runs and history rows, counted with psycopg directly."""
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        runs = conn.execute("SELECT count(*) FROM runs WHERE deleted_at IS NULL").fetchone()[0]
        rows = conn.execute(
            "SELECT coalesce(sum(row_count), 0) FROM history_chunks WHERE stream = 'history'"
        ).fetchone()[0]
    return {"runs": int(runs), "history_rows": int(rows)}


def _cli(url: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(["--db", url, *args], env, timeout=120)


def test_a_backup_during_writes_is_consistent_and_verifies(mirror_url, tmp_path):
    env = cli_env(tmp_path)
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, mirror_url, str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        writer.stdout.readline()  # it has committed once
        taken = _cli(mirror_url, "backup", "--dest", str(tmp_path / "b"), env=env)
    finally:
        stop.touch()
        writer.wait(30)
    assert taken.returncode == 0, taken.stderr
    assert writer.returncode == 0, writer.stderr.read() if writer.stderr else ""
    (archive,) = (tmp_path / "b").glob("mirror-*.dump")
    manifest = json.loads(Path(f"{archive}.json").read_text())
    added = manifest["counts"]["runs"] - 40
    assert added > 0 and added % 10 == 0, manifest["counts"]  # whole transactions only
    assert _plain_counts(mirror_url)["runs"] > manifest["counts"]["runs"]  # it went on writing
    checked = _cli(mirror_url, "verify", str(archive), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{manifest['counts']['runs']:,} runs" in checked.stdout
    assert "the live mirror has moved on since: runs +" in checked.stdout
    everything = taken.stdout + taken.stderr + checked.stdout + json.dumps(manifest)
    assert PASSWORD not in everything
    assert manifest["source"].startswith("postgresql+psycopg://postgres:***@")


def test_restore_replaces_the_mirror_and_keeps_the_previous_one(mirror_url, tmp_path):
    env = cli_env(tmp_path)
    dest = tmp_path / "b"
    assert _cli(mirror_url, "backup", "--dest", str(dest), env=env).returncode == 0
    before = _plain_counts(mirror_url)
    extra = make_engine(mirror_url)
    seed_project(extra, ENTITY, "later", 7, 5, seed=4)
    extra.dispose()
    after = _plain_counts(mirror_url)
    assert after["runs"] == before["runs"] + 7
    (archive,) = dest.glob("mirror-*.dump")
    done = _cli(mirror_url, "restore", "--yes", str(archive), env=env)
    assert done.returncode == 0, done.stderr
    assert _plain_counts(mirror_url) == before
    assert PASSWORD not in done.stdout + done.stderr
    (kept,) = dest.glob("before-restore-*.dump")
    assert f"kept as {kept}" in done.stdout
    back = _cli(mirror_url, "restore", "--yes", str(kept), env=env)  # the way back
    assert back.returncode == 0, back.stderr
    assert _plain_counts(mirror_url) == after


def test_a_damaged_archive_is_refused_and_the_mirror_left_alone(mirror_url, tmp_path):
    env = cli_env(tmp_path)
    dest = tmp_path / "b"
    assert _cli(mirror_url, "backup", "--dest", str(dest), env=env).returncode == 0
    (archive,) = dest.glob("mirror-*.dump")
    data = archive.read_bytes()
    cut = tmp_path / "mirror-20240101T000000Z.dump"
    cut.write_bytes(data[: len(data) // 2])  # no manifest: only reading it back can tell
    checked = _cli(mirror_url, "verify", str(cut), env=env)
    assert checked.returncode == 1
    assert checked.stdout.strip().endswith(
        "pg_restore cannot read it: could not read from input file: end of file"
    ), checked.stdout
    before = _plain_counts(mirror_url)
    refused = _cli(mirror_url, "restore", "--yes", str(cut), env=env)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "cannot be restored" in refused.stderr and "is unchanged" in refused.stderr
    assert _plain_counts(mirror_url) == before
    archive.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit: the manifest's sha256
    flipped = _cli(mirror_url, "verify", str(archive), env=env)
    assert flipped.returncode == 1 and "sha256 differs" in flipped.stdout


def test_an_older_archive_is_restored_and_upgraded(pg_server, tmp_path):
    env = cli_env(tmp_path)
    old = pg_server.new_database(migrated=False)
    engine = make_engine(old)
    migrate.upgrade(engine, "0003")
    engine.dispose()
    dest = tmp_path / "b"
    assert _cli(old, "backup", "--dest", str(dest), env=env).returncode == 0
    (archive,) = dest.glob("mirror-*.dump")
    current = pg_server.new_database()  # at head: it has tables 0003 had not (daemon_jobs)
    done = _cli(current, "restore", "--yes", str(archive), env=env)
    assert done.returncode == 0, done.stderr
    assert migrate.head_revision() in done.stdout
    engine = make_engine(current)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_archives_and_sqlite_snapshots_do_not_cross(mirror_url, tmp_path):
    env = cli_env(tmp_path)
    sqlite_db = tmp_path / "mirror.db"
    assert _cli(str(sqlite_db), "init", env=env).returncode == 0
    assert _cli(str(sqlite_db), "backup", "--dest", str(tmp_path / "s"), env=env).returncode == 0
    (snapshot,) = (tmp_path / "s").glob("mirror-*.db")
    refused = _cli(mirror_url, "restore", "--yes", str(snapshot), env=env)
    assert refused.returncode == 1
    assert "is an SQLite snapshot" in refused.stderr and "Traceback" not in refused.stderr


def test_without_the_client_programs_backup_says_what_to_install(mirror_url, tmp_path):
    env = clean_cli_env({"WANDB_MIRROR_PG_BIN": str(tmp_path / "empty")}, home=tmp_path / "home")
    started = time.monotonic()
    done = _cli(mirror_url, "backup", "--dest", str(tmp_path / "b"), env=env)
    assert time.monotonic() - started < 60
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "need pg_dump, which is not installed" in done.stderr
    assert "apt-get install postgresql-client" in done.stderr
    assert not list((tmp_path / "b").glob("*.dump"))
