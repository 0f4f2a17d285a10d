"""``wandb-mirror serve``: the GraphQL endpoint on waitress, a production-grade threaded server.

Waitress gives keep-alive, a bounded thread pool and large bodies (pages of 1,000 full runs or
history windows run to tens of MB). Binding beyond loopback without an API key is refused: the
mirror holds the same data W&B guards with keys.

Connections are bounded (``mirror.serve.limits``): one silent for the idle timeout is closed,
and connections that have not yet completed an authorized GraphQL request (a slowloris sending
half a header, a probe) may hold only half of the slots; when they would hold more, the oldest
of them without a request in progress is closed to make room, so a newcomer is always let in.

SIGTERM (or Ctrl-C) stops the server: requests in flight are cancelled (their statements
interrupted), waitress gives its threads a few seconds, and should anything still hold on, the
process exits anyway after ``STOP_GRACE_S``; the same signal a second time ends it at once.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import WSGITask

from mirror.errors import ConfigError, MirrorError
from mirror.serve import limits as limit_options
from mirror.serve import parquet_export
from mirror.serve.app import DROP_CONNECTION, TRUST_CONNECTION, MirrorApp
from mirror.serve.auth import KEYS_ENV, KeyChecker, configured_keys, is_loopback
from mirror.serve.faults import OPTIONS, FaultConfig, env_name, from_env
from mirror.serve.limits import Limits
from mirror.serve.parquet_export import ParquetConfig, ParquetExports
from mirror.store import migrate
from mirror.store.engine import make_engine, sqlite_path
from mirror.store.models import sync_state

log = logging.getLogger("mirror.serve")

USAGE_ERROR = 2
#: after SIGTERM, the process exits at the latest this many seconds later, whatever runs
STOP_GRACE_S = 10.0
#: request headers are a few hundred bytes; waitress would take 256 KB per connection
MAX_HEADER_BYTES = 64 * 1024


class _Task(WSGITask):
    """A waitress task that can hang up without answering (the drop fault), and that lets the
    application say when its connection has passed the key check."""

    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[TRUST_CONNECTION] = self.channel.trust
        return environ

    def finish(self) -> None:
        if self.environ is not None and self.environ.get(DROP_CONNECTION):
            self.close_on_finish = True
            return
        super().finish()


class ConnectionGuard:
    """Keeps connections that have not yet proved themselves to their share of the slots.

    A connection is untrusted until it completes a GraphQL request that passes the key check.
    Untrusted connections may hold ``share`` slots; one more arriving closes the oldest of them
    that has no request in progress (an idle or half-sent one), so a client with a real request
    always gets in however many half-open sockets a slowloris holds.

    ``opened`` and ``closed`` run in waitress's I/O thread, ``trust`` in a worker thread.
    """

    def __init__(self, share: int) -> None:
        self.share = max(share, 1)
        self._untrusted: OrderedDict[HTTPChannel, None] = OrderedDict()
        self._lock = threading.Lock()

    def opened(self, channel: HTTPChannel) -> None:
        with self._lock:
            self._untrusted[channel] = None
            victims = []
            for candidate in self._untrusted:
                if len(self._untrusted) - len(victims) <= self.share:
                    break
                if candidate is not channel and not candidate.requests:
                    victims.append(candidate)
            for victim in victims:
                del self._untrusted[victim]
        for victim in victims:
            victim.handle_close()

    def trust(self, channel: HTTPChannel) -> None:
        with self._lock:
            self._untrusted.pop(channel, None)

    def closed(self, channel: HTTPChannel) -> None:
        with self._lock:
            self._untrusted.pop(channel, None)


class _Channel(HTTPChannel):
    task_class = _Task
    guard: ConnectionGuard  # set on the subclass each server makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard.opened(self)

    def trust(self) -> None:
        """This connection passed the key check: it no longer counts as untrusted."""
        self.guard.trust(self)

    def close(self) -> None:
        self.guard.closed(self)
        super().close()


def make_server(
    app: Any, host: str, port: int, threads: int = 8, limits: Limits | None = None
) -> Any:  # waitress has no public server type
    """A waitress server bound to ``host:port`` (port 0: any free port), not yet serving."""
    limits = limits or Limits()
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        max_request_body_size=limits.max_body_bytes,
        max_request_header_size=MAX_HEADER_BYTES,
        channel_timeout=limits.idle_timeout,
        cleanup_interval=1,  # idle connections go within a second of their timeout
        connection_limit=limits.connection_limit,
        asyncore_use_poll=True,  # select() cannot watch more than 1,024 sockets
        backlog=1024,
        ident="wandb-mirror",
        expose_tracebacks=False,
        clear_untrusted_proxy_headers=True,
    )
    guard = ConnectionGuard(limits.connection_limit // 2)
    channel_class = type("GuardedChannel", (_Channel,), {"guard": guard})
    listeners = [server] if isinstance(server, BaseWSGIServer) else list(server.map.values())
    for listener in listeners:
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = channel_class
    return server


def _on_stop_signal(app: MirrorApp) -> Callable[..., None]:
    """The SIGTERM and SIGINT handler: stop the loop the way Ctrl-C does (closing sockets under
    it would break select), after cancelling the requests in flight (waitress would otherwise
    wait for them) and arming the last-resort exit.

    The exit timer is faulthandler's, a C thread that needs no GIL: it fires even if some
    thread never lets Python code run again.
    """

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)  # the same signal again ends the process at once
        faulthandler.dump_traceback_later(STOP_GRACE_S, exit=True)
        cancelled = app.stop()
        log.info("stopping (%d request(s) in flight cancelled)", cancelled)
        raise KeyboardInterrupt

    return stop


class ServedMirror:
    """A mirror's app on a bound waitress server: run in the foreground by ``serve``, on a
    thread of its own by the daemon, which serves while it syncs."""

    def __init__(self, engine: Any, app: MirrorApp, server: Any) -> None:
        self.engine = engine
        self.app = app
        self.server = server
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def describe(self, host: str) -> str:
        base = f"http://{host}:{self.port}"
        return (
            f"serving {self.engine.url} at {base}/graphql ({self.app.role} role), "
            f"dashboard at {base}/"
        )

    def start(self) -> None:
        """Answer requests on a background thread until ``stop()``."""
        self._thread = threading.Thread(target=self.server.run, name="mirror-serve", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        """Cancel requests in flight and end the loop from its own thread (closing sockets
        under a running select would break it), then release the database."""
        self.app.stop()
        self.server.trigger.pull_trigger(lambda: wasyncore.close_all(self.server.map))
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self) -> None:
        self.server.task_dispatcher.shutdown()
        self.engine.dispose()


def build_server(
    database: str | os.PathLike[str] | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_keys: Sequence[str] = (),
    faults: FaultConfig | None = None,
    threads: int = 8,
    parquet: ParquetConfig | None = None,
    limits: Limits | None = None,
    role: str | None = None,
    backup_dest: str = "",
) -> ServedMirror:
    """The server for a mirror, bound and ready, not yet answering.

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
        role = role or default_role(engine)
        if role not in ROLES:
            raise ConfigError(f"the serve role must be mirror or upstream, not {role!r}")
        limits = limits or Limits()
        app = MirrorApp(
            engine,
            keys,
            faults or FaultConfig(),
            exports=exports,
            limits=limits,
            role=role,
            backup_dest=backup_dest,
        )
        return ServedMirror(engine, app, make_server(app, host, port, threads, limits))
    except BaseException:
        engine.dispose()
        raise


def serve(
    database: str | os.PathLike[str] | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_keys: Sequence[str] = (),
    faults: FaultConfig | None = None,
    threads: int = 8,
    parquet: ParquetConfig | None = None,
    limits: Limits | None = None,
    role: str | None = None,
    backup_dest: str = "",
) -> None:
    """Serve the mirror at ``http://host:port/graphql`` until interrupted (SIGINT or SIGTERM);
    raises what ``build_server`` raises."""
    served = build_server(
        database, host, port, api_keys, faults, threads, parquet, limits, role, backup_dest
    )
    app = served.app
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_stop_signal(app))
    log.info("%s", served.describe(host))
    if app.faults.config.active:
        log.warning("fault injection on: %s", app.faults.config.describe())
    if app.exports is not None:
        log.info(
            "parquet exports on: finished runs %gs after their last heartbeat, into %s, "
            "URLs valid %gs",
            app.exports.delay,
            app.exports.directory,
            app.exports.config.url_ttl,
        )
    if not app.keys.required:
        log.info("no API key configured: any key is accepted (loopback only)")
    try:
        served.server.run()
    except KeyboardInterrupt:
        pass
    finally:
        served.close()
        faulthandler.cancel_dump_traceback_later()


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


ROLES = ("mirror", "upstream")


def default_role(engine: Any) -> str:
    """A database that mirrors W&B (it has sync state) is served as a mirror: writes become
    outbox edits; any other (a seeded or imported one) plays W&B itself."""
    with engine.connect() as conn:
        synced = conn.execute(select(func.count()).select_from(sync_state)).scalar_one()
    return "mirror" if synced else "upstream"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options, shared by ``python -m mirror.serve`` and ``wandb-mirror serve``."""
    parser.add_argument("--db", help="mirror database path or SQLAlchemy URL (WANDB_MIRROR_DB)")
    parser.add_argument(
        "--role",
        choices=ROLES,
        default=os.environ.get("WANDB_MIRROR_SERVE_ROLE") or None,
        help="mirror: writes are queued as edits for W&B; upstream: W&B's own semantics, for "
        "tests and demos (default: mirror when the database has synced from W&B; also "
        "WANDB_MIRROR_SERVE_ROLE)",
    )
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


def limits_config(args: argparse.Namespace) -> Limits:
    """Limits from the environment, overridden by command-line options."""
    settings = limit_options.from_env()
    for _option, (name, _parse) in limit_options.OPTIONS.items():
        value = getattr(args, f"limit_{name}", None)
        if value is not None:
            settings[name] = value
    return Limits(**settings)  # type: ignore[arg-type]


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
        limits = limits_config(args)
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
            limits=limits,
            role=args.role,
            backup_dest=getattr(args, "backup_dest", ""),
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
