"""The arguments of a history read, checked once for the offline ``Run.history`` and
``Run.scan_history`` and for the ``history`` command, each naming them its own way.

An argument that can only ever give nothing (a step range that ends before it starts, zero or
a negative number of samples, a key list written as a single string) is a mistake, and an
empty answer would hide it; wandb refuses the string too ("keys must be specified in a list").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

from mirror.errors import ArgumentError

#: how the offline API calls the arguments; the command line passes its flag names
API_NAMES: Mapping[str, str] = {
    "keys": "keys",
    "samples": "samples",
    "min_step": "min_step",
    "max_step": "max_step",
}


def checked_keys(keys: Any, names: Mapping[str, str] = API_NAMES) -> list[str] | None:
    """``keys`` as a list of key names, None for every key (an empty list too, as in wandb)."""
    name = names["keys"]
    if keys is None:
        return None
    if isinstance(keys, (str, bytes)):
        raise ArgumentError(
            f"{name} must be specified in a list, e.g. {name}=[{keys!r}], not a single string"
        )
    if not isinstance(keys, Sequence) or not all(isinstance(k, str) for k in keys):
        raise ArgumentError(f"{name} must be a list of strings, not {keys!r}")
    return list(keys) or None


def check_window(
    samples: Any, min_step: Any, max_step: Any, names: Mapping[str, str] = API_NAMES
) -> None:
    """Refuse a sample count below 1 and a step range that holds no step."""
    if samples is not None and (not _whole(samples) or samples < 1):
        raise ArgumentError(
            f"{names['samples']} must be a whole number, 1 or more (or left out for every row), "
            f"not {samples!r}"
        )
    for key in ("min_step", "max_step"):
        value = min_step if key == "min_step" else max_step
        if value is not None and not _whole(value):
            raise ArgumentError(f"{names[key]} must be a whole number, not {value!r}")
    if min_step is not None and max_step is not None and max_step <= min_step:
        raise ArgumentError(
            f"{names['max_step']} {max_step} must be above {names['min_step']} {min_step} "
            f"({names['max_step']} is exclusive: steps {min_step} <= step < {max_step} hold none)"
        )


def _whole(value: Any) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)
