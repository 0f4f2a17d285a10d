"""A mirror as schemas 0001-0004 stored it, written with plain SQL, for upgrade tests.

The store's code writes only the current schema, so a test of an upgrade (or of restoring an
old snapshot) writes the old tables the way the code of their time did: JSON documents as text,
history as zlib frames of the columnar layout with raw little-endian buffers. The field index is
left empty: 0005 rebuilds it from the runs, which is what an upgrade test should see working.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np
from sqlalchemy import Engine, text

from mirror.store.engine import write_transaction
from mirror.store.upsert import storage_id

NAN, INF = float("nan"), float("inf")


def legacy_runs(count: int) -> list[dict[str, Any]]:
    """``count`` runs as ``runs`` rows of 0001-0004, with the values that must survive intact:
    NaN/±Infinity tokens, -0.0, integers beyond 64 bits, nested documents, odd spacing."""
    out = []
    for i in range(count):
        config = (
            f'{{"lr": {{"value": {0.001 * (i + 1)}, "desc": null}}, '
            f'"model": {{"value": {{"depth": {i % 4}, "act": "gelu"}}}}, '
            f'"big": {{"value": {2**70 + i}}}, "zero": {{"value": -0.0}}}}'
        )
        summary = f'{{"loss": {0.5 / (i + 1)}, "best": NaN, "top": Infinity, "low": -Infinity}}'
        out.append(
            {
                "name": f"old{i:03d}",
                "display_name": f"legacy-{i}",
                "state": "finished" if i % 2 else "crashed",
                "tags": json.dumps(["a", "b"][: i % 3]),
                "created_at": f"2024-01-01T00:00:{i % 60:02d}",
                "history_line_count": 3,
                "history_keys": None if i % 2 else '{"keys": {}, "lastStep": 2}',
                "config": config,
                "summary_metrics": summary,
                "system_metrics": "{}",
            }
        )
    return out


def legacy_history(i: int) -> list[dict[str, Any]]:
    """Three history rows of run ``i``: floats, ints and a NaN."""
    return [{"_step": s, "loss": 1 / (s + i + 1), "epoch": s, "odd": NAN} for s in range(3)]


def legacy_chunk(rows: list[dict[str, Any]]) -> bytes:
    """Rows as a 0004 chunk: ``zlib(u32 header length | header JSON | buffers)``, unshuffled."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    header, buffers, offset = [], [], 0
    for key in keys:
        values = [row[key] for row in rows]
        kind = "i" if all(type(v) is int for v in values) else "f"
        buf = np.asarray(values, dtype="<i8" if kind == "i" else "<f8").tobytes()
        header.append({"k": key, "t": kind, "v": [offset, len(buf)]})
        buffers.append(buf)
        offset += len(buf)
    head = json.dumps({"n": len(rows), "c": header}).encode()
    return zlib.compress(struct.pack("<I", len(head)) + head + b"".join(buffers), 1)


def write_legacy_project(engine: Engine, entity: str, project: str, count: int) -> None:
    """A project of ``count`` runs with three history rows each, into a 0001-0004 mirror (on
    either database: plain SQL with named parameters, no model of the old schema)."""
    with write_transaction(engine) as conn:

        def sql(statement: str, values: tuple[Any, ...] = ()) -> Any:
            params = {f"p{i}": value for i, value in enumerate(values)}
            return conn.execute(
                text(statement.format(*(f":p{i}" for i in range(len(values))))), params
            )

        sql(
            "INSERT INTO projects (entity, name, created_at) VALUES ({}, {}, {})",
            (entity, project, "2024-01-01T00:00:00"),
        )
        project_id = sql("SELECT max(id) FROM projects").scalar()
        for i, run in enumerate(legacy_runs(count)):
            columns = ["project_id", "storage_id", *run]
            values = [project_id, storage_id(entity, project, run["name"]), *run.values()]
            marks = ", ".join("{}" for _ in columns)
            sql(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({marks})", tuple(values))
            run_id = sql("SELECT max(id) FROM runs").scalar()
            sql(
                "INSERT INTO history_chunks (run_id, stream, first_step, last_step, row_count, "
                "data) VALUES ({}, 'history', 0, 2, 3, {})",
                (run_id, legacy_chunk(legacy_history(i))),
            )
