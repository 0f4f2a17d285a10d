"""Server options that also come from the environment (``WANDB_MIRROR_SERVE_<NAME>``), so a test
or a unit file can set them for a server in another process: one reading rule for every group
(faults, limits, parquet exports)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

#: option name → (settings field, parser raising ValueError with a readable message)
Options = dict[str, tuple[str, Callable[[str], object]]]


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
