"""Rendering query results for a terminal or a pipe: table, JSON lines, CSV, Parquet; and the
one rule for what ``--out`` may write over."""

from __future__ import annotations

import csv
import io
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mirror.errors import MirrorError
from mirror.store.fields import dumps, strict_json

DEFAULT_RUN_COLUMNS = ("id", "name", "state", "created_at", "group", "tags")


def run_value(run: Any, column: str) -> Any:
    """A run's value for a column: an attribute, ``config.<k>`` or ``summary.<k>`` (dotted)."""
    head, _, rest = column.partition(".")
    if head == "config" and rest:
        return _dig(run.config, rest)
    if head in ("summary", "summary_metrics") and rest:
        return _dig(run.summary, rest)
    return getattr(run, column, None)


def _dig(doc: Any, path: str) -> Any:
    if isinstance(doc, dict) and path in doc:
        return doc[path]
    head, _, rest = path.partition(".")
    if isinstance(doc, dict) and head in doc and rest:
        return _dig(doc[head], rest)
    return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def write_table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: IO[str]) -> None:
    """A plain aligned table, cells cut to fit a terminal."""
    width = max(40, shutil.get_terminal_size((120, 20)).columns)
    limit = max(8, width // max(1, len(header)) + 4)
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [[c if len(c) <= limit else c[: limit - 1] + "…" for c in row] for row in cells]
    widths = [len(h) for h in header]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def write_csv(rows: Iterable[Sequence[Any]], header: Sequence[str], out: IO[str]) -> None:
    """CSV with a header; nested values as JSON text, non-finite floats as nan/inf."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])


def write_jsonl(records: Iterable[dict[str, Any]], out: IO[str], nonfinite: str = "raw") -> None:
    """One JSON object per line. NaN and ±Infinity as ``nonfinite`` says: ``raw`` keeps the bare
    tokens W&B writes (Python reads them, jq and JavaScript do not), ``string`` and ``null``
    give standard JSON (see ``strict_json``)."""
    for record in records:
        out.write(dumps(record if nonfinite == "raw" else strict_json(record, nonfinite)) + "\n")


def write_parquet(records: Sequence[dict[str, Any]], out: IO[bytes]) -> None:
    """A Parquet table; columns of mixed types (media objects, strings) as JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {}
    for i, record in enumerate(records):
        for key in record:
            columns.setdefault(key, [None] * i)
        for key, values in columns.items():
            values.append(record.get(key))
    arrays = {}
    for key, values in columns.items():
        if any(isinstance(v, (dict, list)) for v in values):  # media objects, tables: JSON text
            values = [v if v is None else dumps(v) for v in values]
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed scalar types
            arrays[key] = pa.array([None if v is None else dumps(v) for v in values])
    buffer = io.BytesIO()
    pq.write_table(pa.table(arrays), buffer)
    out.write(buffer.getvalue())


def out_path(text: str, force: bool, directory: bool) -> Path:
    """Where ``--out`` writes, for ``export`` (a directory) and ``history`` (a file) alike.

    Nothing is written over without ``--force``: not a file, not a directory holding anything.
    An empty name is refused outright, since it would mean the current directory.
    """
    if not text.strip():
        raise MirrorError("--out needs a path, not an empty name")
    path = Path(text).expanduser()
    if directory and path.exists() and not path.is_dir():
        raise MirrorError(f"{path} is a file; --out names the directory to export into")
    if not directory and path.is_dir():
        raise MirrorError(f"{path} is a directory; --out names the file to write")
    taken = path.is_dir() and any(path.iterdir()) if directory else path.exists()
    if taken and not force:
        what = "is not empty" if directory else "exists"
        raise MirrorError(f"{path} {what}; give another --out, or --force to write over it")
    return path


@contextmanager
def replacing(path: Path, binary: bool) -> Iterator[IO[Any]]:
    """A file written beside ``path`` and moved over it once complete, so that a failure
    leaves ``path`` as it was (absent, or the file ``--force`` was going to replace)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        mode = "wb" if binary else "w"
        encoding = None if binary else "utf-8"
        with open(tmp, mode, encoding=encoding, newline=None if binary else "") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
