"""A run as a MongoDB-like document, and that document flattened into typed index rows.

The query engine matches filters against this document; the ``run_fields`` table holds it
flattened so that the match runs as indexed SQL. The oracle evaluator in ``mirror.query`` reads
the same document, so both sides agree on what a key means by construction.

Flattening rules (MongoDB semantics need each of them):

* every dotted path gets a row with ``elem=0`` holding its value; a key containing a literal dot
  is reachable because paths are joined with ``.`` (``config.name.with.dot``);
* an array also gets one ``elem=1`` row per element under the same path (so ``{"tags": "a"}``
  means "has tag a"), a positional row ``path.<i>``, and its document elements are flattened
  under the array's path with ``elem=1`` (``a.b`` reaches ``[{"b": 1}]``); an array reached that
  way is expanded too, with its rows at ``elem=1`` (``a.b`` reaches 2 in ``[{"b": [2]}]``);
* arrays longer than ``MAX_INDEXED_ARRAY`` and the insides of media objects (those with a
  ``_type`` key: histograms, images, tables) are indexed as whole values only, to keep the index
  proportional to what people filter on;
* a whole document or array is indexed by its canonical text when that is short, and otherwise
  by a key of bounded length (:func:`document_key`), so that the index never holds a copy of a
  histogram or of the whole config;
* run attributes (``name``, ``state``, ...) have no rows: filters and orders read them from
  their ``runs`` columns.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from enum import IntEnum
from json.encoder import c_make_encoder, encode_basestring
from typing import Any

from mirror.store.models import NODE_COLUMNS

MAX_INDEXED_ARRAY = 100
#: documents and arrays with a longer canonical text are indexed by :func:`document_key`
SHORT_DOCUMENT = 64
_KEY_PREFIX = 40  # characters of the canonical text a long document's key begins with
_KEY_MARK = "\x1f"  # never in canonical JSON, which escapes control characters

#: run attributes in the query document, by W&B's filter name → ``runs`` column: the plain Run
#: fields, except that filters say ``sweep`` for ``sweepName`` and also know ``username``
RUN_ATTRIBUTES: dict[str, str] = {
    **{
        field: column
        for field, column in NODE_COLUMNS.items()
        if field not in ("id", "sweepName", "historyLineCount")
    },
    "sweep": "sweep_name",
    "username": "username",
}

#: config keys the SDK keeps out of ``run.config``; they are not queryable either
HIDDEN_CONFIG_KEYS = frozenset({"_wandb", "wandb_version"})


class Kind(IntEnum):
    """Type brackets, numbered in MongoDB's cross-type sort order."""

    NULL = 1
    NUMBER = 2
    STRING = 3
    OBJECT = 4
    ARRAY = 5
    BOOL = 8


def loads(text: str | None, default: Any = None) -> Any:
    """Parse W&B JSON text; NaN and ±Infinity tokens are accepted as W&B sends them.

    The standard library's parser, not orjson: orjson refuses those tokens and, worse, reads
    integers beyond 64 bits as floats without a word (``-9223372036854775809`` comes back as
    ``-9.223372036854776e+18``), and telling such texts apart first costs more than it saves.
    """
    if text is None or text == "":
        return default
    return json.loads(text)


#: ``json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)``, with the
#: encoder made once rather than on every call
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True)
#: the C encoder ``_ENCODER.encode`` builds afresh on every call, built once: a run's write
#: encodes about ten values, and building it costs as much as encoding a small one. Without a
#: circular-reference check, so that it holds no state between calls (threads may share it).
_C_ENCODER = (
    None
    if c_make_encoder is None
    else c_make_encoder(
        None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, True
    )
)


def dumps(value: Any) -> str:
    """Serialise to compact JSON, keeping NaN/Infinity tokens and non-ASCII text as is.

    A value the C encoder refuses (a circular one, an unknown type) is encoded again the
    standard way, which raises the standard library's own error for it.
    """
    if _C_ENCODER is not None:
        try:
            return "".join(_C_ENCODER(value, 0))
        except (TypeError, ValueError, RecursionError):
            pass
    return _ENCODER.encode(value)


#: how strict JSON writes NaN and ±Infinity: as W&B's strings, or as null
NONFINITE_CHOICES = ("string", "null")


def strict_json(value: Any, nonfinite: str = "string") -> Any:
    """``value`` with every NaN and ±Infinity replaced, for readers of strict JSON (Go, jq,
    JavaScript), which refuse the bare tokens: by the strings W&B itself uses (``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``) or by ``None``."""
    if type(value) is float and not math.isfinite(value):
        if nonfinite == "null":
            return None
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: strict_json(v, nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v, nonfinite) for v in value]
    return value


def unwrap_config(raw: dict[str, Any]) -> dict[str, Any]:
    """W&B's ``{"k": {"value": v, "desc": ...}}`` → ``{"k": v}``, top level only, as the SDK does."""
    out: dict[str, Any] = {}
    for key, wrapped in raw.items():
        if key in HIDDEN_CONFIG_KEYS:
            continue
        if isinstance(wrapped, dict) and "value" in wrapped:
            out[key] = wrapped["value"]
        else:
            out[key] = wrapped
    return out


def wrap_config(config: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`unwrap_config` for values the user set (``desc`` is null)."""
    return {key: {"value": value, "desc": None} for key, value in config.items()}


def run_document(run: Any) -> dict[str, Any]:
    """The document a filter sees for a ``runs`` row (a Row, mapping or object with its columns).

    Null run attributes are left out, so ``{"group": null}`` and ``$exists`` treat an unset
    attribute as missing, like an absent config key.
    """
    get = run.get if isinstance(run, dict) else (lambda c: getattr(run, c))
    doc: dict[str, Any] = {}
    for key, column in RUN_ATTRIBUTES.items():
        value = get(column)
        if value is not None:
            doc[key] = value
    doc.update(index_document(get("tags"), get("config"), get("summary_metrics")))
    return doc


def index_document(tags: str | None, config: str | None, summary: str | None) -> dict[str, Any]:
    """The part of a run's document the field index holds, from the stored JSON texts."""
    return {
        "tags": loads(tags, []),
        "config": unwrap_config(loads(config, {}) or {}),
        "summary_metrics": loads(summary, {}) or {},
    }


def _normal(value: Any) -> Any:
    """Integral floats as ints, so that 1 and 1.0 compare equal inside documents as in MongoDB."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def canonical(value: Any) -> str:
    """The text two equal documents or arrays share (key order kept: MongoDB compares it)."""
    return dumps(_normal(value))


#: a float token that may be integral (``2.0``, ``-0.0``, ``1e+16``), or a text looking like one
_INTEGRAL_FLOAT = re.compile(r"\.0(?![0-9])|e\+")


def _canonical_text(value: Any) -> str:
    """``canonical(value)`` without its walk in Python where it would change nothing.

    Normalising turns integral floats into ints; a float's ``repr`` is integral only as
    ``<digits>.0`` or with a positive exponent, so a text holding neither is canonical already.
    A text that does (or a string that looks so) is normalised the slow way.
    """
    text = dumps(value)
    return text if _INTEGRAL_FLOAT.search(text) is None else canonical(value)


def document_key(value: Any) -> str:
    """What the index holds for a document or an array: its canonical text when at most
    ``SHORT_DOCUMENT`` characters, else the first ``_KEY_PREFIX`` of them, a mark and a 128-bit
    BLAKE2b digest of the whole text.

    Equal values have equal keys. Unequal ones have unequal keys: a short text is exact, and two
    long texts with one key would need a BLAKE2b collision. Keys sort like the canonical texts
    they stand for, except among long texts sharing their first ``_KEY_PREFIX`` characters
    (and a short text sharing them), which sort by digest: an order of documents, which MongoDB
    sorts by BSON and the mirror by canonical text anyway, is approximate only there.
    """
    text = _canonical_text(value)
    if len(text) <= SHORT_DOCUMENT:
        return text
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return f"{text[:_KEY_PREFIX]}{_KEY_MARK}{base64.b64encode(digest).decode()[:22]}"


def typed(value: Any) -> tuple[Kind, float | None, str | None]:
    """``(kind, num, txt)`` for one value. NaN is a number with ``num`` NULL and ``txt`` 'NaN'."""
    if value is None:
        return Kind.NULL, None, None
    if isinstance(value, bool):
        return Kind.BOOL, float(value), None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return Kind.NUMBER, None, "NaN"
        if isinstance(value, int) and abs(value) > 2**53:
            return Kind.NUMBER, float(value), str(value)
        return Kind.NUMBER, float(value), None
    if isinstance(value, str):
        return Kind.STRING, None, value
    if isinstance(value, list):
        return Kind.ARRAY, float(len(value)), document_key(value)
    if isinstance(value, dict):
        return Kind.OBJECT, None, document_key(value)
    raise TypeError(f"cannot index a {type(value).__name__}")


FieldRow = tuple[str, int, int, float | None, str | None]  # path, elem, kind, num, txt

_NUMBER, _STRING, _OBJECT, _ARRAY = (
    int(Kind.NUMBER),
    int(Kind.STRING),
    int(Kind.OBJECT),
    int(Kind.ARRAY),
)
_NULL, _BOOL = int(Kind.NULL), int(Kind.BOOL)


def flatten(doc: dict[str, Any]) -> list[FieldRow]:
    """Every index row of a document: ``(path, elem, kind, num, txt)``, in document order.

    A path has at most one ``elem=0`` row, the value sorting uses: when a literal dotted key
    and a nested one spell the same path (``{"a.b": 1, "a": {"b": 9}}``), the later value is
    kept as a matchable element instead, so a run is never listed twice. Run attributes are left
    out (see the module docstring).

    Written for speed, since every run a sync, seed or import writes goes through it: one
    recursive pass that appends tuples, scalars typed inline, and each document's canonical text
    written by the C encoder (:func:`_canonical_text`). Rows equal ``typed`` of their value
    (``tests/test_compact_store.py`` holds both to it).
    """
    out: list[FieldRow] = []
    seen: set[str] = set()

    def scalar(value: Any) -> tuple[int, float | None, str | None] | None:
        """``typed(value)`` for a value that is no document or array, else None."""
        kind = type(value)
        if kind is float:
            return (_NUMBER, None, "NaN") if value != value else (_NUMBER, value, None)
        if kind is str:
            return _STRING, None, value
        if kind is int:
            if -(2**53) <= value <= 2**53:
                return _NUMBER, float(value), None
            return _NUMBER, float(value), str(value)
        if kind is bool:
            return _BOOL, float(value), None
        if value is None:
            return _NULL, None, None
        if kind is dict or kind is list:
            return None
        return typed(value)  # subclasses and the types typed() refuses

    def walk(path: str, value: Any, elem: int) -> None:
        own = elem
        if own == 0:
            if path in seen:
                own = 1
            else:
                seen.add(path)
        typed_value = scalar(value)
        if typed_value is not None:
            out.append((path, own, *typed_value))
            return
        if type(value) is dict:
            out.append((path, own, _OBJECT, None, document_key(value)))
            if "_type" in value:
                walk(f"{path}._type", value["_type"], elem)
                return
            for key, sub in value.items():
                walk(f"{path}.{key}", sub, elem)
            return
        out.append((path, own, _ARRAY, float(len(value)), document_key(value)))
        if len(value) > MAX_INDEXED_ARRAY:
            return
        for i, item in enumerate(value):
            typed_item = scalar(item)
            if typed_item is not None:
                out.append((path, 1, *typed_item))
            elif type(item) is dict:
                out.append((path, 1, _OBJECT, None, document_key(item)))
                if "_type" in item:
                    walk(f"{path}._type", item["_type"], 1)
                else:
                    for key, sub in item.items():
                        walk(f"{path}.{key}", sub, 1)
            else:
                out.append((path, 1, _ARRAY, float(len(item)), document_key(item)))
            walk(f"{path}.{i}", item, elem)

    for key, value in doc.items():
        if key not in RUN_ATTRIBUTES:
            walk(key, value, 0)
    return out
