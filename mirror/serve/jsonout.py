"""Response JSON: NaN and ±Infinity as W&B's bare tokens, stored JSON spliced in unparsed.

W&B's clients parse ``NaN``/``Infinity`` tokens (Python's ``json`` does, and wandb-core passes
them through), so responses keep them. A field whose value the store already holds as JSON text
(``historyKeys``) is handed out as :class:`RawJSON` and spliced into the response as is: parsing
and re-serialising it for each of 1,000 runs per page would cost more than the rest of the page.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any


class RawJSON:
    """A JSON value kept as the text the store holds."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def dumps_response(body: Any) -> bytes:
    """Compact UTF-8 JSON of a response body, with every RawJSON's text in its place."""
    raws: list[str] = []
    nonce = secrets.token_hex(8)

    def placeholder(value: Any) -> str:
        if not isinstance(value, RawJSON):
            raise TypeError(f"{type(value).__name__} is not JSON serializable")
        raws.append(value.text)
        return f"\x00{nonce}:{len(raws) - 1}\x00"

    text = json.dumps(
        body, separators=(",", ":"), ensure_ascii=False, allow_nan=True, default=placeholder
    )
    if raws:
        pattern = re.compile(r'"\\u0000' + nonce + r':(\d+)\\u0000"')
        text = pattern.sub(lambda m: raws[int(m.group(1))], text)
    return text.encode()
