"""A team mirror under load: the daemon syncs into PostgreSQL while eight reader processes query
it through ``mirror.Api`` and another reads it through a ``serve`` process, then the daemon is
killed with ``kill -9`` in the middle of the sync and started again.

What must hold (issue 12): no reader ever fails; no run or row is lost or duplicated; a reader
never sees half of a page, because every page commits as a whole with its resume point; and the
restarted daemon finishes an exact mirror of the upstream.

The upstream is built so that page commits show in what readers count: every run logs steps
0, 1, 2, ... with no gap, so each history page (``PAGE`` steps wide) holds exactly ``PAGE`` rows
and a run's mirrored history is always a multiple of ``PAGE`` rows or all of it; and the runs
come in record batches of ``BATCH``, a divisor of ``RUNS``, so the run count is always a
multiple of ``BATCH``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, write_config
from server_process import ServerProcess
from sqlalchemy import func, select
from sync_checks import Reference, step_problems, wait_for
from sync_env import ENTITY, PATH, PROJECT, Upstream, sync_env
from sync_reader import WINDOW

from mirror.store import migrate
from mirror.store.engine import make_engine, write_transaction
from mirror.store.history import history_keys_of
from mirror.store.lock import current_holder
from mirror.store.models import history_chunks
from mirror.store.upsert import append_history, upsert_runs

pytestmark = [pytest.mark.postgresql, pytest.mark.timeout(300)]

RUNS, STEPS, PAGE, BATCH = 20, 500, 50, 5
API_READERS = 8
READER = Path(__file__).with_name("sync_reader.py")
SYNC = f"history_page = {PAGE}\nrecord_batch = {BATCH}\n"


def dense_upstream(db: Path) -> Path:
    """``RUNS`` finished runs of ``STEPS`` gapless steps each, created a minute apart."""
    engine = make_engine(db, create=True)
    try:
        migrate.upgrade(engine)
        with write_transaction(engine) as conn:
            for i in range(RUNS):
                rows = [
                    {"_step": s, "loss": 1.0 / (s + 1), "acc": (i + s) % 97} for s in range(STEPS)
                ]
                node = {
                    "name": f"dense{i:03d}",
                    "state": "finished",
                    "createdAt": f"2026-01-01T{i // 60:02d}:{i % 60:02d}:00",
                    "heartbeatAt": f"2026-01-02T{i // 60:02d}:{i % 60:02d}:00",
                    "config": json.dumps({"lr": {"value": 0.001 * (i + 1)}}),
                    "summaryMetrics": json.dumps({"loss": rows[-1]["loss"]}),
                    "user": {"name": "Dense User", "username": "dense"},
                    "historyLineCount": STEPS,
                    "historyKeys": history_keys_of(rows),
                }
                ids = upsert_runs(conn, ENTITY, PROJECT, [node])
                append_history(conn, ids[node["name"]], rows)
    finally:
        engine.dispose()
    return db


def rows_in(mirror: str) -> int:
    """History rows the mirror holds now (every committed page)."""
    engine = make_engine(mirror, create=False)
    try:
        with engine.connect() as conn:
            query = select(func.coalesce(func.sum(history_chunks.c.row_count), 0))
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def torn(loop: dict, total_runs: int = RUNS, rows: int = STEPS) -> list[str]:
    """What one reader loop saw that no sequence of whole page commits can show."""
    found = []
    for what in ("count", "listed"):
        if loop[what] % BATCH and loop[what] != total_runs:
            found.append(f"{loop[what]} runs {what}: not a whole number of record batches")
    for name, count in loop["histories"].items():
        if count % PAGE and count != rows:
            found.append(f"{name}: {count} history rows, not a whole number of pages")
    for name, counts in loop.get("windows", {}).items():
        for i, count in enumerate(counts):
            if count % PAGE and i * WINDOW + count != rows:
                found.append(f"{name}: {count} rows in window {i}, not whole pages")
    return found


def test_readers_never_fail_nor_see_half_a_page_while_the_daemon_syncs_and_is_killed(
    tmp_path, pg_server
):
    mirror = pg_server.new_database()
    db = dense_upstream(tmp_path / "upstream.db")
    reference = Reference(db, ENTITY, PROJECT)
    total = reference.rows()
    assert total == RUNS * STEPS
    stop = tmp_path / "stop"
    readers: list[subprocess.Popen[str]] = []
    with (
        Upstream(db, tmp_path / "upstream.log", ("--fault-latency-ms", "15")) as up,
        ServerProcess(mirror, tmp_path / "serve.log", args=("--threads", "4")) as served,
    ):
        env = sync_env(up.url, tmp_path / "home")
        config = write_config(tmp_path / "config.toml", [PATH], interval=3600, sync_extra=SYNC)
        for target in [mirror] * API_READERS + [served.url]:
            readers.append(
                subprocess.Popen(
                    [sys.executable, str(READER), target, PATH, str(stop)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        try:
            log = tmp_path / "daemon.log"
            with DaemonProcess(mirror, config, env, log) as first:
                wait_for(lambda: rows_in(mirror) >= total // 4, 120, "a quarter of the history")
                first.signal(signal.SIGKILL)
                first.proc.wait(timeout=10)
            cut = rows_in(mirror)
            assert 0 < cut < total, f"the kill did not land mid-sync ({cut} of {total} rows)"
            assert "pull acme/vision:" not in first.log()
            # what the kill left: every run a prefix of its history, no hole, no repeated step
            assert step_problems(mirror) == []
            assert reference.gaps(Reference(mirror, ENTITY, PROJECT)) == []
            mark = len(first.log())
            started = time.monotonic()
            with DaemonProcess(mirror, config, env, log) as again:
                again.wait_log("pull acme/vision:", timeout=180, after=mark)
                finished = time.monotonic() - started
                time.sleep(1.0)  # every reader reads the finished mirror at least once more
                stop.touch()
                assert again.stop() == 0
        finally:
            stop.touch()
            outputs = [reader.communicate(timeout=120) for reader in readers]
    assert current_holder(mirror) is None
    assert "0 skipped" in again.log()[mark:], again.log()[mark:]
    assert reference.differences(mirror) == []
    assert step_problems(mirror) == []
    want = {name: len(run["history"]) for name, run in reference.runs.items()}
    for i, (reader, (out, err)) in enumerate(zip(readers, outputs, strict=True)):
        who = "the serve reader" if i == API_READERS else f"reader {i}"
        assert reader.returncode == 0, f"{who} failed:\n{err}"
        loops = [json.loads(line) for line in out.splitlines()]
        assert len(loops) >= 3, (who, loops)
        for loop in loops:
            assert torn(loop) == [], (who, loop)
        final = loops[-1]  # read after the restarted daemon finished: everything, complete
        assert final["count"] == final["listed"] == RUNS, (who, final)
        assert final["histories"] == {n: want[n] for n in final["histories"]}, (who, final)
        # it read while the daemons wrote: runs missing, or histories not yet complete
        assert any(
            loop["count"] < RUNS or any(n < want[k] for k, n in loop["histories"].items())
            for loop in loops[:-1]
        ), (who, loops)
    print(f"killed at {cut} of {total} rows; the restart finished in {finished:.1f} s")
