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
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
