"""Opaque per-edge cursors for run listings.

A cursor names a position in the listing's deterministic order; ``after`` continues with the
next position. Clients must treat them as opaque (W&B's are too), so the encoding is free.
"""

from __future__ import annotations

import base64
import binascii
import re

from mirror.errors import MirrorError
from mirror.serve.errors import shown

_PREFIX = "cursor:v1:"


class CursorError(MirrorError, ValueError):
    """An ``after`` cursor this server did not hand out."""


def encode_cursor(position: int) -> str:
    """The cursor of the edge at ``position`` (0-based) of a listing."""
    return base64.b64encode(f"{_PREFIX}{position}".encode()).decode()


#: the largest position a cursor may name: beyond it no listing reaches, and SQL's OFFSET
#: (a 64-bit integer) would overflow
MAX_POSITION = 2**62


def decode_cursor(cursor: str) -> int:
    """The position a cursor names."""
    try:
        text = base64.b64decode(cursor, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        text = ""
    match = re.fullmatch(re.escape(_PREFIX) + r"(\d{1,19})", text)
    if not match or int(match.group(1)) > MAX_POSITION:
        raise CursorError(f"invalid cursor {shown(cursor)} for the argument 'after'")
    return int(match.group(1))


def start_after(after: str | None) -> int:
    """The position of the first edge of a page requested with ``after``."""
    return 0 if not after else decode_cursor(after) + 1
