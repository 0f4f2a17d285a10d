"""Settings: the TOML file, then the environment, then command-line flags, into one frozen object.

A W&B API key is deliberately not a setting, so it can never end up in a file the mirror writes.
Keys the server accepts are read here from the file only; ``mirror.serve.auth`` adds the ones in
``WANDB_MIRROR_SERVE_KEYS``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/wandb-mirror/config.toml`` (``~/.config/...``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "wandb-mirror" / "config.toml"


@dataclass(frozen=True)
class ServeSettings:
    """The GraphQL server's address and the keys it accepts."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Settings:
    """Everything configurable, resolved once at start-up."""

    database: str | None = None
    entity: str | None = None
    serve: ServeSettings = field(default_factory=ServeSettings)
    source: Path | None = None


_KNOWN = {
    "database": str,
    "entity": str,
    "serve": dict,
}
_SERVE_KNOWN = {"host": str, "port": int, "api_keys": list}
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "a table"}


def _check(table: dict[str, Any], known: dict[str, type], where: str, path: Path) -> None:
    for key, value in table.items():
        if key not in known:
            names = ", ".join(sorted(known))
            raise ConfigError(f"{path}: unknown setting {where}{key!r}; known settings: {names}")
        expected = known[key]
        if not isinstance(value, expected) or isinstance(value, bool) and expected is int:
            raise ConfigError(
                f"{path}: {where}{key} must be {_TYPE_NAMES[expected]}, not {value!r}"
            )
        if expected is list and not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{path}: {where}{key} must be a list of strings")


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the config file (explicit path, ``WANDB_MIRROR_CONFIG``, or the default if present).

    An explicitly named file must exist; a broken file is a ``ConfigError`` naming the file,
    the line and the problem.
    """
    explicit = path or os.environ.get("WANDB_MIRROR_CONFIG")
    file = Path(explicit).expanduser() if explicit else default_config_path()
    data: dict[str, Any] = {}
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read: {exc}") from None
    elif explicit:
        raise ConfigError(f"{file}: no such config file; see config.example.toml")
    _check(data, _KNOWN, "", file)
    serve_table = data.get("serve", {})
    _check(serve_table, _SERVE_KNOWN, "serve.", file)
    serve = ServeSettings(
        host=serve_table.get("host", ServeSettings.host),
        port=serve_table.get("port", ServeSettings.port),
        api_keys=tuple(serve_table.get("api_keys", [])),
    )
    return Settings(
        database=os.environ.get("WANDB_MIRROR_DB") or data.get("database"),
        entity=os.environ.get("WANDB_ENTITY") or data.get("entity"),
        serve=serve,
        source=file if file.is_file() else None,
    )
