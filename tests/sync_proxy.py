"""A real HTTP server on 127.0.0.1, in a thread, for the sync's fault tests.

``StubServer`` answers every request with a function of the request (unit tests of the remote
client: what it sends, when, and what it makes of each answer). ``FaultProxy`` forwards to
``python -m mirror.serve`` and fails only the requests a rule picks (one run's history, a page
after the first...), which the server's own fault options cannot aim at.

Failures take the shapes W&B gives them (PROTOCOL.md, "Errors, retries, rate limits"): GraphQL
errors at HTTP 200 with ``data: null``, 500 with a JSON ``errors`` body, 502 as plain text from
a proxy, 429 with ``RateLimit-*`` and ``Retry-After``, a connection closed without an answer, an
answer that comes too late.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

_OPERATION = re.compile(r"^\s*(?:query|mutation)\s+(\w+)")
#: response headers not passed on by the proxy (it sends its own framing)
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
}


@dataclass
class Seen:
    """One request as the server received it, and what was done with it."""

    at: float  # time.monotonic() when it arrived
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    outcome: str = ""

    @property
    def payload(self) -> dict[str, Any]:
        try:
            found = json.loads(self.body or b"{}")
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    @property
    def operation(self) -> str:
        match = _OPERATION.match(str(self.payload.get("query", "")))
        return match.group(1) if match else ""

    @property
    def variables(self) -> dict[str, Any]:
        found = self.payload.get("variables")
        return found if isinstance(found, dict) else {}

    @property
    def run(self) -> str | None:
        """The run a run-level operation names (``None`` for the listing and records)."""
        return self.variables.get("run")


@dataclass(frozen=True)
class Reply:
    """An answer, or a failure to answer (``drop``), after ``delay_s``."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    drop: bool = False
    label: str = ""


def json_reply(status: int, payload: Any, *headers: tuple[str, str], label: str = "") -> Reply:
    body = json.dumps(payload).encode()
    return Reply(status, body, (("Content-Type", "application/json"), *headers), label=label)


def graphql_data(data: Any) -> Reply:
    return json_reply(200, {"data": data})


def graphql_error(message: str) -> Reply:
    """W&B's refusal of a document: HTTP 200, ``errors`` and ``data: null``."""
    return json_reply(200, {"errors": [{"message": message}], "data": None}, label="errors")


def server_error(message: str = "internal server error") -> Reply:
    """A 500 as W&B's API answers it: a JSON ``errors`` body."""
    return json_reply(500, {"errors": [{"message": message}]}, label="500")


def bad_gateway() -> Reply:
    """A 502 from the proxy in front of W&B: plain text."""
    return Reply(502, b"Bad Gateway\n", (("Content-Type", "text/plain"),), label="502")


def rate_limited(retry_after: int | None, limit: int = 10, reset: int | None = None) -> Reply:
    """A 429 with W&B's ``RateLimit-*`` headers and, when given, ``Retry-After``."""
    headers = [
        ("RateLimit-Limit", str(limit)),
        ("RateLimit-Remaining", "0"),
        ("RateLimit-Reset", str(reset if reset is not None else retry_after or 1)),
    ]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return json_reply(429, {"errors": [{"message": "rate limit exceeded"}]}, *headers, label="429")


def dropped() -> Reply:
    return Reply(drop=True, label="dropped")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(
            time.monotonic(),
            self.command,
            self.path,
            {k: v for k, v in self.headers.items()},
            self.rfile.read(length) if length else b"",
        )
        self.server.owner.record(seen)
        reply = self.server.owner.answer(seen)
        seen.outcome = reply.label or str(reply.status)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:  # the client gave up waiting (a timeout test): nothing to tell it
            self.close_connection = True

    do_GET = do_POST = do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: StubServer


class StubServer:
    """``handler(seen) -> Reply`` on ``http://127.0.0.1:PORT``; every request is kept in ``seen``."""

    def __init__(self, handler: Callable[[Seen], Reply] | None = None) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def answer(self, seen: Seen) -> Reply:
        assert self.handler is not None
        return self.handler(seen)

    def graphql(self, operation: str | None = None) -> list[Seen]:
        """The GraphQL requests received so far (of one operation, if given)."""
        with self._lock:
            found = [s for s in self.seen if s.method == "POST" and s.path == "/graphql"]
        return [s for s in found if operation is None or s.operation == operation]

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class FaultProxy(StubServer):
    """Forwards to ``upstream`` (a URL) unless ``rule(seen)`` returns a Reply for the request.

    ``rule`` may be swapped at any time (``None`` forwards everything). A rule's ``slow(s)``
    forwards the request and answers only after ``s`` seconds.
    """

    def __init__(self, upstream: str, rule: Callable[[Seen], Reply | None] | None = None) -> None:
        super().__init__()
        self.upstream = upstream
        self.rule = rule
        self._local = threading.local()

    def answer(self, seen: Seen) -> Reply:
        rule = self.rule
        reply = rule(seen) if rule is not None else None
        if reply is not None and (reply.drop or reply.body or reply.status != 200):
            return reply
        forwarded = self._forward(seen)
        if reply is not None and reply.delay_s:  # a slow answer: the upstream's, late
            return Reply(
                forwarded.status, forwarded.body, forwarded.headers, reply.delay_s, label="slow"
            )
        return forwarded

    def _forward(self, seen: Seen) -> Reply:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        headers = {
            k: v
            for k, v in seen.headers.items()
            if k.lower() in ("authorization", "content-type", "user-agent", "range")
        }
        response = session.request(
            seen.method, self.upstream + seen.path, headers=headers, data=seen.body, timeout=60
        )
        kept = tuple((k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP)
        return Reply(response.status_code, response.content, kept, label=f"{response.status_code}")


def slow(seconds: float) -> Reply:
    """For a FaultProxy rule: forward the request, and answer only after ``seconds``."""
    return Reply(delay_s=seconds, label="slow")
