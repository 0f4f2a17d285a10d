"""Reading W&B's JSON fast, without losing what only a lenient reader accepts."""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(text: str | bytes) -> Any:
    """W&B's JSON text, NaN and ±Infinity tokens included.

    orjson reads a history row three times faster than the standard library, but refuses the
    bare NaN/Infinity tokens W&B sends and integers beyond 64 bits; those few texts go to the
    standard library, which reads them as W&B means them.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
