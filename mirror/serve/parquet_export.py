"""W&B's parquet history exports, played back: files written on demand, served by signed URLs.

W&B exports a finished run's history to parquet some hours after its last heartbeat, and since SDK
0.27.1 ``scan_history`` reads those files (``parquetHistory { parquetUrls liveData }``) instead of
paging ``HistoryPage``. A stand-in for W&B must offer the same path, or the client code that reads
it (wandb-core ``core/internal/runhistoryreader/``) is never exercised in tests and benchmarks.

What wandb-core does with an answer, and so what the files must look like:

* ``liveData`` lists the steps not in the files; its smallest ``_step`` is the export boundary.
  A page of steps reaching past it is also asked of ``HistoryPage``; with no live steps and at
  least one file, the files alone answer (``reader.go``, ``livedata.go``).
* Every file is scanned for every page, rows are merged and sorted by ``_step``; a file must hold
  rows in increasing ``_step`` (the Rust reader stops at the first step past the page). Without
  keys the files are downloaded whole (GET) to ``$WANDB_CACHE_DIR`` as
  ``{entity}_{project}_{run}_{i}.runhistory.parquet``; with keys they are read in place with
  HEAD (for ``Content-Length``) and ranged GETs (206), so both are served.
* Each row comes back with every column of its file: a null is a key with ``None``. A key a row
  does not have must therefore not be a column of its file, so rows are split into files by
  their set of keys: each file holds rows with one key set, and missing keys stay missing.
* Values go through Go and W&B's JSON emitter (``simplejsonext``): int64 → int, float64 → the
  shortest ``%g`` text (so 2.0 and 2 both come back as 2, as on the ``HistoryPage`` path, and
  1e6 as a float), NaN/±Infinity as tokens Python parses, structs and maps → objects, lists →
  lists. Column types are chosen so that each value comes back as ``HistoryPage`` would give it:
  ints as int64; floats, and ints below 10^6 mixed with floats, as float64; ints beyond int64 as
  float64 (Go reads those as floats too); objects as structs (an empty one as an empty map).
  Rows that cannot be written exactly (a list mixing strings and numbers, no integral
  ``_step``, ...) leave the whole run unexported: it keeps the live path, which is exact.

Exports are kept under a directory, one per run and state of its history, written into a
temporary directory renamed into place (a reader never sees half an export), and reused while the
rows they hold are unchanged and the run's ``heartbeatAt`` is the one exported; rows appended
after the boundary are answered as ``liveData``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from mirror.serve import options
from mirror.serve.chunk_cache import ChunkCache
from mirror.store.engine import default_db_path, sqlite_path
from mirror.store.fields import dumps, strict_json
from mirror.store.read import ChunkSpan, chunk_spans, iter_chunks, load_chunk, window

log = logging.getLogger("mirror.serve")

ENV_PREFIX = "WANDB_MIRROR_SERVE_PARQUET_"
URL_PATH = "/parquet/"
DEFAULT_URL_TTL = 3600.0
DEFAULT_FILE_ROWS = 10_000
#: distinct column layouts (key set + types) open at once before a run counts as unexportable
MAX_LAYOUTS = 64
MANIFEST = "manifest.json"
_FORMAT = 1
_STALE_TMP_S = 3600.0


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetConfig:
    """Export settings; without ``export_delay`` nothing is exported (``parquetUrls`` stay [])."""

    export_delay: float | None = None  # seconds after a finished run's last heartbeat
    directory: Path | None = None  # None: ``<database file>.parquet`` next to the database
    url_ttl: float = DEFAULT_URL_TTL  # seconds a signed URL stays valid
    file_rows: int = DEFAULT_FILE_ROWS  # rows per file at most

    @property
    def enabled(self) -> bool:
        """Whether finished runs are exported at all."""
        return self.export_delay is not None


def _seconds(text: str, problem: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{problem}, not {text!r}")
    return value


def parse_non_negative(text: str) -> float:
    """Seconds, zero or more."""
    problem = "must be a number of seconds, zero or more"
    value = _seconds(text, problem)
    if value < 0:
        raise ValueError(f"{problem}, not {text!r}")
    return value


def parse_positive(text: str) -> float:
    """Seconds, more than zero."""
    problem = "must be a number of seconds greater than zero"
    value = _seconds(text, problem)
    if value <= 0:
        raise ValueError(f"{problem}, not {text!r}")
    return value


def parse_row_count(text: str) -> int:
    """A whole number of rows, one or more."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number of rows, one or more, not {text!r}") from None
    if value < 1:
        raise ValueError(f"must be a whole number of rows, one or more, not {text!r}")
    return value


def parse_directory(text: str) -> Path:
    """A directory path (created when needed)."""
    if not text.strip():
        raise ValueError("must be a directory path, not empty")
    return Path(text).expanduser()


#: option name (after ``--parquet-``) → (ParquetConfig field, parser)
OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "export-delay": ("export_delay", parse_non_negative),
    "dir": ("directory", parse_directory),
    "url-ttl": ("url_ttl", parse_positive),
    "file-rows": ("file_rows", parse_row_count),
}


def env_name(option: str) -> str:
    """``"export-delay"`` → ``"WANDB_MIRROR_SERVE_PARQUET_EXPORT_DELAY"``."""
    return options.env_name(ENV_PREFIX, option)


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The export settings given in the environment, parsed, by ParquetConfig field name."""
    return options.from_env(ENV_PREFIX, OPTIONS, environ)


# --- signed URLs -----------------------------------------------------------------------------


class TokenError(Exception):
    """A URL token that is forged, tampered with or expired (answered 403)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UrlSigner:
    """Tokens naming one export file until an expiry, signed with HMAC-SHA256.

    The secret is random per process, like a pre-signed object-store URL's credentials: the URLs
    need no API key, cannot be forged or edited, and stop working at the expiry (or a restart).
    """

    def __init__(
        self, ttl: float, secret: bytes | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl = ttl
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def sign(self, relpath: str) -> str:
        """A token for ``relpath`` (inside the export directory), valid for ``ttl`` seconds."""
        expires_ms = int((self._clock() + self.ttl) * 1000)
        payload = f"{_FORMAT}|{expires_ms}|{relpath}".encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str) -> str:
        """The relative path a token names; raises TokenError when forged or expired."""
        encoded, dot, signature = token.partition(".")
        try:
            payload = _unb64(encoded)
            given = _unb64(signature)
        except ValueError:
            raise TokenError("invalid signature") from None
        if not dot or not hmac.compare_digest(given, self._mac(payload)):
            raise TokenError("invalid signature")
        version, _, rest = payload.decode().partition("|")
        expires, _, relpath = rest.partition("|")
        if version != str(_FORMAT) or not expires.isdigit():
            raise TokenError("invalid signature")
        if int(expires) <= self._clock() * 1000:
            raise TokenError("the URL has expired")
        return relpath


# --- column types ----------------------------------------------------------------------------
#
# A value's type is a small tuple tree: ("null",) ("bool",) ("int", small) ("float",) ("str",)
# ("empty",) for {}, ("list", element) and ("struct", ((key, type), ...)). ``small`` says an int
# prints the same as a float64 through Go's %g (|v| < 10^6), so it may share a float column.

_T = tuple[Any, ...]
NULL: _T = ("null",)
BOOL: _T = ("bool",)
FLOAT: _T = ("float",)
STR: _T = ("str",)
EMPTY: _T = ("empty",)
_INT64 = (-(2**63), 2**63 - 1)


class Unexportable(ValueError):
    """History that no parquet layout reads back exactly."""


def value_type(value: Any) -> _T:
    """The column type that gives ``value`` back exactly; Unexportable when there is none."""
    kind = type(value)
    if kind is float:
        return FLOAT
    if kind is int:
        if not _INT64[0] <= value <= _INT64[1]:
            return FLOAT  # Go's JSON parser reads such ints as floats too
        return ("int", -1_000_000 < value < 1_000_000)
    if kind is str:
        return STR
    if value is None:
        return NULL
    if kind is bool:
        return BOOL
    if kind is list:
        element = NULL
        for item in value:
            merged = unify(element, value_type(item))
            if merged is None:
                raise Unexportable(f"a list mixes types: {dumps(value)[:80]}")
            element = merged
        return ("list", element)
    if kind is dict:
        if not value:
            return EMPTY
        return ("struct", tuple((k, value_type(v)) for k, v in value.items()))
    raise Unexportable(f"cannot write a {kind.__name__} value")


def unify(a: _T, b: _T) -> _T | None:
    """One type holding values of both, each read back as it was; None when there is none."""
    if a == b:
        return a
    if a is NULL or a == NULL:
        return b
    if b == NULL:
        return a
    ka, kb = a[0], b[0]
    if ka == "int" and kb == "int":
        return ("int", a[1] and b[1])
    if {ka, kb} == {"int", "float"}:
        small = a[1] if ka == "int" else b[1]
        return FLOAT if small else None
    if ka == kb == "list":
        element = unify(a[1], b[1])
        return None if element is None else ("list", element)
    if ka == kb == "struct":
        theirs = dict(b[1])
        if len(theirs) != len(a[1]) or any(k not in theirs for k, _ in a[1]):
            return None  # a key missing on one side would come back as null
        fields = []
        for key, mine in a[1]:
            merged = unify(mine, theirs[key])
            if merged is None:
                return None
            fields.append((key, merged))
        return ("struct", tuple(fields))
    return None


def arrow_type(t: _T) -> Any:
    """The Arrow type written for a column type (pyarrow is imported on first use: a server
    without exports starts without it)."""
    import pyarrow as pa

    kind = t[0]
    if kind == "float":
        return pa.float64()
    if kind == "int":
        return pa.int64()
    if kind == "str":
        return pa.string()  # not large_string: the Rust reader decodes Utf8 only
    if kind == "bool":
        return pa.bool_()
    if kind == "null":
        return pa.null()
    if kind == "empty":
        return pa.map_(pa.string(), pa.null())
    if kind == "list":
        return pa.list_(arrow_type(t[1]))
    return pa.struct([pa.field(k, arrow_type(sub)) for k, sub in t[1]])


def _coerce(value: Any, t: _T) -> Any:
    """``value`` as pyarrow takes it for type ``t`` (ints beyond int64 into float columns)."""
    if value is None:
        return None
    kind = t[0]
    if kind == "float":
        return float(value)
    if kind == "list":
        return [_coerce(v, t[1]) for v in value]
    if kind == "struct":
        return {k: _coerce(value[k], sub) for k, sub in t[1]}
    return value


def _column(values: list[Any], t: _T) -> Any:
    import pyarrow as pa

    try:
        return pa.array(values, type=arrow_type(t))
    except (pa.ArrowInvalid, OverflowError):
        return pa.array([_coerce(v, t) for v in values], type=arrow_type(t))


# --- planning and writing an export ----------------------------------------------------------
#
# The store keeps history as columnar chunks (``mirror.store.history``): typed int64/float64
# buffers with presence masks, and JSON lists for anything else. A file is planned from those
# columns directly: rows of a chunk are grouped by the set of keys they hold (from the masks),
# and each group becomes a *piece*: per key, a numpy array or a list of values, with its type.
# Only the JSON columns and odd groups (ints of 10^6 or more among floats) are looked at value
# by value, so a 100,000-step run is exported in about a second.

Piece = dict[str, Any]  # key → np.ndarray | list of values, all of one length


@dataclass
class _Layout:
    """Pieces bound for one file: one key set, column types that hold all of them."""

    order: list[str]
    types: dict[str, _T]
    pieces: list[Piece] = field(default_factory=list)
    first_step: int = 0
    count: int = 0

    def admit(self, types: Mapping[str, _T]) -> bool:
        """Widen the column types to take ``types`` too; False (unchanged) when impossible."""
        merged = {}
        for key, t in types.items():
            mine = self.types[key]
            if mine == t:
                continue
            both = unify(mine, t)
            if both is None:
                return False
            merged[key] = both
        self.types.update(merged)
        return True


def _piece_len(piece: Piece) -> int:
    return len(piece["_step"])


def _slice(piece: Piece, start: int, stop: int | None = None) -> Piece:
    return {k: v[start:stop] for k, v in piece.items()}


class _Planner:
    """Collects pieces into layouts and hands out full files in step order."""

    def __init__(self, file_rows: int) -> None:
        self.file_rows = file_rows
        self.open: dict[frozenset[str], list[_Layout]] = {}
        self.count = 0

    def add(self, order: list[str], types: dict[str, _T], piece: Piece) -> Iterator[_Layout]:
        """Place one piece (rows with one key set, ascending steps); yields layouts filled up."""
        candidates = self.open.setdefault(frozenset(order), [])
        while _piece_len(piece):
            target = next((lay for lay in candidates if lay.admit(types)), None)
            if target is None:
                if self.count >= MAX_LAYOUTS:
                    raise Unexportable(f"more than {MAX_LAYOUTS} column layouts at once")
                target = _Layout(list(order), dict(types), first_step=int(piece["_step"][0]))
                candidates.append(target)
                self.count += 1
            room = self.file_rows - target.count
            taken, piece = _slice(piece, 0, room), _slice(piece, room)
            target.pieces.append(taken)
            target.count += _piece_len(taken)
            if target.count >= self.file_rows:
                candidates.remove(target)
                self.count -= 1
                yield target

    def rest(self) -> list[_Layout]:
        """The layouts still open, by first step."""
        pending = [lay for layouts in self.open.values() for lay in layouts]
        return sorted(pending, key=lambda lay: lay.first_step)


def _int_type(values: Any) -> _T:
    import numpy as np

    small = values.size == 0 or bool(np.abs(values).max() < 1_000_000)
    return ("int", small)


def _numeric_piece(col: Any, where: Any) -> tuple[_T, Any] | None:
    """An int64/float64 column's values at ``where`` and their type; None when ints of 10^6 or
    more sit among floats there (no single column gives both back)."""
    import numpy as np

    values = col.values[where]
    if col.kind == "i":
        return _int_type(values), values
    if col.ints is None:
        return FLOAT, values
    flags = col.ints[where]
    if not flags.any():
        return FLOAT, values
    if flags.all():
        ints = values.astype(np.int64)
        return _int_type(ints), ints
    if np.abs(values[flags]).max() < 1_000_000:
        return FLOAT, values
    return None


def _steps(col: Any) -> Any:
    """The chunk's ``_step`` values as int64; Unexportable unless every row has a whole one."""
    import numpy as np

    if col.mask is not None:
        raise Unexportable("a row without _step")
    if col.kind == "i":
        return col.values
    if col.kind == "f":
        values = col.values
        if not (np.isfinite(values).all() and (values == np.floor(values)).all()):
            raise Unexportable("a fractional _step")
        return values.astype(np.int64)  # wandb-core makes a float _step from HistoryPage an int
    steps = []
    for step in col.values:
        if type(step) is int:
            steps.append(step)
        elif type(step) is float and math.isfinite(step) and step.is_integer():
            steps.append(int(step))
        else:
            raise Unexportable(f"a row without an integral _step: {step!r}")
    return np.asarray(steps, dtype=np.int64)


def _chunk_pieces(chunk: Any, steps: Any) -> Iterator[tuple[list[str], dict[str, _T], Piece]]:
    """A decoded chunk's rows as pieces, one per set of keys, in step order within each."""
    import numpy as np

    n = chunk.n
    masked = [k for k, col in chunk.columns.items() if col.mask is not None]
    if masked:
        presence = np.stack([chunk.columns[k].mask for k in masked], axis=1)
        codes = np.packbits(presence, axis=1)
        _unique, group_of = np.unique(codes, axis=0, return_inverse=True)
        group_of = group_of.reshape(-1)
        by_group = np.argsort(group_of, kind="stable")  # rows of each group stay in step order
        groups = np.split(by_group, np.cumsum(np.bincount(group_of))[:-1])
        groups.sort(key=lambda rows: int(rows[0]))
    else:
        groups = [np.arange(n)]
    positions = {
        k: np.cumsum(chunk.columns[k].mask) - 1 for k in masked
    }  # row → index among the column's present values
    for rows in groups:
        first = int(rows[0])
        order = [k for k, col in chunk.columns.items() if col.mask is None or bool(col.mask[first])]
        yield from _group_pieces(chunk, order, rows, positions, steps)


def _group_pieces(
    chunk: Any, order: list[str], rows: Any, positions: dict[str, Any], steps: Any
) -> Iterator[tuple[list[str], dict[str, _T], Piece]]:
    types: dict[str, _T] = {"_step": ("int", False)}
    piece: Piece = {"_step": steps[rows]}
    for key in order:
        if key == "_step":
            continue
        col = chunk.columns[key]
        where = rows if col.mask is None else positions[key][rows]
        if col.kind in ("i", "f"):
            found = _numeric_piece(col, where)
            if found is None:
                yield from _row_pieces(chunk, order, rows, positions, steps)
                return
            types[key], piece[key] = found
            continue
        values = [col.values[i] for i in where.tolist()]
        kind: _T | None = NULL
        for value in values:
            kind = unify(kind, value_type(value))
            if kind is None:
                yield from _row_pieces(chunk, order, rows, positions, steps)
                return
        types[key], piece[key] = kind, values
    yield order, types, piece


def _row_pieces(
    chunk: Any, order: list[str], rows: Any, positions: dict[str, Any], steps: Any
) -> Iterator[tuple[list[str], dict[str, _T], Piece]]:
    """The slow way, for groups whose values do not share one type: one piece per row."""
    for r in rows.tolist():
        types: dict[str, _T] = {"_step": ("int", False)}
        piece: Piece = {"_step": steps[r : r + 1]}
        for key in order:
            if key == "_step":
                continue
            col = chunk.columns[key]
            i = r if col.mask is None else int(positions[key][r])
            value = col.values[i]
            if col.kind == "f" and col.ints is not None and col.ints[i]:
                value = int(value)
            elif col.kind != "j":
                value = value.item()
            types[key], piece[key] = value_type(value), [value]
        yield order, types, piece


def plan_files(chunks: Iterable[Any], file_rows: int) -> Iterator[_Layout]:
    """Split decoded chunks (in step order) into files.

    A file holds rows sharing one key set, at most ``file_rows`` of them, in increasing step,
    with column types that read every value back exactly. Raises Unexportable.
    """
    planner = _Planner(file_rows)
    last: int | None = None
    for chunk in chunks:
        if chunk.n == 0:
            continue
        if "_step" not in chunk.columns:
            raise Unexportable("a row without _step")
        steps = _steps(chunk.columns["_step"])
        if (last is not None and steps[0] <= last) or bool((steps[1:] <= steps[:-1]).any()):
            raise Unexportable("steps out of order")  # the reader stops at the first step past
        last = int(steps[-1])
        for order, types, piece in _chunk_pieces(chunk, steps):
            yield from planner.add(order, types, piece)
    yield from planner.rest()


def write_file(path: Path, layout: _Layout) -> None:
    """One parquet file of a layout's rows (every row holds every column)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for key in layout.order:
        t = layout.types[key]
        parts = [piece[key] for piece in layout.pieces]
        if t[0] in ("int", "float") and all(isinstance(p, np.ndarray) for p in parts):
            dtype = np.int64 if t[0] == "int" else np.float64
            arrays.append(pa.array(np.concatenate(parts).astype(dtype, copy=False)))
            continue
        values: list[Any] = []
        for part in parts:
            values.extend(part.tolist() if isinstance(part, np.ndarray) else part)
        arrays.append(_column(values, t))
    table = pa.Table.from_arrays(arrays, names=list(layout.order))
    pq.write_table(table, path, compression="zstd")


def _layout_steps(layout: _Layout) -> tuple[int, int]:
    return int(layout.pieces[0]["_step"][0]), int(layout.pieces[-1]["_step"][-1])


def _rows_digest(rows: Iterable[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(dumps(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """One export of a run: what it holds and the state of the history it was made from."""

    export_id: str
    storage_id: str
    heartbeat_at: str | None
    boundary: int | None  # first step not in the files (None: no rows were exported)
    rows: int
    spans: tuple[ChunkSpan, ...]  # the run's chunks when exported
    tail_digest: str | None  # rows of the last chunk, to tell an append from a rewrite
    files: tuple[dict[str, Any], ...]
    unexportable: str | None = None

    def to_json(self) -> str:
        doc = {
            "format": _FORMAT,
            "export_id": self.export_id,
            "storage_id": self.storage_id,
            "heartbeat_at": self.heartbeat_at,
            "boundary": self.boundary,
            "rows": self.rows,
            "spans": [[s.id, s.first_step, s.last_step, s.row_count] for s in self.spans],
            "tail_digest": self.tail_digest,
            "files": list(self.files),
            "unexportable": self.unexportable,
        }
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        doc = json.loads(text)
        if doc.get("format") != _FORMAT:
            raise ValueError("unknown manifest format")
        return cls(
            export_id=doc["export_id"],
            storage_id=doc["storage_id"],
            heartbeat_at=doc["heartbeat_at"],
            boundary=doc["boundary"],
            rows=doc["rows"],
            spans=tuple(ChunkSpan(*s) for s in doc["spans"]),
            tail_digest=doc["tail_digest"],
            files=tuple(doc["files"]),
            unexportable=doc.get("unexportable"),
        )


def heartbeat_epoch(text: str | None) -> float | None:
    """W&B's naive UTC ISO text as epoch seconds; None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def json_safe(value: Any) -> Any:
    """``value`` with NaN and ±Infinity as the strings W&B uses: Go's strict JSON rejects tokens."""
    return strict_json(value, "string")


NO_EXPORT: dict[str, list[Any]] = {"parquetUrls": [], "liveData": []}


class ParquetExports:
    """The export directory of one server: makes, validates, finds and signs exports."""

    def __init__(
        self, directory: Path, config: ParquetConfig, clock: Callable[[], float] = time.time
    ) -> None:
        if config.export_delay is None:
            raise ValueError("exports need an export delay")
        import pyarrow.parquet  # noqa: F401 - at start-up, not in the first export's request

        self.directory = directory
        self.config = config
        self.delay = config.export_delay
        self.signer = UrlSigner(config.url_ttl, clock=clock)
        self._clock = clock
        self._guard = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}
        self._current: dict[int, Manifest | None] = {}
        self._checked: dict[tuple[str, ChunkSpan], bool] = {}

    # -- eligibility and answers

    def eligible(self, run: Mapping[str, Any]) -> bool:
        """Finished, and its last heartbeat at least the export delay ago (W&B's lag)."""
        if run["state"] != "finished":
            return False
        beat = heartbeat_epoch(run["heartbeat_at"])
        return beat is not None and beat + self.delay <= self._clock()

    def parquet_history(
        self,
        conn: Connection,
        cache: ChunkCache,
        run: Mapping[str, Any],
        live_keys: Sequence[str],
        base_url: str,
    ) -> dict[str, list[Any]]:
        """``parquetHistory(liveKeys)`` for a run: signed file URLs, and the live steps after."""
        if not self.eligible(run):
            return NO_EXPORT
        manifest = self.export_for(conn, run)
        if manifest.unexportable is not None:
            return NO_EXPORT
        prefix = f"{_run_dir_name(run['id'])}/{manifest.export_id}/"
        urls = [
            base_url + URL_PATH + self.signer.sign(prefix + entry["name"])
            for entry in manifest.files
        ]
        live = [
            {key: row[key] for key in live_keys if key in row}
            for row in cache.window(conn, run["id"], "history", manifest.boundary, None)
        ]
        return {"parquetUrls": urls, "liveData": live}

    def locate(self, token: str) -> Path:
        """The file a URL token names; TokenError (403) or FileNotFoundError (404)."""
        relpath = self.signer.verify(token)
        parts = relpath.split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise TokenError("invalid signature")
        path = self.directory.joinpath(*parts)
        if not path.is_file():
            raise FileNotFoundError(relpath)
        return path

    # -- exports

    def export_for(self, conn: Connection, run: Mapping[str, Any]) -> Manifest:
        """The run's current export, made now when there is none for its present history."""
        run_id = run["id"]
        spans = chunk_spans(conn, run_id, "history")
        with self._run_lock(run_id):
            manifest = self._load_current(run)
            if manifest is not None and self._still_valid(conn, manifest, run, spans):
                return manifest
            manifest = self._export(conn, run, spans)
            with self._guard:
                self._current[run_id] = manifest
            return manifest

    def _run_lock(self, run_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(run_id, threading.Lock())

    def _load_current(self, run: Mapping[str, Any]) -> Manifest | None:
        run_id = run["id"]
        with self._guard:
            if run_id in self._current:
                found = self._current[run_id]
                if found is None or found.storage_id == run["storage_id"]:
                    return found
        found = None
        run_dir = self.directory / _run_dir_name(run_id)
        names = sorted(
            (p.name for p in _subdirs(run_dir) if not p.name.startswith(".")), reverse=True
        )
        for name in names:
            try:
                manifest = Manifest.from_json((run_dir / name / MANIFEST).read_text("utf-8"))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if manifest.storage_id == run["storage_id"] and manifest.export_id == name:
                found = manifest
                break
        with self._guard:
            self._current[run_id] = found
        return found

    def _still_valid(
        self, conn: Connection, manifest: Manifest, run: Mapping[str, Any], spans: list[ChunkSpan]
    ) -> bool:
        """Whether the exported rows are still the run's rows below the boundary.

        Chunks wholly below the boundary must be the same chunks; the last exported one may have
        been rewritten by an append (rows added after the boundary), which its digest tells
        from a rewrite of the exported rows. A newer heartbeat means the run ran again: W&B
        exports it again once the delay has passed.
        """
        if manifest.storage_id != run["storage_id"] or manifest.heartbeat_at != run["heartbeat_at"]:
            return False
        if manifest.unexportable is not None:
            return list(manifest.spans) == spans
        if manifest.boundary is None:
            return True  # nothing was exported: every row is live
        below = [s for s in spans if s.first_step < manifest.boundary]
        exported = list(manifest.spans)
        if len(below) != len(exported) or below[:-1] != exported[:-1]:
            return False
        if not below or below[-1] == exported[-1]:
            return True
        if below[-1].first_step != exported[-1].first_step:
            return False
        key = (manifest.export_id, below[-1])
        with self._guard:
            known = self._checked.get(key)
        if known is None:
            rows = window(load_chunk(conn, below[-1]).rows(), below[-1].first_step)
            boundary = manifest.boundary
            kept = (r for r in rows if _step_or_none(r) is not None and r["_step"] < boundary)
            known = _rows_digest(kept) == manifest.tail_digest
            with self._guard:
                if len(self._checked) > 4096:
                    self._checked.clear()
                self._checked[key] = known
        return known

    def _export(self, conn: Connection, run: Mapping[str, Any], spans: list[ChunkSpan]) -> Manifest:
        """Write the run's present history as a new export and make it the current one."""
        import pyarrow as pa

        started = time.perf_counter()
        now = self._clock()
        export_id = f"{int(now * 1000):013d}-{secrets.token_hex(3)}"
        run_dir = self.directory / _run_dir_name(run["id"])
        tmp = run_dir / f".tmp-{export_id}"
        tmp.mkdir(parents=True, exist_ok=True)
        files: list[dict[str, Any]] = []
        unexportable = None
        boundary = None
        count = 0
        tail_digest = None
        try:
            last_chunk: list[Any] = []

            def chunks() -> Iterator[Any]:
                for _span, chunk in iter_chunks(conn, run["id"], "history"):
                    last_chunk[:] = [(_span, chunk)]
                    yield chunk

            try:
                for layout in plan_files(chunks(), self.config.file_rows):
                    name = f"part-{len(files):05d}.parquet"
                    write_file(tmp / name, layout)
                    first, last = _layout_steps(layout)
                    files.append(
                        {
                            "name": name,
                            "rows": layout.count,
                            "first_step": first,
                            "last_step": last,
                            "columns": len(layout.order),
                            "bytes": (tmp / name).stat().st_size,
                        }
                    )
                    count += layout.count
                    boundary = last + 1 if boundary is None else max(boundary, last + 1)
            except (Unexportable, pa.ArrowException) as exc:
                unexportable = str(exc) or type(exc).__name__
                for entry in files:
                    (tmp / entry["name"]).unlink(missing_ok=True)
                files, count, boundary = [], 0, None
            last_rows = (
                list(window(last_chunk[0][1].rows(), last_chunk[0][0].first_step))
                if last_chunk
                else []
            )
            if unexportable is None and spans:
                tail_digest = _rows_digest(last_rows)
            manifest = Manifest(
                export_id=export_id,
                storage_id=run["storage_id"],
                heartbeat_at=run["heartbeat_at"],
                boundary=boundary,
                rows=count,
                spans=tuple(spans),
                tail_digest=tail_digest,
                files=tuple(files),
                unexportable=unexportable,
            )
            (tmp / MANIFEST).write_text(manifest.to_json(), "utf-8")
            os.replace(tmp, run_dir / export_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        elapsed = time.perf_counter() - started
        if unexportable is None:
            log.info(
                "exported run %s to parquet: %d rows in %d files, %.0fms",
                run["name"],
                count,
                len(files),
                elapsed * 1000,
            )
        else:
            log.info("run %s not exported to parquet: %s", run["name"], unexportable)
        self._prune(run_dir, export_id)
        return manifest

    def _prune(self, run_dir: Path, current: str) -> None:
        """Remove exports superseded longer than a URL lives, and abandoned temporary ones."""
        now = self._clock()
        names = sorted(p.name for p in _subdirs(run_dir) if not p.name.startswith("."))
        for older, newer in zip(names, names[1:], strict=False):
            if older == current:
                continue
            try:
                superseded_at = int(newer.split("-", 1)[0]) / 1000
            except ValueError:
                continue
            if superseded_at + self.config.url_ttl < now:
                shutil.rmtree(run_dir / older, ignore_errors=True)
        for path in _subdirs(run_dir):
            if path.name.startswith(".tmp-"):
                try:
                    if path.stat().st_mtime + _STALE_TMP_S < now:
                        shutil.rmtree(path, ignore_errors=True)
                except OSError:
                    pass


def _step_or_none(row: dict[str, Any]) -> int | None:
    step = row.get("_step")
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else None


def _run_dir_name(run_id: int) -> str:
    return f"run-{run_id}"


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def default_directory(database_url: str) -> Path:
    """Where a server's exports go without ``--parquet-dir``.

    Beside an SQLite file, as ``<file>.parquet``, so that they move and go with it. A server
    database (PostgreSQL) has no file to sit beside, so its exports go to the XDG data
    directory, ``wandb-mirror/parquet/<host>-<port>-<database>``: one directory per database,
    so that two mirrors on one machine never share (nor overwrite) each other's exports, and
    the same one again after a restart, so that files already written are served rather than
    exported anew.
    """
    file = sqlite_path(database_url)
    if file is not None:
        return file.with_name(file.name + ".parquet")
    parsed = make_url(database_url)
    parts = (parsed.host or "local", str(parsed.port or "default"), parsed.database or "default")
    key = "-".join(_UNSAFE.sub("_", part) for part in parts)
    return default_db_path().parent / "parquet" / key


#: characters kept out of a directory name made from a database's host and name
_UNSAFE = re.compile(r"[^A-Za-z0-9._]")


__all__ = [
    "DEFAULT_FILE_ROWS",
    "DEFAULT_URL_TTL",
    "OPTIONS",
    "URL_PATH",
    "Manifest",
    "ParquetConfig",
    "ParquetExports",
    "TokenError",
    "UrlSigner",
    "Unexportable",
    "default_directory",
    "env_name",
    "from_env",
    "json_safe",
    "plan_files",
]
