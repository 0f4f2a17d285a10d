"""Helpers shared by the benchmark scripts: timing, tables, seeded-file reuse, machine facts.

The benchmarks are run by hand, on a machine other people share, so every figure is the median
of several warm repetitions, and every expensive fixture (a seeded database, a Parquet file) is
written once under ``bench/out/`` and reused while its parameters stay the same.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import requests

OUT = Path(__file__).resolve().parent / "out"


def out_path(name: str) -> Path:
    """A file under ``bench/out/`` (git-ignored), creating the folder."""
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT / name


def time_ms(fn: Callable[[], Any], repeat: int = 7, warmup: int = 1) -> tuple[float, Any]:
    """Median wall time of ``fn()`` in milliseconds over ``repeat`` warm runs, and its last result.

    The median, not the mean, because other jobs on a shared two-core machine add outliers.
    A garbage collection before each run keeps one run's garbage out of the next one's time.
    """
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(max(1, repeat)):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def geomean(values: Sequence[float]) -> float:
    """The geometric mean: the right average for ratios (one outlier cannot dominate it)."""
    positive = [v for v in values if v > 0]
    if not positive:
        return float("nan")
    return math.exp(sum(math.log(v) for v in positive) / len(positive))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable on a terminal, pasteable into ``bench/README.md``)."""
    cells = [[str(c) for c in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        padded = [row[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("| " + " | ".join(padded) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine() -> str:
    """One line about where the figures came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sqlite3

    return (
        f"{os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.release()}"
    )


def fixture_ready(path: Path, params: dict[str, Any]) -> bool:
    """Whether ``path`` was fully written with ``params`` (its marker is written last)."""
    marker = path.with_name(path.name + ".params.json")
    if not path.exists() or not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def mark_fixture(path: Path, params: dict[str, Any]) -> None:
    """Record that ``path`` is complete for ``params``; a crash before this means re-seeding."""
    path.with_name(path.name + ".params.json").write_text(json.dumps(params, sort_keys=True))


def discard_fixture(path: Path) -> None:
    """Remove a half-written fixture and its marker and SQLite side files."""
    for suffix in ("", "-wal", "-shm", ".params.json"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            candidate.unlink()


def seeded_upstream(
    db_dir: Path, runs: int, steps: int, seed: int, entity: str, project: str
) -> tuple[Path, bool]:
    """A synthetic upstream project, seeded once per (runs, steps, seed, schema); its path and
    whether it was seeded just now."""
    from mirror.store import migrate
    from mirror.store.engine import make_engine
    from mirror.synth import seed_project

    path = db_dir / f"upstream-r{runs}-s{steps}-seed{seed}.db"
    params = {"runs": runs, "steps": steps, "seed": seed, "schema": migrate.head_revision()}
    if fixture_ready(path, params):
        return path, False
    discard_fixture(path)
    print(f"seeding {runs} runs x {steps} steps into {path} ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    engine = make_engine(path, create=True)
    try:
        migrate.upgrade(engine)
        seed_project(engine, entity, project, runs, steps, seed=seed)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    mark_fixture(path, params)
    print(f"seeded in {time.perf_counter() - began:.1f}s", file=sys.stderr, flush=True)
    return path, True


def fresh_database(path: Path) -> Any:
    """A new, migrated SQLite mirror at ``path`` (anything there before is removed)."""
    from mirror.store import migrate
    from mirror.store.engine import make_engine

    discard_fixture(path)
    engine = make_engine(path)
    migrate.upgrade(engine)
    return engine


def verdict(ok: bool) -> str:
    """PASS or FAIL, for the target lines."""
    return "PASS" if ok else "FAIL"


def report_targets(targets: Sequence[tuple[str, bool]]) -> int:
    """Print the target lines; the script's exit code (1 when any failed)."""
    print("\n## targets\n")
    for label, ok in targets:
        print(f"{verdict(ok)}  {label}")
    failed = [label for label, ok in targets if not ok]
    if failed:
        print(f"\n{len(failed)} target(s) failed")
    return 1 if failed else 0


# --- the stand-in for W&B and the environments of the programs that talk to it -----------------


def wandb_env(home: Path, key: str) -> dict[str, str]:
    """The official client kept off the network and out of $HOME (as the tests keep it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(
        {
            "HOME": str(home),
            "WANDB_DIR": str(home),
            "WANDB_CONFIG_DIR": str(home / "config"),
            "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_DATA_DIR": str(home / "data"),
            "WANDB_SILENT": "true",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_API_KEY": key,
            "NETRC": str(home / "netrc"),
        }
    )
    return env


def mirror_env(url: str, home: Path, key: str) -> dict[str, str]:
    """An environment for ``wandb-mirror`` that talks to ``url`` and nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(
        {
            "WANDB_BASE_URL": url,
            "WANDB_API_KEY": key,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "NETRC": str(home / "netrc"),
        }
    )
    return env


def wandb_version() -> str:
    """The installed wandb client's version, for the figures' headers."""
    try:
        from importlib.metadata import version

        return version("wandb")
    except Exception:  # noqa: BLE001
        return "?"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m mirror.serve`` over one database, its access log in a file."""

    def __init__(self, db: Path, log: Path, args: list[str]) -> None:
        self.db, self.log_path, self.args = db, log, args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_MIRROR_SERVE_")}
        cmd = [sys.executable, "-m", "mirror.serve", "--db", str(self.db)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--port", str(self.port), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (all its threads)."""
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
