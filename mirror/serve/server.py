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
import socket
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import WSGITask

from mirror.arguments import Parser
from mirror.errors import ConfigError, MirrorError, database_reason, quiet_driver_warnings
from mirror.serve import options, parquet_export
from mirror.serve.app import DROP_CONNECTION, TRUST_CONNECTION, MirrorApp
from mirror.serve.arguments import (
    ROLES,
    add_arguments,
    fault_config,
    limits_config,
    parquet_config,
    role_option,
)
from mirror.serve.auth import KEYS_ENV, KeyChecker, configured_keys, is_loopback
from mirror.serve.faults import FaultConfig
from mirror.serve.limits import Limits
from mirror.serve.parquet_export import ParquetConfig, ParquetExports
from mirror.store import migrate
from mirror.store.engine import database_url, make_engine, shown
from mirror.store.models import sync_state

log = logging.getLogger("mirror.serve")

#: a bad option or setting ends serve as any other user error does: one line, exit 1
EXIT_ERROR = 1
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


def check_address(host: str, port: int, threads: int) -> None:
    """Refuse, in one line, what waitress would mishandle: it takes a port beyond 65535 modulo
    65536, fails with a bare ValueError on a negative one or a host that does not resolve, and
    with no threads starts but answers nothing (fewer recurse until the stack runs out)."""
    for name, value, allowed in (
        ("port", port, options.PORT),
        ("threads", threads, options.THREADS),
    ):
        try:
            allowed.check(value)
        except ValueError as exc:
            raise ConfigError(f"serve {name} {exc}") from None
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(
            f"serve host must be an IP address or a host name that resolves, not {host!r} "
            f"({reason})"
        ) from None


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
    check_address(host, port, threads)
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

    Without ``--parquet-dir`` the files go beside an SQLite database (``<file>.parquet/``), and
    for other databases into the XDG data directory, one directory per database
    (``parquet_export.default_directory``).
    """
    if config is None or not config.enabled:
        return None
    directory = config.directory or parquet_export.default_directory(database_url)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the parquet export directory {directory}: {exc}"
        ) from None
    return ParquetExports(directory, config)


def default_role(engine: Any) -> str:
    """A database that mirrors W&B (it has sync state) is served as a mirror: writes become
    outbox edits; any other (a seeded or imported one) plays W&B itself."""
    with engine.connect() as conn:
        synced = conn.execute(select(func.count()).select_from(sync_state)).scalar_one()
    return "mirror" if synced else "upstream"


def run_from_args(args: argparse.Namespace) -> int:
    """Serve with parsed options; returns the exit code.

    Logs one line per request at INFO to stderr unless the caller configured logging already.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    quiet_driver_warnings()
    log.setLevel(logging.INFO)  # the access log, even under a quieter root logger
    try:
        faults = fault_config(args)
        parquet = parquet_config(args)
        limits = limits_config(args)
        role = role_option(args)
    except ValueError as exc:
        return _failed(str(exc))
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
            role=role,
            backup_dest=getattr(args, "backup_dest", ""),
        )
    except MirrorError as exc:
        return _failed(str(exc))
    except SQLAlchemyError as exc:  # the server is unreachable, refuses the user, ...
        return _failed(f"database error in {shown(database_url(args.db))}: {database_reason(exc)}")
    except OSError as exc:
        return _failed(f"cannot listen on {args.host}:{args.port}: {exc}")
    return 0


def _failed(message: str) -> int:
    print(f"wandb-mirror serve: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mirror.serve``."""
    parser = Parser(
        prog="python -m mirror.serve", description="Serve a mirror as W&B's GraphQL API."
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
