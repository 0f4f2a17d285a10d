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
1,000,000-step run never sits in memory.

Any run id W&B accepts exports and imports back: file names are the percent-encoded id (a
leading dot escaped too, so no file is hidden), and an id too long for a file name is cut short
and made unique by a hash. An export is written into a fresh directory beside ``--out`` and
moved into place only when complete, so a failed export leaves nothing behind.

An import is all or nothing: every file is checked first (a bad line, text that is not UTF-8
or not Unicode, a number no float can hold, each named by file and line), and the writing is
staged in short transactions that another writer can interleave with (see ``import_dir``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    delete,
    func,
    select,
    update,
)

from mirror.errors import MirrorError
from mirror.store.bulk import update_rows
from mirror.store.engine import analyze_if_stale, read_transaction, write_transaction
from mirror.store.fields import dumps, loads, unwrap_config
from mirror.store.history import Chunk, number_rows, step_of
from mirror.store.models import (
    NODE_COLUMNS,
    NODE_JSON_COLUMNS,
    field_keys,
    history_chunks,
    projects,
    run_fields,
    runs,
)
from mirror.store.read import find_project, iter_chunks, iter_rows, iter_runs
from mirror.store.upsert import (
    append_histories,
    append_history,
    ensure_project,
    last_step,
    run_columns,
    run_ids,
    storage_id,
    upsert_runs,
    utcnow,
)

Format = Literal["jsonl", "parquet", "csv"]
FORMATS: tuple[str, ...] = ("jsonl", "parquet", "csv")
STREAMS = ("history", "events")
RUNS_FILE = "runs.jsonl"
_BATCH = 500
#: file names stay well below the 255 bytes file systems allow (the suffix comes on top)
_STEM_CHARS = 120


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
    if out.exists() and not out.is_dir():
        raise MirrorError(f"{out} is a file; --out names the directory to export into")
    with read_transaction(engine) as conn:
        found = find_project(conn, entity, project)
        if found is None:
            raise MirrorError(
                f"no project {entity}/{project} in the mirror; seed or import it first"
            )
        keys = _run_keys(conn, found["id"])
        run_ids = [run_id for run_id, _name in keys]
        counts = {stream: 0 for stream in STREAMS}
        with _new_directory(out) as tmp:
            if fmt == "jsonl":
                lines = (run_line(run, entity, project) for run in iter_runs(conn, run_ids))
                _write_jsonl(tmp / RUNS_FILE, (dumps(line) for line in lines))
            else:
                _write_table(tmp / f"runs.{fmt}", _RunsTable(conn, run_ids, entity, project))
            for run_id, name in keys:
                for stream in STREAMS:
                    target = tmp / stream / f"{file_stem(name)}.{fmt}"
                    counts[stream] += _export_stream(conn, run_id, stream, fmt, target)
    return ExchangeSummary(len(run_ids), counts["history"], counts["events"], out)


@contextmanager
def _new_directory(out: Path) -> Iterator[Path]:
    """A fresh directory beside ``out`` to write an export into, moved into place on success
    and removed on failure, so ``out`` never holds half an export.

    Into an existing directory, the export's entries replace those of the same name (a
    previous export's ``history/`` goes whole, so no stale file survives); other files stay.
    """
    tmp = out.parent / f".{out.name}.export-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise MirrorError(f"cannot create the export directory {out}: {_reason(exc)}") from None
    try:
        yield tmp
        if out.is_dir():
            for entry in tmp.iterdir():
                target = out / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                entry.replace(target)
            tmp.rmdir()
        else:
            tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MirrorError(f"cannot write the export to {out}: {_reason(exc)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _reason(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)


def file_stem(run_name: str) -> str:
    """A run id as a file name, for any id W&B accepts.

    Percent-encoded (``/`` and every non-ASCII character become ``%XX``), with a leading dot
    escaped too (``.x.jsonl`` would be a hidden file); an id that would make a name longer than
    file systems allow keeps a readable head and ends in ``+`` and a hash of the whole id
    (percent-encoding never writes ``+``, so the two kinds of name cannot collide).
    """
    stem = quote(run_name, safe="")
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    if len(stem) <= _STEM_CHARS:
        return stem
    digest = hashlib.sha256(run_name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    head = stem[: _STEM_CHARS - len(digest) - 1]
    cut = head.find("%", len(head) - 2)
    return f"{head[:cut] if cut >= 0 else head}+{digest}"


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


@dataclass(frozen=True)
class ImportSource:
    """A jsonl export whose every file has been checked: what :func:`import_dir` writes."""

    root: Path
    entity: str
    project: str
    names: frozenset[str]
    files: tuple[tuple[str, str, Path], ...]  # (stream, run name, path)


def check_source(in_dir: str | Path) -> ImportSource:
    """The export an import reads, every line of every file checked, or a MirrorError naming
    the first problem (``FILE:LINE: ...``).

    The command line calls this before it opens the database, so that an import that cannot
    succeed (a mistyped path, a bad line anywhere) creates no database either.
    """
    root = Path(in_dir)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise MirrorError(f"{root} {what}; import expects a directory written by export")
    if not (root / RUNS_FILE).is_file():
        raise MirrorError(_missing_runs_file(root))
    entity, project, names = _check_runs_file(root / RUNS_FILE)
    files = _stream_files(root, names)
    for stream, _name, path in files:
        _check_rows_file(path, f"{stream}/{path.name}")
    return ImportSource(root, entity, project, frozenset(names), tuple(files))


def import_dir(engine: Engine, source: str | Path | ImportSource) -> ExchangeSummary:
    """Load a jsonl export into the mirror: runs are upserted, history appended after what is there.

    All or nothing: every file is checked before anything is written (:func:`check_source`),
    and a bad line anywhere (naming its file and line) leaves the mirror as it was. Importing
    into a mirror that already holds the project updates its runs in place and adds only rows
    past each run's last stored step, so importing twice changes nothing.

    The writing is staged so that no transaction holds the database's write lock for long (a
    sync or a ``seed`` waits its turn between batches instead of failing after the busy timeout):
    the runs and their rows go first into hidden staging rows, in batches of about a second
    each, then one short transaction makes them the project's (see :class:`_Staging`).
    """
    checked = source if isinstance(source, ImportSource) else check_source(source)
    staging = _Staging(engine, checked.entity, checked.project)
    try:
        for node in _nodes(checked.root / RUNS_FILE):
            staging.add_run(node)
        staging.flush_runs()
        for stream, name, path in checked.files:
            label = f"{stream}/{path.name}"
            staging.add_rows(name, (row for _n, row in _parsed_lines(path, label)), stream)
        staging.flush_rows()
        added = staging.swap()
    except BaseException:
        staging.discard()
        raise
    staging.clean_up()
    analyze_if_stale(engine)
    return ExchangeSummary(len(checked.names), added["history"], added["events"], checked.root)


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


#: a lone surrogate can only come from a ``\\udXXX`` escape: valid UTF-8 cannot encode one
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parsed_lines(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """``(line number, JSON value)`` for each non-blank line; a problem names the line."""
    for number, _text, value in _lines(path, label):
        yield number, value


def _lines(path: Path, label: str) -> Iterator[tuple[int, str, Any]]:
    """``(line number, text, JSON value)`` for each non-blank line; a problem names the line.

    Read as bytes and decoded line by line, so that a file that is not UTF-8 is reported at
    its line like any other bad line; text that is not Unicode (a lone surrogate escape) is
    refused here, since nothing can store it.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MirrorError(
                    f"{label}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte "
                    f"{exc.start + 1} of the line)"
                ) from None
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
            if _SURROGATE_ESCAPE.search(text):
                _check_unicode(value, f"{label}:{number}")
            yield number, text, value


def _check_unicode(value: dict[str, Any], where: str) -> None:
    try:
        dumps(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("utf-8", "backslashreplace").decode()
        raise MirrorError(
            f"{where}: holds {bad}, a lone UTF-16 surrogate, which is not text; "
            "write the character it stands for (or its pair) instead"
        ) from None


def _what(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


#: Run fields that must be text or null (``name`` and ``createdAt`` are checked on their own)
_TEXT_FIELDS = tuple(f for f in NODE_COLUMNS if f not in ("name", "createdAt", "historyLineCount"))
_OBJECT_FIELDS = (*(f for f in NODE_JSON_COLUMNS if f != "tags"), "user")
#: Run fields the store indexes for filters: their numbers must fit a float
_INDEXED_FIELDS = ("config", "summaryMetrics")
#: the shortest integer no float can hold has 309 digits (floats end near 1.8e308)
_LONG_NUMBER = re.compile(r"\d{309}")


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


def _beyond_float(value: Any, path: str) -> str | None:
    """Where a document holds an integer no float can hold (the index keeps numbers as floats,
    and W&B parses them as such), else None."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _beyond_float(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _beyond_float(item, f"{path}.{i}")
            if found is not None:
                return found
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        try:
            float(value)
        except OverflowError:
            digits = len(str(abs(value)))
            return (
                f"{path} is an integer of {digits} digits, beyond the range of a float "
                "(W&B cannot hold it either); write it as a string"
            )
    return None


def _check_runs_file(path: Path) -> tuple[str, str, set[str]]:
    """Validate every line of ``runs.jsonl``; returns its entity, project and run names."""
    project: tuple[str, str] | None = None
    names: set[str] = set()
    for number, text, line in _lines(path, RUNS_FILE):
        problem = run_problem(line)
        if problem is None and _LONG_NUMBER.search(text):
            found = (_beyond_float(line.get(f), f) for f in _INDEXED_FIELDS)
            problem = next((p for p in found if p is not None), None)
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
    """``(stream, run name, path)`` of every history/events file, each naming a known run.

    Files are matched by the name :func:`file_stem` gives each run of ``runs.jsonl``; a plain
    percent-decoded name is accepted too, as earlier versions wrote them.
    """
    stems = {file_stem(name): name for name in names}
    found: list[tuple[str, str, Path]] = []
    for stream in STREAMS:
        folder = root / stream
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
            name = stems.get(path.stem) or unquote(path.stem)
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


# ------------------------------------------------------------- staging

#: how long one staging transaction should hold the write lock (batches adapt to it)
BATCH_SECONDS = 0.5
#: the pause after that much time holding the lock: SQLite's busy handler sleeps up to 100 ms
#: between tries, so a writer waiting meanwhile would otherwise lose every race to the next batch
YIELD_SECONDS = 0.15
#: rows appended to one run per staging transaction
ROWS_PER_TRANSACTION = 20_000
#: staging rows an interrupted import left behind are removed by the next import after this
STALE_STAGING_S = 24 * 3600
_STAGED_PREFIX = "~import:"
_STAGED_NAME = re.compile(r"~import:[0-9a-f]{16}:\d+")


@dataclass
class _Staged:
    """One imported run's staging row: ``row`` (hidden), and the live run it updates, if any."""

    row: int
    full: bool  # holds the run's final columns and index (else only its new rows)
    target: int | None = None  # the existing run's row id
    synced_at: str | None = None  # the existing run's, when staged: a change means a writer
    last_steps: dict[str, int | None] = dataclasses.field(default_factory=dict)
    rows: dict[str, int] = dataclasses.field(default_factory=dict)  # rows staged per stream
    fields: frozenset[str] = frozenset()  # the node's fields (for a replay)


class _Staging:
    """An import written as hidden rows of the target project, then made live at once.

    A staging row is a tombstoned run of the project named ``~import:<token>:<n>``: readers
    never list tombstones, and being in the project, its index rows use the project's field
    keys, so making a new run live is a rename. A run the mirror already holds is staged with
    its stored fields merged with the imported ones (or with no fields at all when those are
    unchanged), and the swap moves the staged values and rows onto it, so its row id, edits and
    sync state stay. Should another writer have touched that run meanwhile, the swap replays
    the import of that run on top instead.
    """

    def __init__(self, engine: Engine, entity: str, project: str) -> None:
        self.engine = engine
        self.entity = entity
        self.project = project
        self.token = secrets.token_hex(8)
        self.staged: dict[str, _Staged] = {}
        self._pending: list[dict[str, Any]] = []
        self._buffer: list[tuple[_Staged, str, list[dict[str, Any]], int]] = []
        self._buffered = 0  # rows in the buffer
        self._batch = 10
        self._count = 0
        self._held = 0.0
        with self._write() as conn:
            self.created = find_project(conn, entity, project) is None
            self.project_id = ensure_project(conn, entity, project)
            self._drop_stale(conn)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A staging transaction; once they have held the lock for BATCH_SECONDS in all, the
        next waits YIELD_SECONDS first, so that other writers take their turn in between."""
        if self._held >= BATCH_SECONDS:
            time.sleep(YIELD_SECONDS)
            self._held = 0.0
        with write_transaction(self.engine) as conn:
            started = time.monotonic()
            yield conn
        self._held += time.monotonic() - started

    # -- runs

    def add_run(self, node: dict[str, Any]) -> None:
        self._pending.append(node)
        if len(self._pending) >= self._batch:
            self.flush_runs()

    def flush_runs(self) -> None:
        """Stage the pending runs in one transaction, sized to take about BATCH_SECONDS."""
        if not self._pending:
            return
        started = time.monotonic()
        with self._write() as conn:
            self._stage(conn, self._pending)
        elapsed = max(time.monotonic() - started, 1e-3)
        self._batch = max(1, min(1000, int(len(self._pending) * BATCH_SECONDS / elapsed)))
        self._pending = []

    def _stage(self, conn: Connection, nodes: list[dict[str, Any]]) -> None:
        names = [node["name"] for node in nodes]
        existing = {
            row["name"]: row
            for row in conn.execute(
                select(runs).where(runs.c.project_id == self.project_id, runs.c.name.in_(names))
            ).mappings()
        }
        staged_nodes: dict[str, dict[str, Any]] = {}
        plans: dict[str, _Staged] = {}
        for node in nodes:
            name = node["name"]
            self._count += 1
            hidden = f"{_STAGED_PREFIX}{self.token}:{self._count}"
            current = existing.get(name)
            fields = frozenset(node)
            if current is None:
                real_id = node.get("id") or storage_id(self.entity, self.project, name)
                staged_nodes[hidden] = {**node, "name": hidden, "id": real_id}
                plans[name] = _Staged(0, True, fields=fields)
                continue
            merged = {**_node_of(current), **node}
            changed = _changed(current, run_columns(self.entity, self.project, merged))
            plan = _Staged(0, changed, current["id"], current["synced_at"], fields=fields)
            plan.last_steps = {s: last_step(conn, current["id"], s) for s in STREAMS}
            staged_nodes[hidden] = {**merged, "name": hidden} if changed else {"name": hidden}
            plans[name] = plan
        ids = upsert_runs(conn, self.entity, self.project, list(staged_nodes.values()))
        conn.execute(
            update(runs).where(runs.c.id.in_(list(ids.values()))).values(deleted_at=utcnow())
        )
        for (name, plan), hidden in zip(plans.items(), staged_nodes, strict=True):
            plan.row = ids[hidden]
            self.staged[name] = plan

    # -- rows

    def add_rows(self, name: str, rows: Iterable[dict[str, Any]], stream: str) -> None:
        """Stage a run's rows past its last mirrored step. Rows of many runs share a staging
        transaction of up to ROWS_PER_TRANSACTION rows (a project of small runs is a few
        transactions, not one per file); a longer stream is split across several."""
        plan = self.staged[name]
        after = plan.last_steps.get(stream)
        start = 0
        pending: list[dict[str, Any]] = []
        for step, row in number_rows(rows):
            if after is not None and step <= after:
                continue
            if not pending:
                start = step
            pending.append(row)
            if self._buffered + len(pending) >= ROWS_PER_TRANSACTION:
                self._buffer.append((plan, stream, pending, start))
                self.flush_rows()
                pending = []
        if pending:
            self._buffer.append((plan, stream, pending, start))
            self._buffered += len(pending)

    def flush_rows(self) -> None:
        """Stage the buffered rows in one transaction."""
        if not self._buffer:
            return
        with self._write() as conn:
            items = [(plan.row, stream, rows, start) for plan, stream, rows, start in self._buffer]
            added = append_histories(conn, items)
        for (plan, stream, _rows, _start), count in zip(self._buffer, added, strict=True):
            plan.rows[stream] = plan.rows.get(stream, 0) + count
        self._buffer, self._buffered = [], 0

    # -- the swap

    def swap(self) -> dict[str, int]:
        """Make every staged run live in one transaction; returns the rows added per stream."""
        added = {stream: 0 for stream in STREAMS}
        with write_transaction(self.engine) as conn:
            self._rename_new(conn)
            for name, plan in self.staged.items():
                if plan.target is None:  # the staged row is the run now
                    for stream in STREAMS:
                        added[stream] += plan.rows.get(stream, 0)
                    continue
                for stream, count in self._merge(conn, name, plan).items():
                    added[stream] += count
        return added

    def _rename_new(self, conn: Connection) -> None:
        """Give the staging rows of new runs their names (one prepared update), except where
        another writer made a run of that name meanwhile: the import is replayed onto it."""
        new = {name: plan for name, plan in self.staged.items() if plan.target is None}
        taken = run_ids(conn, self.project_id, list(new))
        now = utcnow()
        renames = []
        for name, plan in new.items():
            if name in taken:
                plan.target = taken[name]
                plan.synced_at = None  # never equal to the row's: replay
            else:
                renames.append((plan.row, name, None, now))
        update_rows(conn, runs, "id", ("name", "deleted_at", "synced_at"), renames)

    def _merge(self, conn: Connection, name: str, plan: _Staged) -> dict[str, int]:
        """Move a staged run's values and rows onto the live run it updates."""
        target = plan.target
        assert target is not None
        current = conn.execute(select(runs).where(runs.c.id == target)).mappings().one()
        staged = conn.execute(select(runs).where(runs.c.id == plan.row)).mappings().one()
        if current["synced_at"] != plan.synced_at:
            node = {k: v for k, v in _node_of(staged).items() if k in plan.fields}
            upsert_runs(conn, self.entity, self.project, [{**node, "name": name}])
        elif plan.full:
            values = {c: staged[c] for c in _VALUE_COLUMNS}
            values.update(deleted_at=None, synced_at=utcnow())
            conn.execute(update(runs).where(runs.c.id == target).values(**values))
            _move_index(conn, plan.row, target)
        elif current["deleted_at"] is not None:  # seen again: live
            conn.execute(update(runs).where(runs.c.id == target).values(deleted_at=None))
        added: dict[str, int] = {}
        for stream in STREAMS:
            if not plan.rows.get(stream):
                continue
            if last_step(conn, target, stream) == plan.last_steps.get(stream):
                conn.execute(
                    update(history_chunks)
                    .where(history_chunks.c.run_id == plan.row, history_chunks.c.stream == stream)
                    .values(run_id=target)
                )
                added[stream] = plan.rows[stream]
            else:
                rows = iter_rows(conn, plan.row, stream)
                added[stream] = append_history(conn, target, list(rows), stream)
        return added

    # -- cleaning up

    def clean_up(self) -> None:
        """Delete the staging rows whose values went onto existing runs (batch by batch)."""
        self._delete([plan.row for plan in self.staged.values() if plan.target is not None])

    def discard(self) -> None:
        """Undo a failed import: its staging rows go, and the project if the import made it."""
        self._pending = []
        self._delete([plan.row for plan in self.staged.values()])
        if self.created:
            with self._write() as conn:
                left = conn.execute(
                    select(func.count()).where(runs.c.project_id == self.project_id)
                ).scalar_one()
                if not left:
                    conn.execute(
                        delete(field_keys).where(field_keys.c.project_id == self.project_id)
                    )
                    conn.execute(delete(projects).where(projects.c.id == self.project_id))

    def _delete(self, rows: list[int]) -> None:
        for start in range(0, len(rows), 50):
            part = rows[start : start + 50]
            with self._write() as conn:
                _delete_runs(conn, part)

    def _drop_stale(self, conn: Connection) -> None:
        """Remove what imports interrupted long ago left (by a kill or a crash)."""
        cutoff = datetime.fromtimestamp(time.time() - STALE_STAGING_S, timezone.utc)
        old = conn.execute(
            select(runs.c.id, runs.c.name).where(
                runs.c.project_id == self.project_id,
                runs.c.deleted_at.is_not(None),
                runs.c.name.like(f"{_STAGED_PREFIX}%"),
                runs.c.synced_at < cutoff.replace(tzinfo=None).isoformat(timespec="seconds"),
            )
        ).all()
        _delete_runs(conn, [row.id for row in old if _STAGED_NAME.fullmatch(row.name)])


#: the columns that hold a run's values (what a swap copies onto an existing run)
_VALUE_COLUMNS = tuple(
    c.name for c in runs.columns if c.name not in ("id", "project_id", "name", "deleted_at")
)


def _node_of(row: RowMapping) -> dict[str, Any]:
    """A stored run as the W&B node that would store it again."""
    node: dict[str, Any] = {field: row[column] for field, column in NODE_COLUMNS.items()}
    node.update({field: row[column] for field, column in NODE_JSON_COLUMNS.items()})
    node["user"] = {"name": row["user_name"], "username": row["username"]}
    return node


def _changed(row: RowMapping, columns: dict[str, Any]) -> bool:
    """Whether writing ``columns`` would change the stored run (its sync time aside)."""
    return any(row[column] != value for column, value in columns.items())


def _move_index(conn: Connection, source: int, target: int) -> None:
    """Make ``source``'s index rows ``target``'s (its own go first)."""
    conn.execute(delete(run_fields).where(run_fields.c.run_id == target))
    conn.execute(update(run_fields).where(run_fields.c.run_id == source).values(run_id=target))


def _delete_runs(conn: Connection, ids: list[int]) -> None:
    """Delete staging rows outright, with their index rows and history."""
    if not ids:
        return
    conn.execute(delete(run_fields).where(run_fields.c.run_id.in_(ids)))
    conn.execute(delete(history_chunks).where(history_chunks.c.run_id.in_(ids)))
    conn.execute(delete(runs).where(runs.c.id.in_(ids)))
