"""MongoDB filters and order strings, parsed once into an immutable tree over canonical paths.

Everything a filter can mean is decided here, so the SQL compiler (``mirror.query.sql``) and the
test oracle (``mirror.query.evaluate``) only ever see a handful of node types and agree by
construction:

* logic: :class:`And`, :class:`Or`, :class:`Not` (``$ne``, ``$nin``, ``$nor``, ``$not`` and
  ``$exists: false`` all become ``Not`` of a positive test, which is exactly MongoDB's meaning for
  missing fields and arrays);
* leaves on one canonical document path: :class:`Compare`, :class:`In`, :class:`Exists`,
  :class:`Regex`, :class:`Size`.

``And(())`` matches every run and ``Or(())`` none. Keys are resolved from W&B's names and the
friendlier aliases to the paths of ``mirror.store.fields.run_document``. A filter that cannot be
evaluated raises :class:`~mirror.errors.FilterError` naming where it went wrong, never an empty
result.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mirror.errors import FilterError
from mirror.query import regex
from mirror.store.fields import RUN_ATTRIBUTES

#: friendlier spellings of run attributes → W&B's filter name
KEY_ALIASES: dict[str, str] = {
    "created_at": "createdAt",
    "heartbeat_at": "heartbeatAt",
    "updated_at": "updatedAt",
    "display_name": "displayName",
    "job_type": "jobType",
    "sweepName": "sweep",
    "sweep_name": "sweep",
}

#: spellings of the document's nested roots → the root in the run document
ROOT_ALIASES: dict[str, str] = {
    "config": "config",
    "summary": "summary_metrics",
    "summary_metrics": "summary_metrics",
    "summaryMetrics": "summary_metrics",
    "tags": "tags",
}

LOGICAL = ("$and", "$or", "$nor")
COMPARISONS = {"$eq": "eq", "$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
FIELD_OPERATORS = (
    *COMPARISONS,
    "$ne",
    "$in",
    "$nin",
    "$exists",
    "$regex",
    "$options",
    "$all",
    "$size",
    "$not",
)
#: MongoDB operators the mirror knows of and does not evaluate: refused as such, not as typos
UNSUPPORTED = frozenset(
    {
        "$elemMatch",
        "$type",
        "$mod",
        "$expr",
        "$where",
        "$text",
        "$jsonSchema",
        "$comment",
        "$geoWithin",
        "$geoIntersects",
        "$near",
        "$nearSphere",
        "$bitsAllSet",
        "$bitsAnySet",
        "$bitsAllClear",
        "$bitsAnyClear",
    }
)
#: how deep filter documents (``$and``/``$or``/``$nor``/``$not``) and filter values may nest;
#: real filters are a few levels deep, and a bound keeps every layer's recursion finite
MAX_DEPTH = 64


@dataclass(frozen=True)
class And:
    """All children match (none: every run)."""

    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """Some child matches (none: no run)."""

    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """The child does not match; a missing field does not match a positive test."""

    child: Node


@dataclass(frozen=True)
class Compare:
    """Some value at ``path`` (an array's elements included) is ``op`` (eq, gt, gte, lt, lte)
    ``value``, within one type bracket; ``eq None`` also matches a missing path.

    ``value`` is a private deep copy: JSON-like, never mutated.
    """

    path: str
    op: str
    value: Any


@dataclass(frozen=True)
class In:
    """Some value at ``path`` equals one of ``values`` (``None`` among them: or it is missing)."""

    path: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Exists:
    """``path`` holds a value (``null`` included)."""

    path: str


@dataclass(frozen=True)
class Regex:
    """RE2 finds ``pattern`` (RE2 syntax, flags inline) in some string at ``path``."""

    path: str
    pattern: str


@dataclass(frozen=True)
class Size:
    """The array at ``path`` has ``size`` elements."""

    path: str
    size: int


Node = And | Or | Not | Compare | In | Exists | Regex | Size

ALL = And(())
NOTHING = Or(())


@dataclass(frozen=True)
class Order:
    """Sort by the value at ``path``; ties (and runs without it, among themselves) by run id."""

    path: str
    descending: bool


def parse_filter(filters: dict[str, Any] | None) -> Node:
    """A MongoDB filter (``None`` or ``{}``: every run) → its tree; FilterError when unusable."""
    if filters is None:
        return ALL
    return _document(filters, "filters", 0)


def parse_order(order: str | None, default: str = "-created_at") -> Order:
    """``"+key"``, ``"-key"`` or ``"key"`` (ascending) → :class:`Order`; empty means ``default``."""
    if order is not None and not isinstance(order, str):
        raise FilterError(f"order: needs a key such as '-created_at', got {type(order).__name__}")
    text = (order or "").strip() or default
    descending = text.startswith("-")
    key = text[1:].strip() if text[0] in "+-" else text
    if not key:
        raise FilterError(f"order: {text!r} needs a key after its sign")
    if _second_key(key):
        raise FilterError(
            f"order: {text!r} names more than one key; W&B (and the mirror) order by one key, "
            "ties broken by run id"
        )
    path = resolve_key(key, "order")
    if path in ("config", "summary_metrics"):
        raise FilterError(f"order: {key} needs a key below it, e.g. {key}.loss")
    return Order(path, descending)


def _second_key(key: str) -> bool:
    """Whether ``key`` reads as a list of keys (``config.lr,+name``): a comma followed by a
    sign or by a key of its own. Config keys may hold a comma (``config.a,b``), so anything
    else after one is part of the key."""
    for rest in key.split(",")[1:]:
        rest = rest.strip()
        if rest[:1] in ("+", "-"):
            return True
        try:
            resolve_key(rest, "order")
        except FilterError:
            continue
        return True
    return False


def resolve_key(key: str, where: str) -> str:
    """A filter key in W&B's or a friendlier spelling → its path in the run document."""
    parts = key.split(".")
    if not key or "" in parts or any(p.startswith("$") for p in parts):
        raise FilterError(f"{where}: {key!r} is not a field path")
    head = KEY_ALIASES.get(parts[0], parts[0])
    if head in RUN_ATTRIBUTES:
        if len(parts) > 1:
            raise FilterError(f"{where}: {parts[0]} is a text field and has no field {parts[1]}")
        return head
    root = ROOT_ALIASES.get(head)
    if root is None:
        raise FilterError(f"{where}: unknown key {parts[0]}; valid keys are {_valid_keys()}")
    if root == "config" and len(parts) > 2 and parts[2] == "value":
        del parts[2]
    return ".".join([root, *parts[1:]])


def _valid_keys() -> str:
    names = [*RUN_ATTRIBUTES, "tags", "config.<key>", "summary_metrics.<key>"]
    aliases = [*KEY_ALIASES, "summary.<key>"]
    return f"{', '.join(names)} (also {', '.join(aliases)})"


def _document(filters: Any, where: str, depth: int) -> Node:
    """A filter document: implicit AND of its keys."""
    if not isinstance(filters, dict):
        raise FilterError(f"{where}: needs a filter object, got {type(filters).__name__}")
    _check_depth(depth, where)
    return _conjoin([_entry(key, value, where, depth) for key, value in filters.items()])


def _check_depth(depth: int, where: str) -> None:
    if depth > MAX_DEPTH:
        raise FilterError(
            f"{where}: the filter nests more than {MAX_DEPTH} levels deep; "
            "flatten it (an $and of $and is one $and, an $or of $or one $or)"
        )


def _entry(key: Any, value: Any, where: str, depth: int) -> Node:
    if not isinstance(key, str):
        raise FilterError(f"{where}: keys must be text, got {key!r}")
    if key in LOGICAL:
        return _logical(key, value, f"{where}.{key}", depth)
    if key == "$not":
        raise FilterError(
            f"{where}.$not: $not applies to a field, as {{'field': {{'$not': {{...}}}}}}; "
            "use $nor to negate whole filters"
        )
    if key.startswith("$"):
        _refuse_unsupported(key, f"{where}.{key}")
        raise FilterError(f"{where}.{key}: unknown operator {key}; use one of {', '.join(LOGICAL)}")
    return _field(key, value, f"{where}.{key}", depth)


def _refuse_unsupported(op: str, where: str) -> None:
    if op in UNSUPPORTED:
        raise FilterError(
            f"{where}: {op} is not supported by the mirror; it evaluates {', '.join(LOGICAL)}, "
            f"{', '.join(o for o in FIELD_OPERATORS if o != '$options')} and $options"
        )


def _logical(op: str, value: Any, where: str, depth: int) -> Node:
    if not isinstance(value, list) or not value:
        raise FilterError(f"{where}: needs a list of filters")
    children = tuple(_document(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
    if op == "$and":
        return _conjoin(list(children))
    either = children[0] if len(children) == 1 else Or(children)
    return either if op == "$or" else Not(either)


def _conjoin(nodes: list[Node]) -> Node:
    return nodes[0] if len(nodes) == 1 else And(tuple(nodes))


def _is_operators(value: Any) -> bool:
    return isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value)


def _field(key: str, value: Any, where: str, depth: int) -> Node:
    """``{key: value}``: operators when ``value``'s keys start with ``$``, else equality."""
    if _is_operators(value):
        operators = _operators(value, where)
        path = resolve_key(key, where)
        return _conjoin([_operator(op, arg, value, path, where, depth) for op, arg in operators])
    return _equality(resolve_key(key, where), value, where)


def _operators(spec: dict[Any, Any], where: str) -> list[tuple[str, Any]]:
    """The operator entries of a field's spec, validated (``$options`` is read by ``$regex``)."""
    plain = [k for k in spec if not (isinstance(k, str) and k.startswith("$"))]
    if plain:
        raise FilterError(
            f"{where}: cannot mix operators and plain keys ({', '.join(map(str, plain))}); "
            "to match a whole document use {'$eq': {...}}"
        )
    for op in spec:
        if op not in FIELD_OPERATORS:
            _refuse_unsupported(op, where)
            raise FilterError(f"{where}: unknown operator {op}")
    if "$options" in spec and "$regex" not in spec:
        raise FilterError(f"{where}: $options needs $regex")
    return [(op, arg) for op, arg in spec.items() if op != "$options"]


def _operator(op: str, arg: Any, spec: dict[str, Any], path: str, where: str, depth: int) -> Node:
    if op in COMPARISONS:
        return _comparison(COMPARISONS[op], path, arg, f"{where}: {op}")
    if op == "$ne":
        return Not(_comparison("eq", path, arg, f"{where}: {op}"))
    if op in ("$in", "$nin"):
        node = _membership(path, arg, f"{where}: {op}")
        return node if op == "$in" else Not(node)
    if op == "$all":
        return _all(path, arg, f"{where}: $all")
    if op == "$exists":
        return _exists(path, arg, f"{where}: $exists")
    if op == "$regex":
        return Regex(path, _pattern(arg, spec.get("$options", ""), f"{where}: $regex"))
    if op == "$size":
        return _size(path, arg, f"{where}: $size")
    return _not(path, arg, f"{where}.$not", depth + 1)


def _equality(path: str, value: Any, where: str) -> Node:
    """Implicit equality: a compiled regex means a regex match, anything else ``$eq``."""
    if isinstance(value, re.Pattern):
        return Regex(path, _pattern(value, "", f"{where}: regex"))
    return _comparison("eq", path, value, f"{where}: value")


DATE_PATHS = frozenset({"createdAt", "heartbeatAt", "updatedAt"})


def _date(value: Any, what: str) -> Any:
    """A date bound as W&B stores dates (naive UTC ISO text); a number is refused, not ignored.

    W&B compares dates as text, so an epoch number or a ``Z``-suffixed string would silently
    match nothing (or the wrong runs); parsing here turns both into a clear answer.
    """
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise FilterError(
            f"{what}: dates are ISO text such as '2024-01-31T12:00:00' (UTC), not {value!r}"
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(
            f"{what}: {value!r} is not an ISO date such as '2024-01-31T12:00:00'"
        ) from None
    return parsed


def _comparison(op: str, path: str, value: Any, what: str) -> Node:
    """One comparison; null, NaN and out-of-range bounds are reduced to what they can match."""
    if path in DATE_PATHS:
        value = _date(value, what)
    value = _plain(value, what)
    if _beyond_floats(value):
        return _beyond_floats_bound(op, path, value)
    if op != "eq" and isinstance(value, (list, dict)):
        raise FilterError(
            f"{what} needs a single value (number, text, bool or null), got a list or object"
        )
    if op != "eq" and (value is None or _is_nan(value)):
        return NOTHING if op in ("gt", "lt") else Compare(path, "eq", value)
    return Compare(path, op, value)


def _beyond_floats(value: Any) -> bool:
    """An integer no float can hold (such as ``10**400``): the index keeps numbers as floats."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return True
    return False


def _beyond_floats_bound(op: str, path: str, value: int) -> Node:
    """The exact meaning of a comparison with an integer beyond every float.

    Every number a run holds is a float (JSON numbers are read as such), so none equals such a
    bound; above a positive one lies only +Infinity, below a negative one only -Infinity.
    """
    infinity = math.inf if value > 0 else -math.inf
    if op == "eq":
        return NOTHING
    if (op in ("gt", "gte")) == (value > 0):
        return Compare(path, "eq", infinity)
    return Compare(path, "lt" if value > 0 else "gt", infinity)


def _membership(path: str, values: Any, what: str) -> Node:
    """``$in``: plain values in one leaf, compiled regexes as regex matches beside it."""
    if not isinstance(values, list):
        raise FilterError(f"{what} needs a list")
    _no_operators(values, what)
    if path in DATE_PATHS:
        values = [_date(v, what) for v in values]
    regexes = [Regex(path, _pattern(v, "", what)) for v in values if isinstance(v, re.Pattern)]
    plain = tuple(
        v
        for v in (_plain(v, what) for v in values if not isinstance(v, re.Pattern))
        if not _beyond_floats(v)  # equal to no number a run holds
    )
    nodes: list[Node] = [In(path, plain)] if plain else []
    nodes.extend(regexes)
    return nodes[0] if len(nodes) == 1 else Or(tuple(nodes))


def _all(path: str, values: Any, what: str) -> Node:
    """``$all``: an AND of equalities (MongoDB 2.6+); an empty list matches nothing."""
    if not isinstance(values, list):
        raise FilterError(f"{what} needs a list")
    _no_operators(values, what)
    if not values:
        return NOTHING
    return _conjoin([_equality(path, v, what) for v in values])


def _no_operators(values: list[Any], what: str) -> None:
    """MongoDB refuses operators nested in ``$in``/``$all``; matching them as documents would
    silently find nothing."""
    for value in values:
        if _is_operators(value):
            names = ", ".join(k for k in value if isinstance(k, str) and k.startswith("$"))
            raise FilterError(f"{what}: cannot nest operators ({names}) in a list of values")


def _exists(path: str, value: Any, what: str) -> Node:
    if not isinstance(value, (bool, int, float)):
        raise FilterError(f"{what} needs true or false, got {type(value).__name__}")
    return Exists(path) if value else Not(Exists(path))


def _size(path: str, value: Any, what: str) -> Node:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 0:
        raise FilterError(f"{what} needs a whole number >= 0, got {value!r}")
    if value > 2**53:  # longer than any array (and than SQLite's integers)
        return NOTHING
    return Size(path, int(value))


def _not(path: str, spec: Any, where: str, depth: int) -> Node:
    """``$not``: the negation of an operator object or of a regex match."""
    _check_depth(depth, where)
    if isinstance(spec, re.Pattern):
        return Not(Regex(path, _pattern(spec, "", f"{where}: regex")))
    if not isinstance(spec, dict) or not spec:
        raise FilterError(f"{where}: needs an operator object such as {{'$gt': 1}} or a regex")
    if not _is_operators(spec):
        raise FilterError(f"{where}: needs operators such as {{'$gt': 1}}, not a document")
    operators = _operators(spec, where)
    return Not(_conjoin([_operator(op, arg, spec, path, where, depth) for op, arg in operators]))


_PYTHON_FLAGS = (("i", re.I), ("m", re.M), ("s", re.S), ("x", re.X))


def _pattern(pattern: Any, options: Any, what: str) -> str:
    """A regex in RE2 syntax (what W&B runs) with its flags inline, so every backend reads the
    same text; a Python ``re.Pattern`` counts as its pattern text and flags, and runs on RE2 too."""
    flags = ""
    if isinstance(pattern, re.Pattern):
        flags = "".join(f for f, bit in _PYTHON_FLAGS if pattern.flags & bit)
        pattern = pattern.pattern
    if not isinstance(pattern, str):
        raise FilterError(f"{what} needs a text pattern, got {type(pattern).__name__}")
    if not isinstance(options, str):
        raise FilterError(f"{what}: $options needs text such as 'i'")
    for option in options:
        if option not in regex.OPTIONS:
            raise FilterError(f"{what}: unknown option {option!r} (use i, m, s, x)")
        flags += regex.OPTIONS[option]
    return regex.pattern_text(pattern, flags.replace("x", ""), "x" in flags, what)


def _plain(value: Any, what: str, depth: int = 0) -> Any:
    """A private copy of a JSON-like value; datetimes become W&B's naive-UTC ISO text."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # values from a DataFrame
        return _plain(value.item(), what, depth)
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_DEPTH:
        raise FilterError(f"{what}: the value nests more than {MAX_DEPTH} lists or objects deep")
    if isinstance(value, (list, tuple)):
        return [_plain(v, what, depth + 1) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise FilterError(f"{what}: document keys must be text")
        return {k: _plain(v, what, depth + 1) for k, v in value.items()}
    raise FilterError(f"{what}: cannot compare with a {type(value).__name__}")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
