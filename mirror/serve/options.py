"""Server options that also come from the environment (``WANDB_MIRROR_SERVE_<NAME>``), so a test
or a unit file can set them for a server in another process: one reading rule for every group
(faults, limits, parquet exports).

A numeric setting may be given as a flag, a variable and (for the limits, the port and the
threads) a ``[serve]`` key in the config file; its :class:`Range` is the one rule all three
check, so each refuses the same values with the same words.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: option name → (settings field, parser raising ValueError with a readable message)
Options = dict[str, tuple[str, Callable[[str], object]]]


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: whole or any finite number, within bounds."""

    whole: bool
    low: float
    high: float | None = None
    above: bool = False  # ``low`` itself is refused ("a number above 0")

    def describe(self) -> str:
        """The allowed values in words, for error messages and help."""
        kind = "a whole number" if self.whole else "a number"
        if self.high is not None:
            return f"{kind} between {self.low:g} and {self.high:g}"
        if self.above:
            return f"{kind} above {self.low:g}"
        return f"{kind}, {self.low:g} or more"

    def check(self, value: object) -> int | float:
        """``value`` itself when allowed, else a ValueError saying what is."""
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not self._allows(value)
        ):
            raise ValueError(f"must be {self.describe()}, not {value!r}")
        return value

    def _allows(self, value: int | float) -> bool:
        if isinstance(value, float) and (self.whole or not math.isfinite(value)):
            return False
        if value < self.low or (self.above and value == self.low):
            return False
        return self.high is None or value <= self.high

    def parse(self, text: str) -> int | float:
        """The setting written as text (a flag or a variable), checked."""
        try:
            value: float = int(text) if self.whole else float(text)
        except ValueError:
            raise ValueError(f"must be {self.describe()}, not {text!r}") from None
        try:
            return self.check(value)
        except ValueError:
            raise ValueError(f"must be {self.describe()}, not {text!r}") from None


#: where ``serve`` listens (0: any free port) and how many requests it works on at once
PORT = Range(whole=True, low=0, high=65535)
THREADS = Range(whole=True, low=1, high=1024)


def env_name(prefix: str, option: str) -> str:
    """``("WANDB_MIRROR_SERVE_", "request-timeout")`` → ``"WANDB_MIRROR_SERVE_REQUEST_TIMEOUT"``."""
    return prefix + option.upper().replace("-", "_")


def from_env(
    prefix: str, options: Options, environ: Mapping[str, str] | None = None
) -> dict[str, object]:
    """The options given in the environment, parsed, by settings field name; a bad value is a
    ValueError naming the variable."""
    environ = os.environ if environ is None else environ
    found: dict[str, object] = {}
    for option, (name, parse) in options.items():
        variable = env_name(prefix, option)
        text = environ.get(variable)
        if text:
            try:
                found[name] = parse(text)
            except ValueError as exc:
                raise ValueError(f"{variable}: {exc}") from None
    return found
