"""Running one GraphQL request as W&B does: lenient about variables, strict about documents.

Clients send the same handful of documents over and over, so each text is parsed and validated
once: a cache keyed by the text's digest, bounded in bytes, that keeps only documents of the
size clients send (a few KB), so that many large distinct documents cannot fill the server's
memory. Variables the chosen operation does not declare are dropped before execution: the SDK
adds ``entity``, ``project`` and ``name`` to every run-level operation. Before it runs, an
operation's cost is estimated (``mirror.serve.cost``) and refused past the limit.

Errors a client causes are answered with their message; anything else (a bug, a broken
database) is answered ``internal server error`` and logged as one line that names the exception
but never the SQL statement or its parameters, which SQLAlchemy puts in its messages.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    GraphQLError,
    OperationDefinitionNode,
    execute,
    parse,
    validate,
)
from sqlalchemy.exc import StatementError

from mirror.errors import MirrorError
from mirror.serve.context import RequestContext
from mirror.serve.cost import check_cost
from mirror.serve.errors import HttpError
from mirror.serve.limits import MAX_QUERY_BYTES, RequestAborted
from mirror.serve.schema import executable_schema

log = logging.getLogger(__name__)

#: lexical tokens a document may hold (the SDK's largest has a few hundred)
MAX_TOKENS = 100_000
#: documents larger than this are parsed for each request, never cached
CACHED_DOCUMENT_BYTES = 64 * 1024
#: total size of the cached documents' texts (their parsed trees take ~10x as much)
CACHE_BYTES = 2 * 1024 * 1024
INTERNAL_ERROR = "internal server error"
_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class Prepared:
    """A parsed, validated document and the variables each of its operations declares."""

    document: DocumentNode
    declared: dict[str | None, frozenset[str]]
    operations: dict[str | None, OperationDefinitionNode]
    fragments: dict[str, FragmentDefinitionNode]


@dataclass(frozen=True)
class Outcome:
    """The HTTP status and JSON body to answer with."""

    status: int
    body: dict[str, Any]
    operation: str | None = None


class DocumentCache:
    """Prepared documents by the SHA-256 of their text, least recently used out first.

    Keyed by digest so the cache holds no query text of its own, and bounded by the bytes of
    the texts it stands for, not by a count: 512 entries of 10 MB documents were half a GB.
    """

    def __init__(
        self, max_bytes: int = CACHE_BYTES, max_entry_bytes: int = CACHED_DOCUMENT_BYTES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[int, Prepared | tuple[GraphQLError, ...]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def prepare(self, query: str) -> Prepared | tuple[GraphQLError, ...]:
        """The document prepared, from the cache when it was seen before."""
        raw = query.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_QUERY_BYTES:
            return (
                GraphQLError(
                    f"the query document is {len(raw):,} bytes; the server accepts at most "
                    f"{MAX_QUERY_BYTES:,} (pass large values as variables)"
                ),
            )
        key = hashlib.sha256(raw).digest()
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[1]
        prepared = _prepare(query)
        if len(raw) <= self.max_entry_bytes:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = (len(raw), prepared)
                    self.bytes += len(raw)
                while self.bytes > self.max_bytes:
                    _key, (size, _prepared) = self._entries.popitem(last=False)
                    self.bytes -= size
        return prepared


def _prepare(query: str) -> Prepared | tuple[GraphQLError, ...]:
    """Parse and validate a document; the errors if it is not valid."""
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
        errors = validate(executable_schema(), document)
    except GraphQLError as exc:
        return (exc,)
    except RecursionError:
        return (GraphQLError("the query document is nested too deeply"),)
    if errors:
        return tuple(errors)
    declared: dict[str | None, frozenset[str]] = {}
    operations: dict[str | None, OperationDefinitionNode] = {}
    fragments: dict[str, FragmentDefinitionNode] = {}
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            name = definition.name.value if definition.name else None
            names = frozenset(v.variable.name.value for v in definition.variable_definitions or ())
            declared[name] = names
            operations[name] = definition
        elif isinstance(definition, FragmentDefinitionNode):
            fragments[definition.name.value] = definition
    return Prepared(document, declared, operations, fragments)


DOCUMENTS = DocumentCache()


def _errors_body(errors: list[GraphQLError] | tuple[GraphQLError, ...]) -> dict[str, Any]:
    return {"errors": [e.formatted for e in errors], "data": None}


def _declared(prepared: Prepared, operation: str | None) -> frozenset[str] | None:
    if operation:
        return prepared.declared.get(operation)
    if len(prepared.declared) == 1:
        return next(iter(prepared.declared.values()))
    return None


def describe(exc: BaseException) -> str:
    """An exception as one short line for the log, without SQL or parameters.

    SQLAlchemy's messages carry the whole statement and its bound values (234 KB once); the
    driver's own message (``exc.orig``) names the problem without them.
    """
    inner: BaseException = exc.orig if isinstance(exc, StatementError) and exc.orig else exc
    text = str(inner).strip().splitlines()
    message = text[0] if text else ""
    if len(message) > _MESSAGE_CHARS:
        message = message[:_MESSAGE_CHARS] + "…"
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/mirror/" in f.filename.replace("\\", "/")]
    if ours:
        frame = ours[-1]
        where = f" at {frame.filename.rsplit('/mirror/', 1)[-1]}:{frame.lineno}"
    return f"{type(inner).__name__}: {message}{where}" if message else type(inner).__name__ + where


def _is_client_error(error: GraphQLError) -> bool:
    original = error.original_error
    return original is None or isinstance(original, (MirrorError, GraphQLError))


def _public(error: GraphQLError) -> dict[str, Any]:
    """What the client sees of an error: its own message, or a generic one for a bug."""
    if _is_client_error(error):
        return error.formatted
    log.error("resolver failed at %s: %s", error.path, describe(error.original_error))
    formatted = {"message": INTERNAL_ERROR}
    if error.path is not None:
        formatted["path"] = error.path
    return formatted


def _never_awaitable(_value: Any) -> bool:
    """Every resolver is synchronous; skipping graphql-core's check saves a tenth of a page."""
    return False


def aborted(exc: RequestAborted, operation: str | None = None) -> Outcome:
    """A request stopped by its budget: one error, no data."""
    body = {"errors": [{"message": exc.message, "extensions": {"code": exc.code}}], "data": None}
    return Outcome(200, body, operation)


def run_request(payload: Any, context: RequestContext) -> Outcome:
    """Execute a decoded request body ``{"query", "variables", "operationName"}``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return Outcome(
            400, {"errors": [{"message": "the body must be a JSON object with a query"}]}
        )
    variables = payload.get("variables") or {}
    if not isinstance(variables, dict):
        return Outcome(400, {"errors": [{"message": "variables must be a JSON object"}]})
    requested = payload.get("operationName") or None
    if requested is not None and not isinstance(requested, str):
        return Outcome(400, {"errors": [{"message": "operationName must be a string"}]})
    operation = requested
    prepared = DOCUMENTS.prepare(payload["query"])
    if not isinstance(prepared, Prepared):
        return Outcome(200, _errors_body(prepared), operation)
    declared = _declared(prepared, operation)
    if declared is not None:
        variables = {k: v for k, v in variables.items() if k in declared}
    if operation is None and len(prepared.declared) == 1:
        operation = next(iter(prepared.declared))
    chosen = prepared.operations.get(operation)
    try:
        if chosen is not None:  # else graphql-core says which operation is missing
            check_cost(chosen, prepared.fragments, variables, context.limits.max_cost)
        result = execute(
            executable_schema(),
            prepared.document,
            variable_values=variables,
            operation_name=requested,
            context_value=context,
            is_awaitable=_never_awaitable,
        )
    except RequestAborted as exc:
        return aborted(exc, operation)
    except MirrorError as exc:
        return Outcome(200, {"errors": [{"message": str(exc)}], "data": None}, operation)
    if not result.errors:
        return Outcome(200, {"data": result.data}, operation)
    if context.budget.expired():  # a statement was interrupted: say why, not what broke
        try:
            context.budget.check()
        except RequestAborted as exc:
            return aborted(exc, operation)
    for error in result.errors:
        if isinstance(error.original_error, HttpError):
            status = error.original_error.status
            return Outcome(status, {"errors": [{"message": error.message}]}, operation)
    body = {"errors": [_public(e) for e in result.errors], "data": result.data}
    return Outcome(200, body, operation)
