"""``fields.dumps`` encodes through a C encoder built once; it must say what ``json.dumps`` says,
errors included, since exports, the server and the field index all rely on its exact text."""

from __future__ import annotations

import json
import math

import pytest

from mirror.store.fields import dumps

VALUES = [
    {"a": [1, 2.5, math.nan, math.inf, -math.inf, -0.0, 10**30, -(2**63) - 1]},
    {"ü": "重要", "nested": {"x": [None, True, False, {"y": "\u2028\x00"}]}},
    "plain text é",
    1,
    1e16,
    None,
    [],
    {1: "int key", False: "bool key", None: "null key", 2.5: "float key"},
    ("a", "tuple"),
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_is_compact_json_dumps(value) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    assert dumps(value) == expected


def test_dumps_raises_the_standard_errors() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(loop)
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"x": object()})
    assert dumps({"after": "errors"}) == '{"after":"errors"}'  # nothing left behind
