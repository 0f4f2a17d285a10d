"""How the server speaks HTTP and GraphQL: W&B's leniencies, its errors and its status codes."""

from __future__ import annotations

import gzip
import io
import json
import re
import sqlite3
import zlib
from typing import Any

import pytest
import requests
from server_process import DATA, ENTITY, PROJECT, ServerProcess, free_port, run_serve, seed_database
from sqlalchemy import text

from mirror.serve.app import MirrorApp
from mirror.serve.auth import KeyChecker
from mirror.store.engine import make_engine
from mirror.store.fields import loads

pytest_plugins = ["serve_databases"]

RUN_STATE = (DATA / "sdk-queries" / "sdk_head_RunState.graphql").read_text()
RUNS = (DATA / "sdk-queries" / "sdk_head_Runs_lazy.graphql").read_text()
PROJECT_VARS = {"entity": ENTITY, "project": PROJECT}


def post(server: Any, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(server.graphql_url, json=body, timeout=30, **kwargs)


def first_run(server: Any) -> str:
    body = {"query": RUNS, "variables": {**PROJECT_VARS, "perPage": 1, "order": "+name"}}
    return post(server, body).json()["data"]["project"]["runs"]["edges"][0]["node"]["name"]


def test_undeclared_variables_are_ignored(served_on):
    name = first_run(served_on)
    variables = {**PROJECT_VARS, "name": name, "extra": 1, "samples": "not even an int"}
    response = post(served_on, {"query": RUN_STATE, "variables": variables})
    assert response.status_code == 200
    assert response.json()["data"]["project"]["run"]["state"]


@pytest.mark.parametrize("extra", [{}, {"operationName": ""}, {"operationName": "RunState"}])
def test_operation_name_may_be_absent_or_empty(served_on, extra):
    body = {
        "query": RUN_STATE,
        "variables": {**PROJECT_VARS, "name": first_run(served_on)},
        **extra,
    }
    assert post(served_on, body).json()["data"]["project"]["run"] is not None


def test_the_trailing_slash_path_works_too(served_on):
    body = {"query": "query { viewer { id } }"}
    response = requests.post(served_on.url + "/graphql/", json=body, timeout=30)
    assert response.json()["data"]["viewer"]["id"]


def test_a_gzip_body_is_accepted(served_on):
    raw = gzip.compress(json.dumps({"query": "{ viewer { entity } }"}).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = requests.post(served_on.graphql_url, data=raw, headers=headers, timeout=30)
    assert response.json() == {"data": {"viewer": {"entity": ENTITY}}}


def call_app(app: MirrorApp, body: bytes, encoding: str) -> tuple[str, dict[str, Any]]:
    """POST ``body`` to the WSGI app in process; the status line and the JSON answer."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/graphql",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_CONTENT_ENCODING": encoding,
        "wsgi.input": io.BytesIO(body),
    }
    got: list[str] = []
    answer = b"".join(app(environ, lambda status, _headers: got.append(status)))
    return got[0], loads(answer)


def deflated(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(9, wbits=wbits)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 31), ("deflate", 15)])
def test_a_body_that_inflates_beyond_the_limit_is_413(database, encoding, wbits):
    engine = make_engine(database)
    app = MirrorApp(engine, KeyChecker(()), max_body_bytes=64 * 1024)
    query = json.dumps({"query": "{ viewer { entity } }"}).encode()
    padded = query[:-1] + b" " * (64 * 1024 - len(query)) + b"}"
    status, body = call_app(app, deflated(padded, wbits), encoding)
    assert status.startswith("200") and "viewer" in body["data"]
    bomb = deflated(padded + b" " * (16 * 1024 * 1024), wbits)
    assert len(bomb) < 64 * 1024
    status, body = call_app(app, bomb, encoding)
    assert status == "413 Payload Too Large"
    assert body == {"errors": [{"message": "the body inflates to more than 65536 bytes"}]}
    members = gzip.compress(b" " * 40_000) * 2 + gzip.compress(query)
    assert call_app(app, members, "gzip")[0].startswith("413")
    engine.dispose()


def test_a_truncated_gzip_body_is_400(served_on):
    raw = gzip.compress(json.dumps({"query": "{ viewer { entity } }"}).encode())[:-8]
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = requests.post(served_on.graphql_url, data=raw, headers=headers, timeout=30)
    assert (
        response.status_code == 400 and "not valid JSON" in response.json()["errors"][0]["message"]
    )


def test_an_unknown_field_is_a_validation_error_with_null_data(served_on):
    response = post(served_on, {"query": "query { viewer { id shoeSize } }"})
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert "shoeSize" in body["errors"][0]["message"]


def test_a_syntax_error_is_a_graphql_error(served_on):
    body = post(served_on, {"query": "query {"}).json()
    assert body["data"] is None and body["errors"][0]["message"].startswith("Syntax Error")


def test_summary_filter_keys_are_rejected_with_http_400(served_on):
    variables = {**PROJECT_VARS, "filters": json.dumps({"$or": [{"summary.loss": {"$lt": 1}}]})}
    response = post(served_on, {"query": RUNS, "variables": variables})
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"errors"} and "summary.loss" in body["errors"][0]["message"]


def test_a_malformed_filter_is_a_graphql_error_with_the_engine_message(served_on):
    variables = {**PROJECT_VARS, "filters": json.dumps({"config.lr": {"$between": [1, 2]}})}
    response = post(served_on, {"query": RUNS, "variables": variables})
    assert response.status_code == 200
    body = response.json()
    assert body["errors"] and "$between" in body["errors"][0]["message"]


def test_filters_that_are_not_json_are_an_error(served_on):
    variables = {**PROJECT_VARS, "filters": "{not json"}
    body = post(served_on, {"query": RUNS, "variables": variables}).json()
    assert body["data"] is None and "JSON" in body["errors"][0]["message"]


def test_a_cursor_the_server_did_not_hand_out_is_an_error(served_on):
    variables = {**PROJECT_VARS, "cursor": "bm9wZQ=="}
    body = post(served_on, {"query": RUNS, "variables": variables}).json()
    assert "invalid cursor" in body["errors"][0]["message"]


def test_a_body_that_is_not_json_is_400(served_on):
    response = requests.post(served_on.graphql_url, data=b"{nope", timeout=30)
    assert response.status_code == 400 and response.json()["errors"][0]["message"]


def test_a_body_without_a_query_is_400(served_on):
    assert post(served_on, {"variables": {}}).status_code == 400


def test_unknown_paths_are_a_small_json_404(served_on):
    response = requests.get(served_on.url + "/api/v1/nothing", timeout=30)
    assert response.status_code == 404
    assert response.json()["errors"][0]["message"]
    assert len(response.content) < 200


def test_graphql_wants_post(served_on):
    assert requests.get(served_on.graphql_url, timeout=30).status_code == 405


@pytest.mark.parametrize("path", ["/sdk/otel/v1/metrics", "/sdk/otel/v1/logs"])
def test_client_telemetry_is_accepted_quietly(served_on, path):
    response = requests.post(served_on.url + path, data=b"\x0a\x00", timeout=30)
    assert response.status_code == 200


def test_keep_alive_serves_many_requests_on_one_connection(served_on):
    with requests.Session() as session:
        for _ in range(20):
            response = session.post(served_on.graphql_url, json={"query": "{ viewer { id } }"})
            assert response.status_code == 200
            assert response.headers.get("Connection", "").lower() != "close"


def test_a_large_response_arrives_whole(served_on):
    variables = {**PROJECT_VARS, "perPage": 10_000, "order": "+created_at"}
    full = (DATA / "sdk-queries" / "sdk_head_Runs_full.graphql").read_text()
    response = post(served_on, {"query": full, "variables": variables})
    body = loads(response.text)
    assert len(body["data"]["project"]["runs"]["edges"]) == body["data"]["project"]["runCount"]


ACCESS_LINE = re.compile(r"\b(GET|POST) (\S+) (\d{3}|dropped) \d+\.\dms\b")


def test_one_log_line_per_request_and_no_tracebacks_for_client_errors(served_on):
    before = len(served_on.log())
    post(served_on, {"query": "query { viewer { id shoeSize } }"})
    variables = {**PROJECT_VARS, "filters": json.dumps({"summary.loss": 1})}
    post(served_on, {"query": RUNS, "variables": variables})
    requests.post(served_on.url + "/sdk/otel/v1/metrics", data=b"", timeout=30)
    requests.post(served_on.graphql_url, data=b"{nope", timeout=30)
    requests.get(served_on.url + "/nothing", timeout=30)
    lines = served_on.log()[before:].splitlines()
    assert "Traceback" not in "\n".join(lines)
    access = [m.group(1, 2, 3) for m in map(ACCESS_LINE.search, lines) if m]
    assert len(lines) == len(access) == 5
    assert access == [
        ("POST", "/graphql", "200"),
        ("POST", "/graphql", "400"),
        ("POST", "/sdk/otel/v1/metrics", "200"),
        ("POST", "/graphql", "400"),
        ("GET", "/nothing", "404"),
    ]


def test_sigterm_stops_the_server_cleanly(served_database, tmp_path):
    server = ServerProcess(served_database, tmp_path / "serve.log").start()
    requests.post(server.graphql_url, json={"query": "{ viewer { id } }"}, timeout=30)
    server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    assert "Traceback" not in server.log() and "cannot listen" not in server.log()


def refused(db: Any) -> str:
    """Serve ``db``, expecting exit 1 with a one-line message and no traceback; the message."""
    done = run_serve(["--db", str(db), "--port", str(free_port())])
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_serving_a_missing_database_exits_1_and_creates_nothing(tmp_path):
    message = refused(tmp_path / "typo.db")
    assert message.startswith("wandb-mirror serve: no mirror at ")
    assert "typo.db" in message and "wandb-mirror init" in message
    assert not (tmp_path / "typo.db").exists()


def test_serving_a_missing_postgresql_database_exits_1(pg_server):
    message = refused(pg_server.url("nosuchdb"))
    assert message.startswith("wandb-mirror serve: ")
    assert "nosuchdb" in message


def test_serving_a_database_without_the_schema_exits_1(empty_database):
    if "://" not in empty_database:
        sqlite3.connect(empty_database).close()
    assert "no mirror at" in refused(empty_database)


def test_serving_an_old_schema_exits_1_without_upgrading(database):
    seed_database(database, runs=1, steps=1)
    engine = make_engine(database)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    message = refused(database)
    assert "at schema 0002" in message and "wandb-mirror db upgrade" in message
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).one() == ("0002",)
    engine.dispose()
