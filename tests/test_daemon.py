"""The daemon as a real process against ``serve`` as the upstream, with short intervals: it
syncs on schedule, obeys USR1, HUP and TERM, keeps one writer per mirror, survives an upstream
that goes away, catches up once after a sleep, and serves the mirror it keeps."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from daemon_process import DaemonProcess, job_rows, job_runs, write_config
from mirror_compare import differences
from mirror_db import Database, is_postgres, lock_file
from server_process import ServerProcess, free_port
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sync_checks import wait_for
from sync_env import ENTITY, KEY, PATH, PROJECT, Upstream, run_cli, seed_upstream, sync_env

from mirror.store.engine import make_engine
from mirror.store.lock import WriterLock, current_holder
from mirror.store.models import projects, runs, sync_state
from mirror.synth import seed_project
from mirror.synth_activity import add_run, log_steps

pytestmark = pytest.mark.timeout(180)


@pytest.fixture()
def upstream(tmp_path: Path):
    db = seed_upstream(tmp_path / "upstream.db", runs_=12, steps=40)
    with Upstream(db, tmp_path / "serve.log") as up:
        yield up


def _runs_in(mirror: Database, entity: str = ENTITY, project: str = PROJECT) -> int:
    """Live runs of a project in the mirror (0 before the daemon created it)."""
    if not is_postgres(mirror) and not Path(mirror).exists():
        return 0
    engine = make_engine(mirror, create=False)
    try:
        with engine.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(runs.join(projects, projects.c.id == runs.c.project_id))
                .where(
                    projects.c.entity == entity,
                    projects.c.name == project,
                    runs.c.deleted_at.is_(None),
                )
            ).scalar_one()
    except (OperationalError, ProgrammingError):  # the daemon has not created the tables yet
        return 0
    finally:
        engine.dispose()


def _daemon(
    tmp_path: Path, url: str, projects: list[str], mirror: Database | None = None, **config: object
) -> DaemonProcess:
    """A daemon over ``mirror`` (a file in ``tmp_path`` unless given) pulling ``projects``."""
    cfg = write_config(tmp_path / "config.toml", projects, **config)  # type: ignore[arg-type]
    env = sync_env(url, tmp_path / "home")
    return DaemonProcess(mirror or tmp_path / "mirror.db", cfg, env, tmp_path / "daemon.log")


def test_it_syncs_on_schedule_and_picks_up_new_runs_and_history(upstream, tmp_path, database):
    nightly = "30 3 * * *"
    with _daemon(tmp_path, upstream.url, [PATH], mirror=database, backup=nightly) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        assert differences(upstream.db, daemon.mirror, ENTITY, PROJECT) == []
        assert "backup" in job_rows(daemon.mirror)  # pg_dump archives on PostgreSQL
        running = upstream.run_with_state("running")
        upstream._change(log_steps, running, 25)
        upstream._change(add_run, "fresh1", 7)
        wait_for(
            lambda: (
                _runs_in(daemon.mirror) == 13
                and not differences(upstream.db, daemon.mirror, ENTITY, PROJECT)
            ),
            30,
            "the daemon to mirror the new run and the new steps",
        )
        assert daemon.stop() == 0
    log = daemon.log()
    assert "daemon stopped" in log
    assert KEY not in log


def test_usr1_pulls_at_once_and_hup_adds_a_project_from_the_edited_config(
    upstream, tmp_path, database
):
    with _daemon(tmp_path, upstream.url, [PATH], interval=3600, mirror=database) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        upstream._change(add_run, "late1", 3)
        mark = len(daemon.log())
        time.sleep(1.5)
        assert _runs_in(daemon.mirror) == 12  # an hour until the next pull
        daemon.signal(signal.SIGUSR1)
        daemon.wait_log("pull acme/vision: 1 runs new", timeout=60, after=mark)
        assert _runs_in(daemon.mirror) == 13

        engine = make_engine(upstream.db)
        seed_project(engine, ENTITY, "audio", 4, 5, seed=9)
        engine.dispose()
        write_config(daemon.config, [PATH, f"{ENTITY}/audio"], interval=3600)
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("pull acme/audio: 4 runs new", timeout=60)
        assert _runs_in(daemon.mirror, project="audio") == 4
        assert set(job_rows(daemon.mirror)) >= {"pull:acme/vision", "pull:acme/audio", "push"}

        daemon.config.write_text("[daemon\nbroken")  # a broken edit keeps the running jobs
        mark = len(daemon.log())
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("config not reloaded", timeout=60, after=mark)
        assert daemon.alive()
        assert "pull:acme/audio" in job_rows(daemon.mirror)
        assert daemon.stop() == 0


def _refused_by(daemon: DaemonProcess, result: subprocess.CompletedProcess[str]) -> str:
    """The one line a writer refused by ``daemon`` prints: it names the daemon's pid and host."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert f"wandb-mirror daemon (pid {daemon.pid} on {socket.gethostname()}," in line, line
    return line


def test_a_second_daemon_and_a_sync_are_refused_while_one_runs(upstream, tmp_path, database):
    """One writer per mirror: a second daemon, ``sync``, ``pull`` and ``push`` are refused in
    one line naming the daemon (on PostgreSQL through the advisory lock, whose holder the
    server names)."""
    with _daemon(tmp_path, upstream.url, [PATH], mirror=database) as daemon:
        daemon.wait_log("pull acme/vision")
        second = subprocess.run(
            daemon.command(), capture_output=True, text=True, env=daemon.env, timeout=30
        )
        _refused_by(daemon, second)
        for command in ("sync", "pull", "push"):
            refused = run_cli(["--db", str(daemon.mirror), command, PATH], daemon.env)
            line = _refused_by(daemon, refused)
            assert f"kill -USR1 {daemon.pid}" in line, line
        status = run_cli(
            ["--db", str(daemon.mirror), "--config", str(daemon.config), "status"], daemon.env
        )
        assert status.returncode == 0, status.stderr
        assert f"daemon: running, wandb-mirror daemon (pid {daemon.pid}" in status.stdout
        assert "next pull:" in status.stdout
        assert daemon.alive()
        assert daemon.stop() == 0
    # once it is gone, the lock is free again (and on SQLite its file is still there)
    held = lock_file(database)
    assert held is None or held.exists()
    assert current_holder(database) is None
    sync = run_cli(["--db", str(daemon.mirror), "sync", PATH], daemon.env)
    assert sync.returncode == 0, sync.stderr


@pytest.mark.postgresql
def test_on_postgresql_a_killed_daemons_lock_goes_with_its_session(upstream, tmp_path, pg_server):
    """``kill -9`` leaves no lock behind: the server ends the daemon's session and its advisory
    lock with it, so a restart right away is not refused. The lock is this database's alone:
    a mirror in another database of the same server has a writer of its own."""
    mirror, other = pg_server.new_database(), pg_server.new_database()
    with _daemon(tmp_path, upstream.url, [PATH], mirror=mirror) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        assert current_holder(mirror).pid == daemon.pid
        assert current_holder(other) is None
        elsewhere = run_cli(["--db", other, "sync", PATH], daemon.env)
        assert elsewhere.returncode == 0, elsewhere.stderr
        status = run_cli(["--db", other, "status"], daemon.env)
        assert "daemon: not running" in status.stdout, status.stdout
        daemon.signal(signal.SIGKILL)
        daemon.proc.wait(timeout=10)
    assert "daemon stopped" not in daemon.log()
    upstream.add_run("afterkill", 5)
    started = time.monotonic()
    sync = run_cli(["--db", mirror, "sync", PATH], daemon.env)
    assert sync.returncode == 0, sync.stderr
    assert "1 runs new" in sync.stdout
    assert current_holder(mirror) is None
    again = _daemon(tmp_path, upstream.url, [PATH], mirror=mirror)
    with again:
        again.wait_log("daemon started", after=len(daemon.log()))
        assert again.stop() == 0
    assert time.monotonic() - started < 60
    assert differences(upstream.db, mirror, ENTITY, PROJECT) == []


def test_term_during_a_large_sync_stops_within_seconds_and_the_next_start_resumes(
    tmp_path, database
):
    db = seed_upstream(tmp_path / "upstream.db", runs_=120, steps=600)
    with Upstream(db, tmp_path / "serve.log", ("--fault-latency-ms", "20")) as up:
        daemon = _daemon(tmp_path, up.url, [PATH], interval=3600, mirror=database)
        with daemon:
            wait_for(lambda: _runs_in(daemon.mirror) >= 10, 60, "the first runs")
            started = time.monotonic()
            assert daemon.stop() == 0
            took = time.monotonic() - started
        assert took < 10, took
        assert "stopped at a safe point" in daemon.log()
        assert differences(db, daemon.mirror, ENTITY, PROJECT), "the sync was not cut short"
        from sync_checks import integrity, step_problems

        assert integrity(daemon.mirror) == "ok"
        assert step_problems(daemon.mirror) == []
        again = _daemon(tmp_path, up.url, [PATH], interval=3600, mirror=database)
        with again:
            again.wait_log("pull acme/vision:", timeout=120, after=len(daemon.log()))
            assert differences(db, again.mirror, ENTITY, PROJECT) == []
            assert again.stop() == 0


def test_a_second_term_exits_at_once(tmp_path):
    db = seed_upstream(tmp_path / "upstream.db", runs_=60, steps=300)
    up = Upstream(db, tmp_path / "serve.log", ("--fault-latency-ms", "300"))
    with up, _daemon(tmp_path, up.url, [PATH], interval=3600) as daemon:
        daemon.wait_log("daemon started")
        time.sleep(0.5)
        daemon.signal(signal.SIGTERM)
        daemon.wait_log("stopping at the next safe point")
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=5) == 128 + signal.SIGTERM


def test_the_daemon_survives_an_upstream_that_goes_away_and_catches_up(tmp_path, database):
    db = seed_upstream(tmp_path / "upstream.db", runs_=8, steps=20)
    server = ServerProcess(db, tmp_path / "serve.log", args=("--threads", "4"))
    server.start()
    with _daemon(tmp_path, server.url, [PATH], mirror=database) as daemon:
        daemon.wait_log("pull acme/vision: 8 runs new")
        server.stop()
        mark = len(daemon.log())
        daemon.wait_log("pull:acme/vision failed (2 in a row)", timeout=30, after=mark)
        status = run_cli(
            ["--db", str(daemon.mirror), "--config", str(daemon.config), "status"], daemon.env
        )
        assert "last failure:" in status.stdout and "cannot reach" in status.stdout, status.stdout
        assert daemon.alive()
        engine = make_engine(db)
        add_run(engine, ENTITY, PROJECT, "back1", 4)
        engine.dispose()
        server.start()  # the same port
        daemon.wait_log("pull acme/vision: 1 runs new", timeout=30, after=mark)
        assert differences(db, daemon.mirror, ENTITY, PROJECT) == []
        assert job_rows(daemon.mirror)["pull:acme/vision"]["failures"] == 0
        assert daemon.stop() == 0
    server.stop()
    assert KEY not in daemon.log()


def test_a_sleep_through_many_runs_gives_one_catch_up_run_per_job(upstream, tmp_path):
    with _daemon(tmp_path, upstream.url, [PATH], interval=2) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        wait_for(lambda: job_runs(daemon.mirror, "push") >= 1, 10, "the first push run")
        daemon.signal(signal.SIGSTOP)  # the laptop sleeps through five runs of each job
        before = {job: job_runs(daemon.mirror, job) for job in ("pull:acme/vision", "push")}
        time.sleep(10)
        daemon.signal(signal.SIGCONT)
        for job in before:
            wait_for(lambda j=job: job_runs(daemon.mirror, j) > before[j], 20, f"{job} to run")
        time.sleep(1.0)
        after = {job: job_runs(daemon.mirror, job) for job in before}
        for job in before:
            # the catch-up run, and at most the next one on the 2 s grid; not five in a row
            assert 1 <= after[job] - before[job] <= 2, (job, before, after)
        assert daemon.stop() == 0


def test_with_serve_enabled_it_serves_the_mirror_with_pending_edits(upstream, tmp_path, database):
    port = free_port()
    extra = f"\n[serve]\nenabled = true\nport = {port}\n"
    with _daemon(
        tmp_path, upstream.url, [PATH], interval=3600, extra=extra, mirror=database
    ) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        daemon.wait_log("mirror role")
        name = upstream.names()[0]
        edit = run_cli(
            ["--db", str(daemon.mirror), "edit", f"{PATH}/{name}", "--summary", "note=local"],
            daemon.env,
        )
        assert edit.returncode == 0, edit.stderr
        code = (
            "import wandb, json; api = wandb.Api(timeout=20); "
            f"runs = api.runs('{PATH}'); "
            f"print(json.dumps([len(runs), api.run('{PATH}/{name}').summary.get('note')]))"
        )
        env = {
            **daemon.env,
            "WANDB_BASE_URL": f"http://127.0.0.1:{port}",
            "WANDB_API_KEY": KEY,
            "WANDB_MODE": "online",
            "WANDB_SILENT": "true",
        }
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == '[12, "local"]'
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert daemon.stop() == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_scheduled_backups_and_exports_run_and_status_names_the_last_backup(upstream, tmp_path):
    extra = 'export_schedule = "every 2s"\n'
    with _daemon(
        tmp_path, upstream.url, [PATH], interval=3600, backup="every 2s", extra=extra
    ) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        daemon.wait_log("backup: ", timeout=60)
        daemon.wait_log("export: ", timeout=60)
        exported = tmp_path / "exports" / ENTITY / PROJECT / "runs.jsonl"
        assert len(exported.read_text().splitlines()) == 12
        status = run_cli(
            ["--db", str(daemon.mirror), "--config", str(daemon.config), "status"], daemon.env
        )
        assert "last backup: " in status.stdout and "mirror-" in status.stdout, status.stdout
        assert "backup: next " in status.stdout
        assert daemon.stop() == 0
    snapshots = sorted((tmp_path / "backups").glob("mirror-*.db"))
    assert snapshots
    verify = run_cli(["verify", str(snapshots[-1])], daemon.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_bad_config_or_a_missing_key_is_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[daemon]\nreconcile = "every day"\n')
    env = sync_env("http://127.0.0.1:9", tmp_path / "home")
    out = run_cli(["--db", str(tmp_path / "m.db"), "--config", str(cfg), "daemon"], env)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "daemon.reconcile" in out.stderr, out.stderr
    assert not (tmp_path / "m.db").exists()
    del env["WANDB_API_KEY"]
    write_config(cfg, [PATH], interval=3600)
    with DaemonProcess(tmp_path / "m.db", cfg, env, tmp_path / "d.log") as daemon:
        daemon.wait_log("pull:acme/vision failed", timeout=60)
        assert "WANDB_API_KEY" in daemon.log() and "Traceback" not in daemon.log()
        assert daemon.stop() == 0
    assert os.path.exists(tmp_path / "m.db")


def test_the_scheduled_reconcile_catches_a_change_the_listing_does_not_show(
    upstream, tmp_path, database
):
    with _daemon(
        tmp_path, upstream.url, [PATH], interval=3600, reconcile="every 3s", mirror=database
    ) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        name = upstream.names()[0]
        engine = make_engine(upstream.db)
        with engine.begin() as conn:  # as a W&B UI edit the API's listing has not caught up with
            conn.execute(
                runs.update().where(runs.c.name == name).values(config='{"hidden": {"value": 1}}')
            )
        engine.dispose()
        mark = len(daemon.log())
        daemon.wait_log("reconcile: ", timeout=60, after=mark)
        assert differences(upstream.db, daemon.mirror, ENTITY, PROJECT) == []
        assert daemon.stop() == 0


def test_the_log_goes_to_a_rotating_file_when_configured(upstream, tmp_path):
    logfile = tmp_path / "logs" / "daemon.log"
    logging = f'log_file = "{logfile}"\nlog_max_bytes = 2000\nlog_backups = 2\n'
    with _daemon(tmp_path, upstream.url, [PATH], interval=0.2, daemon_extra=logging) as daemon:
        wait_for(lambda: (tmp_path / "logs" / "daemon.log.2").exists(), 30, "two rotations")
        assert daemon.stop() == 0
    assert "pull acme/vision" in logfile.read_text() + (tmp_path / "logs/daemon.log.1").read_text()
    assert not (tmp_path / "logs" / "daemon.log.3").exists()
    assert "pull acme/vision" not in daemon.log()  # not on stderr as well
    for f in (tmp_path / "logs").iterdir():
        assert KEY not in f.read_text()


def test_edits_queued_while_it_runs_are_pushed_on_schedule(upstream, tmp_path, database):
    from mirror.store.fields import loads

    with _daemon(tmp_path, upstream.url, [PATH], interval=1, mirror=database) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        name = upstream.names()[3]
        edit = run_cli(
            ["--db", str(daemon.mirror), "edit", f"{PATH}/{name}", "--summary", "best=0.5"],
            daemon.env,
        )
        assert edit.returncode == 0, edit.stderr
        daemon.wait_log("push: acme/vision: 1 edits pushed", timeout=60)
        summary = upstream._read(select(runs.c.summary_metrics).where(runs.c.name == name))[0]
        assert loads(summary)["best"] == 0.5
        assert daemon.stop() == 0


def test_term_while_a_job_cannot_be_interrupted_waits_for_it_then_exits(tmp_path):
    """A backup does not stop halfway: TERM waits for it, and the job's last bookkeeping
    (its next run time, read from the scheduler) must not deadlock with the shutdown."""
    mirror = tmp_path / "mirror.db"
    engine = make_engine(mirror)
    from mirror.store import migrate

    migrate.upgrade(engine)
    seed_project(engine, ENTITY, PROJECT, 150, 1500, seed=4)
    engine.dispose()
    cfg = write_config(tmp_path / "config.toml", [], backup="every 1s")
    env = sync_env("http://127.0.0.1:9", tmp_path / "home")
    with DaemonProcess(mirror, cfg, env, tmp_path / "daemon.log") as daemon:
        daemon.wait_log("backup: ", timeout=60)

        backups = tmp_path / "backups"
        wait_for(lambda: any(backups.glob(".mirror-*.partial")), 30, "a backup under way")
        started = time.monotonic()
        assert daemon.stop(timeout=30) == 0
        assert time.monotonic() - started < 20
    assert "daemon stopped" in daemon.log()


@pytest.mark.postgresql
def test_a_postgresql_password_never_shows(upstream, tmp_path, pg_server):
    """A team mirror's URL carries a password: it connects (the test server trusts every
    password, so any works) and never appears in the daemon's log, its job records, ``status``,
    the refusals of a second writer, the dashboard's status page or a database error. (The
    daemon's scheduled export, which needs a directory of its own here, runs along.)"""
    password = "Hunter2-pg-" + os.urandom(6).hex()
    plain = pg_server.new_database()
    mirror = plain.replace("postgres@", f"postgres:{password}@", 1)
    assert password in mirror
    port = free_port()
    exports = tmp_path / "exports"
    extra = f'export_schedule = "every 2s"\nexport_dest = "{exports}"\n'
    extra += f"\n[serve]\nenabled = true\nport = {port}\n"
    seen: list[str] = []
    with _daemon(tmp_path, upstream.url, [PATH], interval=1, extra=extra, mirror=mirror) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        daemon.wait_log("mirror role")
        daemon.wait_log("export: ", timeout=60)  # beside the pulls, from one snapshot
        assert len((exports / ENTITY / PROJECT / "runs.jsonl").read_text().splitlines()) == 12
        for command in (["daemon"], ["sync", PATH], ["push", PATH]):
            refused = run_cli(
                ["--db", mirror, "--config", str(daemon.config), *command], daemon.env
            )
            assert refused.returncode == 1, refused.stdout + refused.stderr
            seen.append(refused.stdout + refused.stderr)
        for command in (["status"], ["init"], ["runs", PATH]):
            shown = run_cli(["--db", mirror, "--config", str(daemon.config), *command], daemon.env)
            assert shown.returncode == 0, shown.stderr
            seen.append(shown.stdout + shown.stderr)
        assert "database: postgresql+psycopg://postgres:***@" in seen[3], seen[3]
        seen.append(requests.get(f"http://127.0.0.1:{port}/status", timeout=10).text)
        upstream.server.stop()  # pulls fail from here on: their errors go to the log and records
        daemon.wait_log("pull:acme/vision failed")
        assert daemon.stop() == 0
    seen.append(daemon.log())
    seen.extend(repr(row) for row in job_rows(plain).values())
    engine = make_engine(plain, create=False)
    with engine.connect() as conn:
        seen.extend(repr(tuple(row)) for row in conn.execute(select(sync_state)))
    engine.dispose()
    for where in ("nosuch", None):  # a database that is not there, a server that is not there
        broken = (
            mirror.rsplit("/", 1)[0] + "/nosuch"
            if where
            else mirror.replace(f":{pg_server.port}/", f":{free_port()}/")
        )
        failed = run_cli(["--db", broken, "status"], daemon.env)
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
        assert "postgres:***@" in failed.stderr or "127.0.0.1" in failed.stderr, failed.stderr
        seen.append(failed.stdout + failed.stderr)
    leaks = [text for text in seen if password in text]
    assert not leaks, leaks
    assert "postgres:***@" in daemon.log()  # the database is named, masked


@pytest.mark.postgresql
def test_on_postgresql_a_daemon_whose_lock_session_ends_takes_it_again_or_stops(
    upstream, tmp_path, pg_server
):
    """An administrator (or a server restart) ends the session that holds the advisory lock:
    the daemon takes the lock again before its next write; when another writer got it first,
    the daemon stops with exit 1 instead of writing beside it."""
    mirror = pg_server.new_database()
    database = mirror.rsplit("/", 1)[1]
    end_lock_session = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND application_name LIKE 'wm-writer|%'"
    )
    with _daemon(tmp_path, upstream.url, [PATH], interval=1, mirror=mirror) as daemon:
        daemon.wait_log("pull acme/vision: 12 runs new")
        pg_server.admin([end_lock_session])
        daemon.wait_log("the writer lock is held again")
        assert current_holder(mirror).pid == daemon.pid
        mark = len(daemon.log())
        pg_server.admin([end_lock_session])
        with WriterLock(mirror, "wandb-mirror sync"):  # another writer, quicker than the daemon
            daemon.wait_log("writer lock lost: wandb-mirror sync (pid ", after=mark)
            assert daemon.proc.wait(timeout=30) == 1
    assert "daemon stopped" in daemon.log()[mark:]
