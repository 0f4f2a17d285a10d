"""``kill -9`` of a sync at random moments, and readers in other processes during a sync.

The claim under test (DESIGN.md, "Crash safety by construction"): each page commits with its
resume point, so a kill at any moment leaves a mirror that is sound (``integrity_check``), holds
for every run a prefix of its history with no hole and no repeated step, and that the next sync
turns into an exact mirror. Readers never fail while a sync writes.

The upstream is seeded once for the module and served with a little latency, and pages are
small, so that a sync takes a few seconds and writes a few hundred transactions: the kills land
in the schema's creation, the record batches, and mostly between and inside pages of history.
Kill moments count from the moment the mirror file appears, are stratified over how long one
sync takes from there (measured first), and are drawn from a seed shown in every failure
message; ``WANDB_MIRROR_CRASH_SEED`` replays one. The killed sync is a real process; the clean
sync after it runs the CLI's ``main`` in the test's process, which saves an interpreter start per
trial and finishes the same files the same way. ``-m slow`` selects a longer run of trials.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
from mirror_db import Database, exists, is_postgres
from sync_checks import Reference, integrity, run_sync_rows, step_problems, tables
from sync_env import ENTITY, PATH, PROJECT, Upstream, run_cli, seed_upstream, summary_line
from sync_env import sync_env as make_env

from mirror import cli
from mirror.store.lock import current_holder

RUNS, STEPS, PAGE = 24, 150, 30
TRIALS, SLOW_TRIALS = 10, 40
PG_TRIALS = 8
CONFIG = f"[sync]\nhistory_page = {PAGE}\n"
READER = Path(__file__).with_name("sync_reader.py")


class World:
    """The module's upstream, served, and what one complete sync of it looks like."""

    def __init__(self, root: Path, up: Upstream) -> None:
        self.root = root
        self.up = up
        self.reference = Reference(up.db, ENTITY, PROJECT)
        self.config = root / "c.toml"
        self.config.write_text(CONFIG)
        self.env = make_env(up.url, root)
        self.write_seconds = 0.0  # from the mirror file's creation to the sync's end
        self.fingerprints: dict[str, str | None] = {}
        self.pg_write_seconds: float | None = None  # the same on PostgreSQL, measured once

    def command(self, mirror: Database) -> list[str]:
        return ["--db", str(mirror), "--config", str(self.config), "sync", PATH]

    def sync(self, mirror: Database) -> subprocess.CompletedProcess[str]:
        return run_cli(self.command(mirror), self.env, timeout=120)

    def sync_here(self, mirror: Database) -> subprocess.CompletedProcess[str]:
        """The same sync in this process (the CLI's ``main``, this environment, output caught):
        what a kill left is finished without paying a second interpreter start per trial."""
        out, err = io.StringIO(), io.StringIO()
        with (
            mock.patch.dict(os.environ, self.env, clear=True),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = cli.main(self.command(mirror))
        return subprocess.CompletedProcess(
            self.command(mirror), code, out.getvalue(), err.getvalue()
        )

    def start(self, mirror: Database) -> subprocess.Popen[str]:
        """A sync in the background, returned once it opened the mirror (or ended).

        On SQLite that is when the file appears; on PostgreSQL, where the database is there
        before the sync starts, when the sync takes the writer lock, just before it opens the
        database (and creates the schema, when there is none).
        """
        appeared = (lambda: current_holder(mirror) is not None) if is_postgres(mirror) else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirror.cli", *self.command(mirror)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if appeared() if appeared else Path(mirror).exists():
                break
            time.sleep(0.005)
        return proc

    def yardstick(self, mirror: Database) -> float:
        """One complete sync into an empty ``mirror``: seconds from its opening to the end."""
        proc = self.start(mirror)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert self.reference.differences(mirror) == []
        return time.monotonic() - started


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("crash")
    db = seed_upstream(root / "upstream.db", RUNS, STEPS)
    with Upstream(db, root / "serve.log", ("--fault-latency-ms", "5")) as up:
        w = World(root, up)
        # one complete sync: the yardstick for kill moments, and the state every trial must reach
        mirror = root / "reference.db"
        w.write_seconds = w.yardstick(mirror)
        w.fingerprints = {n: r["fingerprint"] for n, r in run_sync_rows(mirror).items()}
        assert all(w.fingerprints.values())
        yield w


def kill_moments(count: int, span: float, seed: int) -> list[float]:
    """``count`` moments spread over ``span`` seconds: one at random in each equal slice, shuffled.

    They count from the moment the mirror file appears, so the first slice holds the kills
    during the creation of the schema, the last ones those near the end of the history.
    """
    rng = random.Random(seed)
    moments = [span * (i + rng.random()) / count for i in range(count)]
    rng.shuffle(moments)
    return moments


def crash_trials(
    world: World, trials: int, new_mirror: Callable[[int], Database], span: float | None = None
) -> None:
    """``trials`` syncs killed at moments spread over ``span`` seconds (a complete sync's), each
    into a mirror of its own from ``new_mirror(trial)``, then finished by a clean sync."""
    seed = int(os.environ.get("WANDB_MIRROR_CRASH_SEED") or random.SystemRandom().randrange(10**6))
    moments = kill_moments(trials, world.write_seconds if span is None else span, seed)
    total = world.reference.rows()
    cut: list[tuple[float, int]] = []  # (moment, history rows the killed sync had written)
    for trial, moment in enumerate(moments):
        where = f"trial {trial} (WANDB_MIRROR_CRASH_SEED={seed}, kill {moment:.2f}s in)"
        mirror = new_mirror(trial)
        proc = world.start(mirror)
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        killed = proc.returncode == -signal.SIGKILL
        schema = tables(mirror)
        if is_postgres(mirror) or exists(mirror):
            # a kill before the schema's one transaction committed leaves no table at all
            assert integrity(mirror) == "ok", where
            assert schema == set() or {"alembic_version", "runs", "history_chunks"} <= schema
        written = 0
        if schema:  # what the kill left: for every run a prefix of its history and events
            left = Reference(mirror, ENTITY, PROJECT)
            assert step_problems(mirror) == [], where
            assert world.reference.gaps(left) == [], where
            written = left.rows()
        cut.append((moment, written if killed else -1))
        result = world.sync_here(mirror)
        assert result.returncode == 0, f"{where}: {result.stderr}"
        assert "0 skipped" in summary_line(result), where
        assert world.reference.differences(mirror) == [], where
        assert integrity(mirror) == "ok", where
        # finished as a complete sync finishes: the next cycle would fetch nothing
        state = run_sync_rows(mirror)
        assert {n: r["fingerprint"] for n, r in state.items()} == world.fingerprints, where
        assert all(r["failures"] == 0 for r in state.values()), where
    # the kills hit the sync while it wrote history, not only before or after it (the moments
    # are spread over the whole sync, whose listing and records take their share of it)
    mid_history = [m for m, written in cut if 0 < written < total]
    assert len(mid_history) >= trials // 4, (seed, cut)


def test_kill_9_at_random_moments_then_a_clean_sync_gives_an_exact_mirror(world, tmp_path):
    crash_trials(world, TRIALS, lambda trial: tmp_path / f"mirror{trial}.db")


@pytest.mark.postgresql
def test_kill_9_at_random_moments_on_postgresql_then_a_clean_sync_gives_an_exact_mirror(
    world, pg_server
):
    """The same on PostgreSQL, into empty databases: a kill also lands in the creation of the
    schema, which PostgreSQL runs in one transaction as SQLite does."""
    if world.pg_write_seconds is None:
        world.pg_write_seconds = world.yardstick(pg_server.new_database(migrated=False))
    crash_trials(
        world,
        PG_TRIALS,
        lambda _trial: pg_server.new_database(migrated=False),
        span=world.pg_write_seconds,
    )


@pytest.mark.slow
def test_kill_9_at_many_more_random_moments(world, tmp_path, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("a few minutes long: select it with -m slow")
    crash_trials(world, SLOW_TRIALS, lambda trial: tmp_path / f"mirror{trial}.db")


def test_a_reader_in_another_process_never_fails_during_a_sync(world, tmp_path, database):
    mirror = database
    init = run_cli(["--db", str(mirror), "init"], world.env)
    assert init.returncode == 0, init.stderr
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, str(READER), str(mirror), PATH, str(stop)],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        result = world.sync(mirror)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=60)
    assert result.returncode == 0, result.stderr
    assert reader.returncode == 0, err
    loops = [json.loads(line) for line in out.splitlines()]
    assert len(loops) >= 5, loops
    final = loops[-1]  # the loop after the sync: everything, complete
    want = {name: len(run["history"]) for name, run in world.reference.runs.items()}
    assert final["count"] == final["listed"] == RUNS
    assert final["histories"] == {n: want[n] for n in final["histories"]}
    # it read while the sync wrote: it saw runs missing, or histories not yet complete
    incomplete = [
        loop
        for loop in loops[:-1]
        if loop["count"] < RUNS or any(rows < want[n] for n, rows in loop["histories"].items())
    ]
    assert incomplete, loops
    assert world.reference.differences(mirror) == []
