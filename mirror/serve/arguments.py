"""The ``serve`` options: command-line flags and environment variables → the server's settings.

Kept apart from ``mirror.serve.server`` so that building the ``wandb-mirror`` command line does
not import waitress and the GraphQL schema: every CLI call would pay for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping

from mirror.serve import limits as limit_options
from mirror.serve import options, parquet_export
from mirror.serve.auth import KEYS_ENV
from mirror.serve.faults import OPTIONS, FaultConfig, env_name, from_env
from mirror.serve.limits import Limits
from mirror.serve.parquet_export import ParquetConfig

ROLES = ("mirror", "upstream")
ROLE_ENV = "WANDB_MIRROR_SERVE_ROLE"


def role_option(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str | None:
    """``--role``, else ``WANDB_MIRROR_SERVE_ROLE``, else None (the database decides)."""
    if args.role is not None:
        return args.role
    text = (os.environ if environ is None else environ).get(ROLE_ENV, "").strip()
    if text and text not in ROLES:
        raise ValueError(f"{ROLE_ENV}: must be one of {', '.join(ROLES)}, not {text!r}")
    return text or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options, shared by ``python -m mirror.serve`` and ``wandb-mirror serve``."""
    parser.add_argument("--db", help="mirror database path or SQLAlchemy URL (WANDB_MIRROR_DB)")
    parser.set_defaults(configured_limits=None)  # `wandb-mirror serve` passes the config's
    parser.add_argument(
        "--role",
        choices=ROLES,
        help="mirror: writes are queued as edits for W&B; upstream: W&B's own semantics, for "
        "tests and demos (default: mirror when the database has synced from W&B; also "
        f"{ROLE_ENV})",
    )
    parser.add_argument(
        "--host", type=_host, default="127.0.0.1", help="address to bind (127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=_argument_type(options.PORT.parse),
        default=8080,
        help="port to bind, 0 to 65535; 0 picks a free one (8080)",
    )
    parser.add_argument(
        "--threads",
        type=_argument_type(options.THREADS.parse),
        default=8,
        help="worker threads, 1 to 1024 (8)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"accept this API key (repeatable; also {KEYS_ENV}, comma-separated)",
    )
    bounds = parser.add_argument_group(
        "limits on one request and on connections (each also reads WANDB_MIRROR_SERVE_<NAME>)"
    )
    defaults = Limits()
    limit_helps = {
        "request-timeout": "stop a request after this many seconds, with an error",
        "max-body-mb": "largest request body in MB, as sent and once inflated",
        "max-response-mb": "largest answer in MB; a larger one is refused with an error",
        "max-cost": "most values one operation may ask for (lists multiply)",
        "idle-timeout": "close a connection silent for this many seconds",
        "connection-limit": "open connections at most; unauthorized ones get half",
    }
    limit_metavars = {"request-timeout": "S", "idle-timeout": "S", "max-cost": "N"}
    limit_metavars.update({"max-body-mb": "MB", "max-response-mb": "MB", "connection-limit": "N"})
    for option, (name, parse) in limit_options.OPTIONS.items():
        bounds.add_argument(
            f"--{option}",
            dest=f"limit_{name}",
            type=_argument_type(parse),
            default=None,
            metavar=limit_metavars[option],
            help=f"{limit_helps[option]} ({getattr(defaults, name):,}) "
            f"[{limit_options.env_name(option)}]",
        )
    group = parser.add_argument_group(
        "testing options (fault injection, off by default; each also reads "
        "WANDB_MIRROR_SERVE_FAULT_<NAME>)"
    )
    helps = {
        "latency-ms": "delay every GraphQL answer by MS milliseconds",
        "rate-limit": "admit N requests per WINDOW_S seconds, answer others 429 (N/WINDOW_S)",
        "error-rate": "answer this fraction of requests with 500 or 502",
        "drop-rate": "close the connection without an answer for this fraction of requests",
        "page-repeat": "each runs page after the first repeats N runs and skips N",
        "seed": "seed for the error and drop draws (0)",
    }
    metavars = {"latency-ms": "MS", "rate-limit": "N/WINDOW_S", "error-rate": "P"}
    metavars.update({"drop-rate": "P", "page-repeat": "N", "seed": "S"})
    for option, (name, parse) in OPTIONS.items():
        group.add_argument(
            f"--fault-{option}",
            dest=f"fault_{name}",
            type=_argument_type(parse),
            default=None,
            metavar=metavars[option],
            help=f"{helps[option]} [{env_name(option)}]",
        )
    exports = parser.add_argument_group(
        "parquet history exports of finished runs, as W&B's (off without an export delay; "
        "each also reads WANDB_MIRROR_SERVE_PARQUET_<NAME>)"
    )
    export_helps = {
        "export-delay": "export a finished run once its last heartbeat is this old; 0: at once",
        "dir": (
            "where exports are written (default: <database file>.parquet/ for SQLite, "
            "$XDG_DATA_HOME/wandb-mirror/parquet/<host>-<port>-<database>/ for PostgreSQL)"
        ),
        "url-ttl": f"seconds a signed file URL stays valid ({parquet_export.DEFAULT_URL_TTL:g})",
        "file-rows": f"rows per parquet file at most ({parquet_export.DEFAULT_FILE_ROWS})",
    }
    export_metavars = {"export-delay": "SECONDS", "dir": "DIR", "url-ttl": "SECONDS"}
    export_metavars["file-rows"] = "N"
    for option, (name, parse) in parquet_export.OPTIONS.items():
        exports.add_argument(
            f"--parquet-{option}",
            dest=f"parquet_{name}",
            type=_argument_type(parse),
            default=None,
            metavar=export_metavars[option],
            help=f"{export_helps[option]} [{parquet_export.env_name(option)}]",
        )


def _host(text: str) -> str:
    """An address or host name to bind; whether it resolves is found out when binding."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be an address or a host name, not empty")
    return text.strip()


def _argument_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """argparse shows an ArgumentTypeError's message; a ValueError's it hides."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def fault_config(args: argparse.Namespace) -> FaultConfig:
    """Faults from the environment, overridden by command-line options."""
    settings = from_env()
    for _option, (name, _parse) in OPTIONS.items():
        value = getattr(args, f"fault_{name}", None)
        if value is not None:
            settings[name] = value
    return FaultConfig(**settings)  # type: ignore[arg-type]


def parquet_config(args: argparse.Namespace) -> ParquetConfig:
    """Export settings from the environment, overridden by command-line options."""
    settings = parquet_export.from_env()
    for _option, (name, _parse) in parquet_export.OPTIONS.items():
        value = getattr(args, f"parquet_{name}", None)
        if value is not None:
            settings[name] = value
    return ParquetConfig(**settings)  # type: ignore[arg-type]


def with_environment(configured: Limits | None) -> dict[str, object]:
    """Limits from the config file's ``[serve]``, overridden by the environment."""
    settings: dict[str, object] = dataclasses.asdict(configured or Limits())
    settings.update(limit_options.from_env())
    return settings


def limits_config(args: argparse.Namespace) -> Limits:
    """Limits from the config file's ``[serve]`` (``wandb-mirror serve`` puts them in
    ``args.configured_limits``), overridden by the environment, then by command-line options."""
    settings = with_environment(args.configured_limits)
    for _option, (name, _parse) in limit_options.OPTIONS.items():
        value = getattr(args, f"limit_{name}", None)
        if value is not None:
            settings[name] = value
    return Limits(**settings)  # type: ignore[arg-type]
