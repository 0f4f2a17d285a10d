"""A team's PostgreSQL mirror with two roles: a writer (sync, seed, edits) and a read-only role
for everyone who only reads (the ``Api``, the reading commands, ``serve``).

The reader may only connect and select: every reading path must work with it, and every write
must fail with one line that says the writer role is needed, never a traceback. The role SQL
here is what the README gives teams, so these tests are what proves it.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from cli_process import one_error_line, wandb_mirror
from server_process import DATA, ENTITY, PROJECT, ServerProcess, seed_database
from sqlalchemy.engine import make_url

import mirror
from mirror.errors import MirrorError

pytestmark = pytest.mark.postgresql

RUNS = 6
STEPS = 30
_roles = itertools.count()


def writer_sql(database: str, role: str) -> list[str]:
    """A role that may read and write a mirror's rows, but not change its schema (the owner,
    who runs ``wandb-mirror init`` and ``db upgrade``, does that)."""
    return [
        f"CREATE ROLE {role} LOGIN PASSWORD 'change-me'",
        f"GRANT CONNECT ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {role}",
    ]


def reader_sql(database: str, role: str) -> list[str]:
    """A role that may only connect and read: CONNECT, USAGE and SELECT, nothing else."""
    return [
        f"CREATE ROLE {role} LOGIN PASSWORD 'change-me'",
        f"GRANT CONNECT ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role}",
    ]


class Mirror:
    """A seeded mirror database and the URLs of its owner, writer and reader."""

    def __init__(self, pg_server: Any) -> None:
        self.owner = seed_database(pg_server.new_database(), runs=RUNS, steps=STEPS)
        self.name = make_url(str(self.owner)).database
        suffix = f"{os.getpid()}_{next(_roles)}"
        self.writer_role, self.reader_role = f"writer_{suffix}", f"reader_{suffix}"
        # as the owner (the superuser here), in the mirror's database: the grants on its tables
        pg_server.admin(writer_sql(self.name, self.writer_role), database=self.name)
        pg_server.admin(reader_sql(self.name, self.reader_role), database=self.name)
        self.writer = pg_server.url(self.name, user=self.writer_role)
        self.reader = pg_server.url(self.name, user=self.reader_role)


@pytest.fixture(scope="module")
def roles(pg_server) -> Mirror:
    """One mirror and its roles for the module: the tests only read it or are refused."""
    return Mirror(pg_server)


def first_run(api: mirror.Api) -> str:
    return next(iter(api.runs(f"{ENTITY}/{PROJECT}", order="+name"))).id


# --- the Api ----------------------------------------------------------------------------------


def test_the_api_reads_with_the_read_only_role(roles: Mirror):
    with (
        closing(mirror.Api(database=roles.reader)) as api,
        closing(mirror.Api(database=roles.owner)) as owner,
    ):
        runs = api.runs(f"{ENTITY}/{PROJECT}", filters={"state": "finished"}, order="+name")
        expected = owner.runs(f"{ENTITY}/{PROJECT}", filters={"state": "finished"}, order="+name")
        assert [r.id for r in runs] == [r.id for r in expected] and len(runs) > 0
        name = first_run(api)
        run = api.run(f"{ENTITY}/{PROJECT}/{name}")
        assert run.config == owner.run(f"{ENTITY}/{PROJECT}/{name}").config
        rows = list(run.scan_history())
        assert len(rows) == STEPS
        assert run.history(samples=10, pandas=False)


def test_an_edit_through_the_api_needs_the_writer_role(roles: Mirror):
    with closing(mirror.Api(database=roles.reader)) as api:
        run = api.run(f"{ENTITY}/{PROJECT}/{first_run(api)}")
        run.summary["edited"] = 1
        with pytest.raises(MirrorError, match="writer role"):
            run.update()


# --- the command line -----------------------------------------------------------------------


def test_reading_commands_work_with_the_read_only_role(roles: Mirror, tmp_path: Path):
    db = ("--db", roles.reader)
    listing = wandb_mirror(*db, "runs", f"{ENTITY}/{PROJECT}", "--format", "json", home=tmp_path)
    assert listing.returncode == 0, listing.stderr
    names = [json.loads(line)["name"] for line in listing.stdout.splitlines() if line.strip()]
    assert len(names) == RUNS
    with closing(mirror.Api(database=roles.owner)) as owner:
        run = first_run(owner)
    history = wandb_mirror(*db, "history", f"{ENTITY}/{PROJECT}/{run}", home=tmp_path)
    assert history.returncode == 0, history.stderr
    assert len(history.stdout.strip().splitlines()) == STEPS + 1  # the header and the rows
    out = tmp_path / "export"
    export = wandb_mirror(
        *db, "export", f"{ENTITY}/{PROJECT}", "--out", str(out), "--format", "jsonl", home=tmp_path
    )
    assert export.returncode == 0, export.stderr
    assert any(out.iterdir())
    for command in (["status"], ["db", "current"], ["db", "check"], ["outbox", "list"]):
        done = wandb_mirror(*db, *command, home=tmp_path)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr


def refused(result: Any) -> str:
    """The one line a write refused to the reader prints, checked for what it must say."""
    line = one_error_line(result)
    assert line.startswith("wandb-mirror: ") and "permission denied" in line, line
    assert "writer role" in line, line
    assert "change-me" not in line  # the URL is shown without its password
    return line


def test_writing_commands_need_the_writer_role(roles: Mirror, tmp_path: Path):
    db = ("--db", roles.reader)
    refused(wandb_mirror(*db, "seed", f"{ENTITY}/other", "--runs", "2", "--steps", "2"))
    with closing(mirror.Api(database=roles.owner)) as owner:
        run = first_run(owner)
    edit = wandb_mirror(*db, "edit", f"{ENTITY}/{PROJECT}/{run}", "--summary", "x=1")
    refused(edit)
    exported = tmp_path / "export"
    owner_export = wandb_mirror(
        "--db", str(roles.owner), "export", f"{ENTITY}/{PROJECT}", "--out", str(exported)
    )
    assert owner_export.returncode == 0, owner_export.stderr
    source = next(exported.rglob("*.jsonl")).parent
    refused(wandb_mirror(*db, "import", str(source)))


def test_the_writer_role_writes(roles: Mirror, tmp_path: Path):
    done = wandb_mirror("--db", roles.writer, "seed", f"{ENTITY}/written", "--runs", "2")
    assert done.returncode == 0, done.stderr
    with closing(mirror.Api(database=roles.reader)) as api:
        runs = api.runs(f"{ENTITY}/written", order="+name")
        assert len(runs) == 2  # a table the writer filled: readable
        name = runs[0].id
    edit = wandb_mirror(
        "--db", roles.writer, "edit", f"{ENTITY}/written/{name}", "--summary", "x=1"
    )
    assert edit.returncode == 0, edit.stderr
    out = tmp_path / "export"
    export = wandb_mirror("--db", roles.writer, "export", f"{ENTITY}/written", "--out", str(out))
    assert export.returncode == 0, export.stderr
    again = wandb_mirror("--db", roles.writer, "import", str(next(out.rglob("*.jsonl")).parent))
    assert again.returncode == 0, again.stderr
    with closing(mirror.Api(database=roles.reader)) as api:
        assert api.run(f"{ENTITY}/written/{name}").summary["x"] == 1


# --- serve ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["mirror", "upstream"])
def served_reader(
    request: pytest.FixtureRequest, roles: Mirror, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """``serve`` over the reader in each role: writes become outbox edits (mirror) or go to
    the runs themselves (upstream); both must be refused in one line."""
    log = tmp_path_factory.mktemp("reader-serve") / "serve.log"
    with ServerProcess(roles.reader, log, args=("--role", request.param)) as server:
        yield server


def graphql(server: ServerProcess, document: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = {"query": document, "variables": variables}
    response = requests.post(server.graphql_url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_serve_reads_with_the_read_only_role(served_reader: ServerProcess):
    document = (DATA / "sdk-queries" / "sdk_head_Runs_lazy.graphql").read_text()
    answer = graphql(served_reader, document, {"entity": ENTITY, "project": PROJECT})
    assert len(answer["data"]["project"]["runs"]["edges"]) == RUNS
    page = requests.get(f"{served_reader.url}/projects/{ENTITY}/{PROJECT}", timeout=30)
    assert page.status_code == 200 and "<table" in page.text


def test_upsert_bucket_through_serve_needs_the_writer_role(
    roles: Mirror, served_reader: ServerProcess
):
    with closing(mirror.Api(database=roles.owner)) as owner:
        run = first_run(owner)
    document = (DATA / "sdk-queries" / "core_mutation_run.graphql").read_text()
    variables = {"name": run, "project": PROJECT, "entity": ENTITY, "summaryMetrics": "{}"}
    variables["config"] = json.dumps({"lr": {"value": 0.5}})
    answer = graphql(served_reader, document, variables)
    message = answer["errors"][0]["message"]
    assert "writer role" in message and "INSERT" not in message.upper(), answer
    log = served_reader.log()
    assert "Traceback" not in log and "internal server error" not in json.dumps(answer)


def test_tables_made_after_the_grants_are_readable_and_writable(roles: Mirror, pg_server):
    """The default privileges cover what a later ``db upgrade`` (run by the owner) creates."""
    pg_server.admin(
        ["CREATE TABLE later_table (x integer)", "INSERT INTO later_table VALUES (1)"],
        database=roles.name,
    )
    writer = psycopg_dsn(pg_server, roles.name, roles.writer_role)
    reader = psycopg_dsn(pg_server, roles.name, roles.reader_role)
    with psycopg.connect(writer, autocommit=True) as conn:
        conn.execute("INSERT INTO later_table VALUES (2)")
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM later_table").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO later_table VALUES (3)")


def psycopg_dsn(pg_server: Any, database: str, user: str) -> str:
    return f"host=127.0.0.1 port={pg_server.port} user={user} dbname={database}"


def test_upsert_bucket_through_serve_works_with_the_writer_role(roles: Mirror, tmp_path: Path):
    document = (DATA / "sdk-queries" / "core_mutation_run.graphql").read_text()
    # a project of its own: the other tests count the runs of PROJECT
    variables = {"name": "bywriter", "project": "served", "entity": ENTITY, "state": "running"}
    with ServerProcess(roles.writer, tmp_path / "serve.log", args=("--role", "upstream")) as server:
        answer = graphql(server, document, variables)
    assert answer["data"]["upsertBucket"]["inserted"] is True, answer
    with closing(mirror.Api(database=roles.reader)) as api:
        assert api.run(f"{ENTITY}/served/bywriter").state == "running"


# --- sync and push ----------------------------------------------------------------------------


def test_sync_and_push_need_the_writer_role_and_keep_the_edit(pg_server, tmp_path: Path):
    """``sync`` and ``push`` into the mirror through the read-only role are refused in one line
    naming the writer role; an edit waiting in the outbox is still there, and the writer then
    pushes it."""
    from sync_env import Upstream, run_cli, sync_env

    mirror_db = Mirror(pg_server)
    upstream_db = seed_database(tmp_path / "upstream.db", runs=RUNS, steps=STEPS)
    with closing(mirror.Api(database=mirror_db.writer)) as writer:
        run = writer.run(f"{ENTITY}/{PROJECT}/{first_run(writer)}")
        run.summary["reviewed"] = 1
        run.update()
    with Upstream(upstream_db, tmp_path / "upstream.log") as upstream:
        env = sync_env(upstream.url, tmp_path / "home")
        for command in ("sync", "push"):
            result = run_cli(["--db", mirror_db.reader, command, f"{ENTITY}/{PROJECT}"], env)
            assert result.returncode != 0, (command, result.stdout, result.stderr)
            refused(result)
        with closing(mirror.Api(database=mirror_db.reader)) as reader:
            assert reader.run(f"{ENTITY}/{PROJECT}/{run.id}").summary["reviewed"] == 1
        pushed = run_cli(["--db", mirror_db.writer, "push", f"{ENTITY}/{PROJECT}"], env)
        assert pushed.returncode == 0, pushed.stderr
    upstream_engine = mirror.Api(database=str(upstream_db))
    with closing(upstream_engine):
        assert upstream_engine.run(f"{ENTITY}/{PROJECT}/{run.id}").summary["reviewed"] == 1
