"""History benchmark: full reads against Parquet, streaming memory, and bytes on disk.

Three questions, each against the baseline a user would otherwise reach for:

1. ``run.history(pandas=True)`` of a 200,000-step x 20-key run, against reading the same rows
   back from a Parquet file with pyarrow. Target: within 10x of Parquet.
2. ``run.scan_history()`` over a 1,000,000-step run, in a child process that does nothing else,
   so its peak RSS (``ru_maxrss``) is the scan's. Target: under 200 MB above the child's baseline
   after imports. Rows per second too.
3. Bytes on disk per history row of the 200,000-step run: the chunk blobs alone and the whole
   database file after VACUUM, against the same rows as gzip-compressed JSON lines (and Parquet).

Usage: ``.venv/bin/python bench/bench_history.py [--steps 200000] [--scan-steps 1000000]``.
Exits non-zero when a target fails.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    fixture_ready,
    fresh_database,
    machine,
    mark_fixture,
    out_path,
    table,
    time_ms,
    verdict,
)

ENTITY, PROJECT, RUN = "bench", "history", "longrun"
BATCH = 100_000  # rows handed to append_history at once (a multiple of the chunk size)

#: the 20 keys of the read benchmark: W&B's own three, dense metrics, two ints, two sparse evals
READ_KEYS = [
    "_step",
    "_runtime",
    "_timestamp",
    "epoch",
    "samples_seen",
    "train/loss",
    "train/acc",
    "train/perplexity",
    "lr",
    "grad_norm",
    "weight_norm",
    "tokens_per_s",
    "batch_time",
    "data_time",
    "loss_scale",
    "param_norm/attn",
    "param_norm/mlp",
    "momentum",
    "val/loss",
    "val/acc",
]
#: the keys of the long streaming run
SCAN_KEYS = ["_step", "_runtime", "train/loss", "train/acc", "lr", "grad_norm", "val/loss"]
EVAL_EVERY = 100


def history_rows(steps: int, keys: list[str], seed: int = 0) -> Iterator[dict[str, Any]]:
    """Deterministic training-like rows: noisy decaying losses, a stepped schedule, sparse evals.

    Values are float64 noise where real metrics are noisy (so compression is not flattered) and
    regular where real ones are regular (schedules, counters, timestamps).
    """
    rng = np.random.default_rng(seed)
    for start in range(0, steps, 10_000):
        n = min(10_000, steps - start)
        step = np.arange(start, start + n)
        t = step / max(1, steps)
        noise = rng.standard_normal((len(keys), n))
        cols: dict[str, list[Any]] = {}
        for i, key in enumerate(keys):
            if key == "_step":
                cols[key] = step.tolist()
            elif key == "_runtime":
                cols[key] = (step * 0.25 + np.abs(noise[i]) * 0.01).tolist()
            elif key == "_timestamp":
                cols[key] = (1.7e9 + step * 0.25 + np.abs(noise[i]) * 0.01).tolist()
            elif key == "epoch":
                cols[key] = (step // 5_000).tolist()
            elif key == "samples_seen":
                cols[key] = (step * 256).tolist()
            elif key == "lr":
                cols[key] = (3e-4 * 0.5 ** (step // 20_000)).tolist()
            elif key == "loss_scale":
                cols[key] = (2.0 ** (16 - (step // 50_000))).tolist()
            elif key == "momentum":
                cols[key] = np.full(n, 0.9).tolist()
            else:
                base = 2.5 * np.exp(-3 * t) + 0.1
                cols[key] = (base * (1 + 0.05 * noise[i])).tolist()
        dense = [k for k in keys if not k.startswith("val/")]
        sparse = [k for k in keys if k.startswith("val/")]
        for j in range(n):
            row = {k: cols[k][j] for k in dense}
            if (start + j) % EVAL_EVERY == 0:
                for k in sparse:
                    row[k] = cols[k][j]
            yield row


def seed_history(path: Path, steps: int, keys: list[str]) -> None:
    """One run holding ``steps`` rows, written through the store's own ``append_history``."""
    from mirror.store import migrate

    params = {"steps": steps, "keys": keys, "version": 1, "schema": migrate.head_revision()}
    if fixture_ready(path, params):
        return
    from mirror.store.engine import write_transaction
    from mirror.store.upsert import append_history, upsert_runs

    print(f"  seeding {steps:,} steps x {len(keys)} keys into {path.name} ...", flush=True)
    started = time.perf_counter()
    engine = fresh_database(path)
    node = {
        "name": RUN,
        "displayName": "long run",
        "state": "finished",
        "createdAt": "2024-01-01T00:00:00",
        "historyLineCount": steps,
        "historyKeys": {"lastStep": steps - 1},
    }
    with write_transaction(engine) as conn:
        run_id = upsert_runs(conn, ENTITY, PROJECT, [node])[RUN]
        batch: list[dict[str, Any]] = []
        for row in history_rows(steps, keys):
            batch.append(row)
            if len(batch) == BATCH:
                append_history(conn, run_id, batch)
                batch = []
        if batch:
            append_history(conn, run_id, batch)
    engine.dispose()
    mark_fixture(path, params)
    print(f"  seeded in {time.perf_counter() - started:.1f} s", flush=True)


def write_parquet(path: Path, steps: int, keys: list[str]) -> None:
    """The baseline file: the same rows, written once with pyarrow's defaults."""
    params = {"steps": steps, "keys": keys, "version": 1}
    if fixture_ready(path, params):
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(history_rows(steps, keys))), path)
    mark_fixture(path, params)


def _open_run(db: Path) -> Any:
    from mirror import Api

    return Api(database=str(db)).run(f"{ENTITY}/{PROJECT}/{RUN}")


def bench_read(db: Path, parquet: Path, steps: int, repeat: int) -> dict[str, Any]:
    """Median full-read times of the mirror and Parquet, and a check that both read the same."""
    import pandas as pd
    import pyarrow.parquet as pq

    run = _open_run(db)
    mirror_ms, frame = time_ms(lambda: run.history(pandas=True), repeat)
    parquet_ms, expected = time_ms(lambda: pq.read_table(parquet).to_pandas(), repeat)
    same = True
    try:
        pd.testing.assert_frame_equal(frame[list(expected.columns)], expected, check_dtype=False)
    except AssertionError as exc:
        same = False
        print(f"  WARNING: the mirror's frame differs from Parquet's: {exc}")
    if frame.shape != expected.shape:
        same = False
        print(f"  WARNING: shapes differ: mirror {frame.shape}, parquet {expected.shape}")
    rows_ms, rows = time_ms(lambda: run.history(pandas=False), max(1, repeat // 2))
    return {
        "rows": len(frame),
        "keys": frame.shape[1],
        "mirror_ms": mirror_ms,
        "parquet_ms": parquet_ms,
        "ratio": mirror_ms / parquet_ms,
        "same": same and len(rows) == steps,
        "dicts_ms": rows_ms,
    }


def storage(db: Path, parquet: Path, steps: int, keys: list[str]) -> dict[str, Any]:
    """Bytes per row: chunk blobs, the whole file after VACUUM, gzip JSON lines, Parquet."""
    with sqlite3.connect(db) as conn:
        blobs = conn.execute(
            "SELECT SUM(LENGTH(data)), COUNT(*) FROM history_chunks WHERE stream = 'history'"
        ).fetchone()
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    file_bytes = db.stat().st_size
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        file_bytes += wal.stat().st_size
    jsonl = gzip.compress(
        "".join(json.dumps(row) + "\n" for row in history_rows(steps, keys)).encode(),
        compresslevel=6,
    )
    raw_json = sum(len(json.dumps(row)) + 1 for row in history_rows(steps, keys))
    return {
        "chunks": blobs[1],
        "blob_bytes": blobs[0],
        "file_bytes": file_bytes,
        "jsonl_gz_bytes": len(jsonl),
        "jsonl_bytes": raw_json,
        "parquet_bytes": parquet.stat().st_size,
    }


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure in kB (``VmRSS`` now, ``VmHWM`` the peak of this image)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child_scan(db: Path) -> None:
    """In a fresh process: open the run, note the peak RSS so far, scan everything, report."""
    run = _open_run(db)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    count = 0
    for _row in run.scan_history():
        count += 1
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "rows": count,
                "seconds": seconds,
                "baseline_kb": baseline_kb,
                "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "hwm_kb": _status_kb("VmHWM"),
            }
        )
    )


#: Linux keeps ``ru_maxrss`` across fork and exec, so a child forked straight from this (large)
#: process would report this process's peak. A small launcher in between starts the scan from a
#: process that is only a few MB, so the scan's ``ru_maxrss`` is its own.
_LAUNCH = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def bench_scan(db: Path) -> dict[str, Any]:
    """Run the scan in a clean grandchild so nothing this process did inflates its peak RSS."""
    command = [sys.executable, os.path.abspath(__file__), "--child-scan", str(db)]
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCH, *command], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Seed (or reuse) the fixtures, measure, print the tables, exit 1 if a target fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200_000, help="rows of the read benchmark")
    parser.add_argument("--scan-steps", type=int, default=1_000_000, help="rows of the scan")
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions (median)")
    parser.add_argument("--child-scan", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_scan:
        child_scan(args.child_scan)
        return 0

    print(f"machine: {machine()}")
    read_db = out_path(f"history_{args.steps}.db")
    scan_db = out_path(f"scan_{args.scan_steps}.db")
    parquet = out_path(f"history_{args.steps}.parquet")
    seed_history(read_db, args.steps, READ_KEYS)
    write_parquet(parquet, args.steps, READ_KEYS)
    seed_history(scan_db, args.scan_steps, SCAN_KEYS)

    read = bench_read(read_db, parquet, args.steps, args.repeat)
    print(f"\n## history read: {read['rows']:,} steps x {read['keys']} keys\n")
    print(
        table(
            ["read", "ms", "vs parquet"],
            [
                ["run.history(pandas=True)", read["mirror_ms"], f"{read['ratio']:.2f}x"],
                ["pq.read_table().to_pandas()", read["parquet_ms"], "1.00x"],
                [
                    "run.history(pandas=False) (dicts)",
                    read["dicts_ms"],
                    f"{read['dicts_ms'] / read['parquet_ms']:.2f}x",
                ],
            ],
        )
    )
    print(f"same rows and values as Parquet: {read['same']}")

    scan = bench_scan(scan_db)
    peak_mb = scan["peak_kb"] / 1024
    base_mb = scan["baseline_kb"] / 1024
    growth_mb = peak_mb - base_mb
    rate = scan["rows"] / scan["seconds"]
    print(f"\n## scan_history: {scan['rows']:,} steps x {len(SCAN_KEYS)} keys (child process)\n")
    print(
        table(
            ["measure", "value"],
            [
                ["baseline RSS after imports (MB)", base_mb],
                ["peak RSS during scan (MB)", peak_mb],
                ["peak growth over baseline (MB)", growth_mb],
                ["VmHWM of the scanning process (MB)", scan["hwm_kb"] / 1024],
                ["scan time (s)", scan["seconds"]],
                ["rows/s", f"{rate:,.0f}"],
            ],
        )
    )

    disk = storage(read_db, parquet, args.steps, READ_KEYS)
    n = args.steps
    print(f"\n## storage: {n:,} steps x {len(READ_KEYS)} keys\n")
    print(
        table(
            ["format", "bytes", "bytes/row", "vs jsonl.gz"],
            [
                [
                    f"mirror chunk blobs ({disk['chunks']} chunks)",
                    disk["blob_bytes"],
                    disk["blob_bytes"] / n,
                    f"{disk['blob_bytes'] / disk['jsonl_gz_bytes']:.2f}x",
                ],
                [
                    "mirror DB file after VACUUM",
                    disk["file_bytes"],
                    disk["file_bytes"] / n,
                    f"{disk['file_bytes'] / disk['jsonl_gz_bytes']:.2f}x",
                ],
                [
                    "JSON lines, gzip -6",
                    disk["jsonl_gz_bytes"],
                    disk["jsonl_gz_bytes"] / n,
                    "1.00x",
                ],
                [
                    "JSON lines, uncompressed",
                    disk["jsonl_bytes"],
                    disk["jsonl_bytes"] / n,
                    f"{disk['jsonl_bytes'] / disk['jsonl_gz_bytes']:.2f}x",
                ],
                [
                    "Parquet (pyarrow defaults)",
                    disk["parquet_bytes"],
                    disk["parquet_bytes"] / n,
                    f"{disk['parquet_bytes'] / disk['jsonl_gz_bytes']:.2f}x",
                ],
            ],
        )
    )

    targets = [
        (f"history read within 10x of Parquet ({read['ratio']:.2f}x)", read["ratio"] <= 10),
        ("history read returns the same data as Parquet", read["same"]),
        (f"scan_history peak growth under 200 MB ({growth_mb:.0f} MB)", growth_mb < 200),
        (f"scan_history saw every row ({scan['rows']:,})", scan["rows"] == args.scan_steps),
    ]
    print("\n## targets\n")
    for label, ok in targets:
        print(f"{verdict(ok)}  {label}")
    return 0 if all(ok for _, ok in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
