"""Push benchmark: ``wandb-mirror push`` against the loop a user writes today with ``wandb.Api``.

An upstream project (``mirror.synth.seed_project``, 1,000 runs x 5 steps by default: history does
not matter here) is served by ``python -m mirror.serve`` as a real process with 50 ms of added
latency per GraphQL request, the stand-in for W&B over the internet. One summary edit per run
(``summary["reviewed"] = i`` for the i-th run by name) is sent to it in two ways, each against a
fresh copy of the same upstream and a freshly started server:

* the mirror: a mirror synced from the upstream once (``wandb-mirror sync``, not timed), the
  edits queued in its outbox (``mirror.store.outbox.record_edit``, one transaction per 100 runs,
  timed for information), then ``python -m mirror.cli --db MIRROR push ENTITY/PROJECT``: per
  batch of up to 100 runs one read, one ``upsertBucket`` per run, one read back to verify;
* the baseline: the official ``wandb`` client (0.31) in a child process, off the network and out
  of $HOME, ``api.runs(path, per_page=1000, lazy=False)`` and ``run.summary.update({"reviewed":
  i})`` for every run (one ``upsertBucket`` each, no conflict check, no verification).

Each side reports GraphQL requests (``POST /graphql`` lines of the server's access log, with a
breakdown by operation), requests per edit, wall seconds of its process (interpreter start and
imports included) and the seconds of the work alone (the mirror's own summary line; the
baseline's timer around listing and updates). After each side, the upstream database is read
with ``mirror.store`` functions: every run must hold its ``reviewed`` value, and the other
summary keys are compared with the seeded ones (for information: a client that rewrites values
it did not edit shows up there). Target: at most 3 requests per edit for the mirror.

Usage: ``.venv/bin/python bench/bench_push.py [--runs 1000] [--steps 5] [--latency-ms 50]``;
``--runs 100`` for a quick look. The seeded upstream and the mirror synced from it are kept under
``bench/out/push/``, keyed by runs, steps, seed and schema revision, and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common import (
    Server,
    discard_fixture,
    fixture_ready,
    machine,
    mark_fixture,
    mirror_env,
    out_path,
    seeded_upstream,
    table,
    verdict,
    wandb_env,
    wandb_version,
)

ENTITY, PROJECT = "bench", "push"
PATH = f"{ENTITY}/{PROJECT}"
KEY = "benchpush" + "0" * 31  # wandb wants 40 characters
ROOT = Path(__file__).resolve().parents[1]
EDIT_KEY = "reviewed"
TARGET_REQUESTS_PER_EDIT = 3.0
SUFFIXES = ("", "-wal", "-shm")


# --- the baseline, run as a child process: what a user writes with wandb.Api today ---------------


def baseline_worker(url: str, values_file: str, per_page: int) -> int:
    """Set ``summary[EDIT_KEY]`` on every run of the project through the official client."""
    began = time.perf_counter()
    import wandb

    imported = time.perf_counter()
    values = json.loads(Path(values_file).read_text())
    api = wandb.Api(api_key=KEY, overrides={"base_url": url}, timeout=120)
    edits = 0
    for run in api.runs(PATH, per_page=per_page, lazy=False):
        if run.id in values:
            run.summary.update({EDIT_KEY: values[run.id]})
            edits += 1
    done = time.perf_counter()
    print(json.dumps({"edits": edits, "seconds": done - imported, "import": imported - began}))
    return 0


def access_counts(text: str) -> tuple[int, dict[str, tuple[int, float]], float]:
    """In a piece of the server's access log: GraphQL requests; per operation their count and
    mean server milliseconds (the added latency included); and the client's milliseconds between
    requests (the span from the first request's start to the last answer, less the server's
    time: the client sends one request at a time, so the rest is its own work)."""
    ops: dict[str, list[float]] = {}
    first = last = None
    pattern = r"^(\S+ \S+) \S+ POST /graphql \d+ ([0-9.]+)ms ?(\S*)"
    for found in re.finditer(pattern, text, re.MULTILINE):
        ms = float(found.group(2))
        ops.setdefault(found.group(3) or "?", []).append(ms)
        at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1000
        first = at - ms if first is None else first
        last = at
    served = sum(sum(ms) for ms in ops.values())
    client = (last - first - served) if first is not None and last is not None else float("nan")
    summary = {op: (len(ms), sum(ms) / len(ms)) for op, ms in ops.items()}
    return text.count("POST /graphql"), summary, client


# --- fixtures: the upstream seeded once, the mirror synced from it once ---------------------------


def copy_db(source: Path, target: Path) -> Path:
    """A copy of an SQLite file with its WAL (nothing has it open for writing)."""
    for suffix in SUFFIXES:
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    for suffix in ("", "-wal"):
        src = source.with_name(source.name + suffix)
        if src.exists():
            shutil.copyfile(src, target.with_name(target.name + suffix))
    return target


def synced(upstream: Path, work: Path, threads: int) -> Path:
    """A mirror of the upstream (``wandb-mirror sync``, no added latency: setup, not timed),
    kept while the upstream fixture is the one it was synced from."""
    path = upstream.with_name(upstream.stem + "-mirror.db")
    marker = upstream.with_name(upstream.name + ".params.json")
    params = {"upstream": upstream.name, "upstream_marked": marker.stat().st_mtime_ns, "v": 1}
    if fixture_ready(path, params):
        return path
    discard_fixture(path)
    print(f"syncing a mirror of {upstream.name} ...", flush=True)
    began = time.perf_counter()
    copy = copy_db(upstream, work / "upstream-sync.db")
    home = work / "home-sync"
    home.mkdir(exist_ok=True)
    with Server(copy, work / "serve-sync.log", ["--threads", str(threads)]) as server:
        cmd = [sys.executable, "-m", "mirror.cli", "--db", str(path), "sync", PATH]
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=mirror_env(server.url, home, KEY),
            cwd=ROOT,
            timeout=3600,
        )
    if done.returncode != 0:
        discard_fixture(path)
        raise RuntimeError(f"mirror sync failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    for suffix in SUFFIXES:
        copy.with_name(copy.name + suffix).unlink(missing_ok=True)
    mark_fixture(path, params)
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(f"synced in {time.perf_counter() - began:.1f}s: {line}", flush=True)
    return path


# --- reading and editing databases with mirror.store -----------------------------------------------


def summaries(db: Path) -> dict[str, dict[str, Any]]:
    """Run name → summary of every live run of the project, read from ``db``."""
    from sqlalchemy import select

    from mirror.store.engine import make_engine, read_transaction
    from mirror.store.fields import loads
    from mirror.store.models import runs
    from mirror.store.read import find_project

    engine = make_engine(db, create=False)
    try:
        with read_transaction(engine) as conn:
            project = find_project(conn, ENTITY, PROJECT)
            if project is None:
                raise RuntimeError(f"{db} holds no project {PATH}")
            query = select(runs.c.name, runs.c.summary_metrics).where(
                runs.c.project_id == project["id"], runs.c.deleted_at.is_(None)
            )
            return {name: loads(text, {}) or {} for name, text in conn.execute(query)}
    finally:
        engine.dispose()


def queue_edits(mirror: Path, values: dict[str, int], batch: int = 100) -> float:
    """One outbox edit per run (``summary[EDIT_KEY] = value``), one transaction per ``batch``
    runs; returns the seconds it took."""
    from mirror.store.engine import make_engine, write_transaction
    from mirror.store.outbox import Edit, record_edit
    from mirror.store.read import find_project, find_run

    began = time.perf_counter()
    names = list(values)
    engine = make_engine(mirror, create=False)
    try:
        for start in range(0, len(names), batch):
            with write_transaction(engine) as conn:
                project = find_project(conn, ENTITY, PROJECT)
                assert project is not None
                for name in names[start : start + batch]:
                    run = find_run(conn, project["id"], name)
                    if run is None:
                        raise RuntimeError(f"run {name} is not in the mirror")
                    record_edit(conn, run, Edit(summary={EDIT_KEY: values[name]}))
    finally:
        engine.dispose()
    return time.perf_counter() - began


def open_edits(mirror: Path) -> int:
    from mirror.store.engine import make_engine, read_transaction
    from mirror.store.outbox import describe

    engine = make_engine(mirror, create=False)
    try:
        with read_transaction(engine) as conn:
            return len(describe(conn))
    finally:
        engine.dispose()


def check_upstream(
    db: Path, values: dict[str, int], before: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """How many runs hold their value, and how many had another summary key changed."""
    from mirror.store.fields import dumps

    after = summaries(db)
    held = sum(1 for name, v in values.items() if after.get(name, {}).get(EDIT_KEY) == v)
    others = 0
    for name in values:
        rest = {k: v for k, v in after.get(name, {}).items() if k != EDIT_KEY}
        if dumps(rest) != dumps(before.get(name, {})):
            others += 1
    return {"held": held, "others_changed": others}


# --- the two sides -------------------------------------------------------------------------------


def mirror_side(
    upstream: Path, mirror_fixture: Path, values: dict[str, int], work: Path, args: Any
) -> dict[str, Any]:
    db = copy_db(upstream, work / "upstream-mirror.db")
    mirror = copy_db(mirror_fixture, work / "mirror.db")
    queued = queue_edits(mirror, values)
    print(f"[mirror] {len(values):,} edits queued in {queued:.1f}s; pushing ...", flush=True)
    home = work / "home-mirror"
    home.mkdir(exist_ok=True)
    server_args = ["--fault-latency-ms", str(args.latency_ms), "--threads", str(args.threads)]
    with Server(db, work / "serve-mirror.log", server_args) as server:
        start = len(server.log())
        cmd = [sys.executable, "-m", "mirror.cli", "--db", str(mirror), "push", PATH]
        began = time.perf_counter()
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=mirror_env(server.url, home, KEY),
            cwd=ROOT,
            timeout=3600,
        )
        seconds = time.perf_counter() - began
        time.sleep(0.3)  # the access log line of the last answer
        count, ops, client_ms = access_counts(server.log()[start:])
    if done.returncode != 0:
        raise RuntimeError(
            f"push failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
        )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(PATH + ":")]
    line = lines[-1] if lines else done.stdout.strip()
    own = re.search(r", ([0-9.]+)s$", line)
    pushed = re.search(r": (\d+) edits pushed", line)
    own_requests = re.search(r"(\d+) requests", line)
    return {
        "requests": count,
        "ops": ops,
        "client_ms": client_ms,
        "seconds": seconds,
        "own_seconds": float(own.group(1)) if own else float("nan"),
        "own_requests": int(own_requests.group(1)) if own_requests else -1,
        "edits": int(pushed.group(1)) if pushed else -1,
        "line": line,
        "queued_seconds": queued,
        "left_open": open_edits(mirror),
        "db": db,
    }


def baseline_side(upstream: Path, values: dict[str, int], work: Path, args: Any) -> dict[str, Any]:
    db = copy_db(upstream, work / "upstream-wandb.db")
    values_file = work / "values.json"
    values_file.write_text(json.dumps(values))
    home = work / "home-wandb"
    home.mkdir(exist_ok=True)
    print("[wandb] run.summary.update for every run ...", flush=True)
    server_args = ["--fault-latency-ms", str(args.latency_ms), "--threads", str(args.threads)]
    with Server(db, work / "serve-wandb.log", server_args) as server:
        start = len(server.log())
        cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-worker", server.url]
        cmd += [str(values_file), str(args.per_page)]
        began = time.perf_counter()
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=wandb_env(home, KEY), cwd=ROOT, timeout=3600
        )
        seconds = time.perf_counter() - began
        time.sleep(0.3)
        count, ops, client_ms = access_counts(server.log()[start:])
    if done.returncode != 0:
        raise RuntimeError(f"baseline failed ({done.returncode}):\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "requests": count,
        "ops": ops,
        "client_ms": client_ms,
        "seconds": seconds,
        "own_seconds": found["seconds"],
        "import_seconds": found["import"],
        "edits": found["edits"],
        "db": db,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline-worker":
        url, values_file, per_page = sys.argv[2:5]
        return baseline_worker(url, values_file, int(per_page))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5, help="history steps per run")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--latency-ms", type=int, default=50, help="added per GraphQL request")
    parser.add_argument("--threads", type=int, default=4, help="server worker threads")
    parser.add_argument("--per-page", type=int, default=1000, help="the baseline's api.runs page")
    parser.add_argument("--db-dir", type=Path, default=None, help="(bench/out/push)")
    parser.add_argument("--keep", action="store_true", help="keep the work copies")
    args = parser.parse_args()
    load_at_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())

    db_dir = args.db_dir or out_path("push")
    db_dir.mkdir(parents=True, exist_ok=True)
    work = db_dir / f"work-r{args.runs}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    upstream = seeded_upstream(db_dir, args.runs, args.steps, args.seed, ENTITY, PROJECT)[0]
    mirror_fixture = synced(upstream, work, args.threads)

    before = summaries(upstream)
    values = {name: i for i, name in enumerate(sorted(before))}
    edits = len(values)

    mine = mirror_side(upstream, mirror_fixture, values, work, args)
    mine["check"] = check_upstream(mine["db"], values, before)
    print(f"[mirror]   {mine['line']}", flush=True)
    base = baseline_side(upstream, values, work, args)
    base["check"] = check_upstream(base["db"], values, before)
    print(
        f"[wandb]   {base['edits']:,} edits, {base['requests']:,} requests, {base['seconds']:.1f}s",
        flush=True,
    )

    print(
        f"\n## Push: {edits:,} summary edits on {edits:,} runs, {args.latency_ms} ms per request\n"
    )
    print(machine())
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the start: {load_at_start}; at the end: {load}")
    print(
        f"mirror: `wandb-mirror push` (batches of 100 runs); baseline: wandb {wandb_version()}, "
        f"api.runs(per_page={args.per_page}, lazy=False) + run.summary.update per run; "
        f"server --threads {args.threads}\n"
    )
    headers = [
        "side",
        "GraphQL requests",
        "requests / edit",
        "seconds (process)",
        "seconds (work)",
        "upstream holds",
        "other keys changed",
    ]
    rows = []
    for label, side in (("mirror push", mine), (f"wandb {wandb_version()}", base)):
        rows.append(
            [
                label,
                side["requests"],
                f"{side['requests'] / max(1, edits):.3f}",
                side["seconds"],
                side["own_seconds"],
                f"{side['check']['held']:,} / {edits:,}",
                f"{side['check']['others_changed']:,} runs",
            ]
        )
    rows.append(
        [
            "wandb / mirror",
            f"{base['requests'] / max(1, mine['requests']):.3f}x",
            f"{base['requests'] / max(1, mine['requests']):.3f}x",
            f"**{base['seconds'] / mine['seconds']:.2f}x**",
            f"{base['own_seconds'] / mine['own_seconds']:.2f}x",
            "",
            "",
        ]
    )
    print(table(headers, rows))
    print(
        "\nRequests by operation (count x mean server ms, the added latency included), and the "
        "client's own time between requests:"
    )
    for label, side in (("mirror", mine), ("wandb", base)):
        ops = sorted(side["ops"].items(), key=lambda kv: -kv[1][0])
        served = sum(n * ms for n, ms in side["ops"].values()) / 1000
        print(
            f"- {label}: "
            + ", ".join(f"{op} {n:,} x {ms:.1f}" for op, (n, ms) in ops)
            + f"; server {served:.1f}s in all, client {side['client_ms'] / 1000:.1f}s between "
            f"requests ({side['client_ms'] / max(1, side['requests']):.1f} ms per request)"
        )
    print(
        f"\nmirror: {mine['line'].split(': ', 1)[-1]} (own count); edits queued in "
        f"{mine['queued_seconds']:.1f}s (one transaction per 100 runs, not timed above); "
        f"{mine['left_open']} edits left in the outbox"
    )
    print(f"wandb: import {base['import_seconds']:.1f}s (inside the process seconds)")

    per_edit = mine["requests"] / max(1, edits)
    checks = [
        (
            f"mirror requests per edit <= {TARGET_REQUESTS_PER_EDIT:g} ({per_edit:.3f})",
            per_edit <= TARGET_REQUESTS_PER_EDIT,
        ),
        (f"mirror pushed {mine['edits']:,} / {edits:,} edits", mine["edits"] == edits),
        (f"mirror outbox empty after the push ({mine['left_open']} left)", mine["left_open"] == 0),
        (
            f"upstream holds all values after the mirror's push "
            f"({mine['check']['held']:,} / {edits:,})",
            mine["check"]["held"] == edits,
        ),
        (
            f"upstream holds all values after wandb's updates "
            f"({base['check']['held']:,} / {edits:,})",
            base["check"]["held"] == edits,
        ),
    ]
    print("\nTargets and checks:")
    ok = True
    for text, passed in checks:
        ok &= passed
        print(f"- {text}: {verdict(passed)}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
