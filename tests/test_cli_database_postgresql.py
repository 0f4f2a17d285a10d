"""What a PostgreSQL database is, said as for an SQLite file: an empty database, another
program's, a mirror behind or ahead of this code, up to date, a server that is not there; one
line each, naming the database without its password."""

from __future__ import annotations

import psycopg
import pytest
from cli_process import one_error_line, wandb_mirror

from mirror.cli import main
from mirror.store import migrate

pytestmark = pytest.mark.postgresql

HEAD = migrate.head_revision()
PASSWORD = "hunter2-secret"


def _with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def _sql(url: str, *statements: str) -> None:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        for statement in statements:
            conn.execute(statement)


def test_an_empty_database_is_made_a_mirror_by_init(pg_server, capsys):
    url = _with_password(pg_server.new_database(migrated=False))
    expected = (
        f"wandb-mirror: error: no mirror at {url.replace(PASSWORD, '***')} "
        "(an empty database); create one with `wandb-mirror init`"
    )
    assert one_error_line(wandb_mirror("--db", url, "runs", "e/p")) == expected
    assert main(["--db", url, "init"]) == 0
    assert main(["--db", url, "db", "current"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"{HEAD} (up to date)"
    assert PASSWORD not in out
    assert main(["--db", url, "db", "check"]) == 0


def test_another_programs_database_is_refused_untouched(pg_server):
    url = pg_server.new_database(migrated=False)
    _sql(url, "CREATE TABLE notes (body text)")
    expected = (
        f"wandb-mirror: error: {url} is not a wandb-mirror database (it holds tables "
        "notes); choose another --db"
    )
    for command in (["runs", "e/p"], ["init"]):
        assert one_error_line(wandb_mirror("--db", url, *command)) == expected
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == [("notes",)]


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ("0002", f"is at schema 0002, this wandb-mirror needs {HEAD}; run `wandb-mirror db upgrade`"),
        ("0999", f"is at schema 0999, which this wandb-mirror does not know (it knows up to "
         f"{HEAD}): a newer wandb-mirror wrote it; upgrade wandb-mirror to use it"),
    ],
)  # fmt: skip
def test_a_mirror_at_another_schema(pg_server, version, problem):
    url = pg_server.new_database()
    _sql(url, f"UPDATE alembic_version SET version_num = '{version}'")
    expected = f"wandb-mirror: error: the mirror at {url} {problem}"
    assert one_error_line(wandb_mirror("--db", url, "runs", "e/p")) == expected


def test_an_older_mirror_upgrades_on_postgresql(pg_server):
    url = pg_server.new_database(migrated=False)
    from mirror.store.engine import make_engine

    engine = make_engine(url)
    migrate.upgrade(engine, "0004")
    engine.dispose()
    assert main(["--db", url, "db", "check"]) == 1  # behind
    assert main(["--db", url, "db", "upgrade"]) == 0
    assert main(["--db", url, "seed", "e/p", "--runs", "3", "--steps", "2"]) == 0
    assert main(["--db", url, "db", "check"]) == 0


def test_a_server_that_is_not_there_is_one_line_without_the_password(pg_server):
    port = pg_server.port + 1 if pg_server.port < 65535 else pg_server.port - 1
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/mirror"
    line = one_error_line(wandb_mirror("--db", url, "runs", "e/p"))
    assert line.startswith(
        f"wandb-mirror: database error in postgresql+psycopg://postgres:***@127.0.0.1:{port}"
        "/mirror: connection failed"
    ), line
    assert PASSWORD not in line
