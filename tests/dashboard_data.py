"""The seeded mirror the dashboard tests share: the server tests' project (``acme/vision``,
150 runs) plus ``acme/long``, one run long enough that its charts are decimated, with NaN and
infinite values among its losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from server_process import ENTITY, seed_database

from mirror.store.engine import make_engine, write_transaction
from mirror.store.history import history_keys_of
from mirror.store.upsert import append_history, upsert_runs

LONG_PROJECT = "long"
LONG_RUN = "longrun1"
LONG_STEPS = 60_000


def long_rows(steps: int) -> list[dict[str, Any]]:
    """A noisy decaying loss with a few undrawable values, an accuracy and the clocks."""
    rng = np.random.default_rng(3)
    step = np.arange(steps)
    loss = 2.0 * np.exp(-step / (steps / 5)) + 0.05 * rng.standard_normal(steps)
    loss[[10, 500, steps // 2]] = [np.nan, np.inf, -np.inf]
    acc = 1 - np.exp(-step / (steps / 3))
    runtime = step * 0.5
    rows = []
    for i, (lo, ac, rt) in enumerate(
        zip(loss.tolist(), acc.tolist(), runtime.tolist(), strict=True)
    ):
        row: dict[str, Any] = {"loss": lo, "_runtime": rt, "_step": i}
        if i % 7 == 0:
            row["acc"] = ac
        rows.append(row)
    return rows


def seed_dashboard(path: Path, steps: int = LONG_STEPS) -> Path:
    """The shared database, written once per test session."""
    seed_database(path)
    rows = long_rows(steps)
    node = {
        "name": LONG_RUN,
        "displayName": "a long run",
        "state": "finished",
        "tags": ["long"],
        "config": '{"lr": {"value": 0.001}}',
        "summaryMetrics": '{"loss": 0.05}',
        "createdAt": "2026-11-01T10:00:00",
        "heartbeatAt": "2026-11-02T10:00:00",
        "historyLineCount": len(rows),
        "historyKeys": history_keys_of(rows),
        "user": {"name": "Long User", "username": "long"},
        "notes": "trained for a long time",
    }
    engine = make_engine(path)
    try:
        with write_transaction(engine) as conn:
            ids = upsert_runs(conn, ENTITY, LONG_PROJECT, [node])
            append_history(conn, ids[LONG_RUN], rows)
    finally:
        engine.dispose()
    return path
