"""Storage benchmark: bytes on disk against the export, and write speed against bare inserts.

Three questions, each against the baseline a user would otherwise reach for:

1. **Size.** Two synthetic projects, written through the store (``seed_project``): a
   metadata-heavy one (20,000 runs x 10 steps) and a history-heavy one (2,000 runs x 100 steps).
   The database file after ``VACUUM`` is compared with the same project exported as JSON Lines
   (``export --format jsonl``), raw and gzip -6 (the export's files in one gzip stream, as
   ``tar | gzip -6`` would pack them). Targets: at most 2.5x the gzip export (metadata-heavy)
   and 1.5x (history-heavy). The split by table and index comes from SQLite's ``dbstat``.
2. **Run ingest.** 100,000 runs without history (``--ingest-steps 1`` gives them the summaries
   of one logged step, without writing it), in batches of 1,000, through the store
   (``upsert_runs`` in one write transaction a batch, then what the store does after a bulk
   write) and, in the same process, the same runs' JSON through a bare ``executemany`` into a
   plain table (the JSON is serialised before timing: the bare side is the database's own insert
   speed; the time ``json.dumps`` takes is shown beside it). Target: the store at most 8x the
   bare insert. CPU seconds of each side and load averages are printed too: on a shared
   machine they tell a slower store from a busier machine.
3. **History ingest.** 1,000,000 history rows (100 runs x 10,000 steps of the synthetic
   generator) through ``append_history``, against writing the same rows to Parquet with pyarrow
   (``Table.from_pylist`` + ``write_table``, defaults). Rows per second, for information.

Usage: ``.venv/bin/python bench/bench_storage.py [--only size,ingest,history] [--scale 1.0]``.
``--scale 0.1`` gives a quick check of the script itself. Exits non-zero when a target fails.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import fresh_database, machine, out_path, report_targets, table

ENTITY = "bench"
SEED = 7
BATCH = 1_000  # runs per write transaction on both sides of the ingest comparison
MB = 1e6


@dataclass(frozen=True)
class Shape:
    """One project shape of the size comparison, with its target (DB / gzip export)."""

    name: str
    runs: int
    steps: int
    target: float


SHAPES = (
    Shape("metadata-heavy", 20_000, 10, 2.5),
    Shape("history-heavy", 2_000, 100, 1.5),
)


def vacuumed_size(path: Path) -> int:
    """The file's size once its WAL is folded in and free pages are dropped."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def dbstat(path: Path) -> list[tuple[str, str, int]]:
    """``(object, table it belongs to, bytes)`` for every table and index, largest first."""
    with sqlite3.connect(path) as conn:
        owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master"))
        sizes = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    found = [(name, owner.get(name, name), int(size)) for name, size in sizes]
    return sorted(found, key=lambda item: -item[2])


def export_sizes(root: Path) -> dict[str, int]:
    """Raw and gzip -6 bytes of an export directory, all of it and by part."""
    sizes = {"raw": 0, "gzip": 0, "runs_gzip": 0, "rows_gzip": 0}
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    runs_file = root / "runs.jsonl"
    gz = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        sizes["raw"] += len(data)
        gz += len(packer.compress(data))
    gz += len(packer.flush())
    sizes["gzip"] = gz
    sizes["runs_gzip"] = len(_gzip_stream([runs_file]))
    rows = sorted(p for p in root.rglob("*.jsonl") if p != runs_file)
    sizes["rows_gzip"] = len(_gzip_stream(rows))
    return sizes


def _gzip_stream(paths: list[Path]) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = [packer.compress(p.read_bytes()) for p in paths]
    out.append(packer.flush())
    return b"".join(out)


def measure_size(shape: Shape, scale: float) -> tuple[list[list[Any]], list[tuple[str, bool]]]:
    """Seed one shape, export it, and compare; returns table rows and targets."""
    from mirror.exchange import export_project
    from mirror.synth import seed_project

    runs = max(10, int(shape.runs * scale))
    path = out_path(f"storage_{shape.name}_{runs}.db")
    engine = fresh_database(path)
    started = time.perf_counter()
    seed_project(engine, ENTITY, shape.name, runs, shape.steps, seed=SEED)
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        export_project(engine, ENTITY, shape.name, "jsonl", Path(tmp) / "export")
        sizes = export_sizes(Path(tmp) / "export")
    engine.dispose()
    db = vacuumed_size(path)
    objects = dbstat(path)
    by_table: dict[str, int] = {}
    for _name, owner, size in objects:
        by_table[owner] = by_table.get(owner, 0) + size
    metadata = sum(v for k, v in by_table.items() if k not in ("history_chunks",))
    chunks = by_table.get("history_chunks", 0)
    print(f"\n### {shape.name}: {runs:,} runs x {shape.steps} steps, seeded in {seconds:.1f} s\n")
    print(
        table(
            ["object", "table", "MB", "share"],
            [[n, o, s / MB, f"{s / db:.1%}"] for n, o, s in objects if s >= db * 0.001],
        )
    )
    ratio = db / sizes["gzip"]
    rows = [
        [shape.name, "DB file after VACUUM", db / MB, db / runs, ""],
        [
            shape.name,
            "jsonl export, raw",
            sizes["raw"] / MB,
            sizes["raw"] / runs,
            db / sizes["raw"],
        ],
        [shape.name, "jsonl export, gzip -6", sizes["gzip"] / MB, sizes["gzip"] / runs, ratio],
        [
            shape.name,
            "run metadata (all but history_chunks) vs runs.jsonl gzip",
            metadata / MB,
            metadata / runs,
            metadata / sizes["runs_gzip"],
        ],
        [
            shape.name,
            "history_chunks vs history + events gzip",
            chunks / MB,
            chunks / runs,
            chunks / sizes["rows_gzip"] if sizes["rows_gzip"] else 0.0,
        ],
    ]
    label = f"{shape.name}: DB <= {shape.target}x the gzip export ({ratio:.2f}x)"
    return rows, [(label, ratio <= shape.target)]


def _runs_in_batches(count: int, steps: int) -> Iterator[list[dict[str, Any]]]:
    from mirror.synth import generate_runs

    batch: list[dict[str, Any]] = []
    for run in generate_runs(ENTITY, "ingest", count, steps, SEED):
        batch.append(run.node)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _bare_table(path: Path) -> sqlite3.Connection:
    """A plain table in a fresh file, with the mirror's own durability settings."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, doc TEXT NOT NULL)")
    return conn


@dataclass
class _Clock:
    """Wall and CPU seconds of one side of a comparison, summed over its timed stretches.

    The machine is shared: other jobs stretch the wall time of whichever side they overlap,
    so the CPU time this process spent (``time.process_time``, both sides are in-process work)
    is printed beside it as the steadier figure.
    """

    wall: float = 0.0
    cpu: float = 0.0

    def add(self, wall_started: float, cpu_started: float) -> None:
        self.wall += time.perf_counter() - wall_started
        self.cpu += time.process_time() - cpu_started


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure_ingest(count: int, steps: int) -> tuple[list[list[Any]], list[tuple[str, bool]]]:
    """``count`` runs through the store and through a bare executemany, batch by batch."""
    from mirror.store.engine import analyze_if_stale, write_transaction
    from mirror.store.fields import dumps
    from mirror.store.upsert import upsert_runs

    engine = fresh_database(out_path("storage_ingest.db"))
    bare = _bare_table(out_path("storage_ingest_bare.db"))
    store, plain, dump, finish = _Clock(), _Clock(), _Clock(), _Clock()
    done = 0
    print(f"  ingest starts, {_load()}", flush=True)
    for nodes in _runs_in_batches(count, steps):
        started, cpu = time.perf_counter(), time.process_time()
        texts = [(dumps(node),) for node in nodes]
        dump.add(started, cpu)
        started, cpu = time.perf_counter(), time.process_time()
        with write_transaction(engine) as conn:
            upsert_runs(conn, ENTITY, "ingest", nodes)
        store.add(started, cpu)
        started, cpu = time.perf_counter(), time.process_time()
        bare.execute("BEGIN IMMEDIATE")
        bare.executemany("INSERT INTO runs (doc) VALUES (?)", texts)
        bare.execute("COMMIT")
        plain.add(started, cpu)
        done += len(nodes)
        if done % 20_000 == 0:
            print(
                f"  ingest: {done:,} runs, store {store.wall:.1f} s, bare {plain.wall:.1f} s,"
                f" {_load()}",
                flush=True,
            )
    started, cpu = time.perf_counter(), time.process_time()
    analyze_if_stale(engine)
    finish.add(started, cpu)
    store.wall += finish.wall
    store.cpu += finish.cpu
    print(f"  ingest ends, {_load()}", flush=True)
    bare.close()
    engine.dispose()
    ratio = store.wall / plain.wall
    with_dumps = plain.wall + dump.wall
    rows = [
        ["store: upsert_runs + analyze_if_stale", done, store.wall, store.cpu, ratio],
        ["  of which analyze_if_stale", "", finish.wall, finish.cpu, ""],
        ["bare executemany of the JSON text", done, plain.wall, plain.cpu, 1.0],
        ["bare, json.dumps of each node included", done, with_dumps, plain.cpu + dump.cpu, ""],
        ["store / bare in CPU seconds", "", "", "", store.cpu / plain.cpu],
        ["store / bare with json.dumps", "", "", "", store.wall / with_dumps],
    ]
    return rows, [(f"run ingest: store <= 8x the bare insert ({ratio:.2f}x)", ratio <= 8)]


def measure_history(total: int) -> list[list[Any]]:
    """``total`` history rows through ``append_history`` and through pyarrow's Parquet writer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mirror.store.engine import write_transaction
    from mirror.store.upsert import append_history, upsert_runs
    from mirror.synth import generate_runs

    per_run = min(10_000, total)
    engine = fresh_database(out_path("storage_history.db"))
    parquet_dir = out_path("storage_history_parquet")
    parquet_dir.mkdir(exist_ok=True)
    store_s = parquet_s = 0.0
    rows_done = 0
    for run in generate_runs(ENTITY, "history", total, per_run, SEED):
        if rows_done >= total:
            break
        rows = list(run.history)[: total - rows_done]
        if not rows:
            continue
        with write_transaction(engine) as conn:
            run_id = upsert_runs(conn, ENTITY, "history", [run.node])[run.node["name"]]
        started = time.perf_counter()
        with write_transaction(engine) as conn:
            append_history(conn, run_id, rows)
        store_s += time.perf_counter() - started
        started = time.perf_counter()
        pq.write_table(pa.Table.from_pylist(rows), parquet_dir / f"{run.node['name']}.parquet")
        parquet_s += time.perf_counter() - started
        rows_done += len(rows)
    engine.dispose()
    return [
        ["append_history", rows_done, store_s, rows_done / store_s, store_s / parquet_s],
        ["pyarrow from_pylist + write_table", rows_done, parquet_s, rows_done / parquet_s, 1.0],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="size,ingest,history", help="sections to run")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full sizes")
    parser.add_argument("--ingest-runs", type=int, default=100_000)
    parser.add_argument("--ingest-steps", type=int, default=0, help="steps the summaries hold")
    parser.add_argument("--history-rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))
    print(f"machine: {machine()}")
    from mirror.store import migrate

    print(f"schema {migrate.head_revision()}")
    targets: list[tuple[str, bool]] = []
    if "size" in sections:
        size_rows = []
        for shape in SHAPES:
            rows, found = measure_size(shape, args.scale)
            size_rows += rows
            targets += found
        print("\n## size\n")
        print(table(["shape", "what", "MB", "bytes / run", "ratio"], size_rows))
    if "ingest" in sections:
        count = max(BATCH, int(args.ingest_runs * args.scale))
        rows, found = measure_ingest(count, args.ingest_steps)
        targets += found
        print("\n## run ingest\n")
        print(table(["side", "runs", "seconds", "CPU seconds", "vs bare"], rows))
    if "history" in sections:
        rows = measure_history(max(10_000, int(args.history_rows * args.scale)))
        print("\n## history ingest\n")
        print(table(["side", "rows", "seconds", "rows / s", "vs Parquet"], rows))
    return report_targets(targets)


if __name__ == "__main__":
    sys.exit(main())
