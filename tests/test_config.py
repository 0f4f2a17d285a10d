"""Config files: good ones load, broken ones are one clear line naming the file and problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mirror.config import load_settings
from mirror.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path: Path):
    for name in ("WANDB_MIRROR_DB", "WANDB_MIRROR_CONFIG", "WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("WANDB_MIRROR_SERVE_KEYS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def test_the_example_config_loads():
    settings = load_settings(EXAMPLE)
    assert settings.database == "~/.local/share/wandb-mirror/mirror.db"
    assert settings.serve.host == "127.0.0.1" and settings.serve.port == 8080


def test_no_file_means_defaults():
    settings = load_settings()
    assert settings.database is None and settings.source is None


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch):
    file = tmp_path / "c.toml"
    file.write_text('database = "/a.db"\n[serve]\napi_keys = ["k1"]\n')
    monkeypatch.setenv("WANDB_MIRROR_DB", "/b.db")
    settings = load_settings(file)
    assert settings.database == "/b.db"
    assert settings.serve.api_keys == ("k1",)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("database = \n", "not valid TOML"),
        ("databse = 'x'\n", "unknown setting 'databse'"),
        ("[serve]\nport = 'eighty'\n", "serve.port must be an integer"),
        ("[serve]\nport = true\n", "serve.port must be an integer"),
        ("entity = 3\n", "entity must be a string"),
        ("[serve]\napi_keys = [1]\n", "serve.api_keys must be a list of strings"),
    ],
)
def test_broken_files_name_the_problem(tmp_path: Path, body: str, message: str):
    file = tmp_path / "bad.toml"
    file.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_settings(file)
    assert message in str(info.value) and str(file) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_named_file_must_exist(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "missing.toml")


def test_keys_never_show_in_a_repr(tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text('[serve]\napi_keys = ["sekret-key-123"]\n')
    settings = load_settings(file)
    assert settings.serve.api_keys == ("sekret-key-123",)
    assert "sekret" not in repr(settings)


def test_the_example_documents_every_remote_and_sync_setting_at_its_default():
    from mirror.config import (
        _PUSH_KNOWN,
        _REMOTE_KNOWN,
        _SYNC_KNOWN,
        PushSettings,
        RemoteSettings,
        SyncSettings,
    )

    text = EXAMPLE.read_text()
    for key in [*_REMOTE_KNOWN, *_SYNC_KNOWN, *_PUSH_KNOWN]:
        assert f"\n{key} = " in text, key
    settings = load_settings(EXAMPLE)
    assert settings.remote == RemoteSettings() and settings.sync == SyncSettings()
    assert settings.push == PushSettings()
    assert settings.base_url == "https://api.wandb.ai" and settings.projects == ()


def test_projects_and_their_history_choice_load(tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text(
        '[sync]\nhistory = false\n[[project]]\npath = "a/b"\n'
        '[[project]]\npath = "c/d"\nhistory = ["loss"]\n'
    )
    settings = load_settings(file)
    assert settings.sync.history is False
    assert [(p.path, p.history) for p in settings.projects] == [("a/b", None), ("c/d", ("loss",))]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[remote]\nmax_attempts = 0\n", "remote.max_attempts must be at least 1"),
        ("[remote]\nslow_below = 2\n", "remote.slow_below must be between 0 and 1"),
        ("[sync]\nhistory = 3\n", "sync.history must be true, false or a list"),
        ("[sync]\nparquet = 1\n", "sync.parquet must be true or false"),
        ("[sync]\nconcurrency = true\n", "sync.concurrency must be an integer"),
        ("[sync]\nnope = 1\n", "unknown setting sync.'nope'"),
        ('[[project]]\npath = "a/b"\nextra = 1\n', "unknown setting project[0].'extra'"),
        ('[push]\npolicy = "mine"\n', "push.policy must be one of abort, local-wins, remote-wins"),
    ],
)
def test_bad_sync_settings_are_one_clear_line(tmp_path: Path, text: str, message: str):
    file = tmp_path / "c.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(file)


def test_relative_backup_and_log_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    from mirror.config import load_settings

    folder = tmp_path / "conf"
    folder.mkdir()
    cfg = folder / "config.toml"
    cfg.write_text(
        '[backup]\ndest = "snaps"\nexport_dest = "/abs/x"\n[daemon]\nlog_file = "l/d.log"\n'
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings(cfg)
    assert settings.backup.dest == str(folder / "snaps")
    assert settings.backup.export_dest == "/abs/x"
    assert settings.daemon.log_file == str(folder / "l" / "d.log")


def test_the_example_documents_every_serve_setting_at_its_default():
    from mirror.config import _SERVE_KNOWN, ServeSettings

    text = EXAMPLE.read_text()
    for key in _SERVE_KNOWN:
        assert f"\n{key} = " in text or key == "enabled", key
    assert load_settings(EXAMPLE).serve == ServeSettings()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[serve]\nport = 99999\n", "serve.port must be a whole number between 0 and 65535"),
        ("[serve]\nport = -1\n", "serve.port must be a whole number between 0 and 65535"),
        ("[serve]\nthreads = 0\n", "serve.threads must be a whole number between 1 and 1024"),
        ("[serve]\nmax_cost = 0\n", "serve.max_cost must be a whole number, 1 or more"),
        ("[serve]\nrequest_timeout = 0\n", "serve.request_timeout must be a number above 0"),
        ("[serve]\nmax_body_mb = nan\n", "serve.max_body_mb must be a number above 0"),
        ("[serve]\nidle_timeout = 1.5\n", "serve.idle_timeout must be an integer"),
        ('[serve]\nhost = " "\n', "serve.host must be an address or a host name, not empty"),
    ],
)
def test_bad_serve_settings_name_the_setting_and_its_range(tmp_path: Path, text, message):
    file = tmp_path / "c.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(file)


def test_serve_limits_and_threads_load_from_the_file(tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text("[serve]\nthreads = 3\nmax_cost = 500\nrequest_timeout = 2.5\n")
    serve = load_settings(file).serve
    assert serve.threads == 3 and serve.limits.max_cost == 500
    assert serve.limits.request_timeout == 2.5 and serve.limits.idle_timeout == 30
