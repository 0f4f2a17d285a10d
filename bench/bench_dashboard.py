"""The dashboard in a browser: time to first chart of a 1,000,000-step run, and bytes sent.

``python -m mirror.serve`` runs as its own process over a seeded mirror holding one run of
``--steps`` history rows (8 keys: loss, acc, lr, grad_norm, epoch and W&B's three). Headless
Chromium (Debian's ``chromium``, driven by Playwright, a fresh browser context each time: no
cached assets) opens the run's page, which draws 4 charts. Measured from navigation start:
``mirror:first-chart`` (the first chart drawn) and ``mirror:charts-drawn`` (all four), marks
``charts.js`` sets; and the bytes the browser received for the whole page (bodies as sent,
gzip where the server compressed, plus headers).

"Cold" is the first view after the server started (the run's history read from the database);
"warm" a later view (the series kept by the server). Targets: first chart under 1 s and under
1 MB sent, cold.

Usage: ``.venv/bin/python bench/bench_dashboard.py [--steps 1000000] [--repeat 3]``.
Exits non-zero when a target fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from common import fixture_ready, free_port, fresh_database, machine, mark_fixture, out_path, table

from mirror.store.engine import write_transaction
from mirror.store.migrate import head_revision
from mirror.store.upsert import append_history, upsert_runs

ENTITY, PROJECT, RUN = "bench", "dashboard", "millionstep"
BATCH = 100_000
FIRST_MS, BYTES = 1000.0, 1_000_000


def rows(start: int, stop: int) -> list[dict[str, Any]]:
    """A block of a long training run's history, 8 keys a row."""
    rng = np.random.default_rng(start)
    step = np.arange(start, stop)
    x = step / 1_000_000
    columns = {
        "loss": (2.0 * np.exp(-4 * x) + 0.05 * rng.standard_normal(len(step))).tolist(),
        "acc": (1 - np.exp(-3 * x) + 0.01 * rng.standard_normal(len(step))).tolist(),
        "lr": (1e-3 * np.cos(x * np.pi / 2) ** 2).tolist(),
        "grad_norm": np.abs(1 + 0.3 * rng.standard_normal(len(step))).tolist(),
        "epoch": (step // 10_000).tolist(),
        "_runtime": (step * 0.25).tolist(),
        "_timestamp": (1.7e9 + step * 0.25).tolist(),
        "_step": step.tolist(),
    }
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def fixture(steps: int) -> Path:
    path = out_path(f"dashboard-{steps}.db")
    params = {"steps": steps, "schema": head_revision(), "version": 1}
    if fixture_ready(path, params):
        return path
    print(f"seeding one run of {steps:,} steps into {path} ...", file=sys.stderr)
    engine = fresh_database(path)
    node = {
        "name": RUN,
        "displayName": "a million steps",
        "state": "finished",
        "createdAt": "2026-11-01T00:00:00",
        "historyLineCount": steps,
        "config": "{}",
        "summaryMetrics": "{}",
        "historyKeys": {
            "keys": {
                k: {"typeCounts": [{"type": "number", "count": steps}]}
                for k in ("loss", "acc", "lr", "grad_norm", "epoch", "_runtime", "_timestamp")
            },
            "lastStep": steps - 1,
        },
    }
    with write_transaction(engine) as conn:
        run_id = upsert_runs(conn, ENTITY, PROJECT, [node])[RUN]
    for start in range(0, steps, BATCH):
        with write_transaction(engine) as conn:
            append_history(conn, run_id, rows(start, min(steps, start + BATCH)))
    engine.dispose()
    mark_fixture(path, params)
    return path


class Server:
    """``python -m mirror.serve`` over the fixture, on a free loopback port."""

    def __init__(self, db: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(out_path("bench-dashboard-serve.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirror.serve", "--db", str(db), "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("WANDB_MIRROR_SERVE")},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


def view(browser: Any, url: str) -> dict[str, float]:
    """One page view in a fresh context: the marks and the bytes received."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    finished: list[Any] = []
    page.on("requestfinished", lambda request: finished.append(request))
    page.goto(url)
    page.wait_for_function("document.documentElement.dataset.charts", timeout=60_000)
    marks = page.evaluate(
        """() => ({first: performance.getEntriesByName('mirror:first-chart')[0].startTime,
                   all: performance.getEntriesByName('mirror:charts-drawn')[0].startTime,
                   points: window.mirrorCharts.reduce((n, c) => n + c.uplot.data[0].length, 0)})"""
    )
    sizes = [(r.url, r.sizes()) for r in finished]
    context.close()
    total = sum(s["responseBodySize"] + s["responseHeadersSize"] for _, s in sizes)
    series = sum(s["responseBodySize"] for u, s in sizes if "/data/" in u)
    return {**marks, "bytes": total, "series_bytes": series, "requests": len(sizes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    chromium = os.environ.get("WANDB_MIRROR_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        print("needs Chromium: apt-get install chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    db = fixture(args.steps)
    page_path = f"/projects/{ENTITY}/{PROJECT}/runs/{RUN}"
    cold, warm = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(args.repeat):
            server = Server(db)
            try:
                cold.append(view(browser, server.url + page_path))
                warm.extend(view(browser, server.url + page_path) for _ in range(2))
            finally:
                server.stop()
        browser.close()

    def median(views: list[dict[str, float]], key: str) -> float:
        return statistics.median(v[key] for v in views)

    print(f"Machine: {machine()}. One run of {args.steps:,} steps x 8 keys, 4 charts.\n")
    print(
        table(
            [
                "view",
                "first chart ms",
                "all 4 charts ms",
                "bytes received",
                "of which series",
                "points drawn",
            ],
            [
                [
                    name,
                    median(v, "first"),
                    median(v, "all"),
                    int(median(v, "bytes")),
                    int(median(v, "series_bytes")),
                    int(median(v, "points")),
                ]
                for name, v in (("cold (first view after start)", cold), ("warm", warm))
            ],
        )
    )
    first, sent = median(cold, "first"), median(cold, "bytes")
    ok = first < FIRST_MS and sent < BYTES
    print(
        f"\nfirst chart {first:.0f} ms (target < {FIRST_MS:.0f}), {sent:,.0f} bytes "
        f"(target < {BYTES:,}): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
