"""A dashboard request as the pages need it: decoded path segments, query arguments, and the
errors a page answers with instead of a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs


class PageError(Exception):
    """A request the dashboard answers with an error page: one line, and its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """The method, the path's segments (UTF-8, unescaped) and the query string's arguments."""

    method: str
    parts: tuple[str, ...]
    query: dict[str, list[str]]

    @classmethod
    def from_environ(cls, environ: dict[str, Any], method: str, path: str) -> Request:
        # WSGI hands PATH_INFO over as latin-1 text of the raw bytes: recover the UTF-8
        try:
            path = path.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            raise PageError(400, "the path is not UTF-8") from None
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        return cls(method, tuple(p for p in path.split("/") if p), query)

    def arg(self, name: str, default: str = "") -> str:
        """The argument's last value (a form sends one), or ``default``."""
        values = self.query.get(name)
        return values[-1] if values else default

    def args(self, name: str) -> list[str]:
        """Every value of a repeated argument, blanks left out, in order, once each."""
        return list(dict.fromkeys(v for v in self.query.get(name, []) if v.strip()))

    def number(self, name: str, default: float | None = None) -> float | None:
        """A numeric argument, or a 400 naming it."""
        text = self.arg(name).strip()
        if not text:
            return default
        try:
            return float(text)
        except ValueError:
            raise PageError(400, f"{name}: not a number: {text!r}") from None

    def whole(self, name: str, default: int, low: int, high: int) -> int:
        """An integer argument clamped to ``[low, high]``, or a 400 naming it."""
        value = self.number(name, default)
        assert value is not None
        return max(low, min(high, int(value)))
