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
from mirror.serve.app import DROP_CONNECTION, MAX_BODY_BYTES, MirrorApp
from mirror.serve.auth import KEYS_ENV, KeyChecker, configured_keys, is_loopback
from mirror.serve.faults import OPTIONS, FaultConfig, env_name, from_env
from mirror.store import migrate
from mirror.store.engine import make_engine

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
) -> None:
    """Serve the mirror at ``http://host:port/graphql`` until interrupted (SIGINT or SIGTERM).

    Raises ``ConfigError`` when asked to listen beyond loopback without an API key, and
    ``MirrorError`` when ``database`` is not a mirror at the current schema: the server neither
    creates nor upgrades a database (``wandb-mirror init`` / ``wandb-mirror db upgrade`` do).
    """
    keys = KeyChecker(api_keys)
    if not keys.required and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without an API key (pass --api-key or set {KEYS_ENV})"
        )
    engine = make_engine(database, create=False, pool_size=threads)
    try:
        migrate.require_current(engine)
    except BaseException:
        engine.dispose()
        raise
    faults = faults or FaultConfig()
    server = make_server(MirrorApp(engine, keys, faults), host, port, threads)
    signal.signal(signal.SIGTERM, _interrupt)
    bound_port = server.effective_port
    log.info("serving %s at http://%s:%s/graphql", engine.url, host, bound_port)
    if faults.active:
        log.warning("fault injection on: %s", faults.describe())
    if not keys.required:
        log.info("no API key configured: any key is accepted (loopback only)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        engine.dispose()


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


def run_from_args(args: argparse.Namespace) -> int:
    """Serve with parsed options; returns the exit code.

    Logs one line per request at INFO to stderr unless the caller configured logging already.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)  # the access log, even under a quieter root logger
    try:
        faults = fault_config(args)
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
