"""``wandb-mirror demo``: seed a synthetic project, then look at it the way a user would, offline."""

from __future__ import annotations

import time
from typing import TextIO

import pandas  # noqa: F401 - loaded before any timing, so the figures show the queries

from mirror.errors import MirrorError
from mirror.query.api import Api
from mirror.store import migrate
from mirror.store.engine import make_engine
from mirror.store.read import find_project
from mirror.synth import seed_project

ENTITY, PROJECT = "demo", "synthetic"
RUNS, STEPS = 300, 500


def run_demo(database: str | None, out: TextIO, runs: int = RUNS, steps: int = STEPS) -> int:
    """Seed ``demo/synthetic`` unless it is already there, then run a few offline queries."""
    if runs < 1:
        raise MirrorError("the demo needs at least one run (--runs 1 or more)")
    engine = make_engine(database)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        seeded = find_project(conn, ENTITY, PROJECT) is not None
    if not seeded:
        started = time.perf_counter()
        seed_project(engine, ENTITY, PROJECT, runs, steps, seed=42)
        took = time.perf_counter() - started
        out.write(f"seeded {ENTITY}/{PROJECT}: {runs} runs x {steps} steps in {took:.1f}s\n")
    out.write(f"mirror: {engine.url}\n\n")
    api = Api(database=engine)
    path = f"{ENTITY}/{PROJECT}"

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
