"""The dashboard's assets, shipped inside the wheel (``static/``): its stylesheet and script,
and uPlot (MIT, vendored with its licence), so nothing is ever loaded from a CDN and the pages
work with no network at all."""

from __future__ import annotations

import gzip
import threading
from importlib import resources

TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
NAMES = frozenset(
    {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE.txt", "charts.js", "dashboard.css"}
)

_cache: dict[str, tuple[bytes, bytes]] = {}
_lock = threading.Lock()


def asset(name: str) -> tuple[str, bytes, bytes] | None:
    """``(content type, body, gzipped body)`` of a shipped asset, or None; read once."""
    if name not in NAMES:
        return None
    with _lock:
        if name not in _cache:
            data = (resources.files("mirror.serve.dashboard") / "static" / name).read_bytes()
            _cache[name] = (data, gzip.compress(data, 6))
        body, packed = _cache[name]
    return TYPES[name[name.rindex(".") :]], body, packed
