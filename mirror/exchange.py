"""Exporting a mirrored project to files, and importing the JSON Lines export back.

The JSON Lines layout is the lossless one, shaped like W&B's GraphQL API so other tools can read
it without knowing the mirror::

    runs.jsonl              one run per line: W&B ``Run`` fields + ``entity`` and ``project``;
                            config (wrapped as W&B keeps it), summaryMetrics and systemMetrics
                            as JSON objects; NaN / Infinity / -Infinity as bare tokens
    history/<run>.jsonl     one history row per line
    events/<run>.jsonl      one system-metric row per line

Export then import into an empty mirror gives back the same values, non-finite floats and int
versus float included. Parquet and CSV are for analysis (pandas, pyarrow, spreadsheets):
``runs.parquet|csv`` with config and summary flattened one level into ``config.<key>`` and
``summary.<key>`` columns (objects and lists as JSON text), and one file per run and stream.

History is streamed one stored chunk at a time on export and one file at a time on import, so a
1,000,000-step run never sits in memory. Import checks a whole file before writing any of it and
writes each file in one transaction: a bad line names the file and line and leaves that file
unimported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, RowMapping, select

from mirror.errors import MirrorError
from mirror.store.engine import analyze, read_transaction, write_transaction
from mirror.store.fields import dumps, loads, unwrap_config
from mirror.store.history import Chunk, step_of
from mirror.store.models import NODE_COLUMNS, NODE_JSON_COLUMNS, runs
from mirror.store.read import find_project, iter_chunks, iter_rows, iter_runs
from mirror.store.upsert import append_history, last_step, upsert_runs

Format = Literal["jsonl", "parquet", "csv"]
FORMATS: tuple[str, ...] = ("jsonl", "parquet", "csv")
STREAMS = ("history", "events")
RUNS_FILE = "runs.jsonl"
_BATCH = 500


@dataclass(frozen=True)
class ExchangeSummary:
    """What an export or import moved: runs, history rows and system-metric rows."""

    runs: int
    history_rows: int
    event_rows: int
    directory: Path

    def __str__(self) -> str:
        return (
            f"{self.runs} runs, {self.history_rows} history rows and {self.event_rows} "
            f"system-metric rows in {self.directory}"
        )


# ---------------------------------------------------------------- export


def export_project(
    engine: Engine, entity: str, project: str, fmt: Format, out_dir: str | Path
) -> ExchangeSummary:
    """Write one project (runs, history, events) into ``out_dir`` as jsonl, parquet or csv.

    Everything is read in one snapshot, so the export is consistent even while a sync writes.
    Tombstoned runs (deleted on W&B) are left out, as W&B would.
    """
    if fmt not in FORMATS:
        raise MirrorError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    with read_transaction(engine) as conn:
        found = find_project(conn, entity, project)
        if found is None:
            raise MirrorError(
                f"no project {entity}/{project} in the mirror; seed or import it first"
            )
        keys = _run_keys(conn, found["id"])
        run_ids = [run_id for run_id, _name in keys]
        out.mkdir(parents=True, exist_ok=True)
        if fmt == "jsonl":
            lines = (run_line(run, entity, project) for run in iter_runs(conn, run_ids))
            _write_jsonl(out / RUNS_FILE, (dumps(line) for line in lines))
        else:
            _write_table(out / f"runs.{fmt}", _RunsTable(conn, run_ids, entity, project))
        counts = {stream: 0 for stream in STREAMS}
        for run_id, name in keys:
            for stream in STREAMS:
                target = out / stream / f"{file_stem(name)}.{fmt}"
                counts[stream] += _export_stream(conn, run_id, stream, fmt, target)
    return ExchangeSummary(len(run_ids), counts["history"], counts["events"], out)


def file_stem(run_name: str) -> str:
    """A run id as a file name: unchanged for W&B's ids, percent-encoded if it holds a ``/``."""
    return quote(run_name, safe="")


def run_line(run: RowMapping, entity: str, project: str) -> dict[str, Any]:
    """A ``runs`` row → one ``runs.jsonl`` object, in W&B's GraphQL field names."""
    line: dict[str, Any] = {"entity": entity, "project": project}
    line.update({field: run[column] for field, column in NODE_COLUMNS.items()})
    for field, column in NODE_JSON_COLUMNS.items():
        line[field] = loads(run[column])
    has_user = run["username"] is not None or run["user_name"] is not None
    line["user"] = {"name": run["user_name"], "username": run["username"]} if has_user else None
    return line


def _run_keys(conn: Connection, project_id: int) -> list[tuple[int, str]]:
    """``(row id, run id)`` of a project's live runs, oldest first, so exports are reproducible."""
    query = (
        select(runs.c.id, runs.c.name)
        .where(runs.c.project_id == project_id, runs.c.deleted_at.is_(None))
        .order_by(runs.c.created_at, runs.c.name)
    )
    return [(row.id, row.name) for row in conn.execute(query)]


def _write_jsonl(path: Path, lines: Iterable[str]) -> int:
    """Write lines, one JSON document each (a project without runs still gets its file)."""
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
            count += 1
    return count


def _export_stream(conn: Connection, run_id: int, stream: str, fmt: str, target: Path) -> int:
    """One run's history or events into ``target``; no file when the run has no rows."""
    if last_step(conn, run_id, stream) is None:
        return 0
    target.parent.mkdir(exist_ok=True)
    if fmt == "jsonl":
        return _write_jsonl(target, (dumps(row) for row in iter_rows(conn, run_id, stream)))
    return _write_table(target, _ChunkPass(conn, run_id, stream))


# ------------------------------------------------------- parquet and csv


class _Types:
    """Per column, the kinds of value seen, and from them one Arrow type.

    Whole-number-only columns become int64, numbers float64 (NaN and ±Infinity kept), strings
    and booleans stay themselves; anything else or a mixture is JSON text, so no value is lost.
    """

    def __init__(self) -> None:
        self.kinds: dict[str, set[str]] = {}

    def see(self, column: str, kinds: Iterable[str]) -> None:
        self.kinds.setdefault(column, set()).update(kinds)

    def see_values(self, column: str, values: Iterable[Any]) -> None:
        self.see(column, {_kind(v) for v in values} - {"null"})

    def arrow(self, column: str) -> pa.DataType:
        kinds = self.kinds[column]
        if kinds == {"int"}:
            return pa.int64()
        if kinds and kinds <= {"int", "float"}:
            return pa.float64()
        if kinds == {"bool"}:
            return pa.bool_()
        return pa.string()

    def schema(self) -> pa.Schema:
        return pa.schema([(column, self.arrow(column)) for column in self.kinds])


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "json"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def _arrow_values(values: Sequence[Any], kinds: set[str], arrow: pa.DataType) -> pa.Array:
    """Python values (``None`` for missing) → an Arrow array of the column's type."""
    if arrow == pa.string() and kinds != {"str"}:
        values = [None if v is None else dumps(v) for v in values]
    elif arrow == pa.float64():
        values = [None if v is None else float(v) for v in values]
    return pa.array(values, type=arrow)


class _TablePass(Protocol):
    """A table written in two passes: one to learn the columns and types, one to write."""

    def learn(self) -> _Types: ...

    def batches(self, schema: pa.Schema, types: _Types) -> Iterator[pa.RecordBatch]: ...


def _write_table(path: Path, table: _TablePass) -> int:
    """Write a two-pass table as parquet or csv (by suffix); returns its row count."""
    types = table.learn()
    schema = types.schema()
    count = 0
    writer: pq.ParquetWriter | pa_csv.CSVWriter
    if path.suffix == ".parquet":
        writer = pq.ParquetWriter(path, schema)
    else:
        writer = pa_csv.CSVWriter(path, schema)
    with writer:
        for batch in table.batches(schema, types):
            writer.write_batch(batch)
            count += batch.num_rows
    return count


def flat_run(line: dict[str, Any]) -> dict[str, Any]:
    """A ``runs.jsonl`` object → one flat record: ``config.<k>`` and ``summary.<k>`` columns.

    Config is unwrapped (``{"value": v}`` → ``v``) and loses ``_wandb`` as ``run.config`` does;
    the run's own JSON fields (tags, system metrics, history keys, user) stay as values.
    """
    record = {k: v for k, v in line.items() if k not in ("config", "summaryMetrics")}
    config = unwrap_config(line["config"] or {})
    record.update({f"config.{k}": v for k, v in config.items()})
    record.update({f"summary.{k}": v for k, v in (line["summaryMetrics"] or {}).items()})
    return record


class _RunsTable:
    def __init__(self, conn: Connection, run_ids: Sequence[int], entity: str, project: str):
        self.conn, self.run_ids, self.entity, self.project = conn, run_ids, entity, project

    def _records(self) -> Iterator[dict[str, Any]]:
        for run in iter_runs(self.conn, self.run_ids):
            yield flat_run(run_line(run, self.entity, self.project))

    def learn(self) -> _Types:
        types = _Types()
        for record in self._records():
            for column, value in record.items():
                types.see_values(column, [value])
        return types

    def batches(self, schema: pa.Schema, types: _Types) -> Iterator[pa.RecordBatch]:
        records: list[dict[str, Any]] = []
        for record in self._records():
            records.append(record)
            if len(records) == _BATCH:
                yield _records_batch(records, schema, types)
                records = []
        if records:
            yield _records_batch(records, schema, types)


def _records_batch(
    records: list[dict[str, Any]], schema: pa.Schema, types: _Types
) -> pa.RecordBatch:
    arrays = [
        _arrow_values([r.get(f.name) for r in records], types.kinds[f.name], f.type) for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class _ChunkPass:
    """One run's stream, straight from its stored chunks (numeric columns stay numpy)."""

    def __init__(self, conn: Connection, run_id: int, stream: str) -> None:
        self.conn, self.run_id, self.stream = conn, run_id, stream

    def _chunks(self) -> Iterator[Chunk]:
        for _span, chunk in iter_chunks(self.conn, self.run_id, self.stream):
            yield chunk

    def learn(self) -> _Types:
        types = _Types()
        for chunk in self._chunks():
            for key, column in chunk.columns.items():
                if column.kind == "i":
                    types.see(key, {"int"})
                elif column.kind == "f":
                    types.see(key, {"float"})
                else:
                    types.see_values(key, column.values)
        return types

    def batches(self, schema: pa.Schema, types: _Types) -> Iterator[pa.RecordBatch]:
        for chunk in self._chunks():
            arrays = [_chunk_array(chunk, f.name, f.type, types.kinds[f.name]) for f in schema]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _chunk_array(chunk: Chunk, key: str, arrow: pa.DataType, kinds: set[str]) -> pa.Array:
    """One column of a stored chunk as Arrow: missing rows null, NaN stays NaN."""
    column = chunk.columns.get(key)
    if column is None:
        return pa.nulls(chunk.n, type=arrow)
    if column.kind in ("i", "f") and arrow in (pa.int64(), pa.float64()):
        dtype = np.int64 if arrow == pa.int64() else np.float64
        full = np.zeros(chunk.n, dtype=dtype)
        present = np.ones(chunk.n, dtype=bool) if column.mask is None else column.mask
        full[present] = column.values
        return pa.array(full, type=arrow, mask=~present)
    values = [row.get(key) for row in chunk.rows([key])]
    return _arrow_values(values, kinds, arrow)


# ---------------------------------------------------------------- import


def import_dir(engine: Engine, in_dir: str | Path) -> ExchangeSummary:
    """Load a jsonl export into the mirror: runs are upserted, history appended after what is there.

    Importing into a mirror that already holds the project updates its runs in place and adds
    only rows past each run's last stored step, so importing twice changes nothing.
    """
    root = Path(in_dir)
    runs_path = root / RUNS_FILE
    if not runs_path.is_file():
        raise MirrorError(_missing_runs_file(root))
    entity, project, names = _check_runs_file(runs_path)
    files = _stream_files(root, names)
    with write_transaction(engine) as conn:
        ids: dict[str, int] = {}
        for batch in _batched(_nodes(runs_path), 1000):
            ids.update(upsert_runs(conn, entity, project, batch))
    added = {stream: 0 for stream in STREAMS}
    for stream, name, path in files:
        label = f"{stream}/{path.name}"
        _check_rows_file(path, label)
        with write_transaction(engine) as conn:
            added[stream] += _import_rows(conn, ids[name], path, stream, label)
    analyze(engine)
    return ExchangeSummary(len(names), added["history"], added["events"], root)


def _missing_runs_file(root: Path) -> str:
    for fmt in ("parquet", "csv"):
        if (root / f"runs.{fmt}").is_file():
            return (
                f"{root}: import reads the jsonl layout only, this is a {fmt} export; "
                "export again with --format jsonl"
            )
    return (
        f"{root}: no {RUNS_FILE} here; import expects a directory written by export --format jsonl"
    )


def _parsed_lines(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """``(line number, JSON value)`` for each non-blank line; a parse error names the line."""
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise MirrorError(
                    f"{label}:{number}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(value, dict):
                raise MirrorError(f"{label}:{number}: expected a JSON object, got {_what(value)}")
            yield number, value


def _what(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


#: Run fields that must be text or null (``name`` and ``createdAt`` are checked on their own)
_TEXT_FIELDS = tuple(f for f in NODE_COLUMNS if f not in ("name", "createdAt", "historyLineCount"))
_OBJECT_FIELDS = (*(f for f in NODE_JSON_COLUMNS if f != "tags"), "user")


def run_problem(line: dict[str, Any]) -> str | None:
    """What is wrong with one ``runs.jsonl`` object, or ``None`` when it can be imported."""
    for field in ("entity", "project", "name", "createdAt"):
        if not isinstance(line.get(field), str) or not line[field]:
            return f"expected {field!r} to be a non-empty string, got {_what(line.get(field))}"
    for field in _TEXT_FIELDS:
        if not isinstance(line.get(field), (str, type(None))):
            return f"expected {field!r} to be a string or null, got {_what(line[field])}"
    for field in _OBJECT_FIELDS:
        if not isinstance(line.get(field), (dict, type(None))):
            return f"expected {field!r} to be a JSON object or null, got {_what(line[field])}"
    tags = line.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return "expected 'tags' to be a list of strings"
    count = line.get("historyLineCount", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return f"expected 'historyLineCount' to be a whole number >= 0, got {count!r}"
    return None


def _check_runs_file(path: Path) -> tuple[str, str, set[str]]:
    """Validate every line of ``runs.jsonl``; returns its entity, project and run names."""
    project: tuple[str, str] | None = None
    names: set[str] = set()
    for number, line in _parsed_lines(path, RUNS_FILE):
        problem = run_problem(line)
        if problem is None and project is not None and (line["entity"], line["project"]) != project:
            problem = f"run of {line['entity']}/{line['project']}, expected {'/'.join(project)}"
        if problem is None and line["name"] in names:
            problem = f"run {line['name']!r} appears twice"
        if problem is not None:
            raise MirrorError(f"{RUNS_FILE}:{number}: {problem}")
        project = project or (line["entity"], line["project"])
        names.add(line["name"])
    if project is None:
        raise MirrorError(f"{RUNS_FILE}: no runs in the file; nothing to import")
    return project[0], project[1], names


def _stream_files(root: Path, names: set[str]) -> list[tuple[str, str, Path]]:
    """``(stream, run name, path)`` of every history/events file, each naming a known run."""
    found: list[tuple[str, str, Path]] = []
    for stream in STREAMS:
        folder = root / stream
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
            name = unquote(path.stem)
            if name not in names:
                raise MirrorError(f"{stream}/{path.name}: no run {name!r} in {RUNS_FILE}")
            found.append((stream, name, path))
    return found


def _nodes(path: Path) -> Iterator[dict[str, Any]]:
    """``runs.jsonl`` lines (already checked) as W&B nodes for ``upsert_runs``."""
    for _number, line in _parsed_lines(path, RUNS_FILE):
        node = {k: v for k, v in line.items() if k not in ("entity", "project")}
        if node.get("historyKeys") is None:
            node.pop("historyKeys", None)
        yield node


def _batched(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_rows_file(path: Path, label: str) -> None:
    """Every line a JSON object; ``_step``, where given, a whole number above the previous."""
    ordinal = 0
    previous: int | None = None
    for number, row in _parsed_lines(path, label):
        step = step_of(row, ordinal)  # the store's rule; it falls back on anything not whole
        given = row.get("_step", step)
        if isinstance(given, bool) or given != step:
            raise MirrorError(
                f"{label}:{number}: expected '_step' to be a whole number, got {given!r}"
            )
        if previous is not None and step <= previous:
            raise MirrorError(
                f"{label}:{number}: _step {step} is not after the previous {previous}"
            )
        previous, ordinal = step, step + 1


def _import_rows(conn: Connection, run_id: int, path: Path, stream: str, label: str) -> int:
    """Append a checked rows file to a run's stream, skipping rows the mirror already has."""
    rows = (row for _number, row in _parsed_lines(path, label))
    return append_history(conn, run_id, rows, stream)
