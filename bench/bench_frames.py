"""DataFrames across runs: ``runs.histories()`` against calling ``run.history()`` run by run.

The baseline is what W&B's docs teach and what ``wandb``'s own ``Runs.histories`` does: iterate
the listing, call ``run.history()`` for each run, tag its rows with ``run_id`` and concatenate.
Both sides produce the same frame (checked), from the same warm database, with the listing read
fresh each time (``api.flush()``). Target: ``histories()`` at least 3x faster.

Usage: ``.venv/bin/python bench/bench_frames.py [--runs 100] [--steps 10000] [--repeat 5]``.
Exits non-zero when the target fails.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
from common import fixture_ready, fresh_database, machine, mark_fixture, out_path, table, time_ms

from mirror import Api
from mirror.store.migrate import head_revision
from mirror.synth import seed_project

ENTITY, PROJECT = "bench", "frames"
TARGET = 3.0


def fixture(runs: int, steps: int) -> str:
    """The seeded database, written once per parameter set."""
    path = out_path(f"frames-{runs}x{steps}.db")
    params = {"runs": runs, "steps": steps, "schema": head_revision()}
    if not fixture_ready(path, params):
        print(f"seeding {runs} runs x {steps} steps into {path} ...", file=sys.stderr)
        engine = fresh_database(path)
        seed_project(engine, ENTITY, PROJECT, runs, steps, seed=11)
        engine.dispose()
        mark_fixture(path, params)
    return str(path)


def per_run(api: Api) -> pd.DataFrame:
    """The loop users write today (and wandb's ``Runs.histories`` runs)."""
    api.flush()
    parts = []
    for run in api.runs(f"{ENTITY}/{PROJECT}"):
        frame = run.history()
        if len(frame):
            parts.append(frame.assign(run_id=run.id))
    combined = pd.concat(parts, ignore_index=True)
    return combined[sorted(combined.columns)]


def at_once(api: Api) -> pd.DataFrame:
    api.flush()
    return api.runs(f"{ENTITY}/{PROJECT}").histories()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    api = Api(database=fixture(args.runs, args.steps))
    loop_ms, expected = time_ms(lambda: per_run(api), repeat=args.repeat)
    once_ms, got = time_ms(lambda: at_once(api), repeat=args.repeat)
    pd.testing.assert_frame_equal(got, expected)
    ratio = loop_ms / once_ms
    print(f"Machine: {machine()}. {len(got):,} rows x {got.shape[1]} columns, same frame.\n")
    print(
        table(
            ["call", "ms (median)", "rows/s"],
            [
                ["`run.history()` per run + concat", loop_ms, f"{len(got) / loop_ms * 1000:,.0f}"],
                ["`runs.histories()`", once_ms, f"{len(got) / once_ms * 1000:,.0f}"],
            ],
        )
    )
    ok = ratio >= TARGET
    print(
        f"\nhistories() is {ratio:.2f}x faster (target >= {TARGET:g}x): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
