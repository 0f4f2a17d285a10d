"""The WSGI application: routing, auth, body parsing, fault injection, errors and access log.

``POST /graphql`` serves data; ``GET``/``HEAD /parquet/<token>`` serves exported history files
by signed URL, with no API key, as W&B's pre-signed object-store URLs do (see
``parquet_export``). The official client also posts telemetry (SDK 0.31:
``/sdk/otel/v1/metrics``); those side channels get an empty 200 so that nothing is logged as an
error. ``GET /`` and the pages below it are the dashboard (``mirror.serve.dashboard``), behind
the same keys. Every other path is a small JSON 404. One INFO line per request, never a header
value (nor a URL token: it is a credential while it lasts).

Each GraphQL request runs within a budget (``mirror.serve.limits``): a time limit, and a
response size counted while it is built and checked once more on the encoded answer.
"""

from __future__ import annotations

import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy import Engine, event

from mirror.serve.auth import KeyChecker
from mirror.serve.chunk_cache import ChunkCache
from mirror.serve.context import RequestContext
from mirror.serve.dashboard import Dashboard
from mirror.serve.executor import Outcome, aborted, describe, run_request
from mirror.serve.faults import FaultConfig, FaultInjector
from mirror.serve.jsonout import dumps_response
from mirror.serve.limits import (
    Budget,
    Budgets,
    Limits,
    RequestAborted,
    checkpoint,
    current,
    too_large,
)
from mirror.serve.parquet_export import URL_PATH, ParquetExports, TokenError
from mirror.store.fields import loads

log = logging.getLogger("mirror.serve")

#: set in the WSGI environ when the connection must be closed without a response
DROP_CONNECTION = "mirror.drop_connection"
#: in the WSGI environ: call it once a request has passed the key check (see ``server``)
TRUST_CONNECTION = "mirror.trust_connection"
GRAPHQL_PATHS = frozenset({"/graphql", "/graphql/"})
SIDE_CHANNEL_PREFIXES = ("/sdk/", "/analytics", "/telemetry")
StartResponse = Callable[..., Any]
#: ``wbits`` for zlib: gzip framing, and zlib framing (HTTP's ``deflate``)
_GZIP, _ZLIB = 31, 15

_REASONS = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


def _error(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return (
        status,
        [("Content-Type", "application/json")],
        dumps_response({"errors": [{"message": message}]}),
    )


@dataclass(frozen=True)
class FileBody:
    """A response body read from an open file: ``length`` bytes from ``offset``.

    The file is opened before the headers go out, so an export replaced meanwhile (its files
    unlinked) is still sent whole; HEAD sends none of it.
    """

    handle: BinaryIO
    offset: int
    length: int


Body = bytes | FileBody
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")
_BLOCK = 256 * 1024


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """``Range: bytes=a-b`` → ``(start, end)`` inclusive; None to send the whole file; False
    when unsatisfiable. One range only (several, or a malformed header, get the whole file)."""
    if not header:
        return None
    match = _RANGE.fullmatch(header)
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        count = int(last)
        if count == 0:
            return False
        return max(size - count, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return False
    return start, end


def _file_chunks(body: FileBody) -> Iterable[bytes]:
    with body.handle as handle:
        handle.seek(body.offset)
        left = body.length
        while left > 0:
            chunk = handle.read(min(_BLOCK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


class BadBody(ValueError):
    """A request body that is not JSON."""


class BodyTooLarge(Exception):
    """A compressed request body that inflates beyond the size limit."""


def _inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    """``raw`` decompressed, never holding more than ``limit`` + 1 bytes of output.

    ``gzip.decompress`` and ``zlib.decompress`` inflate whatever they are given, so a few KB
    can become gigabytes (a zip bomb). Gzip bodies may hold several members, as
    ``gzip.decompress`` allows.
    """
    out = bytearray()
    data = raw
    while True:
        inflater = zlib.decompressobj(wbits=wbits)
        while not inflater.eof:
            chunk = inflater.decompress(data, limit + 1 - len(out))
            out += chunk
            if len(out) > limit:
                raise BodyTooLarge(f"the body inflates to more than {limit} bytes")
            data = inflater.unconsumed_tail
            if not data and not chunk:
                break
        if not inflater.eof:
            raise zlib.error("incomplete or truncated stream")
        data = inflater.unused_data.lstrip(b"\0")  # gzip allows zero padding between members
        if wbits != _GZIP or not data:
            return bytes(out)


def _read_body(environ: dict[str, Any], limit: int) -> Any:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    encoding = (environ.get("HTTP_CONTENT_ENCODING") or "").lower()
    try:
        if encoding == "gzip":
            raw = _inflate(raw, _GZIP, limit)
        elif encoding == "deflate":
            raw = _inflate(raw, _ZLIB, limit)
        return loads(raw.decode("utf-8"))
    except (OSError, zlib.error, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadBody(f"the body is not valid JSON: {exc}") from None


class MirrorApp:
    """W&B's GraphQL endpoint over a mirror database."""

    def __init__(
        self,
        engine: Engine,
        keys: KeyChecker,
        faults: FaultConfig | None = None,
        max_body_bytes: int | None = None,
        exports: ParquetExports | None = None,
        limits: Limits | None = None,
        role: str = "upstream",
        backup_dest: str = "",
    ) -> None:
        self.engine = engine
        self.role = role
        self.keys = keys
        self.limits = limits or Limits()
        self.max_body_bytes = max_body_bytes or self.limits.max_body_bytes
        self.faults = FaultInjector(faults or FaultConfig())
        self.chunks = ChunkCache()
        self.exports = exports
        self.budgets = Budgets()
        self.dashboard = Dashboard(engine, keys, self.chunks, backup_dest)
        if not event.contains(engine, "before_cursor_execute", _before_statement):
            event.listen(engine, "before_cursor_execute", _before_statement)

    def stop(self) -> int:
        """Stop every request in flight (the server is shutting down); returns how many."""
        return self.budgets.cancel_all()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        status, headers, body, label = self._dispatch(environ, method, path)
        elapsed = (time.perf_counter() - started) * 1000
        suffix = f" {label}" if label else ""
        shown = URL_PATH + "…" if path.startswith(URL_PATH) else path
        if status is None:
            environ[DROP_CONNECTION] = True
            log.info("%s %s dropped %.1fms%s", method, shown, elapsed, suffix)
            return []
        length = body.length if isinstance(body, FileBody) else len(body)
        headers.append(("Content-Length", str(length)))
        start_response(f"{status} {_REASONS.get(status, 'Unknown')}", headers)
        log.info("%s %s %d %.1fms%s", method, shown, status, elapsed, suffix)
        if isinstance(body, FileBody):
            if method == "HEAD":
                body.handle.close()
                return []
            return _file_chunks(body)
        return [] if method == "HEAD" else [body]

    def _dispatch(
        self, environ: dict[str, Any], method: str, path: str
    ) -> tuple[int | None, list[tuple[str, str]], Body, str]:
        if path.startswith(URL_PATH) and self.exports is not None:
            return self._parquet_file(environ, method, path[len(URL_PATH) :])
        if path in GRAPHQL_PATHS:
            if method != "POST":
                return (*_error(405, "use POST for GraphQL"), "")
            if not self.keys.allows(environ.get("HTTP_AUTHORIZATION")):
                status, headers, body = _error(401, "invalid or missing API key")
                headers.append(("WWW-Authenticate", 'Basic realm="wandb-mirror"'))
                return status, headers, body, ""
            trust = environ.get(TRUST_CONNECTION)
            if trust is not None:
                trust()
            return self._graphql(environ)
        if path.startswith(SIDE_CHANNEL_PREFIXES):
            return 200, [("Content-Type", "application/json")], b"{}", "(ignored)"
        if path == "/healthz" and method == "GET":
            return 200, [("Content-Type", "application/json")], b'{"status":"ok"}', ""
        if Dashboard.handles(method, path):
            return self.dashboard.respond(environ, method, path, environ.get(TRUST_CONNECTION))
        return (*_error(404, f"no such endpoint: {method} {path}"), "")

    def _parquet_file(
        self, environ: dict[str, Any], method: str, token: str
    ) -> tuple[int, list[tuple[str, str]], Body, str]:
        """An export file by signed URL: no API key, 403 when forged or expired, 404 when gone.

        GET sends the file, or one byte range of it (206) as the Rust reader of wandb-core asks
        when it reads a file in place; HEAD sends only the headers (its ``Content-Length`` is
        how that reader learns the size).
        """
        assert self.exports is not None
        if method not in ("GET", "HEAD"):
            return (*_error(405, "use GET or HEAD for exported history files"), "")
        try:
            path = self.exports.locate(token)
            handle = open(path, "rb")  # noqa: SIM115 - closed once the body is sent
        except TokenError as exc:
            return (*_error(403, f"access denied: {exc}"), "")
        except OSError:
            return (*_error(404, "no such file: the export was replaced or removed"), "")
        size = os.fstat(handle.fileno()).st_size
        label = "/".join(path.parts[-2:])
        headers = [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")]
        wanted = byte_range(environ.get("HTTP_RANGE"), size) if method == "GET" else None
        if wanted is False:
            handle.close()
            status, base, body = _error(416, f"the range is outside the file ({size} bytes)")
            return status, [*base, ("Content-Range", f"bytes */{size}")], body, label
        if wanted is None:
            return 200, headers, FileBody(handle, 0, size), label
        start, end = wanted
        headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        return 206, headers, FileBody(handle, start, end - start + 1), label

    def _graphql(
        self, environ: dict[str, Any]
    ) -> tuple[int | None, list[tuple[str, str]], bytes, str]:
        decision = self.faults.decide()
        headers = list(decision.headers)
        if decision.status == 429:
            status, base, body = _error(429, "rate limit exceeded (injected fault)")
            return status, base + headers, body, "(fault)"
        if decision.status == 502:
            return 502, [("Content-Type", "text/plain")], b"Bad Gateway\n", "(fault)"
        if decision.status == 500:
            status, base, body = _error(500, "internal server error (injected fault)")
            return status, base + headers, body, "(fault)"
        if decision.drop:
            return None, [], b"", "(fault)"
        if decision.delay_s:
            time.sleep(decision.delay_s)
        budget = Budget(self.limits)
        try:
            payload = _read_body(environ, self.max_body_bytes)
        except BadBody as exc:
            status, base, body = _error(400, str(exc))
            return status, base + headers, body, ""
        except BodyTooLarge as exc:
            status, base, body = _error(413, str(exc))
            return status, base + headers, body, ""
        outcome = self._execute(payload, budget, _base_url(environ))
        headers = [("Content-Type", "application/json"), *headers]
        body = dumps_response(outcome.body)
        if len(body) > self.limits.max_response_bytes:
            outcome = aborted(too_large(self.limits), outcome.operation)
            body = dumps_response(outcome.body)
        code = _error_code(outcome.body)
        label = " ".join(part for part in (outcome.operation, code and f"({code})") if part)
        return outcome.status, headers, body, label

    def _execute(self, payload: Any, budget: Budget, base_url: str = "") -> Outcome:
        context = RequestContext(
            self.engine,
            self.chunks,
            page_repeat=self.faults.config.page_repeat,
            exports=self.exports,
            base_url=base_url,
            budget=budget,
            role=self.role,
        )
        try:
            with self.budgets.track(budget), current(budget):
                return run_request(payload, context)
        except Exception as exc:  # a bug or a broken database: one line, answered as W&B would
            log.error("request failed: %s", describe(exc))
            return Outcome(500, {"errors": [{"message": "internal server error"}]})
        finally:
            context.close()


class StatementRefused(Exception):  # noqa: N818 - it names what happened to the statement
    """A statement not sent because its request is out of time or cancelled.

    An Exception, where :class:`RequestAborted` is a BaseException: SQLAlchemy invalidates a
    connection that a BaseException passes through, and the request's transaction could then
    neither commit nor roll back. Raised as a resolver's error, it is answered with the
    budget's own reason (``run_request`` checks the budget when a field fails).
    """


def _before_statement(*_args: Any) -> None:
    """Send no statement for a request that is out of time or cancelled (the server stops).

    A cancel request stops only a statement already running at the database, and SQLAlchemy
    may spend seconds compiling one (a filter of 1,000 clauses) before sending it; checked
    here, it never starts. Outside a request (the daemon's sync on the same engine) this does
    nothing.
    """
    try:
        checkpoint()
    except RequestAborted as exc:
        raise StatementRefused(exc.message) from None


def _error_code(body: dict[str, Any]) -> str | None:
    """The code of a request stopped by its budget (for the access log), else None."""
    errors = body.get("errors") or ()
    if len(errors) == 1 and isinstance(errors[0], dict):
        return (errors[0].get("extensions") or {}).get("code")
    return None


def _base_url(environ: dict[str, Any]) -> str:
    """``scheme://host[:port]`` as the client addressed this server (its ``Host`` header), so
    that the URLs handed out reach the server the way the client already does."""
    scheme = environ.get("wsgi.url_scheme") or "http"
    host = environ.get("HTTP_HOST")
    if not host:
        host = f"{environ.get('SERVER_NAME', '127.0.0.1')}:{environ.get('SERVER_PORT', '80')}"
    return f"{scheme}://{host}"
