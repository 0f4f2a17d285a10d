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
  proportional to what people filter on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

from mirror.store.models import NODE_COLUMNS

MAX_INDEXED_ARRAY = 100

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
    """Parse W&B JSON text; NaN and ±Infinity tokens are accepted as W&B sends them."""
    if text is None or text == "":
        return default
    return json.loads(text)


def dumps(value: Any) -> str:
    """Serialise to compact JSON, keeping NaN/Infinity tokens and non-ASCII text as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


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
    doc["tags"] = loads(get("tags"), [])
    doc["config"] = unwrap_config(loads(get("config"), {}) or {})
    doc["summary_metrics"] = loads(get("summary_metrics"), {}) or {}
    return doc


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
        return Kind.ARRAY, float(len(value)), canonical(value)
    if isinstance(value, dict):
        return Kind.OBJECT, None, canonical(value)
    raise TypeError(f"cannot index a {type(value).__name__}")


FieldRow = tuple[str, int, int, float | None, str | None]  # path, elem, kind, num, txt


def flatten(doc: dict[str, Any]) -> Iterator[FieldRow]:
    """Every index row of a document: ``(path, elem, kind, num, txt)``.

    A path has at most one ``elem=0`` row, the value sorting uses: when a literal dotted key
    and a nested one spell the same path (``{"a.b": 1, "a": {"b": 9}}``), the later value is
    kept as a matchable element instead, so a run is never listed twice.
    """
    seen: set[str] = set()
    for key, value in doc.items():
        for path, elem, kind, num, txt in _flatten_value(key, value, 0):
            if elem == 0:
                if path in seen:
                    elem = 1
                else:
                    seen.add(path)
            yield path, elem, kind, num, txt


def _flatten_value(path: str, value: Any, elem: int) -> Iterator[FieldRow]:
    kind, num, txt = typed(value)
    yield path, elem, int(kind), num, txt
    if kind is Kind.OBJECT:
        if "_type" in value:
            yield from _flatten_value(f"{path}._type", value["_type"], elem)
            return
        for key, sub in value.items():
            yield from _flatten_value(f"{path}.{key}", sub, elem)
    elif kind is Kind.ARRAY and len(value) <= MAX_INDEXED_ARRAY:
        for i, item in enumerate(value):
            ikind, inum, itxt = typed(item)
            yield path, 1, int(ikind), inum, itxt
            if ikind is Kind.OBJECT:
                if "_type" in item:
                    yield from _flatten_value(f"{path}._type", item["_type"], 1)
                else:
                    for key, sub in item.items():
                        yield from _flatten_value(f"{path}.{key}", sub, 1)
            yield from _flatten_value(f"{path}.{i}", item, elem)
