"""Server benchmark: requests per second ``wandb-mirror serve`` sustains with two clients.

Three workloads, each driven by two concurrent clients (threads, one ``requests.Session`` each,
keep-alive) for a fixed time against a real server process:

* ``Runs`` pages of 50 full runs (config, summary, system metrics, historyKeys),
* ``Runs`` pages of 1,000 full runs,
* ``HistoryPage`` windows of 1,000 rows of a long run,

then the same through the official ``wandb`` client (``api.runs(..., lazy=False)`` iterated,
``run.scan_history(page_size=1000)``), which adds wandb-core's own parsing and IPC.

Usage: ``.venv/bin/python bench/bench_serve.py [--runs 2000] [--steps 50] [--history 50000]
[--seconds 5]``. The seeded database is kept under ``bench/out/`` and reused.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from common import fixture_ready, fresh_database, machine, mark_fixture, out_path, table

from mirror.serve.paging import encode_cursor
from mirror.store import migrate
from mirror.synth import seed_project

ENTITY, PROJECT, LONG = "bench", "serve", "serve-history"
DOCS = Path(__file__).resolve().parents[1] / "tests" / "data" / "wandb" / "sdk-queries"
RUNS_FULL = (DOCS / "sdk_head_Runs_full.graphql").read_text()
HISTORY_PAGE = (DOCS / "sdk_v0.25_HistoryPage.graphql").read_text()
KEY = "bench" + "0" * 35


def seeded(runs: int, steps: int, history: int) -> Path:
    """A project of ``runs`` short runs and one of two ``history``-step runs, reused if there."""
    path = out_path("serve.db")
    params = {"runs": runs, "steps": steps, "history": history, "v": 1}
    params["schema"] = migrate.head_revision()
    if not fixture_ready(path, params):
        engine = fresh_database(path)
        seed_project(engine, ENTITY, PROJECT, runs, steps, seed=11)
        seed_project(engine, ENTITY, LONG, 2, history, seed=12)
        engine.dispose()
        mark_fixture(path, params)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(db: Path, threads: int) -> Iterator[str]:
    """``python -m mirror.serve`` on a free port, quiet, until the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "mirror.serve", "--db", str(db), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                requests.get(url + "/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def drive(
    clients: int, seconds: float, request: Callable[[Any, random.Random], int]
) -> dict[str, float]:
    """Run ``request(session, rng)`` in ``clients`` threads for ``seconds``; rates and latency.

    ``request`` returns the bytes received (or the rows, for client-side workloads).
    """
    latencies: list[float] = []
    amounts: list[int] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        rng = random.Random(index)
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                amount = request(session, rng)
                elapsed = time.perf_counter() - began
                with lock:
                    latencies.append(elapsed)
                    amounts.append(amount)

    began = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "rate": len(latencies) / wall,
        "amount_rate": sum(amounts) / wall,
        "p50": statistics.median(ordered) * 1000,
        "p95": ordered[int(0.95 * (len(ordered) - 1))] * 1000,
    }


def graphql(url: str, query: str, variables: Callable[[random.Random], dict]) -> Callable:
    """A raw HTTP workload: POST the document, check the answer, count its bytes."""

    def request(session: requests.Session, rng: random.Random) -> int:
        response = session.post(
            url + "/graphql", json={"query": query, "variables": variables(rng)}, timeout=120
        )
        if response.status_code != 200 or b'"errors"' in response.content[:20]:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
        return len(response.content)

    return request


def runs_page(runs: int, per_page: int) -> Callable[[random.Random], dict]:
    def variables(rng: random.Random) -> dict:
        start = rng.randrange(0, max(1, runs - per_page))
        cursor = encode_cursor(start - 1) if start else None
        base = {"entity": ENTITY, "project": PROJECT, "order": "+created_at", "filters": "{}"}
        return {**base, "perPage": per_page, "cursor": cursor}

    return variables


def history_window(history: int, run: str) -> Callable[[random.Random], dict]:
    def variables(rng: random.Random) -> dict:
        low = rng.randrange(0, max(1, history - 1000))
        base = {"entity": ENTITY, "project": LONG, "run": run, "pageSize": 1000}
        return {**base, "minStep": low, "maxStep": low + 1000}

    return variables


def first_run(url: str, project: str) -> tuple[str, int]:
    body = {"query": RUNS_FULL, "variables": {"entity": ENTITY, "project": project, "perPage": 1}}
    node = requests.post(url + "/graphql", json=body, timeout=60).json()["data"]["project"]
    node = node["runs"]["edges"][0]["node"]
    return node["name"], node["historyLineCount"]


def wandb_workloads(url: str, runs: int) -> list[tuple[str, Callable]]:
    """The same three workloads through the official client (one ``wandb.Api`` per thread)."""
    home = tempfile.mkdtemp(prefix="bench-wandb-")
    os.environ.update(HOME=home, WANDB_DIR=home, WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")
    import wandb

    apis: dict[int, Any] = {}

    def api() -> Any:
        ident = threading.get_ident()
        if ident not in apis:
            apis[ident] = wandb.Api(api_key=KEY, overrides={"base_url": url}, timeout=120)
        return apis[ident]

    def listing(per_page: int) -> Callable:
        def request(_session: requests.Session, _rng: random.Random) -> int:
            client = api()
            client.flush()
            listed = client.runs(f"{ENTITY}/{PROJECT}", per_page=per_page, lazy=False)
            count = 0
            for _ in listed:
                count += 1
                if count == per_page:
                    break
            return count

        return request

    name, _ = first_run(url, LONG)

    def scan(_session: requests.Session, _rng: random.Random) -> int:
        run = api().run(f"{ENTITY}/{LONG}/{name}")
        rows = 0
        for _ in run.scan_history(page_size=1000, min_step=0, max_step=5000):
            rows += 1
        return rows

    return [
        ("Runs page of 50 full runs", listing(50)),
        ("Runs page of 1,000 full runs", listing(1000)),
        ("scan_history, 5 pages of 1,000 rows", scan),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=50, help="history steps of the listed runs")
    parser.add_argument("--history", type=int, default=50_000, help="steps of the long runs")
    parser.add_argument("--seconds", type=float, default=5.0, help="per workload")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="server worker threads")
    args = parser.parse_args()

    db = seeded(args.runs, args.steps, args.history)
    rows = []
    with server(db, args.threads) as url:
        name, _ = first_run(url, LONG)
        raw = [
            ("Runs page of 50 full runs", RUNS_FULL, runs_page(args.runs, 50)),
            ("Runs page of 1,000 full runs", RUNS_FULL, runs_page(args.runs, 1000)),
            ("HistoryPage of 1,000 rows", HISTORY_PAGE, history_window(args.history, name)),
        ]
        for label, query, variables in raw:
            stats = drive(args.clients, args.seconds, graphql(url, query, variables))
            mb = stats["amount_rate"] / 1e6
            rows.append(
                [label, "requests", stats["rate"], f"{mb:.1f} MB/s", stats["p50"], stats["p95"]]
            )
        for label, request in wandb_workloads(url, args.runs):
            stats = drive(args.clients, args.seconds, request)
            per_s = f"{stats['amount_rate']:,.0f} {'rows' if 'scan' in label else 'runs'}/s"
            rows.append([label, "wandb 0.31", stats["rate"], per_s, stats["p50"], stats["p95"]])
    print(f"\nwandb-mirror serve, {args.clients} concurrent clients, {args.seconds:g} s each")
    print(
        f"{args.runs} runs x {args.steps} steps; long runs of {args.history} steps; {machine()}\n"
    )
    headers = ["workload", "client", "ops/s", "throughput", "p50 ms", "p95 ms"]
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
