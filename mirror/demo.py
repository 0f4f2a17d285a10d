"""``wandb-mirror demo``: a synthetic W&B, mirrored by the real sync engine, then queried offline.

There is no W&B account here, so the demo makes its own upstream: a seeded project served by
``serve`` as a separate process on a free loopback port, W&B's GraphQL API as the mirror meets
it. The sync engine mirrors it into the default database (or ``--db``), the upstream changes the
way a project does (a new run, more history on a running run, an edited summary, a deleted run),
a second sync shows the incremental pass and what it cost, and a few offline queries follow.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import pandas  # noqa: F401 - loaded before any timing, so the figures show the queries
import requests

from mirror.config import Settings
from mirror.errors import MirrorError
from mirror.query.api import Api
from mirror.remote.auth import Credentials
from mirror.remote.client import RemoteClient
from mirror.store import migrate
from mirror.store.engine import make_engine
from mirror.store.fields import dumps, loads
from mirror.sync.cycle import Target, pull_all
from mirror.sync.pull import PullReport
from mirror.synth import generate_runs, seed_project
from mirror.synth_activity import add_run, delete_run, edit_run, log_steps

ENTITY, PROJECT = "demo", "synthetic"
RUNS, STEPS = 300, 500
SEED = 42
#: the demo's upstream accepts any key on loopback; this one only shows where a key would go
DEMO_KEY = "demo-key-not-a-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(database: Path, log: Path, timeout: float = 30.0) -> Iterator[str]:
    """``python -m mirror.serve`` over ``database`` on a free port; yields its base URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirror.serve", "--db", str(database), "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise MirrorError(f"the demo's upstream server exited: {log.read_text()[-300:]}")
            try:
                if requests.get(url + "/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise MirrorError(f"the demo's upstream server did not start; see {log}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _changes(engine, out: TextIO, runs: int, steps: int) -> None:  # noqa: ANN001
    """Change the upstream the way a project on W&B changes between two syncs."""
    nodes = [run.node for run in generate_runs(ENTITY, PROJECT, runs, steps, SEED)]
    by_name = {n["name"]: n for n in nodes}
    running = next((n["name"] for n in nodes if n["state"] == "running"), nodes[0]["name"])
    others = [n["name"] for n in nodes if n["state"] == "finished" and n["name"] != running]
    log_steps(engine, ENTITY, PROJECT, running, 200)
    out.write(f"  run {running} (running) logged 200 more steps\n")
    add_run(engine, ENTITY, PROJECT, "demo0new", 50)
    out.write("  a new run demo0new started with 50 steps\n")
    if others:
        summary = {**loads(by_name[others[0]]["summaryMetrics"]), "eval/acc": 0.999}
        edit_run(engine, ENTITY, PROJECT, others[0], summaryMetrics=dumps(summary))
        out.write(f"  the summary of {others[0]} was edited (eval/acc = 0.999)\n")
    if len(others) > 1:
        delete_run(engine, ENTITY, PROJECT, others[1])
        out.write(f"  run {others[1]} was deleted\n")


def _held_back(report: PullReport) -> str:
    return f"  deletions held back: {report.held_back}\n" if report.held_back else ""


def run_demo(database: str | None, out: TextIO, runs: int = RUNS, steps: int = STEPS) -> int:
    """Seed and serve an upstream, sync it twice around some changes, then query offline."""
    if runs < 1:
        raise MirrorError("the demo needs at least one run (--runs 1 or more)")
    path = f"{ENTITY}/{PROJECT}"
    with tempfile.TemporaryDirectory(prefix="wandb-mirror-demo-") as tmp:
        upstream_db = Path(tmp) / "upstream.db"
        upstream = make_engine(upstream_db)
        migrate.upgrade(upstream)
        started = time.perf_counter()
        seed_project(upstream, ENTITY, PROJECT, runs, steps, seed=SEED)
        took = time.perf_counter() - started
        out.write(f"upstream: seeded {path} with {runs} runs x {steps} steps in {took:.1f}s\n")
        with served(upstream_db, Path(tmp) / "serve.log") as url:
            out.write(f"upstream: served at {url}/graphql (a stand-in for W&B)\n\n")
            engine = make_engine(database)
            migrate.upgrade(engine)
            client = RemoteClient(Credentials(url, DEMO_KEY, "the demo"))
            target = [Target(ENTITY, PROJECT, True)]
            try:
                (first,) = pull_all(lambda: engine, client, Settings(), target)
                out.write(f"sync 1: {first.line()}\n{_held_back(first)}\nupstream changes:\n")
                _changes(upstream, out, runs, steps)
                (second,) = pull_all(lambda: engine, client, Settings(), target)
                out.write(f"\nsync 2 (incremental): {second.line()}\n{_held_back(second)}")
            finally:
                client.close()
                upstream.dispose()
    out.write(f"\nmirror: {engine.url} (offline from here on)\n\n")
    return _queries(engine, out, path)


def _queries(engine, out: TextIO, path: str) -> int:  # noqa: ANN001
    """A few offline queries, timed, as a user would run them."""
    api = Api(database=engine)

    def timed(label: str, fn):  # noqa: ANN001, ANN202 - local helper
        started = time.perf_counter()
        value = fn()
        out.write(f"{label}  ({(time.perf_counter() - started) * 1000:.1f} ms)\n")
        return value

    total = timed(f"count runs in {path}:", lambda: len(api.runs(path)))
    out.write(f"  {total} runs\n")
    finished = timed("count finished runs:", lambda: len(api.runs(path, {"state": "finished"})))
    out.write(f"  {finished} runs\n")

    best = timed(
        "top 5 finished runs by summary eval/acc:",
        lambda: api.runs(path, {"state": "finished"}, order="-summary_metrics.eval/acc")[:5],
    )
    for run in best:
        experiment = run.config.get("experiment_name")
        out.write(
            f"  {run.id}  {run.name:<20} {experiment:<18} eval/acc={run.summary.get('eval/acc')}\n"
        )

    query = {
        "$or": [{"config.experiment_name": "baseline-cifar"}, {"tags": "baseline"}],
        "config.optimizer": {"$in": ["adam", "adamw"]},
        "summary.loss": {"$lt": 0.5},
    }
    matched = timed(f"filter {query}:", lambda: len(api.runs(path, query)))
    out.write(f"  {matched} runs match\n")

    run = best[0] if best else api.runs(path)[0]
    frame = timed(f"history of {run.id} (every row, no sampling):", lambda: run.history())
    out.write(f"  {len(frame)} rows x {len(frame.columns)} keys\n")
    evals = run.history(keys=["eval/acc"], pandas=False)
    if evals:
        first, last = evals[0]["_step"], evals[-1]["_step"]
        out.write(f"  sparse key eval/acc: {len(evals)} rows (steps {first}..{last})\n")
    out.write(
        f'\nnext: wandb-mirror runs {path} --filter \'{{"state": "crashed"}}\' --limit 5\n'
        f"      wandb-mirror history {path}/{run.id} --keys loss --max-step 10\n"
    )
    return 0
