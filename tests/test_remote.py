"""The remote client on its own: where the key comes from, that it never shows, what each answer
of W&B becomes (retried or not, and how long it waits), and that every document it can send is
valid against W&B's schema."""

from __future__ import annotations

import base64
import re
import threading
import time
from pathlib import Path

import pytest
import requests
from graphql import build_schema, parse, validate
from server_process import free_port
from sync_checks import wait_for
from sync_proxy import (
    Reply,
    StubServer,
    bad_gateway,
    graphql_data,
    graphql_error,
    json_reply,
    rate_limited,
    server_error,
)

import mirror
from mirror.errors import CommError, ConfigError
from mirror.remote import queries
from mirror.remote.auth import Credentials, resolve_credentials
from mirror.remote.client import AuthError, RemoteClient, RemoteSettings, RetryBudget

KEY = "remotetest" + "7" * 30
SHARED_SCHEMA = Path("/work/shared/wandb/schema.graphql")
SERVE_SCHEMA = Path(mirror.__file__).parent / "serve" / "schema.graphql"
VIEWER = {"viewer": {"id": "VXNlcjox", "username": "u", "entity": "acme"}}


def fast(**overrides: float) -> RemoteSettings:
    """Settings whose own backoff is negligible, so waits measured are the server's asks."""
    values = {"backoff_initial_s": 0.01, "backoff_max_s": 0.02, "max_attempts": 4, **overrides}
    return RemoteSettings(**values)  # type: ignore[arg-type]


def client_for(url: str, **overrides: float) -> RemoteClient:
    return RemoteClient(Credentials(url, KEY, "WANDB_API_KEY"), fast(**overrides))


def leaks(text: str) -> bool:
    """Whether ``text`` shows the key, raw or as the Basic credentials it travels in."""
    basic = base64.b64encode(f"api:{KEY}".encode()).decode()
    return KEY in text or basic in text


def error_texts(err: CommError) -> str:
    return " ".join([str(err), err.message, repr(err), str(err.exc or ""), repr(err.exc)])


# --- credentials ---------------------------------------------------------------------------


def write_netrc(path: Path, *machines: tuple[str, str]) -> Path:
    """A netrc file as ``wandb login`` writes it (one stanza per host, mode 0600)."""
    path.write_text(
        "".join(f"machine {host}\n  login user\n  password {key}\n" for host, key in machines)
    )
    path.chmod(0o600)
    return path


def test_the_environment_key_wins_over_netrc(tmp_path):
    netrc = write_netrc(tmp_path / "netrc", ("127.0.0.1:8080", "from-netrc" + "1" * 30))
    environ = {
        "WANDB_API_KEY": KEY,
        "NETRC": str(netrc),
        "WANDB_BASE_URL": "http://127.0.0.1:8080",
    }
    creds = resolve_credentials(environ=environ)
    assert (creds.api_key, creds.source, creds.host) == (KEY, "WANDB_API_KEY", "127.0.0.1:8080")


def test_netrc_gives_the_key_for_the_host_and_port_of_the_base_url(tmp_path):
    netrc = write_netrc(
        tmp_path / "netrc",
        ("api.wandb.ai", "cloud" + "2" * 35),
        ("127.0.0.1:9999", "other-port" + "3" * 30),
        ("127.0.0.1:8080", KEY),
    )
    environ = {"NETRC": str(netrc), "WANDB_BASE_URL": "http://127.0.0.1:8080/"}
    creds = resolve_credentials(environ=environ)
    assert creds.base_url == "http://127.0.0.1:8080"
    assert creds.api_key == KEY
    assert creds.source == f"netrc ({netrc})"
    cloud = resolve_credentials(environ={"NETRC": str(netrc)})
    assert (cloud.base_url, cloud.api_key) == ("https://api.wandb.ai", "cloud" + "2" * 35)


def test_netrc_in_the_home_directory_is_read_when_netrc_is_not_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_netrc(tmp_path / ".netrc", ("wandb.example.com", KEY))
    creds = resolve_credentials("https://wandb.example.com", environ={})
    assert creds.api_key == KEY and creds.source == f"netrc ({tmp_path / '.netrc'})"


def test_a_missing_key_names_the_host_and_how_to_log_in(tmp_path):
    netrc = write_netrc(tmp_path / "netrc", ("api.wandb.ai", "cloud" + "2" * 35))
    with pytest.raises(ConfigError) as caught:
        resolve_credentials("http://127.0.0.1:8080", environ={"NETRC": str(netrc)})
    text = str(caught.value)
    assert text.startswith("no W&B API key for 127.0.0.1:8080: ")
    assert "wandb login --host http://127.0.0.1:8080" in text
    assert "WANDB_API_KEY" in text and str(netrc) in text


def test_a_missing_netrc_file_is_the_same_readable_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no W&B API key for api\.wandb\.ai: run `wandb login"):
        resolve_credentials(environ={"NETRC": str(tmp_path / "absent")})


@pytest.mark.parametrize("url", ["api.wandb.ai", "ftp://api.wandb.ai", "https://"])
def test_a_base_url_that_is_not_http_is_a_config_error(url):
    with pytest.raises(ConfigError, match="base URL must look like https://api.wandb.ai"):
        resolve_credentials(url, api_key=KEY, environ={})


def test_the_key_is_not_in_the_repr_of_credentials_or_client():
    creds = Credentials("https://api.wandb.ai", KEY, "WANDB_API_KEY")
    client = RemoteClient(creds)
    for text in (repr(creds), str(creds), repr(client), str(client), repr(client.settings)):
        assert not leaks(text), text
    assert "WANDB_API_KEY" in repr(creds)


# --- what each answer becomes ------------------------------------------------------------------


def test_the_key_travels_as_basic_auth_in_a_json_post():
    with StubServer(lambda seen: graphql_data(VIEWER)) as stub:
        data = client_for(stub.url).execute(queries.VIEWER, {"x": 1})
    assert data == VIEWER
    (seen,) = stub.graphql()
    sent = base64.b64decode(seen.headers["Authorization"].removeprefix("Basic ")).decode()
    assert sent == f"api:{KEY}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.payload == {"query": queries.VIEWER, "variables": {"x": 1}}
    assert KEY not in seen.path


def test_a_network_failure_is_a_comm_error_holding_the_original_exception():
    client = client_for(f"http://127.0.0.1:{free_port()}", max_attempts=2)
    with pytest.raises(CommError) as caught:
        client.execute(queries.VIEWER)
    err = caught.value
    assert isinstance(err, mirror.CommError)
    assert isinstance(err.exc, requests.ConnectionError)
    assert str(err).startswith("MirrorViewer: cannot reach 127.0.0.1:")
    assert "gave up after 2 attempts" in str(err)
    assert not leaks(error_texts(err))


def test_an_answer_past_the_timeout_is_a_comm_error_holding_the_timeout():
    with StubServer(lambda seen: Reply(delay_s=0.6, body=b"{}")) as stub:
        client = client_for(stub.url, timeout_s=0.2, max_attempts=2)
        started = time.monotonic()
        with pytest.raises(CommError) as caught:
            client.execute(queries.VIEWER)
        took = time.monotonic() - started
    err = caught.value
    assert isinstance(err.exc, requests.Timeout)
    assert f"{stub.url.removeprefix('http://')} did not answer in time" in str(err)
    assert len(stub.graphql()) == 2
    assert took < 1.2  # two timeouts of 0.2 s, not two answers of 0.6 s


@pytest.mark.parametrize(
    "reply, message",
    [
        (lambda: server_error("boom"), "HTTP 500: boom"),
        (bad_gateway, "HTTP 502: Bad Gateway"),
        (lambda: json_reply(503, {"error": "maintenance"}), "HTTP 503: maintenance"),
        (lambda: Reply(200, b"<html>oops</html>"), "W&B answered with something that is not JSON"),
    ],
    ids=["500-json", "502-text", "503-error", "200-not-json"],
)
def test_retryable_failures_are_retried_exactly_max_attempts_times(reply, message):
    with StubServer(lambda seen: reply()) as stub:
        client = client_for(stub.url, max_attempts=3)
        with pytest.raises(CommError) as caught:
            client.execute(queries.VIEWER)
    assert len(stub.graphql()) == 3
    assert client.stats.retries == 2 and client.stats.requests == 3
    assert str(caught.value) == f"MirrorViewer: {message} (gave up after 3 attempts)"


@pytest.mark.parametrize(
    "reply, message",
    [
        (lambda: json_reply(400, {"errors": [{"message": "bad filter"}]}), "answered HTTP 400"),
        (lambda: json_reply(404, {"error": "no such thing"}), "answered HTTP 404"),
        (lambda: json_reply(409, {"error": "conflict"}), "answered HTTP 409"),
        (lambda: graphql_error("project not found"), "W&B refused MirrorViewer"),
    ],
    ids=["400", "404", "409", "200-errors"],
)
def test_refusals_are_not_retried(reply, message):
    with StubServer(lambda seen: reply()) as stub:
        client = client_for(stub.url, max_attempts=5)
        with pytest.raises(CommError) as caught:
            client.execute(queries.VIEWER)
    assert len(stub.graphql()) == 1
    assert client.stats.retries == 0
    assert message in str(caught.value)
    assert not isinstance(caught.value, AuthError)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_an_auth_error_naming_the_host_and_how_to_log_in(status):
    with StubServer(lambda seen: json_reply(status, {"errors": [{"message": "denied"}]})) as stub:
        client = client_for(stub.url)
        with pytest.raises(AuthError) as caught:
            client.execute(queries.VIEWER)
    text = str(caught.value)
    assert len(stub.graphql()) == 1
    assert f"127.0.0.1:{stub.port} refused the API key from WANDB_API_KEY (HTTP {status})" in text
    assert f"wandb login --host {stub.url}" in text
    assert not leaks(error_texts(caught.value))


def test_a_server_that_echoes_the_key_does_not_put_it_in_the_error():
    basic = base64.b64encode(f"api:{KEY}".encode()).decode()

    def echo(seen):
        if seen.payload.get("variables", {}).get("n") == 1:
            return json_reply(400, {"error": f"bad header Authorization: Basic {basic}"})
        if seen.payload.get("variables", {}).get("n") == 2:
            return graphql_error(f"unknown key {KEY}")
        return Reply(500, f"proxy error for api:{KEY}".encode(), (("Content-Type", "text/plain"),))

    with StubServer(echo) as stub:
        client = client_for(stub.url, max_attempts=1)
        for n in (1, 2, 3):
            with pytest.raises(CommError) as caught:
                client.execute(queries.VIEWER, {"n": n})
            assert not leaks(error_texts(caught.value)), error_texts(caught.value)


def test_retry_after_is_waited_for_even_when_the_own_backoff_is_shorter():
    def answer(seen):
        return rate_limited(retry_after=1) if len(stub.graphql()) == 1 else graphql_data(VIEWER)

    with StubServer(answer) as stub:
        client = client_for(stub.url)
        assert client.execute(queries.VIEWER) == VIEWER
    first, second = stub.graphql()
    assert 1.0 <= second.at - first.at < 2.0
    assert client.stats.retries == 1


def test_ratelimit_reset_is_waited_for_when_there_is_no_retry_after():
    def answer(seen):
        if len(stub.graphql()) == 1:
            return rate_limited(retry_after=None, reset=1)
        return graphql_data(VIEWER)

    with StubServer(answer) as stub:
        assert client_for(stub.url).execute(queries.VIEWER) == VIEWER
    first, second = stub.graphql()
    assert 1.0 <= second.at - first.at < 2.0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_carrying_ratelimit_headers_is_retried_at_once_not_after_the_reset(status):
    """W&B puts ``RateLimit-*`` on every answer; ``RateLimit-Reset`` says when the window ends,
    not how long to wait, unless the limit is spent."""
    window = (
        ("RateLimit-Limit", "1000"),
        ("RateLimit-Remaining", "900"),
        ("RateLimit-Reset", "30"),
    )

    def answer(seen):
        if len(stub.graphql()) == 1:
            return json_reply(status, {"errors": [{"message": "oops"}]}, *window)
        return graphql_data(VIEWER)

    with StubServer(answer) as stub:
        assert client_for(stub.url).execute(queries.VIEWER) == VIEWER
    first, second = stub.graphql()
    assert second.at - first.at < 1.0


def test_a_503_with_retry_after_is_waited_for():
    def answer(seen):
        if len(stub.graphql()) == 1:
            return json_reply(503, {"error": "maintenance"}, ("Retry-After", "1"))
        return graphql_data(VIEWER)

    with StubServer(answer) as stub:
        assert client_for(stub.url).execute(queries.VIEWER) == VIEWER
    first, second = stub.graphql()
    assert 1.0 <= second.at - first.at < 2.0


def test_a_429_holds_the_other_threads_of_the_client_too():
    """One thread's 429 makes every thread wait: no request, from any thread, comes before
    ``Retry-After`` has passed."""

    def answer(seen):
        return rate_limited(retry_after=1) if len(stub.graphql()) == 1 else graphql_data(VIEWER)

    with StubServer(answer) as stub:
        client = client_for(stub.url)
        first = threading.Thread(target=client.execute, args=(queries.VIEWER,))
        first.start()
        wait_for(lambda: len(stub.graphql()) == 1, 5, "the first request")
        time.sleep(0.2)  # its 429 is answered and read
        assert client.execute(queries.VIEWER) == VIEWER  # from this thread
        first.join(5)
    limited, *later = stub.graphql()
    assert len(later) == 2
    assert all(s.at - limited.at >= 1.0 for s in later), [s.at - limited.at for s in later]


def test_the_retry_budget_is_shared_by_all_requests_of_a_sync():
    with StubServer(lambda seen: server_error()) as stub:
        budget = RetryBudget(3)
        client = RemoteClient(Credentials(stub.url, KEY), fast(max_attempts=10), budget=budget)
        with pytest.raises(CommError) as first:
            client.execute(queries.VIEWER)
        with pytest.raises(CommError) as second:
            client.execute(queries.VIEWER)
    assert len(stub.graphql()) == 4 + 1  # 1 + 3 retries, then one attempt and no retry
    assert "gave up after 4 attempts; the retry budget of this sync is spent" in str(first.value)
    assert "gave up after 1 attempts; the retry budget of this sync is spent" in str(second.value)
    assert budget.exhausted and client.stats.retries == 3


def test_exported_files_are_fetched_without_credentials():
    with StubServer(lambda seen: Reply(200, b"PAR1...")) as stub:
        client = client_for(stub.url)
        assert client.download(stub.url + "/files/x.parquet?sig=abc") == b"PAR1..."
    (seen,) = stub.seen
    assert seen.method == "GET" and "Authorization" not in seen.headers
    assert client.stats.downloads == 1 and client.stats.requests == 0


# --- the documents ---------------------------------------------------------------------------


def schema_text() -> str:
    path = SHARED_SCHEMA if SHARED_SCHEMA.is_file() else SERVE_SCHEMA
    return path.read_text()


def test_queries_all_holds_every_document_of_the_module():
    documents = {
        name: value
        for name, value in vars(queries).items()
        if isinstance(value, str) and re.match(r"\s*(query|mutation)\b", value)
    }
    assert documents == queries.ALL


@pytest.mark.parametrize("name", sorted(queries.ALL))
def test_every_document_validates_against_wandbs_schema(name):
    schema = build_schema(schema_text())
    document = parse(queries.ALL[name])
    assert [e.message for e in validate(schema, document)] == []
    (operation,) = document.definitions
    assert operation.name is not None and operation.name.value.startswith("Mirror")


def test_the_listing_never_asks_for_config_or_summaries():
    listing = queries.RUN_LISTING
    for field in ("config", "summaryMetrics", "systemMetrics", "historyKeys"):
        assert not re.search(rf"\b{field}\b", listing), field
