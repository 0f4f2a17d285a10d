"""``serve`` settings, from flags, the environment and the config file's ``[serve]``: a value
out of range is one line naming the setting and what it accepts, never a traceback, a server
that listens elsewhere, or one that starts and never answers (issue 9, item 14)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import requests
from cli_process import cli_env, console_script, one_error_line, wandb_mirror
from server_process import free_port


@pytest.fixture(scope="module")
def mirror_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("serve-settings") / "m.db"
    assert (
        wandb_mirror("--db", str(db), "seed", "e/p", "--runs", "2", "--steps", "3").returncode == 0
    )
    return db


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "argument --port: must be a whole number between 0 and 65535"),
        (["--port", "-1"], "argument --port: must be a whole number between 0 and 65535"),
        (["--threads", "-3"], "argument --threads: must be a whole number between 1 and 1024"),
        (["--threads", "0"], "argument --threads: must be a whole number between 1 and 1024"),
        (["--max-cost", "0"], "argument --max-cost: must be a whole number, 1 or more"),
        (
            ["--host", "nosuchhost.invalid", "--api-key", "k"],
            "serve host must be an IP address or a host name that resolves, not "
            "'nosuchhost.invalid'",
        ),
    ],
)
def test_bad_flags_are_one_line(mirror_db: Path, args: list[str], message: str):
    line = one_error_line(wandb_mirror("--db", str(mirror_db), "serve", *args, timeout=30))
    assert message in line


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[serve]\nport = 99999\n", "serve.port must be a whole number between 0 and 65535"),
        ("[serve]\nthreads = 0\n", "serve.threads must be a whole number between 1 and 1024"),
        ("[serve]\nidle_timeout = 0\n", "serve.idle_timeout must be a whole number, 1 or more"),
    ],
)
def test_bad_config_settings_are_one_line(mirror_db: Path, tmp_path: Path, body, message):
    config = tmp_path / "c.toml"
    config.write_text(body)
    result = wandb_mirror("--config", str(config), "--db", str(mirror_db), "serve", timeout=30)
    line = one_error_line(result)
    assert str(config) in line and message in line


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("WANDB_MIRROR_SERVE_CONNECTION_LIMIT", "0", "must be a whole number, 1 or more"),
        ("WANDB_MIRROR_SERVE_REQUEST_TIMEOUT", "inf", "must be a number above 0"),
        ("WANDB_MIRROR_SERVE_ROLE", "boss", "must be one of mirror, upstream"),
    ],
)
def test_bad_variables_are_one_line(mirror_db: Path, variable: str, value: str, message: str):
    result = wandb_mirror("--db", str(mirror_db), "serve", env={variable: value}, timeout=30)
    line = one_error_line(result)
    assert f"{variable}: {message}" in line


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [console_script(), *args], stdout=out, stderr=subprocess.STDOUT, env=cli_env(env)
        )


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"no answer at {url}: {log.read_text()}")


def test_the_config_file_sets_port_threads_and_limits_under_env_and_flags(
    mirror_db: Path, tmp_path: Path
):
    """``[serve] port`` is where it listens; ``max_body_mb`` bounds bodies until the variable,
    then the flag, says otherwise."""
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(f"[serve]\nport = {port}\nthreads = 2\nmax_body_mb = 0.01\n")
    body = {"query": "{ viewer { id } }", "padding": "x" * 20_000}
    url = f"http://127.0.0.1:{port}"
    cases = [
        ([], {}, 413),
        ([], {"WANDB_MIRROR_SERVE_MAX_BODY_MB": "1"}, 200),
        (["--max-body-mb", "0.001"], {"WANDB_MIRROR_SERVE_MAX_BODY_MB": "1"}, 413),
    ]
    for flags, env, status in cases:
        log = tmp_path / "serve.log"
        proc = _start(["--config", str(config), "--db", str(mirror_db), "serve", *flags], env, log)
        try:
            _wait_healthy(proc, url, log)
            answer = requests.post(url + "/graphql", json=body, timeout=10)
            assert answer.status_code == status, (flags, env, answer.text[:200])
        finally:
            proc.terminate()
            proc.wait(timeout=15)
