"""Backups: consistent snapshots during heavy writes, retention, verify, and restore's refusals.

The commands run as real ``wandb-mirror`` processes on real SQLite files; writers and lock
holders are other processes, as the daemon would be.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from legacy_mirror import write_legacy_project
from server_process import clean_env
from sync_env import run_cli

from mirror import Api
from mirror.store import migrate
from mirror.store.backup import (
    list_snapshots,
    manifest_path,
    prune,
    retained,
    take_backup,
    verify_snapshot,
)
from mirror.store.engine import make_engine
from mirror.synth import seed_project

ENTITY, PROJECT = "acme", "vision"
PATH = f"{ENTITY}/{PROJECT}"
SEEDED_RUNS = 120

# Appends runs (each with its history, in one transaction) and more history to seeded runs,
# as fast as it can, holding the writer lock as the daemon would, until told to stop. Its
# commits stay in the WAL (no checkpoints, as while a long reader holds them back), so a copy
# of the database file alone would miss them all.
WRITER = """
import sys, time
from pathlib import Path
from sqlalchemy import event, text
from mirror.store.engine import make_engine
from mirror.store.lock import WriterLock
from mirror.synth_activity import add_run, log_steps

db, stop = sys.argv[1], Path(sys.argv[2])
lock = WriterLock(db, "test writer").acquire()
engine = make_engine(db)
event.listen(
    engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA wal_autocheckpoint = 0")
)
with engine.connect() as conn:
    names = [r[0] for r in conn.execute(text("SELECT name FROM runs ORDER BY id LIMIT 40"))]
deadline = time.monotonic() + 60
i = 0
while not stop.exists() and time.monotonic() < deadline:
    add_run(engine, "acme", "vision", f"writer-{i:05d}", 300)
    log_steps(engine, "acme", "vision", names[i % len(names)], 200)
    i += 1
    print(i, flush=True)
"""

HOLDER = """
import sys, time
from mirror.store.lock import WriterLock
WriterLock(sys.argv[1], "test lock holder").acquire()
print("locked", flush=True)
time.sleep(120)
"""


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated mirror with one synthetic project, built once and copied by each test."""
    path = tmp_path_factory.mktemp("seeded") / "mirror.db"
    engine = make_engine(path)
    migrate.upgrade(engine)
    seed_project(engine, ENTITY, PROJECT, SEEDED_RUNS, 80, seed=5)
    engine.dispose()  # the last connection checkpoints: the file alone holds everything
    assert not Path(f"{path}-wal").exists()
    return path


@pytest.fixture
def mirror_db(seeded_file: Path, tmp_path: Path) -> Path:
    target = tmp_path / "live" / "mirror.db"
    target.parent.mkdir()
    shutil.copyfile(seeded_file, target)
    return target


def cli_env(tmp_path: Path) -> dict[str, str]:
    """An environment that reads no user config and no database but the one given by --db."""
    env = clean_env({})
    for name in ("WANDB_MIRROR_DB", "WANDB_MIRROR_CONFIG", "WANDB_ENTITY"):
        env.pop(name, None)
    home = tmp_path / "home"
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
        }
    )
    return env


def cli(db: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(["--db", str(db), *args], env, timeout=120)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def direct_counts(path: Path, live: bool = False) -> dict[str, int]:
    """Counted here with plain SQL, independently of the code under test.

    A snapshot is opened immutable; a live database normally, so its WAL is read too.
    """
    if live:
        conn = sqlite3.connect(path)
    else:
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        counts = {
            "projects": one("SELECT count(*) FROM projects"),
            "runs": one("SELECT count(*) FROM runs WHERE deleted_at IS NULL"),
            "runs_deleted": one("SELECT count(*) FROM runs WHERE deleted_at IS NOT NULL"),
            "history_chunks": one("SELECT count(*) FROM history_chunks"),
            "history_rows": one(
                "SELECT coalesce(sum(row_count), 0) FROM history_chunks WHERE stream = 'history'"
            ),
            "event_rows": one(
                "SELECT coalesce(sum(row_count), 0) FROM history_chunks WHERE stream = 'events'"
            ),
        }
        for status, n in conn.execute("SELECT status, count(*) FROM outbox GROUP BY status"):
            counts[f"outbox_{status}"] = n
        return counts
    finally:
        conn.close()


def torn_runs(path: Path) -> int:
    """Runs whose recorded history length differs from the rows stored: a half-copied write."""
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return conn.execute(
            "SELECT count(*) FROM runs r WHERE r.history_line_count != coalesce("
            "(SELECT sum(row_count) FROM history_chunks h"
            " WHERE h.run_id = r.id AND h.stream = 'history'), 0)"
        ).fetchone()[0]
    finally:
        conn.close()


def one_backup(db: Path, dest: Path) -> Path:
    engine = make_engine(db, create=False)
    try:
        return take_backup(engine, dest).path
    finally:
        engine.dispose()


def siblings(db: Path) -> set[str]:
    return {p.name for p in db.parent.iterdir()}


# --- a backup during heavy writes, restored -------------------------------------------------


def test_backup_during_heavy_writes_restores_to_a_working_mirror(
    mirror_db: Path, tmp_path: Path
) -> None:
    env = cli_env(tmp_path)
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(mirror_db), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for _ in range(3):  # the writer is under way before the backup starts
            line = writer.stdout.readline()
            assert line, writer.stderr.read()
        committed = int(line)  # runs added so far, most of them only in the WAL yet
        taken = cli(mirror_db, "backup", env=env)
        for _ in range(3):  # and still writing after it
            assert writer.stdout.readline(), writer.stderr.read()
        assert writer.poll() is None
    finally:
        stop.touch()
        writer.wait(timeout=60)
    assert writer.returncode == 0, writer.stderr.read()
    assert taken.returncode == 0, taken.stderr
    said = taken.stdout.splitlines()[0]
    snap = Path(said.split()[1].rstrip(":"))
    assert snap.parent == mirror_db.parent / "backups"
    assert snap.name.startswith("mirror-") and snap.name.endswith("Z.db")
    assert "removed 0 old snapshots" in taken.stdout

    # one consistent moment of the writes: some of them, not all, and no run half-copied
    counts = direct_counts(snap)
    live_runs = direct_counts(mirror_db, live=True)["runs"]
    assert SEEDED_RUNS + committed <= counts["runs"] < live_runs
    assert f"{counts['runs']} runs" in said
    assert torn_runs(snap) == 0
    conn = sqlite3.connect(f"file:{snap}?mode=ro&immutable=1", uri=True)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    manifest = json.loads(manifest_path(snap).read_text())
    assert manifest["counts"] == counts
    assert manifest["sha256"] == sha(snap)
    assert manifest["bytes"] == snap.stat().st_size
    assert manifest["revision"] == migrate.head_revision()
    assert not [p for p in snap.parent.iterdir() if p.name.endswith(".partial")]

    restored = cli(mirror_db, "restore", str(snap), env=env)
    assert restored.returncode == 0, restored.stderr
    aside = Path(restored.stdout.strip().splitlines()[-1].split(" kept as ")[1])
    assert aside.name.startswith("mirror.db.before-restore-")
    assert direct_counts(aside, live=True)["runs"] == live_runs  # the old mirror kept, whole
    assert not Path(f"{mirror_db}-wal").exists() or Path(f"{mirror_db}-wal").stat().st_size == 0

    listed = cli(mirror_db, "runs", PATH, "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == counts["runs"]
    api = Api(database=str(mirror_db))
    assert len(api.runs(PATH, per_page=500)) == counts["runs"]
    assert len(api.runs(PATH, {"display_name": {"$regex": "^fresh-writer"}})) == (
        counts["runs"] - SEEDED_RUNS
    )


def test_restore_upgrades_a_snapshot_of_an_older_schema(tmp_path: Path) -> None:
    older = "0004"  # the newest schema write_legacy_project writes; restore goes up from it
    db = tmp_path / "old" / "mirror.db"
    engine = make_engine(db)
    migrate.upgrade(engine, older)
    write_legacy_project(engine, ENTITY, PROJECT, 5)  # as the code of that schema wrote it
    snap = take_backup(engine, tmp_path / "snaps").path
    engine.dispose()
    assert verify_snapshot(snap).ok
    assert any("older" in note for note in verify_snapshot(snap).notes)

    live = tmp_path / "live" / "mirror.db"
    env = cli_env(tmp_path)
    restored = cli(live, "restore", str(snap), env=env)  # onto a new machine: nothing to keep
    assert restored.returncode == 0, restored.stderr
    assert "kept as" not in restored.stdout
    engine = make_engine(live, create=False)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
    listed = cli(live, "runs", PATH, "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 5


def test_restore_over_a_damaged_mirror_keeps_the_damaged_file(
    mirror_db: Path, tmp_path: Path
) -> None:
    good = one_backup(mirror_db, tmp_path / "good")
    damaged = b"SQLite format 3\x00" + os.urandom(20_000)  # the header, then garbage
    mirror_db.write_bytes(damaged)
    result = cli(mirror_db, "restore", str(good), env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    aside = Path(result.stdout.strip().splitlines()[-1].split(" kept as ")[1])
    assert aside.read_bytes() == damaged
    assert len(Api(database=str(mirror_db)).runs(PATH)) == SEEDED_RUNS


# --- retention ------------------------------------------------------------------------------

NOW = datetime(2025, 3, 12, 12, 0, tzinfo=timezone.utc)  # a Wednesday, ISO week 2025-W11
STAMPS = {
    "a2": "20250312T100000Z-2",  # today, the same second as a, taken after it
    "a": "20250312T100000Z",
    "b": "20250312T030000Z",  # today
    "c": "20250311T235959Z",  # yesterday, its newest
    "d": "20250311T010000Z",  # yesterday
    "e": "20250309T120000Z",  # Sunday of W10, its newest
    "f": "20250303T000000Z",  # Monday of W10
    "g": "20250302T180000Z",  # Sunday of W09
    "h": "20250220T120000Z",  # W08
    "i": "20250101T000000Z",  # W01 of 2025
    "j": "20241230T080000Z",  # also W01 of 2025, older (ISO years start on a Monday)
}


def snapshot_file(directory: Path, key: str) -> Path:
    return directory / f"mirror-{STAMPS[key]}.db"


def parsed(directory: Path) -> dict[Path, str]:
    return {snapshot_file(directory, key): key for key in STAMPS}


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ((2, 0, 0), "a2 a"),
        ((0, 0, 0), "a2"),  # the newest is always kept
        ((0, 1, 0), "a2"),  # today counts as the first day
        ((1, 2, 0), "a2 c"),
        ((0, 4, 0), "a2 c e"),  # the 10th had none; the 9th is the fourth day
        ((0, 0, 3), "a2 e g"),
        ((0, 0, 11), "a2 e g h i"),  # W01 back from W11: the newest of W01 only, not j
        ((3, 7, 4), "a2 a b c e g h"),
        ((7, 7, 4), "a2 a b c d e f g h"),
        ((20, 0, 0), "a2 a b c d e f g h i j"),
    ],
)
def test_retention_keeps_exactly_the_policy(
    tmp_path: Path, keep: tuple[int, int, int], expected: str
) -> None:
    names = parsed(tmp_path)
    for path in names:
        path.touch()
    snaps = list_snapshots(tmp_path)
    assert [names[s.path] for s in snaps] == list(STAMPS)  # newest first, seq after seq
    kept = retained(snaps, *keep, now=NOW)
    assert sorted(names[p] for p in kept) == sorted(expected.split())


def test_retention_keeps_snapshots_stamped_in_the_future(tmp_path: Path) -> None:
    later = tmp_path / "mirror-20250313T000000Z.db"  # a clock set back since it was taken
    today = tmp_path / "mirror-20250312T100000Z.db"
    old = tmp_path / "mirror-20250201T000000Z.db"
    for path in (later, today, old):
        path.touch()
    assert retained(list_snapshots(tmp_path), 0, 1, 0, now=NOW) == {later, today}


def test_prune_deletes_only_what_retention_drops(tmp_path: Path) -> None:
    names = parsed(tmp_path)
    for path in names:
        path.write_bytes(b"snapshot")
        manifest_path(path).write_text("{}")
    unrelated = {
        "notes.txt": b"mine",
        "mirror-20200101T000000Z.db.bak": b"a user's copy",
        "mirror-latest.db": b"x",
        "mirror-20200101T000000Z.sqlite": b"x",
        "mirror-20200101T000000123456Z-pre-upgrade-0003.db": b"the migration's snapshot",
        "mirror-20201301T000000Z.db": b"month 13: not a time",
        ".mirror-20250312T115900Z-77-abc123.db.partial": b"a backup in progress",
    }
    for name, data in unrelated.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "mirror-20200101T000000Z.db").mkdir()  # a directory with a snapshot's name
    stale = tmp_path / ".mirror-20250301T000000Z-12-def456.db.partial"
    stale.write_bytes(b"an interrupted backup")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))
    orphan = tmp_path / "mirror-20250305T000000Z.db.json"  # its snapshot was deleted by hand
    orphan.write_text("{}")

    removed = prune(tmp_path, 3, 7, 4, now=NOW)

    assert sorted(names[p] for p in removed) == ["d", "f", "i", "j"]
    for path, key in names.items():
        assert path.exists() == (key not in ["d", "f", "i", "j"]), key
        assert manifest_path(path).exists() == path.exists(), key
    for name, data in unrelated.items():
        assert (tmp_path / name).read_bytes() == data, name
    assert (tmp_path / "mirror-20200101T000000Z.db").is_dir()
    assert not stale.exists() and not orphan.exists()
    assert prune(tmp_path, 3, 7, 4, now=NOW) == []  # nothing more to drop

    removed = prune(tmp_path, 0, 0, 0, now=NOW)
    assert sorted(names[p] for p in removed) == ["a", "b", "c", "e", "g", "h"]
    assert [names[s.path] for s in list_snapshots(tmp_path)] == ["a2"]
    for name, data in unrelated.items():
        assert (tmp_path / name).read_bytes() == data, name


# --- restore refuses ------------------------------------------------------------------------


def make_bad(kind: str, good: Path, directory: Path) -> Path:
    directory.mkdir()
    bad = directory / good.name
    if kind == "text":
        bad.write_text("these are my notes, not a database\n")
        return bad
    data = bytearray(good.read_bytes())
    shutil.copyfile(manifest_path(good), manifest_path(bad))
    if kind == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "flipped":  # caught by the manifest's sha256 whatever SQLite makes of it
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        bad.write_bytes(data)
    elif kind == "flipped-schema":  # no manifest: SQLite itself must notice
        manifest_path(bad).unlink()
        page = int.from_bytes(data[16:18], "big")  # the schema's text ends the first page
        data[page - 1500 : page] = bytes(b ^ 0x5A for b in data[page - 1500 : page])
        bad.write_bytes(data)
    return bad


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("text", "not an SQLite database"),
        ("truncated", "truncated"),
        ("flipped", "sha256"),
        ("flipped-schema", "SQLite cannot read it"),
    ],
)
def test_restore_refuses_an_unreadable_snapshot(
    mirror_db: Path, tmp_path: Path, kind: str, says: str
) -> None:
    good = one_backup(mirror_db, tmp_path / "good")
    bad = make_bad(kind, good, tmp_path / "bad")
    before, files = sha(mirror_db), siblings(mirror_db)

    result = cli(mirror_db, "restore", str(bad), env=cli_env(tmp_path))

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("wandb-mirror: error: ") and says in lines[0], lines[0]
    assert "is unchanged" in lines[0]
    assert sha(mirror_db) == before
    assert siblings(mirror_db) - {"mirror.db.writer.lock"} == files  # nothing set aside or left
    assert len(Api(database=str(mirror_db)).runs(PATH)) == SEEDED_RUNS


def test_restore_refuses_while_another_process_holds_the_writer_lock(
    mirror_db: Path, tmp_path: Path
) -> None:
    good = one_backup(mirror_db, tmp_path / "good")
    env = cli_env(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(mirror_db)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before, files = sha(mirror_db), siblings(mirror_db)
        refused = cli(mirror_db, "restore", str(good), env=env)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert f"pid {holder.pid}" in lines[0] and "test lock holder" in lines[0]
    assert sha(mirror_db) == before and siblings(mirror_db) == files

    allowed = cli(mirror_db, "restore", str(good), env=env)  # the holder gone, it goes ahead
    assert allowed.returncode == 0, allowed.stderr
    assert "before-restore-" in allowed.stdout


def test_restore_refuses_while_another_process_has_the_mirror_open(
    mirror_db: Path, tmp_path: Path
) -> None:
    good = one_backup(mirror_db, tmp_path / "good")
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1]); c.execute('SELECT count(*) FROM runs').fetchall()\n"
            "print('open', flush=True); time.sleep(120)",
            str(mirror_db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "open"
        before = sha(mirror_db)
        refused = cli(mirror_db, "restore", str(good), env=cli_env(tmp_path))
    finally:
        reader.kill()
        reader.wait()
    assert refused.returncode == 1
    assert f"pid {reader.pid}" in refused.stderr and "stop it" in refused.stderr
    assert sha(mirror_db) == before


# --- a backup killed part-way ---------------------------------------------------------------


def test_a_killed_backup_never_leaves_a_bad_snapshot(mirror_db: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(mirror_db)  # bulk, so the copy takes long enough to be interrupted
    conn.execute("CREATE TABLE padding (id INTEGER PRIMARY KEY, data BLOB)")
    conn.execute(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000) "
        "INSERT INTO padding (data) SELECT randomblob(100000) FROM n"
    )
    conn.commit()
    conn.close()
    dest = tmp_path / "backups"
    env = cli_env(tmp_path)
    command = [sys.executable, "-m", "mirror.cli", "--db", str(mirror_db), "backup"]
    command += ["--dest", str(dest)]
    interrupted = 0
    verified: set[Path] = set()
    try:
        for delay in (0.0, 0.03, 0.08, 0.15, 0.25, 0.4, 0.6):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                if any(p.name.endswith(".partial") for p in dest.glob(".mirror-*")):
                    break
                time.sleep(0.002)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.returncode == -signal.SIGKILL and list(dest.glob(".mirror-*.partial")):
                interrupted += 1
            for snap in list_snapshots(dest):
                if snap.path in verified:
                    continue
                verified.add(snap.path)
                check = verify_snapshot(snap.path)
                assert check.ok, (delay, snap.path.name, check.problems)
                assert check.counts["runs"] == SEEDED_RUNS
            for partial in dest.glob(".mirror-*.partial"):
                partial.unlink()  # a day old they would be pruned; here they only fill the disk
        assert interrupted >= 2  # the kills landed mid-backup, not only before or after it
        completed = cli(mirror_db, "backup", "--dest", str(dest), env=env)
        assert completed.returncode == 0, completed.stderr
        assert verify_snapshot(list_snapshots(dest)[0].path).ok
    finally:
        shutil.rmtree(dest, ignore_errors=True)


# --- verify ---------------------------------------------------------------------------------


def test_verify_a_good_snapshot_and_corrupted_ones(mirror_db: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    good = cli(mirror_db, "backup", env=env)
    assert good.returncode == 0, good.stderr
    snap = list_snapshots(mirror_db.parent / "backups")[0].path
    before, files = sha(snap), {p.name for p in snap.parent.iterdir()}

    ok = cli(mirror_db, "verify", env=env)  # no SNAPSHOT: the newest in the backup directory
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"{snap}: ok, schema {migrate.head_revision()}")
    assert f"{SEEDED_RUNS} runs" in ok.stdout
    assert "the live mirror holds the same counts" in ok.stdout
    assert sha(snap) == before and {p.name for p in snap.parent.iterdir()} == files  # read-only

    # a newer corrupted snapshot is now the newest: verify without SNAPSHOT must say so
    corrupted = snap.with_name(snap.name.replace("Z.db", "Z-9.db"))
    data = bytearray(snap.read_bytes())
    data[len(data) // 3] ^= 0x01
    corrupted.write_bytes(data)
    shutil.copyfile(manifest_path(snap), manifest_path(corrupted))
    bad = cli(mirror_db, "verify", env=env)
    assert bad.returncode == 1
    assert bad.stdout.startswith(f"{corrupted}: its sha256 differs"), bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr

    garbage = tmp_path / "notes.db"
    for content, says in [
        (b"", "empty"),
        (b"hello\n", "not an SQLite database"),
        (bytes(data[:150_000]), "truncated"),
    ]:
        garbage.write_bytes(content)
        result = cli(mirror_db, "verify", str(garbage), env=env)
        assert result.returncode == 1
        lines = result.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{garbage}: "), result.stdout
        assert says in lines[0] and "Traceback" not in result.stdout + result.stderr


def test_verify_refuses_a_schema_from_a_newer_wandb_mirror(mirror_db: Path, tmp_path: Path) -> None:
    snap = one_backup(mirror_db, tmp_path / "snaps")
    manifest_path(snap).unlink()
    conn = sqlite3.connect(snap)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()
    check = verify_snapshot(snap)
    assert not check.ok
    assert check.problems == [
        f"its schema revision 9999 is unknown to this wandb-mirror (newest "
        f"{migrate.head_revision()}): a newer wandb-mirror wrote it; restore it with that version"
    ]


def test_verify_reports_how_far_the_live_mirror_moved(mirror_db: Path, tmp_path: Path) -> None:
    snap = one_backup(mirror_db, tmp_path / "snaps")
    engine = make_engine(mirror_db)
    from mirror.synth_activity import add_run

    add_run(engine, ENTITY, PROJECT, "later", 7)
    check = verify_snapshot(snap, live_engine=engine)
    engine.dispose()
    assert check.ok, check.problems  # the live mirror moving on is not a failure
    assert check.live_differences == {
        "runs": 1,
        "history_rows": 7,
        "history_chunks": 1,
    }
