"""Writing runs and history into the store: the only code that inserts or updates them.

Runs arrive in W&B's GraphQL shape (``name``, ``displayName``, ``config`` as JSON text or
object, ...) from every source alike (the remote pull, an import, the synthetic generator, the
GraphQL server's ``upsertBucket``), so each source stays a thin adapter. Writes never delete and
re-insert a run: its row id, and so its history and queued edits, survive every update.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from mirror.store import history as codec
from mirror.store.fields import dumps, flatten, run_document
from mirror.store.models import (
    NODE_COLUMNS,
    NODE_JSON_COLUMNS,
    field_keys,
    history_chunks,
    projects,
    run_fields,
    runs,
)


def utcnow() -> str:
    """Now as W&B writes dates: naive UTC ISO text, seconds precision."""
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


def storage_id(entity: str, project: str, name: str) -> str:
    """The run's storage id as W&B forms it: base64 of ``Run:v1:<name>:<project>:<entity>``."""
    return base64.b64encode(f"Run:v1:{name}:{project}:{entity}".encode()).decode()


def ensure_project(conn: Connection, entity: str, name: str) -> int:
    """The project's id, creating the project on first sight."""
    found = conn.execute(
        select(projects.c.id).where(projects.c.entity == entity, projects.c.name == name)
    ).scalar()
    if found is not None:
        return found
    return conn.execute(
        insert(projects)
        .values(entity=entity, name=name, created_at=utcnow())
        .returning(projects.c.id)
    ).scalar_one()


def _json_text(value: Any, default: str | None) -> str | None:
    """A JSON field's stored text; a JSON null, as a value or as text, stores ``default``."""
    if value is None or value == "null":
        return default
    return value if isinstance(value, str) else dumps(value)


def run_columns(entity: str, project: str, node: dict[str, Any]) -> dict[str, Any]:
    """A W&B GraphQL ``Run`` node → the ``runs`` columns it sets (fields it lacks are left out).

    An unknown ``historyKeys`` is SQL NULL whichever way the run came in (a pull, an import,
    ``upsertBucket``), never the text ``null``: readers then compute it from the stored rows,
    where the text would tell the client the run has no history at all.
    """
    cols: dict[str, Any] = {}
    for key, column in NODE_COLUMNS.items():
        if key in node:
            cols[column] = node[key]
    cols["storage_id"] = cols.get("storage_id") or storage_id(entity, project, node["name"])
    json_defaults: dict[str, str | None] = {"tags": "[]", "historyKeys": None}
    for key, column in NODE_JSON_COLUMNS.items():
        if key in node:
            cols[column] = _json_text(node[key], json_defaults.get(key, "{}"))
    if "user" in node and node["user"]:
        cols["username"] = node["user"].get("username")
        cols["user_name"] = node["user"].get("name")
    return cols


class FieldKeys:
    """Ids of a project's field paths, loaded once and extended as new paths appear."""

    def __init__(self, conn: Connection, project_id: int) -> None:
        self.conn = conn
        self.project_id = project_id
        rows = conn.execute(
            select(field_keys.c.path, field_keys.c.id).where(field_keys.c.project_id == project_id)
        )
        self.ids: dict[str, int] = dict(rows.all())

    def id(self, path: str) -> int:
        found = self.ids.get(path)
        if found is None:
            found = self.conn.execute(
                insert(field_keys)
                .values(project_id=self.project_id, path=path)
                .returning(field_keys.c.id)
            ).scalar_one()
            self.ids[path] = found
        return found


def upsert_runs(
    conn: Connection, entity: str, project: str, nodes: Sequence[dict[str, Any]]
) -> dict[str, int]:
    """Insert or update runs from W&B nodes, re-index them; returns run name → row id.

    Batched: one round of inserts for new runs and one for their index rows, so seeding or
    pulling a page of runs costs a few statements, not one per field. A run named twice (W&B
    repeats runs across pages) is written once, from its last node; a run seen again is live,
    so a tombstone left by an earlier deletion is cleared.
    """
    project_id = ensure_project(conn, entity, project)
    nodes = list({node["name"]: node for node in nodes}.values())
    names = [n["name"] for n in nodes]
    existing: dict[str, int] = {}
    for start in range(0, len(names), 500):
        part = names[start : start + 500]
        existing.update(
            conn.execute(
                select(runs.c.name, runs.c.id).where(
                    runs.c.project_id == project_id, runs.c.name.in_(part)
                )
            ).all()
        )
    now = utcnow()
    fresh: list[dict[str, Any]] = []
    for node in nodes:
        cols = run_columns(entity, project, node)
        cols.update(synced_at=now, deleted_at=None)
        if cols["name"] in existing:
            run_id = existing[cols["name"]]
            conn.execute(update(runs).where(runs.c.id == run_id).values(**cols))
        else:
            cols.setdefault("created_at", now)
            cols["project_id"] = project_id
            fresh.append(cols)
    if fresh:
        _fill_defaults(fresh)
        inserted = conn.execute(
            insert(runs).returning(runs.c.name, runs.c.id, sort_by_parameter_order=True), fresh
        )
        existing.update(inserted.all())
    ids = {name: existing[name] for name in names}
    reindex(conn, project_id, list(ids.values()))
    return ids


def _fill_defaults(rows: list[dict[str, Any]]) -> None:
    """Executemany needs every row to carry the same columns."""
    columns = set().union(*(r.keys() for r in rows))
    defaults = {"tags": "[]", "config": "{}", "summary_metrics": "{}", "system_metrics": "{}"}
    defaults["history_line_count"] = 0
    for row in rows:
        for column in columns:
            row.setdefault(column, defaults.get(column))
        for column, value in defaults.items():
            if row.get(column) is None:
                row[column] = value


def reindex(conn: Connection, project_id: int, run_ids: Sequence[int]) -> None:
    """Rebuild the ``run_fields`` rows of some runs from their stored columns."""
    if not run_ids:
        return
    keys = FieldKeys(conn, project_id)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(run_ids), 500):
        part = run_ids[start : start + 500]
        conn.execute(delete(run_fields).where(run_fields.c.run_id.in_(part)))
        for run in conn.execute(select(runs).where(runs.c.id.in_(part))).mappings():
            for path, elem, kind, num, txt in flatten(run_document(run)):
                rows.append(
                    {
                        "run_id": run["id"],
                        "key_id": keys.id(path),
                        "elem": elem,
                        "kind": kind,
                        "num": num,
                        "txt": txt,
                    }
                )
            if len(rows) >= 20_000:
                conn.execute(insert(run_fields), rows)
                rows = []
    if rows:
        conn.execute(insert(run_fields), rows)


def last_step(conn: Connection, run_id: int, stream: str = "history") -> int | None:
    """The last mirrored step of a run's stream (``None``: nothing mirrored yet)."""
    return conn.execute(
        select(func.max(history_chunks.c.last_step)).where(
            history_chunks.c.run_id == run_id, history_chunks.c.stream == stream
        )
    ).scalar()


def append_history(
    conn: Connection,
    run_id: int,
    rows: Iterable[dict[str, Any]],
    stream: str = "history",
    start: int = 0,
) -> int:
    """Append the rows after the last mirrored step; returns how many were new.

    Rows at or before the last mirrored step are skipped, so re-sending a page, or a whole
    stream, after a crash adds nothing twice. Rows without ``_step`` (system-metric events) are
    numbered by position counting from ``start``: hand the stream from its beginning, or say
    where the given rows begin. Rows are consumed a chunk at a time (a million-step stream never
    sits in memory).

    A sync appends a page at a time, so re-encoding a partly filled last chunk on every page
    would cost each row many encodings. The last chunk is merged with the new rows only when
    they are at least as many as it holds, and trailing part-filled chunks are compacted into
    full ones once they add up to a chunk: each row is encoded a small, bounded number of times.
    """
    tail = (
        conn.execute(
            select(history_chunks)
            .where(history_chunks.c.run_id == run_id, history_chunks.c.stream == stream)
            .order_by(history_chunks.c.last_step.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    after = None if tail is None else tail["last_step"]
    partial = tail is not None and tail["row_count"] < codec.CHUNK_ROWS
    buffer: list[tuple[int, dict[str, Any]]] = []
    added = 0
    for step, row in codec.number_rows(rows, start):
        if after is not None and step <= after:
            continue  # already mirrored, or a repeated/backwards step within these rows
        buffer.append((step, row))
        after = step
        added += 1
        if partial and len(buffer) >= tail["row_count"]:
            buffer = _take_chunk(conn, tail) + buffer
            partial = False
        while len(buffer) >= codec.CHUNK_ROWS:
            _write_chunk(conn, run_id, stream, buffer[: codec.CHUNK_ROWS])
            buffer = buffer[codec.CHUNK_ROWS :]
    if buffer:
        _write_chunk(conn, run_id, stream, buffer)
    if added:
        _compact(conn, run_id, stream)
    return added


#: trailing part-filled chunks allowed before they are compacted, whatever their total
_MAX_PARTS = 32


def _take_chunk(conn: Connection, chunk: Any) -> list[tuple[int, dict[str, Any]]]:
    """A stored chunk's numbered rows, the chunk itself deleted (its rows are re-written)."""
    rows = list(codec.number_rows(codec.decode(chunk["data"]).rows(), chunk["first_step"]))
    conn.execute(delete(history_chunks).where(history_chunks.c.id == chunk["id"]))
    return rows


def _compact(conn: Connection, run_id: int, stream: str) -> None:
    """Merge the part-filled chunks at the end of a stream once they fill a chunk."""
    c = history_chunks.c
    trailing = []
    query = (
        select(c.id, c.first_step, c.row_count)
        .where(c.run_id == run_id, c.stream == stream)
        .order_by(c.last_step.desc())
    )
    for chunk in conn.execute(query.limit(_MAX_PARTS + 1)).mappings():
        if chunk["row_count"] >= codec.CHUNK_ROWS:
            break
        trailing.append(chunk)
    total = sum(chunk["row_count"] for chunk in trailing)
    if len(trailing) < 2 or (total < codec.CHUNK_ROWS and len(trailing) <= _MAX_PARTS):
        return
    buffer: list[tuple[int, dict[str, Any]]] = []
    for chunk in reversed(trailing):
        data = conn.execute(select(c.data).where(c.id == chunk["id"])).scalar_one()
        buffer += _take_chunk(conn, {**chunk, "data": data})
    for begin in range(0, len(buffer), codec.CHUNK_ROWS):
        _write_chunk(conn, run_id, stream, buffer[begin : begin + codec.CHUNK_ROWS])


def _write_chunk(
    conn: Connection, run_id: int, stream: str, part: list[tuple[int, dict[str, Any]]]
) -> None:
    conn.execute(
        insert(history_chunks).values(
            run_id=run_id,
            stream=stream,
            first_step=part[0][0],
            last_step=part[-1][0],
            row_count=len(part),
            data=codec.encode([row for _, row in part]),
        )
    )
