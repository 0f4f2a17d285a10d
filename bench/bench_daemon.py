"""Daemon soak: ``wandb-mirror daemon`` against an upstream whose running runs keep logging.

The upstream is a seeded project (``mirror.synth.seed_project``, 50 runs x 200 steps by default)
served by ``python -m mirror.serve --role upstream`` as a real process. The daemon is a real
``python -m mirror.cli daemon`` process with a short pull interval (0.2 s), no backups and no
reconcile, every other setting at its default. Its pull cycles are counted from its log (one
``pull ENTITY/PROJECT: ...`` line per successful cycle, a ``pull:ENTITY/PROJECT failed`` line
per failed one) and cross-checked with its job record (``daemon_jobs.runs``) at the end.

The cycles go in phases:

* warm-up, cycles 1-20: the first one copies the whole project, the rest find nothing new;
* idle, the next ``--idle`` cycles (100): nothing changes upstream. The daemon's CPU seconds
  (psutil, user + system of the whole process) and the upstream's ``POST /graphql`` lines over
  the phase, divided by its cycles, are the cost of an idle cycle;
* active, up to ``--cycles``: a thread in this process appends ``--log-steps`` steps (and an
  event) to 3 running runs every ``--interval`` seconds with ``mirror.synth_activity.log_steps``,
  writing into the upstream database, and every ``--add-every`` cycles adds a run (which joins
  the logging runs) and finishes the oldest one. It stops ``--settle`` cycles before the end so that the
  mirror can catch up.

The daemon's RSS, CPU, threads and open files, and the mirror's ``mirror.db`` and
``mirror.db-wal`` sizes, are sampled every 50 cycles. At the end the daemon gets TERM, and the
mirror is compared with the upstream field by field and row by row (``tests/mirror_compare.py``).

The baseline, run first against the same untouched upstream: the cron way, one
``python -m mirror.cli sync ENTITY/PROJECT`` process per cycle on a mirror of its own (an initial
sync, then ``--baseline-cycles`` idle ones), its CPU seconds (``RUSAGE_CHILDREN``), wall seconds
and requests per idle cycle, scaled to the idle phase, and the ratio baseline / daemon.

Usage: ``.venv/bin/python bench/bench_daemon.py [--cycles 500] [--interval 0.2] [--runs 50]
[--steps 200]``; progress on stderr, the Markdown tables on stdout. Exits 1 if the daemon's RSS
grew by more than 10% from the warm sample to the end, if the mirror differs from the upstream,
or if the daemon died or did not stop cleanly. The seeded upstream is kept under
``bench/out/daemon/`` and reused; the run's copies and logs are in ``bench/out/daemon/work/``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from common import (
    Server,
    machine,
    mirror_env,
    out_path,
    seeded_upstream,
    table,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from daemon_process import DaemonProcess, job_rows  # noqa: E402
from mirror_compare import differences  # noqa: E402

ENTITY, PROJECT = "bench", "soak"
PATH = f"{ENTITY}/{PROJECT}"
JOB = f"pull:{PATH}"
KEY = "benchsoak" + "0" * 31  # wandb wants 40 characters

TARGET_GROWTH = 0.10
WARM = 20
SAMPLE_EVERY = 50

CONFIG = """# bench_daemon.py: the daemon's defaults, but a short pull interval and no cron jobs
[daemon]
pull_interval = {interval}
reconcile = ""

[backup]
schedule = ""

[[project]]
path = "{path}"
"""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the upstream ------------------------------------------------------------------------------


def live_runs(db: Path) -> list[tuple[str, str, int]]:
    """(name, state, historyLineCount) of every live run of the project, oldest first."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(
            "SELECT r.name, r.state, r.history_line_count FROM runs r"
            " JOIN projects p ON p.id = r.project_id"
            " WHERE p.entity = ? AND p.name = ? AND r.deleted_at IS NULL"
            " ORDER BY r.created_at, r.name",
            (ENTITY, PROJECT),
        ).fetchall()
    finally:
        con.close()


def history_counts(db: Path) -> dict[str, tuple[int, int]]:
    """Run name -> (history rows, events rows) actually stored (chunk row counts)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found: dict[str, list[int]] = {}
        for name, stream, rows in con.execute(
            "SELECT r.name, c.stream, SUM(c.row_count) FROM runs r"
            " JOIN projects p ON p.id = r.project_id"
            " LEFT JOIN history_chunks c ON c.run_id = r.id"
            " WHERE p.entity = ? AND p.name = ? AND r.deleted_at IS NULL"
            " GROUP BY r.name, c.stream",
            (ENTITY, PROJECT),
        ):
            per = found.setdefault(name, [0, 0])
            if stream == "history":
                per[0] = int(rows or 0)
            elif stream == "events":
                per[1] = int(rows or 0)
        return {name: (h, e) for name, (h, e) in found.items()}
    finally:
        con.close()


class Activity(threading.Thread):
    """Running runs that keep logging, written straight into the upstream database."""

    def __init__(self, db: Path, args: argparse.Namespace, cycles: Any) -> None:
        super().__init__(name="upstream-activity", daemon=True)
        self.db, self.args, self.cycles = db, args, cycles
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.ticks = self.steps = self.added = self.finished = 0
        listed = live_runs(db)
        running = [n for n, state, rows in listed if state == "running" and rows]
        others = [n for n, state, rows in listed if state == "finished" and rows]
        self.active = (running + others)[: args.active_runs]  # a finished run logging = resumed
        self.started_at_cycle = 0

    def run(self) -> None:
        from mirror.store.engine import make_engine
        from mirror.synth_activity import add_run, log_steps

        engine = make_engine(self.db)
        try:
            self.started_at_cycle = self.cycles.count
            while not self.stop_event.wait(self.args.interval):
                for name in list(self.active):
                    log_steps(engine, ENTITY, PROJECT, name, self.args.log_steps)
                    self.steps += self.args.log_steps
                self.ticks += 1
                due = (self.cycles.count - self.started_at_cycle) // self.args.add_every
                if due > self.added:
                    name = f"soak{self.added:04d}"
                    add_run(engine, ENTITY, PROJECT, name, 20)
                    self.added += 1
                    self.steps += 20
                    self.active.append(name)
                    oldest = self.active.pop(0)
                    log_steps(engine, ENTITY, PROJECT, oldest, self.args.log_steps, finish=True)
                    self.steps += self.args.log_steps
                    self.finished += 1
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            self.error = exc
        finally:
            engine.dispose()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)


# --- the daemon's log ----------------------------------------------------------------------------

PULL_LINE = re.compile(r" mirror\.daemon: pull " + re.escape(PATH) + r": (.*)$")
FAILED_LINE = re.compile(re.escape(JOB) + r" failed \(")
LEVEL = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (.*)$")


class Cycles:
    """The daemon's pull cycles, read from its log as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = b""
        self.count = 0
        self.ok = 0
        self.failed = 0
        self.own_requests: list[int] = []  # the pull's own count (the key check left out)
        self.own_seconds: list[float] = []
        self.rows: list[int] = []
        self.changed: list[int] = []  # runs whose record the cycle read again
        self.problems: dict[str, int] = {}  # warning/error lines by text, numbers masked
        self.tracebacks = 0

    def poll(self) -> int:
        if not self.path.exists():
            return self.count
        with open(self.path, "rb") as fh:
            fh.seek(self._pos)
            data = fh.read()
        self._pos += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._line(raw.decode("utf-8", "replace"))
        return self.count

    def _line(self, line: str) -> None:
        if line.startswith("Traceback"):
            self.tracebacks += 1
        found = PULL_LINE.search(line)
        if found:
            summary = found.group(1)
            self.count += 1
            if ": not synced:" in line:
                self.failed += 1
            else:
                self.ok += 1
            self.own_requests.append(_number_before(summary, " requests"))
            self.rows.append(_number_before(summary, " history rows"))
            self.changed.append(_number_before(summary, " changed"))
            sec = re.search(r", ([0-9.]+)s$", summary)
            self.own_seconds.append(float(sec.group(1)) if sec else 0.0)
        elif FAILED_LINE.search(line):
            self.count += 1
            self.failed += 1
            self.own_requests.append(0)
            self.rows.append(0)
            self.changed.append(0)
            self.own_seconds.append(0.0)
        level = LEVEL.match(line)
        if level:
            text = re.sub(r"\d[\d.,:\-T]*", "N", level.group(2))[:160]
            key = f"{level.group(1)} {text}"
            self.problems[key] = self.problems.get(key, 0) + 1


def _number_before(line: str, suffix: str) -> int:
    found = re.search(r"([0-9][0-9,]*)" + re.escape(suffix), line)
    return int(found.group(1).replace(",", "")) if found else 0


# --- measuring -----------------------------------------------------------------------------------


def posts(server: Server) -> int:
    return server.log().count("POST /graphql")


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def sample(
    daemon: psutil.Process, mirror: Path, server: Server, cycles: Cycles, began: float
) -> dict[str, Any]:
    times = daemon.cpu_times()
    return {
        "cycle": cycles.count,
        "seconds": time.perf_counter() - began,
        "rss": daemon.memory_info().rss,
        "cpu": times.user + times.system,
        "threads": daemon.num_threads(),
        "fds": daemon.num_fds(),
        "db": size(mirror),
        "wal": size(mirror.with_name(mirror.name + "-wal")),
        "posts": posts(server),
        "server_rss": psutil.Process(server.proc.pid).memory_info().rss,
        "own_requests": sum(cycles.own_requests),
        "own_seconds": sum(cycles.own_seconds),
    }


def wait_cycles(
    cycles: Cycles, target: int, daemon: DaemonProcess, activity: Activity | None, stall: float
) -> None:
    """Until the daemon has logged ``target`` pull cycles (fails if it dies or stalls)."""
    last, since = cycles.poll(), time.monotonic()
    while cycles.poll() < target:
        if not daemon.alive():
            raise RuntimeError(
                f"the daemon exited ({daemon.proc.returncode}):\n{daemon.log()[-3000:]}"
            )
        if activity is not None and activity.error is not None:
            raise RuntimeError(f"the upstream activity failed: {activity.error!r}")
        if cycles.count != last:
            last, since = cycles.count, time.monotonic()
        elif time.monotonic() - since > stall:
            raise RuntimeError(
                f"no pull cycle for {stall:.0f}s at cycle {cycles.count}:\n{daemon.log()[-3000:]}"
            )
        time.sleep(0.01)


def mb(value: float) -> float:
    return value / 2**20


# --- the baseline: one `sync` process per cycle --------------------------------------------------


def baseline(
    server: Server, work: Path, config: Path, env: dict[str, str], cycles: int
) -> dict[str, Any]:
    mirror = work / "baseline.db"
    cmd = [sys.executable, "-m", "mirror.cli", "--db", str(mirror), "--config", str(config)]
    cmd += ["sync", PATH]

    def one() -> tuple[float, float, str]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"baseline sync failed ({done.returncode}):\n{done.stderr[-3000:]}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(PATH + ":")]
        return wall, cpu, lines[-1] if lines else "?"

    log("baseline: initial `sync` of its own mirror ...")
    wall0, cpu0, line0 = one()
    log(f"baseline:   {line0} ({wall0:.1f}s wall, {cpu0:.1f} CPU-s)")
    time.sleep(0.3)
    start_posts = posts(server)
    walls, cpus, lines = [], [], []
    for i in range(cycles):
        wall, cpu, line = one()
        walls.append(wall)
        cpus.append(cpu)
        lines.append(line)
        if i == 0 or (i + 1) % 5 == 0:
            log(f"baseline: idle sync {i + 1}/{cycles}: {wall:.2f}s wall, {cpu:.2f} CPU-s: {line}")
    time.sleep(0.3)  # the access log line of the last answer
    return {
        "cycles": cycles,
        "initial_wall": wall0,
        "initial_cpu": cpu0,
        "wall": sum(walls) / cycles,
        "cpu": sum(cpus) / cycles,
        "requests": (posts(server) - start_posts) / cycles,
        "own_requests": sum(_number_before(ln, " requests") for ln in lines) / cycles,
        "line": lines[-1],
    }


# --- the benchmark -------------------------------------------------------------------------------


def soak(
    server: Server, upstream: Path, work: Path, config: Path, env: dict[str, str], args: Any
) -> dict[str, Any]:
    mirror = work / "mirror.db"
    daemon_log = work / "daemon.log"
    cycles = Cycles(daemon_log)
    idle_end = WARM + args.idle
    stop_at = max(idle_end, args.cycles - args.settle)
    marks = sorted(
        {WARM, idle_end, stop_at, args.cycles, *range(SAMPLE_EVERY, args.cycles + 1, SAMPLE_EVERY)}
    )
    stall = max(120.0, 50 * args.interval)
    samples: dict[int, dict[str, Any]] = {}
    activity = Activity(upstream, args, cycles)
    found: dict[str, Any] = {"active_runs": list(activity.active)}
    with DaemonProcess(mirror, config, env, daemon_log) as daemon:
        proc = psutil.Process(daemon.pid)
        began = time.perf_counter()
        samples[0] = sample(proc, mirror, server, cycles, began)
        log(f"daemon: pid {daemon.pid}, pulling every {args.interval}s; warm-up ...")
        try:
            for mark in marks:
                wait_cycles(cycles, mark, daemon, activity, stall)
                samples[mark] = sample(proc, mirror, server, cycles, began)
                s = samples[mark]
                log(
                    f"cycle {s['cycle']:>4} ({s['seconds']:6.1f}s): RSS {mb(s['rss']):.1f} MB, "
                    f"CPU {s['cpu']:.1f}s, db {mb(s['db']):.2f} MB, WAL {mb(s['wal']):.2f} MB, "
                    f"{s['posts']} requests upstream, {s['threads']} threads, {s['fds']} fds"
                )
                if mark == idle_end and not activity.is_alive():
                    log(
                        f"active phase: {len(activity.active)} runs log {args.log_steps} steps "
                        f"every {args.interval}s, a run added every {args.add_every} cycles ..."
                    )
                    activity.start()
                if mark == stop_at and activity.is_alive():
                    activity.stop()
                    if activity.error is not None:
                        raise RuntimeError(f"the upstream activity failed: {activity.error!r}")
                    found["stopped_at"] = cycles.poll()
                    log(f"activity stopped at cycle {found['stopped_at']}; settling ...")
            # two whole cycles after the last upstream write, whatever the counts say
            need = found.get("stopped_at", cycles.count) + 2
            if cycles.count < need:
                wait_cycles(cycles, need, daemon, None, stall)
            found["end"] = samples[max(samples)]
            found["last_cycle"] = cycles.count
            stop_began = time.perf_counter()
            found["exit"] = daemon.stop(timeout=60)
            found["stop_seconds"] = time.perf_counter() - stop_began
        finally:
            if activity.is_alive():
                activity.stop()
        cycles.poll()
    found.update(
        samples=samples,
        cycles=cycles,
        activity=activity,
        idle_end=idle_end,
        stop_at=stop_at,
        jobs=job_rows(mirror).get(JOB, {}),
        after_stop={"db": size(mirror), "wal": size(mirror.with_name(mirror.name + "-wal"))},
    )
    log("comparing the mirror with the upstream ...")
    found["differences"] = differences(upstream, mirror, ENTITY, PROJECT)
    found["upstream_counts"] = history_counts(upstream)
    found["mirror_counts"] = history_counts(mirror)
    return found


def phase(samples: dict[int, dict[str, Any]], a: int, b: int, cycles: Cycles) -> dict[str, float]:
    first, last = samples[a], samples[b]
    n = max(1, last["cycle"] - first["cycle"])
    return {
        "cycles": n,
        "cpu": (last["cpu"] - first["cpu"]) / n,
        "wall": (last["seconds"] - first["seconds"]) / n,
        "requests": (last["posts"] - first["posts"]) / n,
        "own_requests": (last["own_requests"] - first["own_requests"]) / n,
        "own_seconds": (last["own_seconds"] - first["own_seconds"]) / n,
        "rows": sum(cycles.rows[first["cycle"] : last["cycle"]]) / n,
    }


def report(found: dict[str, Any], base: dict[str, Any], args: Any, took: float) -> bool:
    samples, cycles, activity = found["samples"], found["cycles"], found["activity"]
    warm, end = samples[WARM], found["end"]
    growth = (end["rss"] - warm["rss"]) / warm["rss"]
    idle = phase(samples, WARM, found["idle_end"], cycles)
    active = phase(samples, found["idle_end"], found["stop_at"], cycles)
    settle = phase(samples, found["stop_at"], max(samples), cycles)
    ok = True

    print(
        f"\n## Daemon soak: {args.runs} runs x {args.steps} steps, {found['last_cycle']} pull "
        f"cycles every {args.interval:g} s\n"
    )
    print(machine())
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load}; started with {args.load_at_start}")
    print(
        f"phases: warm-up cycles 1-{WARM}, idle {WARM + 1}-{found['idle_end']}, active "
        f"{found['idle_end'] + 1}-{found['stop_at']} ({len(found['active_runs'])} runs logging "
        f"{args.log_steps} steps every {args.interval:g} s: {activity.ticks} ticks, "
        f"{activity.steps:,} steps; {activity.added} runs added, {activity.finished} finished), "
        f"settle to {found['last_cycle']}; whole benchmark {took:.0f} s\n"
    )

    rows = []
    previous = None
    for n in sorted(samples):
        s = samples[n]
        window = ""
        changed = ""
        if previous is not None and s["cycle"] > previous["cycle"]:
            span = s["cycle"] - previous["cycle"]
            window = f"{1000 * (s['cpu'] - previous['cpu']) / span:.1f}"
            changed = f"{sum(cycles.changed[previous['cycle'] : s['cycle']]) / span:.1f}"
        previous = s
        rows.append(
            [
                s["cycle"],
                f"{s['seconds']:.1f}",
                f"{mb(s['rss']):.1f}",
                f"{s['cpu']:.2f}",
                window,
                changed,
                s["threads"],
                s["fds"],
                f"{mb(s['db']):.2f}",
                f"{mb(s['wal']):.2f}",
                s["posts"],
                f"{mb(s['server_rss']):.1f}",
            ]
        )
    print(
        table(
            [
                "cycle",
                "elapsed s",
                "daemon RSS MB",
                "daemon CPU s",
                "CPU ms / cycle since",
                "runs re-read / cycle",
                "threads",
                "open fds",
                "mirror.db MB",
                "mirror.db-wal MB",
                "upstream requests",
                "server RSS MB",
            ],
            rows,
        )
    )
    after = found["after_stop"]
    print(
        f"\nAfter TERM (exit {found['exit']} in {found['stop_seconds']:.1f} s): mirror.db "
        f"{mb(after['db']):.2f} MB, mirror.db-wal {mb(after['wal']):.2f} MB."
    )

    print()
    headers = [
        "phase",
        "cycles",
        "CPU s / cycle",
        "wall s / cycle",
        "upstream requests / cycle",
        "own count / cycle",
        "history rows / cycle",
    ]
    rows = [
        [
            "daemon, idle",
            idle["cycles"],
            f"{idle['cpu']:.4f}",
            f"{idle['wall']:.3f} (pull {idle['own_seconds']:.2f})",
            f"{idle['requests']:.2f}",
            f"{idle['own_requests']:.2f}",
            f"{idle['rows']:.1f}",
        ],
        [
            "daemon, active",
            active["cycles"],
            f"{active['cpu']:.4f}",
            f"{active['wall']:.3f} (pull {active['own_seconds']:.2f})",
            f"{active['requests']:.2f}",
            f"{active['own_requests']:.2f}",
            f"{active['rows']:.1f}",
        ],
        [
            "daemon, settle (no more changes upstream)",
            settle["cycles"],
            f"{settle['cpu']:.4f}",
            f"{settle['wall']:.3f} (pull {settle['own_seconds']:.2f})",
            f"{settle['requests']:.2f}",
            f"{settle['own_requests']:.2f}",
            f"{settle['rows']:.1f}",
        ],
        [
            "`sync` per cycle (cron), idle",
            base["cycles"],
            f"{base['cpu']:.3f}",
            f"{base['wall']:.3f}",
            f"{base['requests']:.2f}",
            f"{base['own_requests']:.2f}",
            "0",
        ],
        [
            "**cron / daemon, idle**",
            "",
            f"**{base['cpu'] / idle['cpu']:.0f}x**" if idle["cpu"] > 0 else "inf",
            "",
            f"{base['requests'] / idle['requests']:.2f}x" if idle["requests"] else "",
            "",
            "",
        ],
    ]
    print(table(headers, rows))
    n = idle["cycles"]
    print(
        f"\n{n} idle cycles cost the daemon {idle['cpu'] * n:.2f} CPU-s; done the cron way "
        f"({base['cycles']} measured, scaled) {base['cpu'] * n:.1f} CPU-s and "
        f"{base['wall'] * n:.0f} s of wall time. The baseline's initial sync: "
        f"{base['initial_wall']:.1f} s wall, {base['initial_cpu']:.1f} CPU-s; last idle line: "
        f"{base['line']}"
    )

    print("\nMemory (daemon RSS):")
    series = ", ".join(
        f"{samples[k]['cycle']}: {mb(samples[k]['rss']):.1f}" for k in sorted(samples) if k
    )
    print(f"- every {SAMPLE_EVERY} cycles (MB): {series}")
    peak = max(s["rss"] for s in samples.values())
    print(
        f"- warm (cycle {warm['cycle']}) {mb(warm['rss']):.1f} MB, end (cycle {end['cycle']}) "
        f"{mb(end['rss']):.1f} MB, largest sample {mb(peak):.1f} MB; growth "
        f"{100 * growth:+.1f}%"
    )

    jobs = found["jobs"]
    print(
        f"\nCycles: {cycles.count} logged ({cycles.ok} ok, {cycles.failed} failed); "
        f"daemon_jobs `{JOB}`: runs {jobs.get('runs')}, failures {jobs.get('failures')}, "
        f"last error {jobs.get('last_error')!r}"
    )
    if cycles.problems or cycles.tracebacks:
        print(f"Warnings and errors in the daemon's log ({cycles.tracebacks} tracebacks):")
        for text, count in sorted(cycles.problems.items(), key=lambda kv: -kv[1])[:12]:
            print(f"- {count} x {text}")
    else:
        print("The daemon's log has no warning or error line.")

    up, mine = found["upstream_counts"], found["mirror_counts"]
    same_counts = up == mine
    print(
        f"\nUpstream: {len(up)} runs, {sum(h for h, _ in up.values()):,} history rows, "
        f"{sum(e for _, e in up.values()):,} events; mirror: {len(mine)} runs, "
        f"{sum(h for h, _ in mine.values()):,} history rows, "
        f"{sum(e for _, e in mine.values()):,} events; per-run counts equal: {same_counts}"
    )
    diffs = found["differences"]
    for line in diffs:
        print(f"- {line}")

    print("\nTargets:")
    checks = [
        (
            f"daemon RSS growth from cycle {warm['cycle']} to {end['cycle']} <= "
            f"{100 * TARGET_GROWTH:g}% ({100 * growth:+.1f}%)",
            growth <= TARGET_GROWTH,
        ),
        (
            "the mirror equals the upstream (every run, field and history/events row)"
            + ("" if not diffs else f": {len(diffs)}+ differences"),
            not diffs and same_counts,
        ),
        (
            f"the daemon stopped on TERM with exit 0 (exit {found['exit']}, "
            f"{found['stop_seconds']:.1f} s)",
            found["exit"] == 0,
        ),
    ]
    for text, passed in checks:
        ok &= passed
        print(f"- {text}: {verdict(passed)}")
    print(
        f"- for information: {idle['requests']:.2f} upstream requests per idle cycle, "
        f"{idle['cpu'] * 1000:.1f} ms CPU per idle cycle, WAL at most "
        f"{mb(max(s['wal'] for s in samples.values())):.2f} MB"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=500, help="pull cycles in all")
    parser.add_argument("--interval", type=float, default=0.2, help="[daemon] pull_interval")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--idle", type=int, default=100, help="cycles of the idle phase")
    parser.add_argument("--active-runs", type=int, default=3, help="runs that keep logging")
    parser.add_argument("--log-steps", type=int, default=10, help="steps per run per tick")
    parser.add_argument("--add-every", type=int, default=50, help="cycles between new runs")
    parser.add_argument("--settle", type=int, default=5, help="last cycles without activity")
    parser.add_argument("--baseline-cycles", type=int, default=20, help="idle `sync` processes")
    parser.add_argument("--threads", type=int, default=4, help="the upstream server's threads")
    args = parser.parse_args()
    if args.cycles < WARM + args.idle + args.settle + 10:
        parser.error(f"--cycles must be at least {WARM + args.idle + args.settle + 10}")
    args.load_at_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())

    def terminated(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    began = time.perf_counter()
    db_dir = out_path("daemon")
    fixture = seeded_upstream(db_dir, args.runs, args.steps, args.seed, ENTITY, PROJECT)[0]
    work = db_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "home").mkdir(parents=True)
    upstream = work / "upstream.db"
    shutil.copyfile(fixture, upstream)
    config = work / "mirror.toml"
    config.write_text(CONFIG.format(interval=args.interval, path=PATH))
    server_args = ["--role", "upstream", "--threads", str(args.threads)]
    with Server(upstream, work / "serve.log", server_args) as server:
        env = mirror_env(server.url, work / "home", KEY)
        env["XDG_CACHE_HOME"] = str(work / "home" / "cache")
        env["XDG_STATE_HOME"] = str(work / "home" / "state")
        base = baseline(server, work, config, env, args.baseline_cycles)
        found = soak(server, upstream, work, config, env, args)
    took = time.perf_counter() - began
    ok = report(found, base, args, took)
    log(f"done in {took:.0f} s; logs and databases in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
