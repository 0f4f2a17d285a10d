"""Settings: the TOML file, then the environment, then command-line flags, into one frozen object.

A W&B API key is deliberately not a setting, so it can never end up in a file the mirror writes
(``mirror.remote.auth`` finds it in the environment or netrc when a sync needs it).
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
from mirror.remote.client import RemoteSettings
from mirror.serve.limits import RANGES as LIMIT_RANGES
from mirror.serve.limits import Limits
from mirror.serve.options import PORT, THREADS, Range

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
    """The GraphQL server's address, the keys it accepts, its threads and its limits."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    enabled: bool = False  # the daemon also serves the mirror
    threads: int = 8
    limits: Limits = field(default_factory=Limits)


#: ``history`` of a project: every key (True), none (False), or only these keys
HistoryChoice = bool | tuple[str, ...]


@dataclass(frozen=True)
class ProjectSettings:
    """One project to mirror, as a ``[[project]]`` table names it."""

    path: str
    history: HistoryChoice | None = None  # None: the ``[sync] history`` default
    interval: float | None = None  # seconds between the daemon's pulls; None: [daemon]'s


@dataclass(frozen=True)
class SyncSettings:
    """How a pull cycle reads W&B: what, how much at a time, how many runs at once."""

    history: HistoryChoice = True
    concurrency: int = 8
    listing_page: int = 1000
    record_batch: int = 100
    history_page: int = 1000
    event_samples: int = 100_000
    parquet: bool = True
    parquet_min_rows: int = 1
    parquet_after: float = 14_400.0  # seconds after a run's last heartbeat: W&B exports late
    max_delete_fraction: float = 0.5
    lag_window: float = 300.0  # seconds: runs changed more recently are read again next cycle


@dataclass(frozen=True)
class PushSettings:
    """How queued edits go back to W&B."""

    policy: str = "abort"  # when a key moved on both sides: abort | local-wins | remote-wins
    wait_for_running: bool = True  # hold summary edits of keys a running run logs itself


@dataclass(frozen=True)
class DaemonSettings:
    """What the daemon runs when: intervals in seconds, cron expressions in local time."""

    pull_interval: float = 900.0
    push_interval: float = 300.0
    reconcile: str = "0 4 * * 0"  # a full reconcile, Sundays at 04:00 (cron or "every 7d"); ""
    misfire_grace: float = 86_400.0  # a job overdue by less than this still runs (once)
    failure_backoff_max: float = 3_600.0  # longest wait after repeated failures of a job
    log_file: str = ""  # "" logs to stderr only
    log_level: str = "info"
    log_max_bytes: int = 10_000_000
    log_backups: int = 5


@dataclass(frozen=True)
class BackupSettings:
    """Where snapshots go, when the daemon takes them, and which ones are kept."""

    dest: str = ""  # "" means backups/ beside the database
    schedule: str = "30 3 * * *"  # the daemon's: cron or "every 6h"; "" for never
    keep_last: int = 7
    keep_daily: int = 7
    keep_weekly: int = 4
    export_schedule: str = ""  # the same for a portable export (jsonl); "" for never
    export_dest: str = ""  # "" means exports/ beside the database


@dataclass(frozen=True)
class Settings:
    """Everything configurable, resolved once at start-up."""

    database: str | None = None
    entity: str | None = None
    base_url: str | None = None
    serve: ServeSettings = field(default_factory=ServeSettings)
    remote: RemoteSettings = field(default_factory=RemoteSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    push: PushSettings = field(default_factory=PushSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    projects: tuple[ProjectSettings, ...] = ()
    source: Path | None = None


_NUMBER = (int, float)
_KNOWN: dict[str, Any] = {
    "database": str,
    "entity": str,
    "serve": dict,
    "remote": dict,
    "sync": dict,
    "push": dict,
    "daemon": dict,
    "backup": dict,
    "project": list,
}
_PUSH_KNOWN: dict[str, Any] = {"policy": str, "wait_for_running": bool}
_POLICIES = ("abort", "local-wins", "remote-wins")
_SERVE_KNOWN: dict[str, Any] = {"host": str, "port": int, "api_keys": list, "enabled": bool}
#: ``[serve]`` numbers → the values they accept, the same rule as their flags and variables
_SERVE_RANGES: dict[str, Range] = {"port": PORT, "threads": THREADS, **LIMIT_RANGES}
_SERVE_KNOWN.update({k: int if r.whole else _NUMBER for k, r in _SERVE_RANGES.items()})
_LOG_LEVELS = ("debug", "info", "warning", "error")
#: ``[daemon]`` and ``[backup]`` settings → (type, smallest allowed value; None: a cron or text)
_DAEMON_KNOWN: dict[str, tuple[Any, float | None]] = {
    "pull_interval": (_NUMBER, 0.1),
    "push_interval": (_NUMBER, 0.1),
    "reconcile": (str, None),
    "misfire_grace": (_NUMBER, 1),
    "failure_backoff_max": (_NUMBER, 1),
    "log_file": (str, None),
    "log_level": (str, None),
    "log_max_bytes": (int, 1000),
    "log_backups": (int, 0),
}
_BACKUP_KNOWN: dict[str, tuple[Any, float | None]] = {
    "dest": (str, None),
    "schedule": (str, None),
    "keep_last": (int, 1),
    "keep_daily": (int, 0),
    "keep_weekly": (int, 0),
    "export_schedule": (str, None),
    "export_dest": (str, None),
}
_CRON_SETTINGS = ("reconcile", "schedule", "export_schedule")
#: ``[remote]`` setting → (RemoteSettings field, type, smallest allowed value)
_REMOTE_KNOWN: dict[str, tuple[str, Any, float]] = {
    "base_url": ("", str, 0),
    "timeout": ("timeout_s", _NUMBER, 0.1),
    "connect_timeout": ("connect_timeout_s", _NUMBER, 0.1),
    "max_attempts": ("max_attempts", int, 1),
    "retry_budget": ("retry_budget", int, 0),
    "backoff_initial": ("backoff_initial_s", _NUMBER, 0),
    "backoff_max": ("backoff_max_s", _NUMBER, 0),
    "min_interval": ("min_interval_s", _NUMBER, 0),
    "slow_below": ("slow_below", _NUMBER, 0),
}
#: ``[sync]`` setting → (type, smallest allowed value)
_SYNC_KNOWN: dict[str, tuple[Any, float]] = {
    "history": ((bool, list), 0),
    "concurrency": (int, 1),
    "listing_page": (int, 1),
    "record_batch": (int, 1),
    "history_page": (int, 1),
    "event_samples": (int, 1),
    "parquet": (bool, 0),
    "parquet_min_rows": (int, 0),
    "parquet_after": (_NUMBER, 0),
    "max_delete_fraction": (_NUMBER, 0),
    "lag_window": (_NUMBER, 0),
}
_PROJECT_KNOWN: dict[str, Any] = {"path": str, "history": (bool, list), "interval": _NUMBER}
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "a table"}
_TYPE_NAMES.update(
    {bool: "true or false", _NUMBER: "a number", (bool, list): "true, false or a list"}
)


def _check(table: dict[str, Any], known: dict[str, Any], where: str, path: Path) -> None:
    for key, value in table.items():
        if key not in known:
            names = ", ".join(sorted(known))
            raise ConfigError(f"{path}: unknown setting {where}{key!r}; known settings: {names}")
        expected = known[key]
        wrong_bool = isinstance(value, bool) and bool not in (
            expected if isinstance(expected, tuple) else (expected,)
        )
        if not isinstance(value, expected) or wrong_bool:
            raise ConfigError(
                f"{path}: {where}{key} must be {_TYPE_NAMES[expected]}, not {value!r}"
            )
        if (
            isinstance(value, list)
            and key != "project"
            and not all(isinstance(item, str) for item in value)
        ):
            raise ConfigError(f"{path}: {where}{key} must be a list of strings")


def _at_least(value: float, low: float, name: str, path: Path) -> None:
    if value < low:
        raise ConfigError(f"{path}: {name} must be at least {low:g}, not {value!r}")


def _history(value: bool | list[str]) -> HistoryChoice:
    return value if isinstance(value, bool) else tuple(value)


def _remote(table: dict[str, Any], path: Path) -> RemoteSettings:
    _check(table, {k: t for k, (_f, t, _low) in _REMOTE_KNOWN.items()}, "remote.", path)
    values: dict[str, Any] = {}
    for key, value in table.items():
        name, _type, low = _REMOTE_KNOWN[key]
        if name:
            _at_least(value, low, f"remote.{key}", path)
            values[name] = value
    if not 0 <= values.get("slow_below", 0) <= 1:
        raise ConfigError(f"{path}: remote.slow_below must be between 0 and 1")
    return RemoteSettings(**values)


def _sync(table: dict[str, Any], path: Path) -> SyncSettings:
    _check(table, {k: t for k, (t, _low) in _SYNC_KNOWN.items()}, "sync.", path)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "history":
            values[key] = _history(value)
        else:
            if not isinstance(value, bool):
                _at_least(value, _SYNC_KNOWN[key][1], f"sync.{key}", path)
            values[key] = value
    if values.get("max_delete_fraction", 0) > 1:
        raise ConfigError(f"{path}: sync.max_delete_fraction must be between 0 and 1")
    return SyncSettings(**values)


def _push(table: dict[str, Any], path: Path) -> PushSettings:
    _check(table, _PUSH_KNOWN, "push.", path)
    policy = table.get("policy", PushSettings.policy)
    if policy not in _POLICIES:
        raise ConfigError(
            f"{path}: push.policy must be one of {', '.join(_POLICIES)}, not {policy!r}"
        )
    return PushSettings(policy, table.get("wait_for_running", PushSettings.wait_for_running))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_schedule(text: str, name: str) -> float | None:
    """A schedule setting: ``every N[s|m|h|d]`` → its seconds, or a five-field crontab
    expression (minute hour day month weekday, local time) → None once it is known valid."""
    words = text.split()
    if len(words) == 2 and words[0] == "every":
        amount, unit = words[1], "s"
        if amount[-1:] in _UNITS:
            amount, unit = amount[:-1], amount[-1]
        try:
            seconds = float(amount) * _UNITS[unit]
        except ValueError:
            seconds = 0.0
        if seconds >= 1:
            return seconds
        raise ConfigError(f"{name} must be at least every 1s, not {text!r}")
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text)
    except ValueError as exc:
        raise ConfigError(
            f"{name} must be a crontab expression such as '30 3 * * *' (minute hour day month "
            f"weekday) or 'every 6h', not {text!r}: {exc}"
        ) from None
    return None


def _table(
    table: dict[str, Any], known: dict[str, tuple[Any, float | None]], where: str, path: Path
) -> dict[str, Any]:
    """A table of numbers (with lower bounds), text and cron expressions, checked."""
    _check(table, {k: t for k, (t, _low) in known.items()}, where, path)
    for key, value in table.items():
        low = known[key][1]
        if low is not None:
            _at_least(value, low, f"{where}{key}", path)
        elif key in _CRON_SETTINGS and value:
            parse_schedule(value, f"{path}: {where}{key}")
    return dict(table)


def _beside(value: str, path: Path) -> str:
    """A relative path in a config file is relative to that file, as a reader would expect."""
    if not value:
        return value
    expanded = Path(value).expanduser()
    return str(expanded if expanded.is_absolute() else path.parent.resolve() / expanded)


def _backup(table: dict[str, Any], path: Path) -> BackupSettings:
    values = _table(table, _BACKUP_KNOWN, "backup.", path)
    for key in ("dest", "export_dest"):
        if key in values:
            values[key] = _beside(values[key], path)
    return BackupSettings(**values)


def _daemon(table: dict[str, Any], path: Path) -> DaemonSettings:
    values = _table(table, _DAEMON_KNOWN, "daemon.", path)
    if "log_file" in values:
        values["log_file"] = _beside(values["log_file"], path)
    level = values.get("log_level", DaemonSettings.log_level)
    if level not in _LOG_LEVELS:
        raise ConfigError(
            f"{path}: daemon.log_level must be one of {', '.join(_LOG_LEVELS)}, not {level!r}"
        )
    return DaemonSettings(**values)


def _serve(table: dict[str, Any], path: Path) -> ServeSettings:
    _check(table, _SERVE_KNOWN, "serve.", path)
    for key, allowed in _SERVE_RANGES.items():
        if key in table:
            try:
                allowed.check(table[key])
            except ValueError as exc:
                raise ConfigError(f"{path}: serve.{key} {exc}") from None
    if not table.get("host", ServeSettings.host).strip():
        raise ConfigError(f"{path}: serve.host must be an address or a host name, not empty")
    limits = {k: v for k, v in table.items() if k in LIMIT_RANGES}
    return ServeSettings(
        host=table.get("host", ServeSettings.host).strip(),
        port=table.get("port", ServeSettings.port),
        api_keys=tuple(table.get("api_keys", [])),
        enabled=table.get("enabled", ServeSettings.enabled),
        threads=table.get("threads", ServeSettings.threads),
        limits=Limits(**limits),
    )


def _projects(items: list[Any], path: Path) -> tuple[ProjectSettings, ...]:
    found = []
    for i, item in enumerate(items):
        where = f"project[{i}]."
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: each [[project]] must be a table with a path")
        _check(item, _PROJECT_KNOWN, where, path)
        text = item.get("path", "")
        if text.count("/") != 1 or not all(text.split("/")):
            raise ConfigError(f"{path}: {where}path must be ENTITY/PROJECT, not {text!r}")
        history = item.get("history")
        interval = item.get("interval")
        if interval is not None:
            _at_least(interval, 0.1, f"{where}interval", path)
        found.append(
            ProjectSettings(text, None if history is None else _history(history), interval)
        )
    return tuple(found)


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
    serve = _serve(data.get("serve", {}), file)
    remote_table = data.get("remote", {})
    return Settings(
        database=os.environ.get("WANDB_MIRROR_DB") or data.get("database"),
        entity=os.environ.get("WANDB_ENTITY") or data.get("entity"),
        base_url=os.environ.get("WANDB_BASE_URL") or remote_table.get("base_url"),
        serve=serve,
        remote=_remote(remote_table, file),
        sync=_sync(data.get("sync", {}), file),
        push=_push(data.get("push", {}), file),
        daemon=_daemon(data.get("daemon", {}), file),
        backup=_backup(data.get("backup", {}), file),
        projects=_projects(data.get("project", []), file),
        source=file if file.is_file() else None,
    )
