"""Opening a database: URL resolution, SQLite pragmas, and transactions that take the lock up front.

A daemon writes while people read, so SQLite runs in WAL mode (readers never wait for the
writer) with a busy timeout (a second writer waits instead of failing), and writers begin with
``BEGIN IMMEDIATE`` so that two writers queue at the start rather than deadlock at the commit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from mirror.errors import MirrorError

BUSY_TIMEOUT_MS = 30_000
# Reads through a memory map (SQLite clamps it to its build's maximum, 2 GiB by default): index
# probes then cost a memory access, not a read() into SQLite's own, much smaller page cache.
MMAP_BYTES = 1 << 32
# Pages of 16 KiB for a new file: a run's row (a few KiB of packed JSON and attributes) and a
# history chunk fill a 4 KiB page only once each, leaving a third of it empty, where several fit
# in 16 KiB (the metadata-heavy benchmark project is 11% smaller). A file keeps the page size
# it was made with; an existing mirror's pragma here changes nothing.
PAGE_BYTES = 16384
_WRITE = "mirror_write"
#: the advisory lock PostgreSQL write transactions take turns on (not the writer lock's key)
PG_WRITE_KEY = 0x776D78


def default_db_path() -> Path:
    """Where the mirror lives when nothing else is said: the XDG data directory."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "wandb-mirror" / "mirror.db"


def database_url(database: str | os.PathLike[str] | None = None) -> str:
    """A path or an SQLAlchemy URL → an SQLAlchemy URL (``None``: ``WANDB_MIRROR_DB`` or default).

    A libpq URL (``postgresql://`` or ``postgres://``, as ``psql`` takes) means psycopg 3, the
    driver wandb-mirror installs, rather than SQLAlchemy's default for it.
    """
    if database is None:
        database = os.environ.get("WANDB_MIRROR_DB") or default_db_path()
    text = os.fspath(database)
    for bare in ("postgresql://", "postgres://"):  # libpq's spelling: the driver we ship
        if text.startswith(bare):
            return "postgresql+psycopg://" + text[len(bare) :]
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The file behind an SQLite URL, or ``None`` for other databases and ``:memory:``."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def shown(url: str | URL) -> str:
    """A database as messages name it: the file of an SQLite URL, else the URL without its
    password."""
    parsed = make_url(url)
    path = sqlite_path(parsed.render_as_string(hide_password=False))
    return str(path) if path is not None else parsed.render_as_string(hide_password=True)


def make_engine(
    database: str | os.PathLike[str] | None = None, create: bool = True, pool_size: int = 5
) -> Engine:
    """An engine for the mirror, with a busy timeout on SQLite.

    A writer (the default) makes the file's directory and switches the file to WAL, which then
    persists; a reader (``create=False``) leaves a missing or foreign file alone, so pointing a
    read command at the wrong path creates nothing. ``pool_size`` is the number of connections kept
    for concurrent users (the server passes its thread count).
    """
    url = database_url(database)
    path = sqlite_path(url)
    try:
        if path is None:
            return create_engine(url, pool_pre_ping=True, pool_size=pool_size)
    except ImportError as exc:
        raise MirrorError(
            f"the driver for {make_url(url).drivername} is not installed: {exc}"
        ) from None
    if path.is_dir():
        raise MirrorError(f"{path} is a directory; give the path of a database file")
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MirrorError(f"cannot create the directory for {path}: {exc}") from None
    elif not path.exists():
        raise MirrorError(f"no mirror at {path}; create one with `wandb-mirror init`")
    engine = create_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
        pool_size=pool_size,
        max_overflow=pool_size,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # SQLAlchemy, not the driver, decides when to BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        if create:
            cursor.execute(f"PRAGMA page_size = {PAGE_BYTES}")  # before the file is first written
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the write lock from its first statement to its commit.

    SQLite has one write lock per file (``BEGIN IMMEDIATE``). PostgreSQL lets writers run side
    by side, so a pull could read a run's open edits, an ``edit`` commit, and the pull then
    write W&B's values over the edited ones; a transaction-scoped advisory lock, taken first,
    makes write transactions take turns there too (readers never wait for it).
    """
    with engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_KEY})")
        yield conn


@contextmanager
def schema_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction for schema changes.

    On SQLite, rebuilding a table that others refer to (``runs``) drops it, and with foreign
    keys enforced that counts every child row as a violation even once the rebuilt table takes
    the name back. So, as SQLite's documented procedure for schema changes says, enforcement is
    off for the transaction (it can only be switched outside one) and every reference is checked
    before the commit instead; a dangling one rolls everything back.
    """
    with engine.connect().execution_options(**{_WRITE: True}) as conn:
        sqlite = conn.dialect.name == "sqlite"
        raw = conn.connection.dbapi_connection
        if sqlite and raw is not None:
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
                    if broken is not None:
                        raise MirrorError(
                            f"the schema change left a {broken[0]} row pointing at a missing "
                            f"{broken[2]} row; nothing was changed"
                        )
        finally:
            if sqlite and raw is not None:
                raw.execute("PRAGMA foreign_keys = ON")


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A consistent snapshot for reading, never blocked by a writer.

    SQLite's WAL gives a transaction one snapshot from its first read. PostgreSQL's default,
    READ COMMITTED, takes a new one for every statement, so a listing that counts, then reads
    a page, then the page's history could see a sync's page commit in between; REPEATABLE
    READ keeps the first one for the whole transaction, as SQLite does.
    """
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    with conn, conn.begin():
        yield conn


def analyze(engine: Engine) -> None:
    """Refresh the planner's statistics.

    Without them SQLite cannot tell a selective index from a broad one and may walk every run
    in date order instead of starting from the handful a filter names. ``analysis_limit`` keeps
    the pass to a sample, so it costs a second on a 100,000-run mirror rather than a minute.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA analysis_limit = 1000")
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


def _run_counts(conn: Connection) -> tuple[int | None, int]:
    """The runs the statistics were taken with (``None``: never taken) and the runs now."""
    current = int(conn.exec_driver_sql("SELECT count(*) FROM runs").scalar() or 0)
    if conn.dialect.name == "postgresql":
        # reltuples: the rows ANALYZE (or VACUUM) last saw, -1 when neither has run
        tuples = conn.exec_driver_sql(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass('runs')"
        ).scalar()
        return (None if tuples is None or tuples < 0 else int(tuples)), current
    has_stats = conn.exec_driver_sql(
        "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
    ).scalar()
    recorded = None
    if has_stats:
        stat = conn.exec_driver_sql(
            "SELECT stat FROM sqlite_stat1 WHERE tbl = 'runs' LIMIT 1"
        ).scalar()
        recorded = int(stat.split()[0]) if stat else None
    return recorded, current


#: statistics are refreshed once the runs table holds this many times more (or fewer) rows
STALE_FACTOR = 2


def analyze_if_stale(engine: Engine) -> bool:
    """After a bulk write: :func:`analyze` only when it can change plans; returns whether it ran.

    Plans follow the tables' proportions (rows per key, per value), which stay put while a
    mirror grows, so statistics are refreshed when there are none yet or the number of runs
    has changed by ``STALE_FACTOR`` since they were taken, not after every seed, import or pull.
    PostgreSQL's autovacuum would get there too, but only a minute or so later, and the first
    queries after a big import would be planned on the statistics of an empty table.
    """
    with engine.connect() as conn:
        recorded, current = _run_counts(conn)
    if recorded is not None and recorded / STALE_FACTOR < current < recorded * STALE_FACTOR:
        return False
    if recorded is None and current == 0:
        return False
    analyze(engine)
    return True


#: free pages, as a share of the file, worth a VACUUM after a schema change
RECLAIM_SHARE = 0.25


def reclaim_free_pages(engine: Engine) -> bool:
    """``VACUUM`` an SQLite file that a schema change left mostly free; returns whether it did.

    Dropping or rebuilding a table (0005 rebuilds the field index) frees its pages inside the
    file, which SQLite reuses but never returns to the disk on its own. Readers keep reading
    meanwhile (WAL); it needs free disk space about the size of the file, as the snapshot
    taken before the upgrade did.
    """
    if engine.dialect.name != "sqlite":
        return False
    raw = engine.raw_connection()  # VACUUM cannot run inside the transaction SQLAlchemy opens
    try:
        driver = raw.driver_connection
        free = driver.execute("PRAGMA freelist_count").fetchone()[0]
        pages = driver.execute("PRAGMA page_count").fetchone()[0]
        if not pages or free / pages < RECLAIM_SHARE:
            return False
        driver.execute("VACUUM")
        driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return True
    finally:
        raw.close()
