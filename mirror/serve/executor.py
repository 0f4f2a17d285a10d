"""Running one GraphQL request as W&B does: lenient about variables, strict about documents.

Clients send the same handful of documents over and over, so each text is parsed and validated
once (LRU cache). Variables the chosen operation does not declare are dropped before execution:
the SDK adds ``entity``, ``project`` and ``name`` to every run-level operation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    GraphQLError,
    OperationDefinitionNode,
    execute,
    parse,
    validate,
)

from mirror.errors import MirrorError
from mirror.serve.context import RequestContext
from mirror.serve.errors import HttpError
from mirror.serve.schema import executable_schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A parsed, validated document and the variables each of its operations declares."""

    document: DocumentNode
    declared: dict[str | None, frozenset[str]]


@dataclass(frozen=True)
class Outcome:
    """The HTTP status and JSON body to answer with."""

    status: int
    body: dict[str, Any]
    operation: str | None = None


@lru_cache(maxsize=512)
def prepare(query: str) -> Prepared | tuple[GraphQLError, ...]:
    """Parse and validate a document once; the errors if it is not valid."""
    try:
        document = parse(query)
    except GraphQLError as exc:
        return (exc,)
    errors = validate(executable_schema(), document)
    if errors:
        return tuple(errors)
    declared: dict[str | None, frozenset[str]] = {}
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            name = definition.name.value if definition.name else None
            names = frozenset(v.variable.name.value for v in definition.variable_definitions or ())
            declared[name] = names
    return Prepared(document, declared)


def _errors_body(errors: list[GraphQLError] | tuple[GraphQLError, ...]) -> dict[str, Any]:
    return {"errors": [e.formatted for e in errors], "data": None}


def _declared(prepared: Prepared, operation: str | None) -> frozenset[str] | None:
    if operation:
        return prepared.declared.get(operation)
    if len(prepared.declared) == 1:
        return next(iter(prepared.declared.values()))
    return None


def _log_unexpected(errors: list[GraphQLError]) -> None:
    """Bugs get a traceback in the log; errors the client caused do not."""
    for error in errors:
        original = error.original_error
        if original is not None and not isinstance(original, (MirrorError, GraphQLError)):
            log.error("resolver failed at %s", error.path, exc_info=original)


def _never_awaitable(_value: Any) -> bool:
    """Every resolver is synchronous; skipping graphql-core's check saves a tenth of a page."""
    return False


def run_request(payload: Any, context: RequestContext) -> Outcome:
    """Execute a decoded request body ``{"query", "variables", "operationName"}``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return Outcome(
            400, {"errors": [{"message": "the body must be a JSON object with a query"}]}
        )
    variables = payload.get("variables") or {}
    if not isinstance(variables, dict):
        return Outcome(400, {"errors": [{"message": "variables must be a JSON object"}]})
    operation = payload.get("operationName") or None
    prepared = prepare(payload["query"])
    if not isinstance(prepared, Prepared):
        return Outcome(200, _errors_body(prepared), operation)
    declared = _declared(prepared, operation)
    if declared is not None:
        variables = {k: v for k, v in variables.items() if k in declared}
    result = execute(
        executable_schema(),
        prepared.document,
        variable_values=variables,
        operation_name=operation,
        context_value=context,
        is_awaitable=_never_awaitable,
    )
    if operation is None and len(prepared.declared) == 1:
        operation = next(iter(prepared.declared))
    if not result.errors:
        return Outcome(200, {"data": result.data}, operation)
    for error in result.errors:
        if isinstance(error.original_error, HttpError):
            status = error.original_error.status
            return Outcome(status, {"errors": [{"message": error.message}]}, operation)
    _log_unexpected(result.errors)
    body = {"errors": [e.formatted for e in result.errors], "data": result.data}
    return Outcome(200, body, operation)
