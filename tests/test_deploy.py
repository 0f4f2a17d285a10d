"""The service files in deploy/ run commands that exist, with the signals the daemon obeys."""

from __future__ import annotations

import configparser
import plistlib
import shlex
from pathlib import Path

from mirror.cli import build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / name).read_text())
    return parser


def _parses(command: str) -> None:
    words = shlex.split(command)
    assert words[0].endswith("/wandb-mirror"), command
    build_parser().parse_args(words[1:])  # exits (SystemExit) on an unknown command or flag


def test_the_systemd_units_run_real_commands():
    daemon = _unit("wandb-mirror.service")["Service"]
    _parses(daemon["ExecStart"])
    assert shlex.split(daemon["ExecStart"])[1:] == ["daemon"]
    assert daemon["ExecReload"].endswith("-HUP $MAINPID")
    assert daemon["KillSignal"] == "SIGTERM"
    oneshot = _unit("wandb-mirror-sync.service")["Service"]
    assert oneshot["Type"] == "oneshot"
    _parses(oneshot["ExecStart"])
    _parses(oneshot["ExecStartPost"])
    timer = _unit("wandb-mirror-sync.timer")["Timer"]
    assert timer["Persistent"] == "true"


def test_the_launchd_agent_and_the_container_run_the_daemon():
    with open(DEPLOY / "ai.wandb-mirror.daemon.plist", "rb") as f:
        agent = plistlib.load(f)
    assert agent["Label"] == "ai.wandb-mirror.daemon"
    _parses(shlex.join(agent["ProgramArguments"]))
    assert agent["ProgramArguments"][1:] == ["daemon"]
    container = (DEPLOY / "Containerfile").read_text()
    assert 'ENTRYPOINT ["wandb-mirror"]' in container and 'CMD ["daemon"]' in container
    assert "STOPSIGNAL SIGTERM" in container
