"""Errors a request can cause, and how the server answers them."""

from __future__ import annotations

from mirror.errors import MirrorError


class RequestError(MirrorError, ValueError):
    """The client asked for something that cannot be done: a GraphQL error, no traceback."""


class HttpError(RequestError):
    """A request W&B answers with a non-200 status and ``{"errors": [{"message": ...}]}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def shown(value: object, limit: int = 40) -> str:
    """A value as an error message quotes it: its repr, cut short (a client may send megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
