"""A throwaway PostgreSQL server for the tests, started from the installed binaries.

pytest-postgresql does the same job but starts ``postgres`` as the current user, and the server
refuses to run as root, which is what CI runs as; so this starts it as the ``postgres`` system
user (made by Debian's package) when the tests run as root. Each pytest worker gets its own
server in its own temporary directory, on a free port of 127.0.0.1, with durability switched off
(a test's data never needs to survive a power cut). A test gets a database of its own, copied
from a template that is already migrated, which costs milliseconds rather than a migration.

The binaries are found through ``WANDB_MIRROR_PG_BIN``, ``pg_config --bindir`` or Debian's
``/usr/lib/postgresql/<version>/bin``; where none is there the PostgreSQL tests are skipped.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg

SKIP_REASON = (
    "PostgreSQL binaries not found: install them (Debian: apt-get install postgresql, which "
    ".ci/run does) or set WANDB_MIRROR_PG_BIN to the directory holding initdb and pg_ctl"
)
TEMPLATE = "mirror_template"
_names = itertools.count()


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``."""
    candidates: list[Path] = []
    if os.environ.get("WANDB_MIRROR_PG_BIN"):
        candidates.append(Path(os.environ["WANDB_MIRROR_PG_BIN"]))
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(debian.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0)
        candidates.extend(v / "bin" for v in reversed(versions))
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One server: :meth:`start`, then :meth:`new_database` per test, then :meth:`stop`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # not under pytest's base directory, which only its owner may enter
        self.base = Path(tempfile.mkdtemp(prefix="wandb-mirror-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        self.user = "postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {done.stderr.strip()}")

    def start(self) -> PostgresServer:
        self.base.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.base, "postgres")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            self.user,
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.base / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )
        self._make_template()
        return self

    def stop(self) -> None:
        subprocess.run(
            [*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate"]
            + ["stop"],
            capture_output=True,
        )
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        """The SQLAlchemy URL of one of this server's databases."""
        return f"postgresql+psycopg://{user or self.user}@127.0.0.1:{self.port}/{database}"

    def admin(self, statements: Sequence[str], database: str = "postgres") -> None:
        """Statements run with autocommit as the superuser (CREATE DATABASE needs it)."""
        dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def _make_template(self) -> None:
        from mirror.store import migrate
        from mirror.store.engine import make_engine

        # a language's collation, as a team's server has, so that an ORDER BY or a comparison
        # that forgets to compare bytes (MongoDB's order) gives a different answer here
        try:
            self.admin(
                [
                    f"CREATE DATABASE {TEMPLATE} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                    "TEMPLATE template0"
                ]
            )
        except psycopg.errors.FeatureNotSupported:  # a server built without ICU
            self.admin([f"CREATE DATABASE {TEMPLATE}"])
        engine = make_engine(self.url(TEMPLATE))
        migrate.upgrade(engine)
        engine.dispose()

    def new_database(self, migrated: bool = True) -> str:
        """A database of its own for one test: migrated (from the template) or empty."""
        name = f"m{os.getpid()}_{next(_names)}"
        template = f" TEMPLATE {TEMPLATE}" if migrated else ""
        self.admin([f"CREATE DATABASE {name}{template}"])
        return self.url(name)
