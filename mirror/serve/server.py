"""``wandb-mirror serve``: the GraphQL endpoint on waitress, a production-grade threaded server.

Waitress gives keep-alive, a bounded thread pool and large bodies (pages of 1,000 full runs or
history windows run to tens of MB). Binding beyond loopback without an API key is refused: the
mirror holds the same data W&B guards with keys.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import WSGITask

from mirror.errors import ConfigError, MirrorError
from mirror.serve import parquet_export
from mirror.serve.app import DROP_CONNECTION, MAX_BODY_BYTES, MirrorApp
from mirror.serve.auth import KEYS_ENV, KeyChecker, configured_keys, is_loopback
from mirror.serve.faults import OPTIONS, FaultConfig, env_name, from_env
from mirror.serve.parquet_export import ParquetConfig, ParquetExports
from mirror.store import migrate
from mirror.store.engine import make_engine, sqlite_path

log = logging.getLogger("mirror.serve")

USAGE_ERROR = 2


class _Task(WSGITask):
    """A waitress task that can hang up without answering (the drop fault)."""

    def finish(self) -> None:
        if self.environ is not None and self.environ.get(DROP_CONNECTION):
            self.close_on_finish = True
            return
        super().finish()


class _Channel(HTTPChannel):
    task_class = _Task


def make_server(
    app: Any, host: str, port: int, threads: int = 8
) -> Any:  # waitress has no public server type
    """A waitress server bound to ``host:port`` (port 0: any free port), not yet serving."""
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        max_request_body_size=MAX_BODY_BYTES,
        max_request_header_size=1024 * 1024,
        channel_timeout=300,
        connection_limit=256,
        backlog=1024,
        ident="wandb-mirror",
        expose_tracebacks=False,
        clear_untrusted_proxy_headers=True,
    )
    server.channel_class = _Channel
    return server


def _interrupt(*_args: object) -> None:
    """SIGTERM stops the loop the way Ctrl-C does; closing sockets under it would break select."""
    raise KeyboardInterrupt


def serve(
    database: str | os.PathLike[str] | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_keys: Sequence[str] = (),
    faults: FaultConfig | None = None,
    threads: int = 8,
    parquet: ParquetConfig | None = None,
) -> None:
    """Serve the mirror at ``http://host:port/graphql`` until interrupted (SIGINT or SIGTERM).

    Raises ``ConfigError`` when asked to listen beyond loopback without an API key, or to export
    parquet with no directory to put it in, and ``MirrorError`` when ``database`` is not a
    mirror at the current schema: the server neither creates nor upgrades a database
    (``wandb-mirror init`` / ``wandb-mirror db upgrade`` do).
    """
    keys = KeyChecker(api_keys)
    if not keys.required and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without an API key (pass --api-key or set {KEYS_ENV})"
        )
    engine = make_engine(database, create=False, pool_size=threads)
    try:
        migrate.require_current(engine)
        exports = make_exports(engine.url.render_as_string(hide_password=False), parquet)
    except BaseException:
        engine.dispose()
        raise
    faults = faults or FaultConfig()
    app = MirrorApp(engine, keys, faults, exports=exports)
    server = make_server(app, host, port, threads)
    signal.signal(signal.SIGTERM, _interrupt)
    bound_port = server.effective_port
    log.info("serving %s at http://%s:%s/graphql", engine.url, host, bound_port)
    if faults.active:
        log.warning("fault injection on: %s", faults.describe())
    if exports is not None:
        log.info(
            "parquet exports on: finished runs %gs after their last heartbeat, into %s, "
            "URLs valid %gs",
            exports.delay,
            exports.directory,
            exports.config.url_ttl,
        )
    if not keys.required:
        log.info("no API key configured: any key is accepted (loopback only)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        engine.dispose()


def make_exports(database_url: str, config: ParquetConfig | None) -> ParquetExports | None:
    """The export directory for a server, or None when exports are off.

    Without ``--parquet-dir`` the files go beside an SQLite database (``<file>.parquet/``);
    other databases have no file to sit beside, so they need the option.
    """
    if config is None or not config.enabled:
        return None
    directory = config.directory or parquet_export.default_directory(sqlite_path(database_url))
    if directory is None:
        raise ConfigError(
            "parquet exports need a directory for this database: pass --parquet-dir or set "
            f"{parquet_export.env_name('dir')}"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the parquet export directory {directory}: {exc}"
        ) from None
    return ParquetExports(directory, config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options, shared by ``python -m mirror.serve`` and ``wandb-mirror serve``."""
    parser.add_argument("--db", help="mirror database path or SQLAlchemy URL (WANDB_MIRROR_DB)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks one (8080)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (8)")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"accept this API key (repeatable; also {KEYS_ENV}, comma-separated)",
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
        "dir": "where exports are written (default: <database file>.parquet/)",
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


def run_from_args(args: argparse.Namespace) -> int:
    """Serve with parsed options; returns the exit code.

    Logs one line per request at INFO to stderr unless the caller configured logging already.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)  # the access log, even under a quieter root logger
    try:
        faults = fault_config(args)
        parquet = parquet_config(args)
    except ValueError as exc:
        print(f"wandb-mirror serve: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        serve(
            args.db,
            host=args.host,
            port=args.port,
            api_keys=configured_keys(args.api_key),
            faults=faults,
            threads=args.threads,
            parquet=parquet,
        )
    except ConfigError as exc:
        print(f"wandb-mirror serve: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except MirrorError as exc:
        print(f"wandb-mirror serve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"wandb-mirror serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mirror.serve``."""
    parser = argparse.ArgumentParser(
        prog="python -m mirror.serve", description="Serve a mirror as W&B's GraphQL API."
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
