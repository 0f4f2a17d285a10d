"""The executable schema: W&B's SDL (``schema.graphql``, shipped in this package) plus resolvers.

The SDL is the same file the client validates against, so the server accepts exactly the
documents W&B would and rejects unknown fields with a standard validation error.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from graphql import (
    GraphQLError,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    IntValueNode,
    StringValueNode,
    ValueNode,
    build_schema,
    value_from_ast_untyped,
)

from mirror.serve.errors import shown
from mirror.serve.jsonout import RawJSON
from mirror.serve.mutations import MUTATION_FIELDS
from mirror.serve.parquet_export import json_safe
from mirror.serve.resolvers import PROJECT_FIELDS, QUERY_FIELDS, RUN_FIELDS, Resolver
from mirror.store.fields import dumps, loads

_INT64 = (-(2**63), 2**63 - 1)


def sdl() -> str:
    """The schema text shipped with the package."""
    return resources.files("mirror.serve").joinpath("schema.graphql").read_text("utf-8")


def _parse_json_string(value: Any) -> Any:
    """A JSONString argument: JSON text (NaN/Infinity allowed) → its value."""
    if not isinstance(value, str):
        raise GraphQLError("JSONString must be a string holding JSON")
    try:
        return loads(value)
    except (ValueError, RecursionError) as exc:
        raise GraphQLError(f"invalid JSON in JSONString: {exc}") from None


def _json_string_literal(node: ValueNode, _variables: Any = None) -> Any:
    if not isinstance(node, StringValueNode):
        raise GraphQLError("JSONString must be a string holding JSON")
    return _parse_json_string(node.value)


def _serialize_json_string(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value)


def _serialize_json(value: Any) -> Any:
    """A JSON-typed field's value with NaN and ±Infinity as strings.

    wandb-core decodes these fields (``sampledHistory``, ``liveData``, ``historyKeys``) with
    Go's strict JSON parser, which fails the whole request on a bare ``NaN`` token; JSONString
    fields keep the tokens, which W&B's own parser reads. Stored JSON text is spliced in as is
    unless it holds such a token.
    """
    if isinstance(value, RawJSON):
        if "NaN" in value.text or "Infinity" in value.text:
            return json_safe(loads(value.text))
        return value
    return json_safe(value)


def _parse_int64(value: Any) -> int:
    if isinstance(value, bool):
        raise GraphQLError("Int64 cannot represent a boolean")
    number = _whole_number(value)
    if number is None:
        raise GraphQLError(f"Int64 cannot represent {shown(value)}")
    if not _INT64[0] <= number <= _INT64[1]:
        raise GraphQLError(f"Int64 cannot represent {shown(value)}: beyond 64 bits")
    return number


def _whole_number(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _int64_literal(node: ValueNode, _variables: Any = None) -> int:
    """An Int64 written in the document. Its errors are ValueErrors: graphql-core then reports
    them with the literal and its location (a GraphQLError would pass through without either)."""
    if isinstance(node, (IntValueNode, StringValueNode)):
        try:
            return _parse_int64(node.value)
        except GraphQLError as exc:
            raise ValueError(exc.message) from None
    raise ValueError("Int64 must be an integer")


SCALARS: dict[str, dict[str, Any]] = {
    "JSONString": {
        "serialize": _serialize_json_string,
        "parse_value": _parse_json_string,
        "parse_literal": _json_string_literal,
    },
    "JSON": {
        "serialize": _serialize_json,
        "parse_value": lambda value: value,
        "parse_literal": value_from_ast_untyped,
    },
    "Int64": {
        "serialize": _parse_int64,
        "parse_value": _parse_int64,
        "parse_literal": _int64_literal,
    },
    "DateTime": {"serialize": str, "parse_value": str},
    "Duration": {"serialize": lambda value: value, "parse_value": lambda value: value},
}

_CORE_33_NAMES = {"serialize": "coerce_output_value", "parse_value": "coerce_input_value"}

RESOLVERS: dict[str, dict[str, Resolver]] = {
    "Query": QUERY_FIELDS,
    "Mutation": MUTATION_FIELDS,
    "Project": PROJECT_FIELDS,
    "Run": RUN_FIELDS,
}


@cache
def executable_schema() -> GraphQLSchema:
    """The schema with scalars and resolvers bound (built once per process)."""
    schema = build_schema(sdl())
    for name, methods in SCALARS.items():
        scalar = schema.type_map[name]
        assert isinstance(scalar, GraphQLScalarType)
        for attr, fn in methods.items():
            setattr(scalar, attr, fn)
            if attr in _CORE_33_NAMES:  # graphql-core 3.3 calls these names
                setattr(scalar, _CORE_33_NAMES[attr], fn)
        if hasattr(scalar, "coerce_input_literal"):
            scalar.coerce_input_literal = None  # 3.3: fall back to parse_literal
    for type_name, fields in RESOLVERS.items():
        object_type = schema.type_map[type_name]
        assert isinstance(object_type, GraphQLObjectType)
        unknown = set(fields) - set(object_type.fields)
        if unknown:
            raise RuntimeError(f"resolvers for fields not in the schema: {type_name}.{unknown}")
        for field_name, resolver in fields.items():
            object_type.fields[field_name].resolve = resolver
    return schema
