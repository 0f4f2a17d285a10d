"""The WSGI application: routing, auth, body parsing, fault injection, errors and access log.

Only ``POST /graphql`` serves data. The official client also posts telemetry (SDK 0.31:
``/sdk/otel/v1/metrics``); those side channels get an empty 200 so that nothing is logged as an
error. Every other path is a small JSON 404. One INFO line per request, never a header value.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine

from mirror.serve.auth import KeyChecker
from mirror.serve.chunk_cache import ChunkCache
from mirror.serve.context import RequestContext
from mirror.serve.executor import Outcome, run_request
from mirror.serve.faults import FaultConfig, FaultInjector
from mirror.serve.jsonout import dumps_response
from mirror.store.fields import loads

log = logging.getLogger("mirror.serve")

#: set in the WSGI environ when the connection must be closed without a response
DROP_CONNECTION = "mirror.drop_connection"
GRAPHQL_PATHS = frozenset({"/graphql", "/graphql/"})
SIDE_CHANNEL_PREFIXES = ("/sdk/", "/analytics", "/telemetry")
StartResponse = Callable[..., Any]
#: the largest request body accepted, as sent and once inflated (gzip or deflate)
MAX_BODY_BYTES = 512 * 1024 * 1024
#: ``wbits`` for zlib: gzip framing, and zlib framing (HTTP's ``deflate``)
_GZIP, _ZLIB = 31, 15

_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
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


def _read_body(environ: dict[str, Any], limit: int = MAX_BODY_BYTES) -> Any:
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
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.faults = FaultInjector(faults or FaultConfig())
        self.chunks = ChunkCache()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        status, headers, body, label = self._dispatch(environ, method, path)
        elapsed = (time.perf_counter() - started) * 1000
        suffix = f" {label}" if label else ""
        if status is None:
            environ[DROP_CONNECTION] = True
            log.info("%s %s dropped %.1fms%s", method, path, elapsed, suffix)
            return []
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {_REASONS.get(status, 'Unknown')}", headers)
        log.info("%s %s %d %.1fms%s", method, path, status, elapsed, suffix)
        return [body]

    def _dispatch(
        self, environ: dict[str, Any], method: str, path: str
    ) -> tuple[int | None, list[tuple[str, str]], bytes, str]:
        if path in GRAPHQL_PATHS:
            if method != "POST":
                return (*_error(405, "use POST for GraphQL"), "")
            if not self.keys.allows(environ.get("HTTP_AUTHORIZATION")):
                status, headers, body = _error(401, "invalid or missing API key")
                headers.append(("WWW-Authenticate", 'Basic realm="wandb-mirror"'))
                return status, headers, body, ""
            return self._graphql(environ)
        if path.startswith(SIDE_CHANNEL_PREFIXES):
            return 200, [("Content-Type", "application/json")], b"{}", "(ignored)"
        if path == "/healthz" and method == "GET":
            return 200, [("Content-Type", "application/json")], b'{"status":"ok"}', ""
        return (*_error(404, f"no such endpoint: {method} {path}"), "")

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
        try:
            payload = _read_body(environ, self.max_body_bytes)
        except BadBody as exc:
            status, base, body = _error(400, str(exc))
            return status, base + headers, body, ""
        except BodyTooLarge as exc:
            status, base, body = _error(413, str(exc))
            return status, base + headers, body, ""
        outcome = self._execute(payload)
        headers = [("Content-Type", "application/json"), *headers]
        return outcome.status, headers, dumps_response(outcome.body), outcome.operation or ""

    def _execute(self, payload: Any) -> Outcome:
        context = RequestContext(
            self.engine, self.chunks, page_repeat=self.faults.config.page_repeat
        )
        try:
            return run_request(payload, context)
        except Exception:  # a bug or a broken database: logged once, answered as W&B would
            log.exception("request failed")
            return Outcome(500, {"errors": [{"message": "internal server error"}]})
        finally:
            context.close()
