"""Columnar, compressed chunks of history rows: lossless, and fast to read back whole.

A chunk holds consecutive rows of one run's history (or system-metric events). Each key becomes
one column: a presence bitmap (sparse keys, gaps) plus its values, typed so that the common case
is a raw float64/int64 buffer numpy and pandas read without a Python loop:

* ``i``: every value an int (within int64);
* ``f``: every value a number; ints among floats are flagged by a second bitmap, so that ``1``
  logged as an int comes back an int and ``0.5`` a float. NaN and ±Infinity are plain IEEE
  values here;
* ``j``: anything else (strings, null, media objects, mixed types), as one JSON list.

Layout: ``zstd(u32 header length | header JSON | buffers...)``. Numeric buffers of at least
``SHUFFLE_MIN`` values are byte-shuffled (all first bytes, then all second bytes, ...), as
Parquet's ``BYTE_STREAM_SPLIT`` does, and int columns delta-encoded first: the sign, exponent and
high bytes of a metric that moves slowly then sit together, where the compressor finds their
repeats (``bench/README.md`` has the figures that chose zstd level 3 with shuffling over zlib).
Chunks written before that (schema 0004 and earlier) are ``zlib`` frames of the same layout
without shuffling; both are read alike.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson
import zstandard

from mirror.store.fields import dumps

CHUNK_ROWS = 10_000
_MISSING = object()  # a key a row does not hold (None is a value W&B can log)
_I64 = (-(2**63), 2**63 - 1)
#: zstd level 3: 6-11% smaller than zlib level 1 with shuffling, and faster both ways
LEVEL = 3
#: columns with fewer values stay as plain buffers: shuffling a handful of values saves a few
#: bytes and costs their reading more numpy calls than the values themselves
SHUFFLE_MIN = 64
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_local = threading.local()  # zstd contexts are not safe to share between threads


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    found = getattr(_local, "zstd", None)
    if found is None:
        found = _local.zstd = (zstandard.ZstdCompressor(level=LEVEL), zstandard.ZstdDecompressor())
    return found


def _shuffled(values: np.ndarray) -> bytes:
    """8-byte values as their byte planes: every value's byte 0, then every byte 1, ..."""
    return np.ascontiguousarray(values.view(np.uint8).reshape(-1, 8).T).tobytes()


@dataclass(frozen=True)
class Packed:
    """A numeric column's values as stored (byte planes, deltas), not yet unpacked.

    A lazily decoded chunk hands these out so that a reader assembling many chunks into one
    array unpacks each column straight into its place: one copy of every value, not one into
    the chunk's array and another into the result.
    """

    buf: memoryview
    dtype: str  # "<i8" or "<f8"
    shuffled: bool
    delta: bool

    def __len__(self) -> int:
        return len(self.buf) // 8

    def into(self, out: np.ndarray) -> None:
        """Unpack into ``out``: contiguous, of this dtype and length."""
        if self.shuffled:
            planes = np.frombuffer(self.buf, dtype=np.uint8).reshape(8, -1)
            # plane by plane: eight long strided copies run 1.6x faster than one transposing
            # copy, whose inner loop numpy runs over the eight bytes of each value
            interleaved = out.view(np.uint8).reshape(-1, 8)
            for i in range(8):
                interleaved[:, i] = planes[i]
        else:
            out[:] = np.frombuffer(self.buf, self.dtype)
        if self.delta:  # wraps around as the writer's deltas did
            np.cumsum(out, out=out)

    def array(self) -> np.ndarray:
        """The values as an array (a read-only view of the buffer when nothing is packed)."""
        if not self.shuffled and not self.delta:
            return np.frombuffer(self.buf, self.dtype)
        out = np.empty(len(self), self.dtype)
        self.into(out)
        return out


@dataclass(frozen=True)
class Column:
    """One key's values in one chunk. ``mask`` is None when every row has the key."""

    kind: str
    mask: np.ndarray | None
    values: Any  # ndarray for i/f (Packed in a lazily decoded chunk), list for j
    ints: np.ndarray | None = None  # for f: which present values were ints

    def unpacked(self) -> Column:
        """This column with its values as an array, whichever way its chunk was decoded."""
        if isinstance(self.values, Packed):
            return replace(self, values=self.values.array())
        return self

    def full(self, n: int) -> np.ndarray:
        """The column as ``n`` values, missing ones NaN (what pandas builds from row dicts)."""
        if isinstance(self.values, Packed):
            return self.unpacked().full(n)
        if self.kind == "j":
            out = np.empty(n, dtype=object)
            out[:] = np.nan
            if self.mask is None:
                out[:] = _object_array(self.values)
            else:
                out[self.mask] = _object_array(self.values)
            return out
        if self.mask is None:
            return self.values
        out = np.full(n, np.nan)
        out[self.mask] = self.values
        return out


def _object_array(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


@dataclass(frozen=True)
class Chunk:
    """A decoded chunk: ``n`` rows, keys in order of first appearance, one Column each."""

    n: int
    columns: dict[str, Column]

    def rows(self, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The rows as dicts, all ``n`` of them; with ``keys``, holding only those keys."""
        names = list(self.columns) if keys is None else [k for k in keys if k in self.columns]
        out: list[dict[str, Any]] = [{} for _ in range(self.n)]
        for name in names:
            col = self.columns[name]
            values = _python_values(col)
            where = range(self.n) if col.mask is None else np.flatnonzero(col.mask).tolist()
            for i, v in zip(where, values, strict=True):
                out[i][name] = v
        return out


def _python_values(col: Column) -> list[Any]:
    col = col.unpacked()
    if col.kind == "j":
        return col.values
    values = col.values.tolist()
    if col.kind == "f" and col.ints is not None:
        for i in np.flatnonzero(col.ints).tolist():
            values[i] = int(values[i])
    return values


def encode(rows: Sequence[dict[str, Any]]) -> bytes:
    """Pack rows into one chunk. Inverse of :func:`decode` (values, types and presence)."""
    n = len(rows)
    # Column by column: one list comprehension per key runs in C, where a loop over every
    # cell in Python costs microseconds each (a sync writes millions of cells).
    keys: dict[str, Any] = {}
    for row in rows:
        keys.update(row)  # only the keys matter: in order of first appearance
    columns: dict[str, tuple[list[Any], np.ndarray | None]] = {}
    for key in keys:
        column = [row.get(key, _MISSING) for row in rows]
        if column.count(_MISSING):
            present = np.array([v is not _MISSING for v in column], dtype=bool)
            columns[key] = ([v for v in column if v is not _MISSING], present)
        else:
            columns[key] = (column, None)
    header: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    offset = 0

    def add(buf: bytes) -> list[int]:
        nonlocal offset
        buffers.append(buf)
        span = [offset, len(buf)]
        offset += len(buf)
        return span

    for key, (values, mask) in columns.items():
        entry: dict[str, Any] = {"k": key}
        if mask is not None:
            entry["m"] = add(np.packbits(mask).tobytes())
        kind, ints = _column_kind(values)
        entry["t"] = kind
        if kind == "i" and len(values) >= SHUFFLE_MIN:
            # wraps around on overflow, and the running sum on reading wraps back
            deltas = np.diff(np.asarray(values, dtype="<i8"), prepend=np.int64(0))
            entry["v"] = add(_shuffled(deltas))
            entry["s"] = entry["d"] = 1
        elif kind == "i":
            entry["v"] = add(np.asarray(values, dtype="<i8").tobytes())
        elif kind == "f":
            floats = np.asarray(values, dtype="<f8")
            if len(values) >= SHUFFLE_MIN:
                entry["v"] = add(_shuffled(floats))
                entry["s"] = 1
            else:
                entry["v"] = add(floats.tobytes())
            if ints is not None:
                entry["n"] = add(np.packbits(ints).tobytes())
        else:
            entry["v"] = add(dumps(values).encode())
        header.append(entry)
    head = json.dumps({"n": n, "c": header}).encode()
    return _zstd()[0].compress(struct.pack("<I", len(head)) + head + b"".join(buffers))


def _column_kind(values: list[Any]) -> tuple[str, np.ndarray | None]:
    """The column's type; each test is one pass in C (``set(map(type, ...))``, ``min``/``max``),
    since a sync writes millions of values through here."""
    types = set(map(type, values))
    if not types <= {int, float}:  # bool is a type of its own, so booleans land here too
        return "j", None
    if float not in types:
        if values and (min(values) < _I64[0] or max(values) > _I64[1]):
            return "j", None
        return "i", None
    if int not in types:
        return "f", None
    ints = np.array([type(v) is int for v in values], dtype=bool)
    if max(abs(v) for v in values if type(v) is int) > 2**53:
        return "j", None
    return "f", ints


def decode(data: bytes, lazy: bool = False) -> Chunk:
    """Unpack a chunk written by :func:`encode`.

    With ``lazy``, numeric columns keep their values :class:`Packed` (for a reader that
    unpacks them into arrays of its own); presence masks and JSON columns are read either way.
    """
    raw = _zstd()[1].decompress(data) if data[:4] == _ZSTD_MAGIC else zlib.decompress(data)
    (head_len,) = struct.unpack_from("<I", raw)
    head = json.loads(raw[4 : 4 + head_len])
    body = memoryview(raw)[4 + head_len :]
    n = head["n"]
    columns: dict[str, Column] = {}
    for entry in head["c"]:
        mask = None
        count = n
        if "m" in entry:
            mask = _bits(body, entry["m"], n)
            count = int(mask.sum())
        start, length = entry["v"]
        buf = body[start : start + length]
        ints = None
        if entry["t"] in ("i", "f"):
            dtype = "<i8" if entry["t"] == "i" else "<f8"
            packed = Packed(buf, dtype, "s" in entry, "d" in entry)
            values: Any = packed if lazy else packed.array()
            if "n" in entry:
                ints = _bits(body, entry["n"], count)
        else:
            values = _json_column(bytes(buf))
        columns[entry["k"]] = Column(entry["t"], mask, values, ints)
    return Chunk(n, columns)


def _bits(body: memoryview, span: list[int], count: int) -> np.ndarray:
    """A packed bitmap of ``count`` flags, as booleans."""
    start, length = span
    bits = np.unpackbits(np.frombuffer(body[start : start + length], dtype=np.uint8))
    return bits[:count].astype(bool)


def _json_column(text: bytes) -> list[Any]:
    """A ``j`` column's values: orjson reads media columns (histograms) nine times faster than
    the standard library, which still reads what orjson refuses (NaN tokens, huge integers)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def step_of(row: dict[str, Any], fallback: int) -> int:
    """A row's step: its ``_step`` when it is a whole number, else its position in the stream."""
    step = row.get("_step")
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        return fallback
    if isinstance(step, float) and not (math.isfinite(step) and step.is_integer()):
        return fallback
    return int(step)


def number_rows(
    rows: Iterable[dict[str, Any]], start: int = 0
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(step, row)`` pairs: a row's ``_step``, else one past the previous row's step.

    The one numbering rule for writers and readers alike, so that rows without ``_step``
    (system-metric events) get the same step when stored and when read back.
    """
    ordinal = start
    for row in rows:
        step = step_of(row, ordinal)
        ordinal = step + 1
        yield step, row


def history_keys_of(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """W&B's ``historyKeys`` for rows: type counts per key and the last step."""
    counts: dict[str, dict[str, int]] = {}
    last = -1
    for step, row in number_rows(rows):
        last = step
        for key, value in row.items():
            kind = _wandb_type(value)
            per = counts.setdefault(key, {})
            per[kind] = per.get(kind, 0) + 1
    return {
        "keys": {
            key: {"typeCounts": [{"type": t, "count": c} for t, c in per.items()]}
            for key, per in counts.items()
        },
        "lastStep": last,
    }


def _wandb_type(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return str(value.get("_type", "map"))
    return "list"
