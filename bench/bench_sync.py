"""Sync benchmark: ``wandb-mirror sync`` against the loop a user writes today with ``wandb.Api``.

An upstream project (``wandb-mirror seed``, 1,000 runs x 1,000 steps by default) is served by
``python -m mirror.serve`` as a real process with 50 ms of added latency per GraphQL request,
the stand-in for W&B over the internet. Two ways of copying it into SQLite are timed side by side:

* the mirror: ``python -m mirror.cli --db MIRROR --config FILE sync ENTITY/PROJECT``;
* the baseline: the official ``wandb`` client (0.31) in a child process, iterating
  ``api.runs(path, per_page=1000, lazy=False)`` and ``run.scan_history()`` for every run, and
  writing each run's record and rows into SQLite (``executemany`` of JSON text).

Each initial sync gets a freshly started server (so neither side inherits the other's warm caches)
and reports wall seconds, GraphQL requests (``POST /graphql`` lines of the server's access log;
the mirror's own count is printed too), file downloads (``GET /parquet/``), and the peak RSS of the
syncing process tree (psutil, polled every 50 ms; for the baseline that includes wandb-core, the Go
process that ``scan_history`` talks to, shown separately). CPU seconds of the syncing tree
(``RUSAGE_CHILDREN``) and of the server (psutil), and the server's time per request by GraphQL
operation (from its access log), show where the time went.

Both modes run in one invocation:

* ``paged``: no parquet exports upstream, all history comes through ``HistoryPage``;
* ``parquet``: every finished run exported (``--parquet-export-delay 0``), the exports written
  once before timing (W&B has them ready too); the client reads them by itself, and so may the
  mirror (it uses an export only for runs of at least ``parquet_min_rows`` rows).

Then, against the mirror of each mode: a re-sync with nothing changed, and a re-sync after 1% of
the runs logged 100 more steps and another 1% had their summary edited (written straight into
the upstream database, as ``tests/sync_env.py`` does).

With ``--postgresql URL`` the mirror also syncs each mode into a fresh PostgreSQL database on
that server, against a fresh server of its own, reported beside the SQLite sync.

Usage: ``.venv/bin/python bench/bench_sync.py [--runs 1000] [--steps 1000] [--latency-ms 50]``;
``--runs 200`` for a quick look; ``--also-min-rows 1`` also times, in parquet mode, a mirror that
reads every export (``parquet_min_rows = 1``). Exits 1 when a target is missed. The seeded
upstream (and its parquet exports) are kept under ``--db-dir`` (``bench/out/sync``), keyed by
runs, steps, seed and schema revision, and reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import requests
from common import (
    Server,
    machine,
    mirror_env,
    out_path,
    seeded_upstream,
    table,
    verdict,
    wandb_env,
    wandb_version,
)

from mirror.config import SyncSettings

ENTITY, PROJECT = "bench", "sync"
PATH = f"{ENTITY}/{PROJECT}"
KEY = "benchsync" + "0" * 31  # wandb wants 40 characters
ROOT = Path(__file__).resolve().parents[1]

TARGET_SPEEDUP = 5.0
TARGET_REQUEST_RATIO = 1.1
TARGET_RSS_MB = 300.0
TARGET_RESYNC_FRACTION = 0.05

PARQUET_HISTORY = """query BenchParquetHistory($entity: String!, $project: String!, $run: String!) {
  project(name: $project, entityName: $entity) {
    run(name: $run) { parquetHistory(liveKeys: ["_step"]) { parquetUrls liveData } }
  }
}"""


# --- the baseline, run as a child process: what a user writes with wandb.Api today ---------------


def baseline_worker(url: str, out: str, per_page: int, page_size: int) -> int:
    """Copy every run's record and history into ``out`` through the official client."""
    import wandb

    api = wandb.Api(api_key=KEY, overrides={"base_url": url}, timeout=120)
    con = sqlite3.connect(out)
    con.execute(
        "CREATE TABLE runs (name TEXT PRIMARY KEY, display_name TEXT, state TEXT,"
        " config TEXT, summary TEXT)"
    )
    con.execute("CREATE TABLE history (run TEXT, step INTEGER, row TEXT)")
    runs = rows = 0
    for run in api.runs(PATH, per_page=per_page, lazy=False):
        con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
            (run.id, run.name, run.state, json.dumps(run.config), json.dumps(run.summary_metrics)),
        )
        batch = [
            (run.id, r.get("_step"), json.dumps(r)) for r in run.scan_history(page_size=page_size)
        ]
        con.executemany("INSERT INTO history VALUES (?, ?, ?)", batch)
        con.commit()
        runs += 1
        rows += len(batch)
    con.close()
    print(json.dumps({"runs": runs, "rows": rows}))
    return 0


def serve_supports_parquet() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "mirror.serve", "--help"], capture_output=True, text=True
    )
    return "--parquet-export-delay" in out.stdout


def seeded(db_dir: Path, runs: int, steps: int, seed: int) -> Path:
    """The upstream project; a fresh seed drops the parquet exports of the old one."""
    path, fresh = seeded_upstream(db_dir, runs, steps, seed, ENTITY, PROJECT)
    if fresh:
        shutil.rmtree(parquet_dir(path), ignore_errors=True)
    return path


def parquet_dir(upstream: Path) -> Path:
    return upstream.with_name(upstream.name + ".exports")


def upstream_runs(db: Path) -> list[tuple[str, str, int]]:
    """(name, state, historyLineCount) of every live run upstream."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(
            "SELECT name, state, history_line_count FROM runs WHERE deleted_at IS NULL"
            " ORDER BY created_at, name"
        ).fetchall()
    finally:
        con.close()


def exported(upstream: Path, log_dir: Path) -> Path:
    """The parquet exports of every finished run, written once before any timing."""
    directory = parquet_dir(upstream)
    marker = directory / "warm.json"
    names = [n for n, state, rows in upstream_runs(upstream) if state == "finished" and rows]
    if marker.exists() and json.loads(marker.read_text()).get("runs") == len(names):
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    print(f"writing parquet exports of {len(names)} finished runs ...", flush=True)
    began = time.perf_counter()
    args = ["--parquet-export-delay", "0", "--parquet-dir", str(directory)]
    with Server(upstream, log_dir / "export.log", args) as server:
        session = requests.Session()

        def ask(name: str) -> int:
            body = {
                "query": PARQUET_HISTORY,
                "variables": {"entity": ENTITY, "project": PROJECT, "run": name},
            }
            answer = session.post(server.url + "/graphql", json=body, timeout=600).json()
            return len(answer["data"]["project"]["run"]["parquetHistory"]["parquetUrls"])

        with ThreadPoolExecutor(2) as pool:
            files = sum(pool.map(ask, names))
    marker.write_text(json.dumps({"runs": len(names), "files": files}))
    print(f"exported {files} files in {time.perf_counter() - began:.0f}s", flush=True)
    return directory


def copy_upstream(source: Path, exports: Path | None, work: Path) -> tuple[Path, Path | None]:
    """A private copy of the upstream (the re-sync step changes it); exports hard-linked, since
    the server never rewrites a file in place (it writes a new export directory)."""
    db = work / "upstream.db"
    shutil.copyfile(source, db)
    if exports is None:
        return db, None
    target = work / "upstream.db.exports"
    shutil.copytree(exports, target, copy_function=os.link)
    return db, target


# --- the server --------------------------------------------------------------------------------


def access_counts(text: str) -> tuple[int, int, dict[str, tuple[int, float]]]:
    """GraphQL requests, parquet file downloads, and per operation (count, mean server ms,
    the added latency included) in a piece of the server's access log."""
    ops: dict[str, list[float]] = {}
    for found in re.finditer(r"POST /graphql \d+ ([0-9.]+)ms ?(\S*)", text):
        ops.setdefault(found.group(2) or "?", []).append(float(found.group(1)))
    downloads = len(re.findall(r"(?:GET|HEAD) /parquet/", text))
    summary = {op: (len(ms), sum(ms) / len(ms)) for op, ms in ops.items()}
    return text.count("POST /graphql"), downloads, summary


# --- one measured process -------------------------------------------------------------------


class Watch:
    """Peak RSS of a process tree: the sum over the process and its descendants, polled, and
    each process's own high-water mark (``VmHWM``), read while it lives."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_tree = 0
        self.hwm: dict[int, tuple[str, int]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                    hwm = _vm_hwm(proc.pid)
                    if hwm:
                        name = "main" if proc.pid == self.pid else proc.name()
                        old = self.hwm.get(proc.pid, (name, 0))[1]
                        self.hwm[proc.pid] = (name, max(old, hwm))
                except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                    continue
            self.peak_tree = max(self.peak_tree, total)
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def main_hwm(self) -> int:
        return self.hwm.get(self.pid, ("main", 0))[1]

    def others(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for pid, (name, hwm) in self.hwm.items():
            if pid != self.pid:
                found[name] = max(found.get(name, 0), hwm)
        return found


def _vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measured(server: Server, cmd: list[str], env: dict[str, str], label: str) -> dict[str, Any]:
    """Run ``cmd`` to the end: wall seconds, requests and downloads it caused, memory, output."""
    start = len(server.log())
    server_cpu = server.cpu_seconds()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    watch = Watch(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - began
    watch.stop()
    # the tree's CPU: the measured child and every descendant it reaped (wandb-core included)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (reaped.ru_utime + reaped.ru_stime) - (children.ru_utime + children.ru_stime)
    time.sleep(0.3)  # the access log line of the last answer
    requests_, downloads, ops = access_counts(server.log()[start:])
    server_cpu = server.cpu_seconds() - server_cpu
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    return {
        "seconds": seconds,
        "requests": requests_,
        "downloads": downloads,
        "ops": ops,
        "cpu": cpu,
        "server_cpu": server_cpu,
        "peak_tree": watch.peak_tree,
        "main_hwm": watch.main_hwm(),
        "others": watch.others(),
        "stdout": out,
        "stderr": err,
    }


def sync_mirror(server: Server, mirror: Path | str, config: Path, home: Path, label: str) -> dict:
    cmd = [sys.executable, "-m", "mirror.cli", "--db", str(mirror), "--config", str(config)]
    result = measured(server, [*cmd, "sync", PATH], mirror_env(server.url, home, KEY), label)
    lines = [ln for ln in result["stdout"].splitlines() if ln.startswith(PATH + ":")]
    if not lines:
        raise RuntimeError(f"{label}: no summary line:\n{result['stdout']}\n{result['stderr']}")
    line = lines[-1]
    result["line"] = line
    result["own_requests"] = _number_before(line, " requests")
    result["rows"] = _number_before(line, " history rows")
    own = re.search(r", ([0-9.]+)s$", line)
    result["own_seconds"] = float(own.group(1)) if own else math.nan
    return result


def _number_before(line: str, suffix: str) -> int:
    found = re.search(r"([0-9][0-9,]*)" + re.escape(suffix), line)
    return int(found.group(1).replace(",", "")) if found else -1


def fresh_postgresql(server_url: str, name: str) -> str:
    """An empty database ``name`` on the server of ``server_url`` (dropped first if there)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def sync_baseline(server: Server, out: Path, home: Path, per_page: int, page_size: int) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-worker", server.url]
    cmd += [str(out), str(per_page), str(page_size)]
    result = measured(server, cmd, wandb_env(home, KEY), "baseline")
    counted = json.loads(result["stdout"].strip().splitlines()[-1])
    result["rows"] = counted["rows"]
    result["runs"] = counted["runs"]
    return result


# --- changes upstream, written straight into its database (as tests/sync_env.py does) ------------


def change_upstream(db: Path, appended: list[str], edited: list[str], steps: int) -> None:
    """``appended`` runs log ``steps`` more steps (and an event), as a resumed run would;
    ``edited`` runs get a summary value changed, as an edit in W&B's UI would."""
    from sqlalchemy import update

    from mirror.store.engine import make_engine, write_transaction
    from mirror.store.fields import dumps, loads
    from mirror.store.history import history_keys_of
    from mirror.store.models import runs
    from mirror.store.read import find_project, find_run, iter_rows
    from mirror.store.upsert import append_history, upsert_runs, utcnow

    engine = make_engine(db)
    try:
        with write_transaction(engine) as conn:
            pid = find_project(conn, ENTITY, PROJECT)["id"]
            for name in appended:
                run = find_run(conn, pid, name)
                have = list(iter_rows(conn, run["id"]))
                last = int(have[-1]["_step"]) if have else -1
                new = [
                    {"_step": last + 1 + i, "loss": 1.0 / (last + 2 + i), "acc": 0.5}
                    for i in range(steps)
                ]
                append_history(conn, run["id"], new)
                events = list(iter_rows(conn, run["id"], "events"))
                append_history(conn, run["id"], [{"system.cpu": 1.5}], "events", start=len(events))
                summary = loads(run["summary_metrics"], {})
                summary.update(new[-1])
                conn.execute(
                    update(runs)
                    .where(runs.c.id == run["id"])
                    .values(
                        history_line_count=len(have) + steps,
                        history_keys=dumps(history_keys_of([*have, *new])),
                        summary_metrics=dumps(summary),
                        heartbeat_at=utcnow(),
                        updated_at=utcnow(),
                        state="running",
                    )
                )
            nodes = [
                {"name": name, "updatedAt": utcnow(), "summaryMetrics": {"best": 0.93 + i / 1e4}}
                for i, name in enumerate(edited)
            ]
            if nodes:
                upsert_runs(conn, ENTITY, PROJECT, nodes)
    finally:
        engine.dispose()


# --- the benchmark ---------------------------------------------------------------------------


def minimum_requests(rows: list[int], listing: int, batch: int, page: int) -> int:
    """The fewest requests the page sizes allow: listing pages, record batches, history pages."""
    runs = len(rows)
    return (
        math.ceil(runs / listing) + math.ceil(runs / batch) + sum(math.ceil(r / page) for r in rows)
    )


def write_config(path: Path, args: argparse.Namespace, min_rows: int | None = None) -> None:
    min_rows = args.parquet_min_rows if min_rows is None else min_rows
    path.write_text(
        "[sync]\n"
        f"concurrency = {args.concurrency}\n"
        f"listing_page = {args.listing_page}\n"
        f"record_batch = {args.record_batch}\n"
        f"history_page = {args.history_page}\n"
        f"parquet = {'true' if args.mirror_parquet else 'false'}\n"
        f"parquet_min_rows = {min_rows}\n"
    )


def mb(value: float) -> float:
    return value / 2**20


def run_mode(
    mode: str, upstream: Path, exports: Path | None, db_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Initial syncs of both sides, then the mirror's two re-syncs, against one upstream copy."""
    work = db_dir / f"work-{mode}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db, export_copy = copy_upstream(upstream, exports, work)
    server_args = ["--fault-latency-ms", str(args.latency_ms), "--threads", str(args.threads)]
    if export_copy is not None:
        server_args += ["--parquet-export-delay", "0", "--parquet-dir", str(export_copy)]
    config = work / "mirror.toml"
    write_config(config, args)
    mirror = work / "mirror.db"
    home = work / "home"
    home.mkdir()
    found: dict[str, Any] = {"mode": mode}

    print(f"[{mode}] mirror: initial sync ...", flush=True)
    with Server(db, work / "serve-mirror.log", server_args) as server:
        found["mirror"] = sync_mirror(server, mirror, config, home, "mirror sync")
    print(f"[{mode}]   {found['mirror']['line']}", flush=True)
    if export_copy is not None and args.also_min_rows is not None:
        alt = work / "mirror-alt.toml"
        write_config(alt, args, args.also_min_rows)
        print(f"[{mode}] mirror, parquet_min_rows {args.also_min_rows}: initial sync ...")
        with Server(db, work / "serve-mirror-alt.log", server_args) as server:
            found["mirror_alt"] = sync_mirror(server, work / "mirror-alt.db", alt, home, "alt")
        print(f"[{mode}]   {found['mirror_alt']['line']}", flush=True)
        for suffix in ("", "-wal", "-shm"):
            (work / f"mirror-alt.db{suffix}").unlink(missing_ok=True)

    if args.postgresql:
        target = fresh_postgresql(args.postgresql, f"wm_bench_sync_{mode}")
        print(f"[{mode}] mirror into PostgreSQL: initial sync ...", flush=True)
        with Server(db, work / "serve-mirror-pg.log", server_args) as server:
            found["mirror_pg"] = sync_mirror(server, target, config, home, "mirror sync (pg)")
        print(f"[{mode}]   {found['mirror_pg']['line']}", flush=True)

    if not args.skip_baseline:
        print(f"[{mode}] baseline: wandb.Api + scan_history ...", flush=True)
        with Server(db, work / "serve-baseline.log", server_args) as server:
            found["baseline"] = sync_baseline(
                server, work / "baseline.db", work / "wandb-home", args.per_page, args.history_page
            )
        base = found["baseline"]
        print(
            f"[{mode}]   {base['runs']} runs, {base['rows']:,} rows, {base['requests']} requests,"
            f" {base['downloads']} downloads, {base['seconds']:.1f}s",
            flush=True,
        )

    with Server(db, work / "serve-resync.log", server_args) as server:
        print(f"[{mode}] mirror: re-sync, nothing changed ...", flush=True)
        found["unchanged"] = sync_mirror(server, mirror, config, home, "re-sync")
        print(f"[{mode}]   {found['unchanged']['line']}", flush=True)
        listed = upstream_runs(db)
        share = max(1, len(listed) // 100)
        finished = [n for n, state, rows in listed if state == "finished" and rows]
        appended = finished[:share]
        edited = [n for n, _state, _rows in listed if n not in appended][-share:]
        change_upstream(db, appended, edited, args.append_steps)
        found["changed_runs"] = (len(appended), len(edited))
        print(f"[{mode}] mirror: re-sync, {len(appended)} runs appended, {len(edited)} edited ...")
        found["changed"] = sync_mirror(server, mirror, config, home, "re-sync after changes")
        print(f"[{mode}]   {found['changed']['line']}", flush=True)
    found["upstream_rows"] = sum(r for _n, _s, r in upstream_runs(db))
    if not args.keep:
        for name in ("upstream.db", "upstream.db-wal", "upstream.db-shm", "baseline.db"):
            (work / name).unlink(missing_ok=True)
        if export_copy is not None:
            shutil.rmtree(export_copy, ignore_errors=True)
    return found


def report(results: list[dict[str, Any]], minimum: int, args: argparse.Namespace) -> bool:
    runs = args.runs
    ok = True
    print(
        f"\n## Sync: {runs:,} runs x {args.steps:,} steps, {args.latency_ms} ms added per request\n"
    )
    print(machine())
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load}; started with {args.load_at_start}")
    print(
        f"mirror: concurrency {args.concurrency}, listing_page {args.listing_page}, record_batch "
        f"{args.record_batch}, history_page {args.history_page}, parquet "
        f"{str(args.mirror_parquet).lower()}, parquet_min_rows {args.parquet_min_rows}; "
        f"baseline: wandb {wandb_version()}, api.runs(per_page={args.per_page}, lazy=False), "
        f"scan_history(page_size={args.history_page})"
    )
    print(
        f"minimum requests the page sizes allow: ceil({runs}/{args.listing_page}) + "
        f"ceil({runs}/{args.record_batch}) + sum ceil(rows/{args.history_page}) = {minimum:,}\n"
    )
    headers = [
        "mode",
        "side",
        "seconds",
        "GraphQL requests",
        "downloads",
        "peak RSS MB (tree)",
        "CPU s: client / server",
        "history rows",
    ]
    rows = []
    for found in results:
        mode = found["mode"]
        mirror = found["mirror"]
        rows.append(
            [
                mode,
                "mirror",
                mirror["seconds"],
                f"{mirror['requests']:,} ({mirror['own_requests']:,} own count)",
                mirror["downloads"],
                mb(mirror["peak_tree"]),
                f"{mirror['cpu']:.0f} / {mirror['server_cpu']:.0f}",
                mirror["rows"],
            ]
        )
        pg = found.get("mirror_pg")
        if pg:
            rows.append(
                [
                    mode,
                    "mirror into PostgreSQL",
                    pg["seconds"],
                    f"{pg['requests']:,} ({pg['own_requests']:,} own count)",
                    pg["downloads"],
                    mb(pg["peak_tree"]),
                    f"{pg['cpu']:.0f} / {pg['server_cpu']:.0f}",
                    pg["rows"],
                ]
            )
        alt = found.get("mirror_alt")
        if alt:
            rows.append(
                [
                    mode,
                    f"mirror, parquet_min_rows {args.also_min_rows}",
                    alt["seconds"],
                    f"{alt['requests']:,} ({alt['own_requests']:,} own count)",
                    alt["downloads"],
                    mb(alt["peak_tree"]),
                    f"{alt['cpu']:.0f} / {alt['server_cpu']:.0f}",
                    alt["rows"],
                ]
            )
        base = found.get("baseline")
        if base:
            core = ", ".join(f"{n} {mb(v):.0f}" for n, v in base["others"].items())
            rows.append(
                [
                    mode,
                    "wandb.Api",
                    base["seconds"],
                    f"{base['requests']:,}",
                    base["downloads"],
                    f"{mb(base['peak_tree']):.0f} (python {mb(base['main_hwm']):.0f}; {core})",
                    f"{base['cpu']:.0f} / {base['server_cpu']:.0f}",
                    base["rows"],
                ]
            )
            rows.append(
                [
                    mode,
                    "baseline / mirror",
                    f"**{base['seconds'] / mirror['seconds']:.2f}x**",
                    f"{base['requests'] / max(1, mirror['requests']):.2f}x",
                    "",
                    f"{base['peak_tree'] / max(1, mirror['peak_tree']):.2f}x",
                    "",
                    "",
                ]
            )
    print(table(headers, rows))
    print("\nServer time per request by operation (count x mean ms, the added latency included):")
    for found in results:
        for key, side in (
            ("mirror", "mirror"),
            ("mirror_alt", "mirror alt"),
            ("baseline", "wandb"),
        ):
            if key in found:
                ops = sorted(found[key]["ops"].items(), key=lambda kv: -kv[1][0])
                text = ", ".join(f"{op} {n:,} x {ms:.0f}" for op, (n, ms) in ops)
                print(f"- {found['mode']}, {side}: {text}")
    print()
    headers = ["mode", "re-sync", "seconds (own)", "% of initial", "requests", "rows", "line"]
    rows = []
    for found in results:
        initial = found["mirror"]["seconds"]
        for key, label in (("unchanged", "nothing changed"), ("changed", "1% + 1% changed")):
            sync = found[key]
            if key == "changed":
                label = f"{found['changed_runs'][0]} appended, {found['changed_runs'][1]} edited"
            rows.append(
                [
                    found["mode"],
                    label,
                    f"{sync['seconds']:.2f} ({sync['own_seconds']:.1f})",
                    f"{100 * sync['seconds'] / initial:.1f}%",
                    sync["requests"],
                    sync["rows"],
                    sync["line"].split(": ", 1)[1],
                ]
            )
    print(table(headers, rows))
    print("\nTargets:")
    resync_budget = math.ceil(runs / args.listing_page) + 3
    for found in results:
        mode = found["mode"]
        mirror = found["mirror"]
        base = found.get("baseline")
        checks = []
        if base:
            speedup = base["seconds"] / mirror["seconds"]
            checks.append(
                (
                    f"initial sync >= {TARGET_SPEEDUP:g}x faster ({speedup:.2f}x)",
                    speedup >= TARGET_SPEEDUP,
                )
            )
            if base["rows"] != mirror["rows"]:
                checks.append(
                    (f"same rows (mirror {mirror['rows']:,}, baseline {base['rows']:,})", False)
                )
        ratio = mirror["requests"] / minimum
        checks.append(
            (
                f"requests <= {TARGET_REQUEST_RATIO:g}x the minimum "
                f"({mirror['requests']:,} / {minimum:,} = {ratio:.3f}x)",
                ratio <= TARGET_REQUEST_RATIO,
            )
        )
        peak = mb(mirror["peak_tree"])
        checks.append((f"peak memory < {TARGET_RSS_MB:g} MB ({peak:.0f} MB)", peak < TARGET_RSS_MB))
        unchanged = found["unchanged"]
        share = unchanged["seconds"] / mirror["seconds"]
        checks.append(
            (
                f"re-sync (nothing changed) <= {100 * TARGET_RESYNC_FRACTION:g}% of the initial "
                f"time ({100 * share:.1f}%)",
                share <= TARGET_RESYNC_FRACTION,
            )
        )
        checks.append(
            (
                f"re-sync (nothing changed) <= ceil(runs/listing_page) + 3 = {resync_budget} "
                f"requests ({unchanged['requests']})",
                unchanged["requests"] <= resync_budget,
            )
        )
        for text, passed in checks:
            ok &= passed
            print(f"- {mode}: {text}: {verdict(passed)}")
    return ok


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline-worker":
        url, out, per_page, page_size = sys.argv[2:6]
        return baseline_worker(url, out, int(per_page), int(page_size))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--latency-ms", type=int, default=50, help="added per GraphQL request")
    parser.add_argument("--threads", type=int, default=8, help="server worker threads")
    parser.add_argument("--db-dir", type=Path, default=None, help="(bench/out/sync)")
    parser.add_argument("--modes", default="paged,parquet", help="paged, parquet or both")
    parser.add_argument("--skip-baseline", action="store_true", help="time the mirror only")
    parser.add_argument("--per-page", type=int, default=1000, help="the baseline's api.runs page")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=SyncSettings().concurrency,
        help="the mirror's [sync] setting",
    )
    parser.add_argument("--listing-page", type=int, default=1000)
    parser.add_argument("--record-batch", type=int, default=100)
    parser.add_argument("--history-page", type=int, default=1000)
    parser.add_argument("--mirror-parquet", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--parquet-min-rows", type=int, default=SyncSettings().parquet_min_rows)
    parser.add_argument("--append-steps", type=int, default=100)
    parser.add_argument(
        "--also-min-rows",
        type=int,
        default=None,
        metavar="N",
        help="in parquet mode, also time a mirror sync with parquet_min_rows = N (for information)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work copies")
    parser.add_argument(
        "--postgresql",
        metavar="URL",
        help="also sync into PostgreSQL: a URL of the server (databases wm_bench_sync_MODE are made)",
    )
    args = parser.parse_args()
    args.load_at_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())

    db_dir = args.db_dir or out_path("sync")
    db_dir.mkdir(parents=True, exist_ok=True)
    upstream = seeded(db_dir, args.runs, args.steps, args.seed)
    listed = upstream_runs(upstream)
    args.runs = len(listed)
    minimum = minimum_requests(
        [r for _n, _s, r in listed], args.listing_page, args.record_batch, args.history_page
    )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = []
    parquet_note = None
    for mode in modes:
        exports = None
        if mode == "parquet":
            if not serve_supports_parquet():
                parquet_note = (
                    "parquet mode skipped: this mirror.serve has no --parquet-export-delay yet"
                )
                print(parquet_note, flush=True)
                continue
            with tempfile.TemporaryDirectory() as logs:
                exports = exported(upstream, Path(logs))
        results.append(run_mode(mode, upstream, exports, db_dir, args))
    ok = report(results, minimum, args)
    if parquet_note:
        print(f"\n{parquet_note}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
