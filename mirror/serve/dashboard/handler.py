"""The dashboard's routes, behind the same keys as the GraphQL endpoint.

``MirrorApp`` hands it every GET or HEAD it does not serve itself. With keys configured (which
serving beyond loopback requires), every page, asset and data request needs one as HTTP Basic
``api:<key>`` (the browser asks once), checked by the same ``KeyChecker``.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from mirror.errors import MirrorError
from mirror.serve.auth import KeyChecker
from mirror.serve.chunk_cache import ChunkCache
from mirror.serve.dashboard import static
from mirror.serve.dashboard.data import series_json
from mirror.serve.dashboard.html import esc, page
from mirror.serve.dashboard.overview import projects_page, status_page
from mirror.serve.dashboard.request import PageError, Request
from mirror.serve.dashboard.run_page import compare_page, run_page
from mirror.serve.dashboard.runs_page import runs_page
from mirror.serve.dashboard.series import SeriesCache

log = logging.getLogger("mirror.serve")

PREFIXES = ("/projects/", "/static/", "/data/")
HTML = "text/html; charset=utf-8"
#: smaller bodies are not worth compressing
_GZIP_FROM = 1024
#: level 1: a first chart's 224 KB of series JSON in 3.5 ms instead of 12.9 ms at level 5, for
#: 4% more bytes (104 KB against 100 KB); pages and series are compressed on every request
_GZIP_LEVEL = 1

Response = tuple[int, list[tuple[str, str]], bytes, str]


class Dashboard:
    """Pages over one mirror database."""

    def __init__(
        self, engine: Engine, keys: KeyChecker, chunks: ChunkCache, backup_dest: str = ""
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.chunks = chunks
        self.backup_dest = backup_dest
        self.series = SeriesCache()

    @staticmethod
    def handles(method: str, path: str) -> bool:
        """Whether a request is the dashboard's."""
        return method in ("GET", "HEAD") and (path in ("/", "/status") or path.startswith(PREFIXES))

    def respond(
        self, environ: dict[str, Any], method: str, path: str, trust: Callable[[], None] | None
    ) -> Response:
        """Answer one request: 401 without a good key, else the page, asset or data."""
        if not self.keys.allows(environ.get("HTTP_AUTHORIZATION")):
            headers = [
                ("Content-Type", HTML),
                ("WWW-Authenticate", 'Basic realm="wandb-mirror", charset="UTF-8"'),
            ]
            body = page(
                "Key needed",
                "<h1>Key needed</h1><p>Sign in with any user name and "
                "one of the server's API keys as the password.</p>",
            )
            return 401, headers, body.encode(), ""
        if trust is not None:
            trust()
        try:
            status, content_type, body, packed = self._route(
                Request.from_environ(environ, method, path)
            )
        except PageError as exc:
            status, (content_type, body), packed = exc.status, _error(path, str(exc)), None
        except (MirrorError, SQLAlchemyError) as exc:
            message = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            log.error("dashboard: %s", message)
            status, packed = 500, None
            content_type, body = _error(path, f"cannot read the mirror: {message}")
        headers = [("Content-Type", content_type), ("Vary", "Accept-Encoding")]
        if path.startswith("/static/") and status == 200:
            headers.append(("Cache-Control", "public, max-age=86400"))
        else:
            headers.append(("Cache-Control", "no-store"))
        if "gzip" in (environ.get("HTTP_ACCEPT_ENCODING") or "") and len(body) >= _GZIP_FROM:
            body = packed if packed is not None else gzip.compress(body, _GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        return status, headers, body, ""

    def _route(self, request: Request) -> tuple[int, str, bytes, bytes | None]:
        parts = request.parts
        if parts and parts[0] == "static" and len(parts) == 2:
            found = static.asset(parts[1])
            if found is None:
                raise PageError(404, f"no such asset: {parts[1]}")
            return 200, found[0], found[1], found[2]
        if parts == ("status",):
            return 200, HTML, status_page(self.engine, self.backup_dest).encode(), None
        with self.engine.connect() as conn, conn.begin():
            if not parts:
                return 200, HTML, projects_page(conn).encode(), None
            if parts[0] == "data" and len(parts) == 4 and parts[3] == "series":
                body = series_json(conn, request, parts[1], parts[2], self.series)
                return 200, "application/json", body, None
            if parts[0] == "projects" and len(parts) == 3:
                status, text = runs_page(conn, request, parts[1], parts[2])
                return status, HTML, text.encode(), None
            if parts[0] == "projects" and len(parts) == 4 and parts[3] == "compare":
                text = compare_page(conn, request, parts[1], parts[2], self.chunks)
                return 200, HTML, text.encode(), None
            if parts[0] == "projects" and len(parts) == 5 and parts[3] == "runs":
                text = run_page(conn, request, parts[1], parts[2], parts[4], self.chunks)
                return 200, HTML, text.encode(), None
        raise PageError(404, "no such page")


def _error(path: str, message: str) -> tuple[str, bytes]:
    """An error as the asker reads it: JSON for the charts' data requests, else a page."""
    if path.startswith("/data/"):
        return "application/json", orjson.dumps({"error": message})
    return HTML, page(
        "Error", f'<h1>Error</h1><p class="error" id="error">{esc(message)}</p>'
    ).encode()
