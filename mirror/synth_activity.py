"""What happens to a project on W&B between two syncs, played on a synthetic upstream.

Runs log more steps and finish, get edited in the UI, are created and deleted. The demo, the
tests and the benchmarks change their stand-in for W&B (a database that ``serve`` serves) with
these, writing through the store so that every field W&B would move (``historyLineCount``,
``historyKeys``, the summary, ``heartbeatAt``, ``updatedAt``) moves together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, update

from mirror.errors import MirrorError
from mirror.store.engine import write_transaction
from mirror.store.fields import dumps, loads
from mirror.store.history import history_keys_of
from mirror.store.models import runs
from mirror.store.read import chunk_spans, find_project, find_run
from mirror.store.upsert import append_history, last_step, upsert_runs, utcnow


def _in_project(
    engine: Engine, entity: str, project: str, fn: Callable[[Connection, int], Any]
) -> Any:
    with write_transaction(engine) as conn:
        found = find_project(conn, entity, project)
        if found is None:
            raise MirrorError(f"{entity}/{project} is not in {engine.url}")
        return fn(conn, found["id"])


def _run(conn: Connection, project_id: int, name: str) -> Any:
    run = find_run(conn, project_id, name)
    if run is None:
        raise MirrorError(f"no live run {name} in this project")
    return run


def merge_history_keys(old: dict[str, Any] | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``historyKeys`` after ``rows`` were appended to a history described by ``old``."""
    counts: dict[str, dict[str, int]] = {
        key: {t["type"]: t["count"] for t in spec["typeCounts"]}
        for key, spec in (old or {}).get("keys", {}).items()
    }
    added = history_keys_of(rows)
    for key, spec in added["keys"].items():
        per = counts.setdefault(key, {})
        for t in spec["typeCounts"]:
            per[t["type"]] = per.get(t["type"], 0) + t["count"]
    return {
        "keys": {
            key: {"typeCounts": [{"type": t, "count": c} for t, c in per.items()]}
            for key, per in counts.items()
        },
        "lastStep": max(added["lastStep"], (old or {}).get("lastStep", -1)),
    }


def log_steps(
    engine: Engine, entity: str, project: str, name: str, steps: int, finish: bool = False
) -> None:
    """The run logs ``steps`` more rows (NaN among them) and one system-metric event."""

    def change(conn: Connection, project_id: int) -> None:
        run = _run(conn, project_id, name)
        after = last_step(conn, run["id"])
        first = 0 if after is None else after + 1
        rows = [
            {
                "loss": 1.0 / (step + 2),
                "acc": float("nan") if step % 7 == 0 else 1 - 1.0 / (step + 2),
                "_runtime": step * 0.5,
                "_step": step,
            }
            for step in range(first, first + steps)
        ]
        append_history(conn, run["id"], rows)
        events = sum(span.row_count for span in chunk_spans(conn, run["id"], "events"))
        event = {"system.cpu": 12.5}
        append_history(conn, run["id"], [event], "events", start=events)
        system = loads(run["system_metrics"], {}) or {}
        system.update(event)  # W&B keeps a run's latest system metrics there
        summary = loads(run["summary_metrics"], {}) or {}
        summary.update(rows[-1] if rows else {})
        now = utcnow()
        conn.execute(
            update(runs)
            .where(runs.c.id == run["id"])
            .values(
                history_line_count=run["history_line_count"] + steps,
                history_keys=dumps(merge_history_keys(loads(run["history_keys"]), rows)),
                summary_metrics=dumps(summary),
                system_metrics=dumps(system),
                heartbeat_at=now,
                updated_at=now,
                state="finished" if finish else "running",
            )
        )

    _in_project(engine, entity, project, change)


def edit_run(engine: Engine, entity: str, project: str, name: str, **node: Any) -> None:
    """Fields changed as an edit in W&B's UI changes them (W&B ``Run`` node names)."""

    def change(conn: Connection, project_id: int) -> None:
        _run(conn, project_id, name)
        upsert_runs(conn, entity, project, [{"name": name, "updatedAt": utcnow(), **node}])

    _in_project(engine, entity, project, change)


def add_run(engine: Engine, entity: str, project: str, name: str, steps: int) -> None:
    """A new running run with ``steps`` rows of history (in a new project, if need be)."""
    rows = [{"loss": 1.0 / (i + 1), "_runtime": i * 0.5, "_step": i} for i in range(steps)]
    now = utcnow()
    node = {
        "name": name,
        "displayName": f"fresh-{name}",
        "state": "running",
        "createdAt": now,
        "heartbeatAt": now,
        "updatedAt": now,
        "tags": ["new"],
        "user": {"name": "Nova User", "username": "nova"},
        "config": dumps({"lr": {"value": 0.1, "desc": None}, "optimizer": {"value": "adamw"}}),
        "summaryMetrics": dumps(rows[-1] if rows else {}),
        "historyLineCount": steps,
        "historyKeys": history_keys_of(rows),
    }

    with write_transaction(engine) as conn:  # the project is created with its first run
        ids = upsert_runs(conn, entity, project, [node])
        append_history(conn, ids[name], rows)


def delete_run(engine: Engine, entity: str, project: str, name: str) -> None:
    """The run is deleted on W&B: gone from every listing."""

    def change(conn: Connection, project_id: int) -> None:
        run = _run(conn, project_id, name)
        conn.execute(update(runs).where(runs.c.id == run["id"]).values(deleted_at=utcnow()))

    _in_project(engine, entity, project, change)
