"""A pure-Python evaluator of filter trees over run documents: the oracle the SQL is tested against.

It walks ``mirror.store.fields.run_document`` documents the way MongoDB walks BSON: a dotted path
descends into documents, indexes arrays by position and fans out over arrays of documents, and a
test on a path holding an array is tried on the array and on each element. Its own results are
checked against mongomock, so an error shared with the SQL compiler would still be caught.

Limits of the field index are mirrored on purpose, so that both sides mean the same thing:
arrays longer than ``MAX_INDEXED_ARRAY`` and media objects (with ``_type``) are whole values only,
and below an array of documents an array nested in an array counts for ``$size`` (the index
cannot tell it from the array itself). ``$regex`` is RE2's (``mirror.query.regex``), as in W&B.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mirror.query import regex
from mirror.query.filters import And, Compare, Exists, In, Node, Not, Or, Order, Regex, Size
from mirror.store.fields import MAX_INDEXED_ARRAY, Kind, typed

Row = tuple[int, Any]  # (elem, value): elem 1 for array elements and values reached through arrays

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def matches(node: Node, doc: dict[str, Any]) -> bool:
    """Whether a run document matches a filter tree, with MongoDB's semantics."""
    if isinstance(node, And):
        return all(matches(child, doc) for child in node.children)
    if isinstance(node, Or):
        return any(matches(child, doc) for child in node.children)
    if isinstance(node, Not):
        return not matches(node.child, doc)
    rows = values_at(doc, node.path)
    if isinstance(node, Compare):
        return _compare(node.op, node.value, rows)
    if isinstance(node, In):
        return any(_compare("eq", value, rows) for value in node.values)
    if isinstance(node, Exists):
        return bool(rows)
    if isinstance(node, Regex):
        return any(isinstance(v, str) and regex.search(node.pattern, v) for _, v in rows)
    assert isinstance(node, Size)
    if any(elem == 0 and isinstance(v, list) and len(v) == node.size for elem, v in rows):
        return True
    # an array reached through an array of documents, as the SQL sees it (see sql._size)
    reached = node.path.count(".") >= 2 and not any(elem == 0 for elem, _ in rows)
    return reached and any(isinstance(v, list) and len(v) == node.size for _, v in rows)


def sort_docs(docs: Iterable[dict[str, Any]], order: Order) -> list[dict[str, Any]]:
    """Documents in MongoDB's order for ``order``, ties by ``name`` ascending."""
    by_name = sorted(docs, key=lambda doc: doc["name"])
    return sorted(by_name, key=lambda doc: sort_key(doc, order), reverse=order.descending)


def values_at(doc: dict[str, Any], path: str) -> list[Row]:
    """Every value MongoDB sees at ``path``, with the elements of arrays found there."""
    rows: list[Row] = []
    for value, through_array in _reach(doc, path.split("."), False):
        rows.append((1 if through_array else 0, value))
        if isinstance(value, list) and len(value) <= MAX_INDEXED_ARRAY:
            rows.extend((1, element) for element in value)
    return rows


def _reach(value: Any, parts: list[str], through_array: bool) -> Iterator[tuple[Any, bool]]:
    """Values at ``parts`` below ``value``; a key may itself contain dots (``name.with.dot``)."""
    if not parts:
        yield value, through_array
    elif isinstance(value, dict):
        if "_type" in value:
            value = {"_type": value["_type"]}
        for end in range(1, len(parts) + 1):
            key = ".".join(parts[:end])
            if key in value:
                yield from _reach(value[key], parts[end:], through_array)
    elif isinstance(value, list) and len(value) <= MAX_INDEXED_ARRAY:
        index = _position(parts[0])
        if index is not None and index < len(value):
            yield from _reach(value[index], parts[1:], through_array)
        for element in value:
            if isinstance(element, dict):
                yield from _reach(element, parts, True)


def _position(part: str) -> int | None:
    """An array position as MongoDB writes it in a path (``0``, ``12``; not ``01`` or ``-1``)."""
    return int(part) if part.isdigit() and part.isascii() and str(int(part)) == part else None


def _compare(op: str, bound: Any, rows: list[Row]) -> bool:
    """``{path: {op: bound}}`` over the values there; null also matches a missing path."""
    if op == "eq" and bound is None:
        return not rows or any(v is None for _, v in rows)
    kind, num, txt = typed(bound)
    for _, value in rows:
        vkind, vnum, vtxt = typed(value)
        if vkind != kind:
            continue
        if kind in (Kind.NUMBER, Kind.BOOL):
            if op == "eq" and num is None and vnum is None:
                return True
            if num is not None and vnum is not None and _OPS.get(op, operator.eq)(vnum, num):
                return True
        elif _OPS.get(op, operator.eq)(vtxt, txt):
            return True
    return False


def sort_key(doc: dict[str, Any], order: Order) -> tuple[Any, ...]:
    """The MongoDB sort key of ``doc``: an array by its smallest element (largest descending),
    an empty array before null, a missing value as null. Brackets follow ``Kind``; documents and
    arrays within their bracket by canonical JSON text."""
    rows = values_at(doc, order.path)
    direct = [value for elem, value in rows if elem == 0]
    elements = [value for elem, value in rows if elem == 1]
    if direct and isinstance(direct[0], list) and not direct[0]:
        return (0, False, 0.0, False, "")
    if direct and not (isinstance(direct[0], list) and len(direct[0]) <= MAX_INDEXED_ARRAY):
        candidates = [direct[0]]
    elif direct:
        candidates = elements
    elif order.path.count(".") >= 2:  # reached through arrays of documents: arrays unwound
        candidates = [
            v for v in elements if not (isinstance(v, list) and 0 < len(v) <= MAX_INDEXED_ARRAY)
        ]
    else:
        candidates = []
    if not candidates:
        return (int(Kind.NULL), False, 0.0, False, "")
    pick = max if order.descending else min
    return pick(_rank(value) for value in candidates)


def _rank(value: Any) -> tuple[Any, ...]:
    """A total order within and across brackets; NaN (no ``num``) first among numbers."""
    kind, num, txt = typed(value)
    return (int(kind), num is not None, num or 0.0, txt is not None, txt or "")
