"""The sync engine against ``serve`` as a real process: exact, incremental, guarded, and clear
about what it could not do."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mirror_compare import differences
from mirror_db import Database, exists, is_postgres, tables
from server_process import free_port
from sqlalchemy import delete, select, text, update
from sync_env import (
    KEY,
    PATH,
    PROJECT,
    Upstream,
    requests_of,
    run_cli,
    seed_upstream,
    summary_line,
    sync_env,
)

from mirror.store.engine import make_engine, write_transaction
from mirror.store.fields import dumps, loads
from mirror.store.history import history_keys_of
from mirror.store.models import history_chunks, runs
from mirror.store.upsert import append_history, utcnow

RUNS, STEPS = 30, 120


@pytest.fixture
def upstream(tmp_path: Path):
    db = seed_upstream(tmp_path / "upstream.db", RUNS, STEPS)
    with Upstream(db, tmp_path / "serve.log") as up:
        yield up


def sync(up: Upstream, mirror: Database, home: Path, *args: str, config: str | None = None):
    env = sync_env(up.url, home)
    extra = []
    if config is not None:
        (home / "c.toml").write_text(config)
        extra = ["--config", str(home / "c.toml")]
    return run_cli(["--db", str(mirror), *extra, "sync", PATH, *args], env)


def test_a_sync_gives_an_exact_mirror_and_a_resync_asks_almost_nothing(
    upstream, tmp_path, empty_database
):
    mirror = empty_database
    first = sync(upstream, mirror, tmp_path)
    assert first.returncode == 0, first.stderr
    line = summary_line(first)
    assert f"{RUNS} runs new" in line and "0 skipped" in line
    assert differences(upstream.db, mirror, "acme", PROJECT) == []

    served = upstream.requests_served()
    again = sync(upstream, mirror, tmp_path)
    assert again.returncode == 0, again.stderr
    line = summary_line(again)
    assert "0 runs new, 0 changed, 0 deleted, 0 history rows" in line
    # one listing page (1000 runs a page) plus the key check: ceil(30/1000) + 1
    assert upstream.requests_served() - served == 2
    assert requests_of(line) == 1


def test_the_next_sync_reflects_every_upstream_change_and_fetches_only_what_moved(
    upstream, tmp_path, database
):
    mirror = database
    assert sync(upstream, mirror, tmp_path).returncode == 0
    names = upstream.names()
    running = upstream.run_with_state("running")
    finishing = [n for n in names if n != running][0]
    edited, tagged, deleted = [n for n in names if n not in (running, finishing)][:3]
    upstream.log_history(running, 2500)  # three windows of 1000 steps, events in the first
    upstream.log_history(finishing, 10, finish=True)
    upstream.edit(edited, summaryMetrics={"best": 0.93, "nan": math.nan, "inf": math.inf})
    upstream.edit(tagged, tags=["fresh", "ünï"], notes="edited in the UI")
    upstream.add_run("newrun01", 40)
    upstream.delete(deleted)

    served = upstream.requests_served()
    result = sync(upstream, mirror, tmp_path)
    assert result.returncode == 0, result.stderr
    line = summary_line(result)
    assert "1 runs new, 4 changed, 1 deleted, 2,550 history rows" in line
    assert differences(upstream.db, mirror, "acme", PROJECT) == []
    # key check + listing + one record batch + history: running 3 windows, finishing 1, new 1
    assert upstream.requests_served() - served == 1 + 1 + 1 + 3 + 1 + 1
    engine = make_engine(mirror, create=False)
    with engine.connect() as conn:
        gone = conn.execute(select(runs.c.deleted_at).where(runs.c.name == deleted)).scalar()
    engine.dispose()
    assert gone is not None  # tombstoned, never dropped


def test_the_mass_deletion_guard_keeps_the_mirror_when_the_listing_comes_back_empty(
    upstream, tmp_path, database
):
    mirror = database
    assert sync(upstream, mirror, tmp_path).returncode == 0
    for name in upstream.names():
        upstream.delete(name)
    result = sync(upstream, mirror, tmp_path)
    assert result.returncode == 1
    assert "deletions held back: W&B listed no runs while the mirror holds 30" in result.stderr
    engine = make_engine(mirror, create=False)
    with engine.connect() as conn:
        live = conn.execute(select(runs.c.name).where(runs.c.deleted_at.is_(None))).all()
    engine.dispose()
    assert len(live) == RUNS
    forced = sync(upstream, mirror, tmp_path, "--force-deletions")
    assert forced.returncode == 0, forced.stderr
    assert f"{RUNS} deleted" in summary_line(forced)


def test_paging_that_repeats_and_skips_runs_still_gives_every_run(tmp_path, database):
    db = seed_upstream(tmp_path / "upstream.db", 40, 20)
    with Upstream(db, tmp_path / "serve.log", ("--fault-page-repeat", "2")) as up:
        mirror = database
        result = sync(up, mirror, tmp_path, config="[sync]\nlisting_page = 7\n")
        assert result.returncode == 0, result.stderr
        assert "repeated runs and left out" in result.stderr
        assert "40 runs new" in summary_line(result)
        assert differences(db, mirror, "acme", PROJECT) == []


def test_no_history_mirrors_runs_only_and_a_later_sync_fetches_the_history(
    upstream, tmp_path, database
):
    mirror = database
    first = sync(upstream, mirror, tmp_path, "--no-history")
    assert first.returncode == 0, first.stderr
    assert "0 history rows" in summary_line(first)
    second = sync(upstream, mirror, tmp_path)
    assert second.returncode == 0, second.stderr
    assert differences(upstream.db, mirror, "acme", PROJECT) == []


def test_a_history_key_list_keeps_only_those_keys(upstream, tmp_path, database):
    mirror = database
    config = f'[[project]]\npath = "{PATH}"\nhistory = ["loss"]\n'
    result = sync(upstream, mirror, tmp_path, config=config)
    assert result.returncode == 0, result.stderr
    from mirror_compare import snapshot

    rows = [row for run in snapshot(mirror, "acme", PROJECT).values() for row in run["history"]]
    assert rows and all(set(row) <= {"loss", "_step", "_runtime", "_timestamp"} for row in rows)
    assert any("loss" in row for row in rows)


def test_a_refused_key_is_one_line_naming_the_host_and_writes_nothing(tmp_path, empty_database):
    db = seed_upstream(tmp_path / "upstream.db", 3, 5)
    with Upstream(db, tmp_path / "serve.log", ("--api-key", "the-right-key")) as up:
        mirror = empty_database
        result = sync(up, mirror, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{up.server.port} refused the API key" in lines[0]
    assert "wandb login --host" in lines[0] and "WANDB_API_KEY" in lines[0]
    assert KEY not in result.stderr + result.stdout
    assert not exists(mirror)


def test_an_unreachable_host_is_one_line_and_writes_nothing(tmp_path):
    mirror = tmp_path / "mirror.db"
    env = sync_env(f"http://127.0.0.1:{free_port()}", tmp_path)
    (tmp_path / "c.toml").write_text("[remote]\nmax_attempts = 2\nbackoff_initial = 0.1\n")
    result = run_cli(["--db", str(mirror), "--config", str(tmp_path / "c.toml"), "sync", PATH], env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach 127.0.0.1" in lines[0], result.stderr
    assert "gave up after 2 attempts" in lines[0]
    assert not mirror.exists()


def test_no_key_anywhere_says_how_to_log_in(tmp_path):
    env = sync_env("http://127.0.0.1:9", tmp_path)
    del env["WANDB_API_KEY"]
    env["NETRC"] = str(tmp_path / "no-netrc")
    result = run_cli(["--db", str(tmp_path / "m.db"), "sync", PATH], env)
    assert result.returncode == 1
    assert "no W&B API key for 127.0.0.1:9: run `wandb login --host" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_project_is_one_line_and_the_other_projects_still_sync(
    upstream, tmp_path, database
):
    mirror = database
    env = sync_env(upstream.url, tmp_path)
    result = run_cli(["--db", str(mirror), "sync", "acme/nosuch", PATH], env)
    assert result.returncode == 1
    assert "acme/nosuch: not synced: acme/nosuch does not exist on 127.0.0.1" in result.stdout
    assert f"{RUNS} runs new" in summary_line(result)
    assert differences(upstream.db, mirror, "acme", PROJECT) == []
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("[sync\n", "not valid TOML"),
        ("[sync]\nconcurrency = 0\n", "sync.concurrency must be at least 1"),
        ("[remote]\ntimeout = 'soon'\n", "remote.timeout must be a number"),
        ('[[project]]\npath = "no-slash"\n', "project[0].path must be ENTITY/PROJECT"),
    ],
)
def test_a_malformed_config_is_one_line_and_writes_nothing(tmp_path, text, message):
    (tmp_path / "c.toml").write_text(text)
    env = sync_env("http://127.0.0.1:9", tmp_path)
    mirror = tmp_path / "m.db"
    result = run_cli(["--db", str(mirror), "--config", str(tmp_path / "c.toml"), "sync", PATH], env)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not mirror.exists()


def test_status_shows_the_last_sync(upstream, tmp_path, database):
    mirror = database
    assert sync(upstream, mirror, tmp_path).returncode == 0
    result = run_cli(["--db", str(mirror), "status"], sync_env(upstream.url, tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"{PATH}: {RUNS} runs (0 deleted)" in result.stdout
    assert "last pull:    acme/vision: 30 runs new" in result.stdout
    assert "last success: 20" in result.stdout


def test_the_key_is_never_written_or_printed(upstream, tmp_path, database):
    mirror = database
    result = sync(upstream, mirror, tmp_path)
    assert result.returncode == 0
    assert KEY not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    if is_postgres(mirror):  # the mirror is not among the files: read every row of it
        engine = make_engine(mirror, create=False)
        with engine.connect() as conn:
            for name in tables(mirror):
                for row in conn.execute(text(f'SELECT * FROM "{name}"')):
                    assert KEY not in repr(tuple(row)), name
        engine.dispose()


def test_full_reconcile_catches_what_the_listing_cannot_show(upstream, tmp_path, database):
    """An edit of a finished run's config that moved none of the listed fields (W&B's UI can do
    this) is invisible to a normal cycle and caught by ``--full``."""
    mirror = database
    assert sync(upstream, mirror, tmp_path).returncode == 0
    name = upstream.run_with_state("finished")
    engine = make_engine(upstream.db)
    with write_transaction(engine) as conn:
        conn.execute(
            update(runs).where(runs.c.name == name).values(config='{"lr": {"value": 0.5}}')
        )
    engine.dispose()
    quiet = sync(upstream, mirror, tmp_path)
    assert "0 changed" in summary_line(quiet)
    assert any(
        d.startswith(f"{name}.config") for d in differences(upstream.db, mirror, "acme", PROJECT)
    )
    full = sync(upstream, mirror, tmp_path, "--full")
    assert full.returncode == 0, full.stderr
    assert f"{RUNS} changed, 0 deleted, 0 history rows" in summary_line(full)
    assert differences(upstream.db, mirror, "acme", PROJECT) == []


def test_history_rewritten_upstream_is_fetched_anew(upstream, tmp_path, database):
    """A resume with rewind: W&B's history of a run now has fewer rows and other values."""
    mirror = database
    assert sync(upstream, mirror, tmp_path).returncode == 0
    name = upstream.run_with_state("finished")
    engine = make_engine(upstream.db)
    with write_transaction(engine) as conn:
        run_id = conn.execute(select(runs.c.id).where(runs.c.name == name)).scalar_one()
        conn.execute(delete(history_chunks).where(history_chunks.c.run_id == run_id))
        rows = [{"_step": i, "loss": -float(i)} for i in range(30)]
        append_history(conn, run_id, rows)
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(
                history_line_count=30,
                history_keys=dumps(history_keys_of(rows)),
                heartbeat_at=utcnow(),
            )
        )
    engine.dispose()
    result = sync(upstream, mirror, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 changed, 0 deleted, 30 history rows" in summary_line(result)
    assert differences(upstream.db, mirror, "acme", PROJECT) == []


PARQUET = ("--parquet-export-delay", "0", "--parquet-file-rows", "300")
PARQUET_CONFIG = "[sync]\nparquet_min_rows = 0\nhistory_page = 100\n"


def test_exported_history_is_read_from_parquet_files_and_checked(tmp_path, database):
    db = seed_upstream(tmp_path / "upstream.db", 12, 700)
    with Upstream(db, tmp_path / "serve.log", PARQUET) as up:
        mirror = database
        result = sync(up, mirror, tmp_path, config=PARQUET_CONFIG)
        assert result.returncode == 0, result.stderr
        line = summary_line(result)
        assert "file downloads" in line, line
        assert "exported history not used" not in result.stderr
        assert differences(db, mirror, "acme", PROJECT) == []
        log = up.server.log()
        assert "GET /parquet/" in log
        # finished runs came from files: far fewer history windows than 700 steps / 100 a page
        windows = requests_of(line)
        assert windows < 12 * 7


def test_steps_logged_after_the_export_are_paged_live(tmp_path):
    db = seed_upstream(tmp_path / "upstream.db", 6, 400)
    with Upstream(db, tmp_path / "serve.log", PARQUET) as up:
        name = up.run_with_state("finished")
        mirror = tmp_path / "mirror.db"
        home = tmp_path / "first"
        home.mkdir()
        # the export is made on the first request that finds the run eligible
        assert sync(up, tmp_path / "warm.db", home, config=PARQUET_CONFIG).returncode == 0
        engine = make_engine(db)
        with write_transaction(engine) as conn:  # a resumed run: more rows, same heartbeat
            run = conn.execute(select(runs).where(runs.c.name == name)).mappings().one()
            last = (
                conn.execute(
                    select(history_chunks.c.last_step).where(history_chunks.c.run_id == run["id"])
                )
                .scalars()
                .all()
            )
            rows = [{"_step": max(last) + 1 + i, "loss": float(i)} for i in range(150)]
            append_history(conn, run["id"], rows)
            keys = loads(run["history_keys"])
            keys["lastStep"] = rows[-1]["_step"]
            conn.execute(
                update(runs)
                .where(runs.c.id == run["id"])
                .values(
                    history_line_count=run["history_line_count"] + 150,
                    history_keys=dumps(keys),
                    updated_at=utcnow(),
                )
            )
        engine.dispose()
        result = sync(up, mirror, tmp_path, config=PARQUET_CONFIG)
        assert result.returncode == 0, result.stderr
        assert differences(db, mirror, "acme", PROJECT) == []
        assert "file downloads" in summary_line(result)
        assert "exported history not used" not in result.stderr


def test_an_export_that_disagrees_with_the_run_counts_is_not_trusted(tmp_path):
    """W&B's exports had bugs (rows dropped at page edges): files that hold fewer rows than
    ``historyLineCount`` says are refused and the run is paged instead."""
    db = seed_upstream(tmp_path / "upstream.db", 6, 400)
    with Upstream(db, tmp_path / "serve.log", PARQUET) as up:
        name = up.run_with_state("finished")
        home = tmp_path / "first"
        home.mkdir()
        assert sync(up, tmp_path / "warm.db", home, config=PARQUET_CONFIG).returncode == 0
        engine = make_engine(db)
        with write_transaction(engine) as conn:
            conn.execute(
                update(runs)
                .where(runs.c.name == name)
                .values(history_line_count=runs.c.history_line_count + 5)
            )
        engine.dispose()
        mirror = tmp_path / "mirror.db"
        result = sync(up, mirror, tmp_path, config=PARQUET_CONFIG)
        assert result.returncode == 0, result.stderr
        assert f"note: {name}: exported history not used, it holds" in result.stderr
        assert differences(db, mirror, "acme", PROJECT) == []


def test_a_wandb_without_exports_is_not_asked_for_each_finished_run(upstream, tmp_path):
    """Old finished runs are where W&B's exports would be; a server that has none is asked a
    few times per cycle, not once per run (each answer would cost a request for nothing)."""
    from mirror.config import SyncSettings
    from mirror.sync.pull import _ExportOdds

    mirror = tmp_path / "mirror.db"
    result = sync(upstream, mirror, tmp_path)
    assert result.returncode == 0, result.stderr
    engine = make_engine(upstream.db, create=False)
    with engine.connect() as conn:
        fetched = conn.execute(
            select(runs.c.name).where(
                (runs.c.history_line_count > 0) | (runs.c.system_metrics != "{}")
            )
        ).all()
    engine.dispose()
    minimum = 1 + 1 + len(fetched)  # listing, one record batch, one request a run
    wasted = requests_of(summary_line(result)) - minimum
    in_flight = SyncSettings().concurrency - 1  # asked before the first answers came back
    assert 0 <= wasted <= _ExportOdds.GIVE_UP_AFTER + in_flight
