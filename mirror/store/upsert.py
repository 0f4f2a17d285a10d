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

from sqlalchemy import Connection, delete, func, insert, select

from mirror.store import history as codec
from mirror.store.bulk import insert_rows, update_rows
from mirror.store.fields import dumps
from mirror.store.index import FieldKeys, IndexSource, reindex, write_index
from mirror.store.models import NODE_COLUMNS, NODE_JSON_COLUMNS, history_chunks, projects, runs


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


def run_ids(conn: Connection, project_id: int, names: Sequence[str]) -> dict[str, int]:
    """Row ids of the project's runs among ``names`` (a statement per 500 names)."""
    found: dict[str, int] = {}
    for start in range(0, len(names), 500):
        part = list(names[start : start + 500])
        query = select(runs.c.name, runs.c.id).where(
            runs.c.project_id == project_id, runs.c.name.in_(part)
        )
        found.update((name, run_id) for name, run_id in conn.execute(query))
    return found


def upsert_runs(
    conn: Connection, entity: str, project: str, nodes: Sequence[dict[str, Any]]
) -> dict[str, int]:
    """Insert or update runs from W&B nodes, re-index them; returns run name → row id.

    Batched: new runs are one prepared insert, updates one prepared update per shape of node,
    index rows one insert per batch (``mirror.store.bulk``), so seeding or pulling a page of runs
    costs a few statements, not one per run or field. The index is built from the texts being
    stored, not read back; an update that leaves tags, config and summary alone keeps its index
    rows. A run named twice (W&B repeats runs across pages) is written once, from its last node;
    a run seen again is live, so a tombstone left by an earlier deletion is cleared.
    """
    project_id = ensure_project(conn, entity, project)
    nodes = list({node["name"]: node for node in nodes}.values())
    names = [n["name"] for n in nodes]
    existing = run_ids(conn, project_id, names)
    now = utcnow()
    fresh: list[dict[str, Any]] = []
    updates: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    indexed: list[IndexSource] = []  # updated runs whose index the node's texts rebuild
    stale: list[int] = []  # updated runs whose index needs a stored text the node lacks
    for node in nodes:
        cols = run_columns(entity, project, node)
        cols.update(synced_at=now, deleted_at=None)
        run_id = existing.get(cols["name"])
        if run_id is None:
            cols.setdefault("created_at", now)
            cols["project_id"] = project_id
            fresh.append(cols)
            continue
        updates.setdefault(tuple(cols), []).append((run_id, *cols.values()))
        texts = [cols.get(column, _UNSET) for column in _INDEXED_COLUMNS]
        if _UNSET not in texts:
            indexed.append((run_id, *texts))
        elif any(text is not _UNSET for text in texts):
            stale.append(run_id)
    for columns, rows in updates.items():
        update_rows(conn, runs, "id", columns, rows)
    if fresh:
        columns = _fill_defaults(fresh)
        insert_rows(conn, runs, columns, [tuple(row[c] for c in columns) for row in fresh])
        existing.update(run_ids(conn, project_id, [row["name"] for row in fresh]))
    keys = FieldKeys(conn, project_id)
    new = [(existing[row["name"]], *(row[c] for c in _INDEXED_COLUMNS)) for row in fresh]
    write_index(conn, keys, new, replace=False)
    write_index(conn, keys, indexed, replace=True)
    if stale:
        reindex(conn, project_id, stale)
    return {name: existing[name] for name in names}


_UNSET = object()
#: the ``runs`` columns the field index is built from
_INDEXED_COLUMNS = ("tags", "config", "summary_metrics")


def _fill_defaults(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """Give every row the same columns (one prepared insert takes them all); returns them."""
    defaults = {"tags": "[]", "config": "{}", "summary_metrics": "{}", "system_metrics": "{}"}
    defaults["history_line_count"] = 0
    columns = tuple(sorted(set(defaults).union(*(r.keys() for r in rows))))
    for row in rows:
        for column in columns:
            if row.get(column) is None:
                row[column] = defaults.get(column)
    return columns


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
    insert_rows(conn, history_chunks, _CHUNK_COLUMNS, [_chunk_row(run_id, stream, part)])


_CHUNK_COLUMNS = ("run_id", "stream", "first_step", "last_step", "row_count", "data")


def _chunk_row(run_id: int, stream: str, part: list[tuple[int, dict[str, Any]]]) -> tuple[Any, ...]:
    data = codec.encode([row for _, row in part])
    return run_id, stream, part[0][0], part[-1][0], len(part), data


#: one stream's rows for :func:`append_histories`: run id, stream, rows, first ordinal
Appended = tuple[int, str, Sequence[dict[str, Any]], int]


def append_histories(conn: Connection, items: Sequence[Appended]) -> list[int]:
    """:func:`append_history` for many streams at once; returns the rows added to each.

    A seed or an import writes the rows of many runs together, most of them new: streams with
    nothing stored yet become chunks written in one prepared insert, instead of a look at each
    stream's tail and a statement per chunk. Streams that hold rows already, or come twice, are
    appended one by one, with the same rules.
    """
    stored: set[tuple[int, str]] = set()
    ids = sorted({item[0] for item in items})
    c = history_chunks.c
    for start in range(0, len(ids), 500):
        query = select(c.run_id, c.stream).where(c.run_id.in_(ids[start : start + 500]))
        stored.update((run_id, stream) for run_id, stream in conn.execute(query.distinct()))
    pending: list[tuple[Any, ...]] = []
    added: list[int] = []
    for run_id, stream, rows, start in items:
        if (run_id, stream) in stored:
            insert_rows(conn, history_chunks, _CHUNK_COLUMNS, pending)
            pending = []
            added.append(append_history(conn, run_id, rows, stream, start))
            continue
        numbered: list[tuple[int, dict[str, Any]]] = []
        after = None
        for step, row in codec.number_rows(rows, start):
            if after is None or step > after:  # a repeated or backwards step is skipped
                numbered.append((step, row))
                after = step
        for begin in range(0, len(numbered), codec.CHUNK_ROWS):
            pending.append(_chunk_row(run_id, stream, numbered[begin : begin + codec.CHUNK_ROWS]))
        added.append(len(numbered))
        if numbered:
            stored.add((run_id, stream))
    insert_rows(conn, history_chunks, _CHUNK_COLUMNS, pending)
    return added
