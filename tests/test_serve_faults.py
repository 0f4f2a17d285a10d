"""Each fault option does exactly what ``mirror.serve.faults`` documents, seen from a client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from server_process import DATA, ENTITY, PROJECT, ServerProcess, run_serve

from mirror.serve.faults import FaultConfig, FaultInjector, env_name, parse_rate_limit

pytest_plugins = ["serve_databases"]

VIEWER = {"query": "query { viewer { id } }"}
RUNS = (DATA / "sdk-queries" / "sdk_head_Runs_lazy.graphql").read_text()


@pytest.fixture
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Start servers over the shared seeded database; all are stopped after the test.

    The faults are decided before a request reaches the database, so their tests run on SQLite
    only; a test that also takes ``served_database`` (paging, which reads) runs on both.
    """
    servers: list[ServerProcess] = []
    both = "served_database" in request.fixturenames
    database = request.getfixturevalue("served_database" if both else "served_db")

    def _start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        log = tmp_path / f"serve-{len(servers)}.log"
        server = ServerProcess(database, log, args=args, env=env).start()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


def outcomes(server: ServerProcess, n: int) -> list[int | str]:
    """Status of ``n`` requests, each on a new connection; ``"dropped"`` when there was none."""
    seen: list[int | str] = []
    for _ in range(n):
        try:
            seen.append(requests.post(server.graphql_url, json=VIEWER, timeout=10).status_code)
        except requests.ConnectionError:
            seen.append("dropped")
    return seen


# --- latency ------------------------------------------------------------------------------------


def test_latency_delays_every_graphql_answer(start):
    server = start("--fault-latency-ms", "300")
    with requests.Session() as session:
        for _ in range(3):
            began = time.monotonic()
            assert session.post(server.graphql_url, json=VIEWER).status_code == 200
            assert time.monotonic() - began >= 0.3
    began = time.monotonic()
    requests.get(server.url + "/healthz", timeout=10)
    assert time.monotonic() - began < 0.3


# --- rate limit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["option", "env"])
def test_rate_limit_answers_429_with_wandbs_headers(start, via):
    if via == "option":
        server = start("--fault-rate-limit", "3/2")
    else:
        server = start(env={env_name("rate-limit"): "3/2"})
    with requests.Session() as session:
        admitted = [session.post(server.graphql_url, json=VIEWER) for _ in range(3)]
        limited = session.post(server.graphql_url, json=VIEWER)
    assert [r.status_code for r in admitted] == [200, 200, 200]
    assert [r.headers["RateLimit-Remaining"] for r in admitted] == ["2", "1", "0"]
    assert all(r.headers["RateLimit-Limit"] == "3" for r in admitted)
    assert limited.status_code == 429
    assert limited.headers["RateLimit-Limit"] == "3"
    assert limited.headers["RateLimit-Remaining"] == "0"
    reset = int(limited.headers["RateLimit-Reset"])
    assert 1 <= reset <= 2 and limited.headers["Retry-After"] == str(reset)
    assert limited.json()["errors"][0]["message"]
    time.sleep(reset + 0.05)
    assert requests.post(server.graphql_url, json=VIEWER, timeout=10).status_code == 200


def test_rate_limit_windows_with_a_fake_clock():
    now = [100.0]
    injector = FaultInjector(FaultConfig(rate_limit=(2, 10.0)), clock=lambda: now[0])
    assert [injector.decide().status for _ in range(3)] == [None, None, 429]
    now[0] += 9.5
    limited = injector.decide()
    assert limited.status == 429 and dict(limited.headers)["Retry-After"] == "1"
    now[0] += 0.5
    assert injector.decide().status is None


# --- error and drop rates ------------------------------------------------------------------------


def test_error_rate_answers_500_or_502_reproducibly(start):
    first = start("--fault-error-rate", "0.5", "--fault-seed", "3")
    second = start(env={env_name("error-rate"): "0.5", env_name("seed"): "3"})
    seen = outcomes(first, 40)
    assert set(seen) == {200, 500, 502}
    assert 8 <= sum(s != 200 for s in seen) <= 32
    assert outcomes(second, 40) == seen
    other = start("--fault-error-rate", "0.5", "--fault-seed", "4")
    assert outcomes(other, 40) != seen


def test_error_bodies_look_like_wandbs(start):
    server = start("--fault-error-rate", "1")
    answers = [requests.post(server.graphql_url, json=VIEWER, timeout=10) for _ in range(12)]
    by_status = {r.status_code: r for r in answers}
    assert set(by_status) == {500, 502}
    assert by_status[500].json()["errors"][0]["message"]
    assert by_status[502].headers["Content-Type"].startswith("text/plain")


def test_drop_rate_closes_connections_without_an_answer(start):
    always = start("--fault-drop-rate", "1")
    assert outcomes(always, 3) == ["dropped"] * 3
    assert requests.get(always.url + "/healthz", timeout=10).status_code == 200
    half = start("--fault-drop-rate", "0.5", "--fault-seed", "9")
    seen = outcomes(half, 30)
    assert set(seen) == {200, "dropped"}
    twin = start(env={env_name("drop-rate"): "0.5", env_name("seed"): "9"})
    assert outcomes(twin, 30) == seen
    assert "Traceback" not in half.log() + always.log()


# --- page repeat ---------------------------------------------------------------------------------


def pages(server: ServerProcess, per_page: int) -> tuple[list[list[str]], list[int]]:
    names: list[list[str]] = []
    counts: list[int] = []
    cursor = None
    variables = {"entity": ENTITY, "project": PROJECT, "order": "+created_at", "perPage": per_page}
    while True:
        body = {"query": RUNS, "variables": {**variables, "cursor": cursor}}
        project = requests.post(server.graphql_url, json=body, timeout=30).json()["data"]["project"]
        counts.append(project["runCount"])
        names.append([e["node"]["name"] for e in project["runs"]["edges"]])
        if not project["runs"]["pageInfo"]["hasNextPage"]:
            return names, counts
        cursor = project["runs"]["pageInfo"]["endCursor"]


def test_page_repeat_repeats_and_skips_runs_while_run_count_stays_right(start, served_on):
    truth, _ = pages(served_on, 10)
    expected = [name for page in truth for name in page]
    server = start("--fault-page-repeat", "3")
    got, counts = pages(server, 10)
    assert set(counts) == {len(expected)}
    assert got[0] == truth[0]
    for previous, page in zip(got, got[1:], strict=False):
        assert page[:3] == previous[-3:]
    flat = [name for page in got for name in page]
    assert len(flat) == len(expected)
    assert len(set(flat)) < len(flat)
    missing = set(expected) - set(flat)
    assert missing and len(missing) == len(flat) - len(set(flat))


# --- bad settings --------------------------------------------------------------------------------


def test_a_bad_fault_option_is_a_usage_error(served_db):
    done = run_serve(["--db", str(served_db), "--fault-error-rate", "2"])
    assert done.returncode == 1 and "between 0 and 1" in done.stderr


def test_a_bad_fault_variable_is_one_line_and_exit_code_1(served_db):
    done = run_serve(["--db", str(served_db)], env={env_name("rate-limit"): "lots"})
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and env_name("rate-limit") in done.stderr
    assert "Traceback" not in done.stderr


def test_rate_limit_text_is_parsed():
    assert parse_rate_limit("10/1.5") == (10, 1.5)
    with pytest.raises(ValueError, match="N/WINDOW_S"):
        parse_rate_limit("0/1")


def test_faults_are_off_by_default():
    injector = FaultInjector(FaultConfig())
    decisions = [injector.decide() for _ in range(100)]
    assert all(d.status is None and not d.drop and not d.delay_s for d in decisions)
    assert not FaultConfig().active
    assert json.dumps(FaultConfig(latency_ms=5).describe())
