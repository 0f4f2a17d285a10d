"""API keys: HTTP Basic ``api:<key>``, 401 without a valid one, never in the log."""

from __future__ import annotations

import pytest
import requests
from server_process import ENTITY, ServerProcess, free_port, run_serve

from mirror.serve.auth import KEYS_ENV, KeyChecker, basic_password, configured_keys, is_loopback

pytest_plugins = ["serve_databases"]

KEY_A = "a" * 40
KEY_B = "b" * 40
VIEWER = {"query": "query { viewer { id entity } }"}


@pytest.fixture(scope="module")
def keyed(served_database: str, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("keyed") / "serve.log"
    args = ("--api-key", KEY_A)
    with ServerProcess(served_database, log, args=args, env={KEYS_ENV: f" {KEY_B} ,"}) as server:
        yield server


@pytest.mark.parametrize("auth", [None, ("api", "wrong"), ("api", ""), ("api", KEY_A[:-1])])
def test_a_request_without_a_valid_key_gets_401(keyed, auth):
    response = requests.post(keyed.graphql_url, json=VIEWER, auth=auth, timeout=10)
    assert response.status_code == 401
    assert response.json()["errors"][0]["message"]


@pytest.mark.parametrize("key", [KEY_A, KEY_B], ids=["option", "environment"])
def test_configured_keys_are_accepted(keyed, key):
    response = requests.post(keyed.graphql_url, json=VIEWER, auth=("api", key), timeout=10)
    assert response.status_code == 200
    assert response.json()["data"]["viewer"]["entity"] == ENTITY


def test_keys_never_reach_the_log(keyed):
    requests.post(keyed.graphql_url, json=VIEWER, auth=("api", KEY_A), timeout=10)
    requests.post(keyed.graphql_url, json=VIEWER, auth=("api", "wrong-key-xyz"), timeout=10)
    log = keyed.log()
    assert "POST /graphql 401" in log and "POST /graphql 200" in log
    assert KEY_A not in log and KEY_B not in log and "wrong-key-xyz" not in log


def test_without_keys_loopback_accepts_any_key(served_on):
    for auth in (None, ("api", "anything")):
        response = requests.post(served_on.graphql_url, json=VIEWER, auth=auth, timeout=10)
        assert response.json()["data"]["viewer"]["id"]


def test_listening_beyond_loopback_without_a_key_is_refused(served_database):
    done = run_serve(
        ["--db", str(served_database), "--host", "0.0.0.0", "--port", str(free_port())]
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "refusing to listen on 0.0.0.0 without an API key" in done.stderr


def test_listening_beyond_loopback_with_a_key_works(served_database, tmp_path):
    args = ("--host", "0.0.0.0", "--api-key", KEY_A)
    with ServerProcess(served_database, tmp_path / "serve.log", args=args) as server:
        response = requests.post(server.graphql_url, json=VIEWER, auth=("api", KEY_A), timeout=10)
        assert response.status_code == 200


def test_key_helpers():
    assert configured_keys([" k1 "], {KEYS_ENV: "k2,,k1"}) == ("k1", "k2")
    assert configured_keys([], {}) == ()
    assert basic_password("Basic YXBpOnNlY3JldA==") == "secret"
    assert basic_password("Bearer x") is None and basic_password("Basic !!") is None
    assert KeyChecker([]).allows(None) and not KeyChecker(["k"]).allows(None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
