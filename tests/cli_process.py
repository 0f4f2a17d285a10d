"""The installed ``wandb-mirror`` console script, run as a user runs it: a child process with
the environment cleaned of the user's mirror, config and serve settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from server_process import clean_env


def console_script() -> str:
    """The ``wandb-mirror`` entry point installed beside this interpreter (else on PATH)."""
    beside = Path(sys.executable).with_name("wandb-mirror")
    found = str(beside) if beside.exists() else shutil.which("wandb-mirror")
    assert found, "the wandb-mirror console script is not installed"
    return found


def cli_env(extra: dict[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """No WANDB_MIRROR_* setting leaks in from the caller; ``home`` hides the user's config."""
    env = {k: v for k, v in clean_env({}).items() if not k.startswith("WANDB_MIRROR_")}
    if home is not None:
        env["XDG_CONFIG_HOME"] = str(home / "config")
        env["XDG_DATA_HOME"] = str(home / "data")
    env.update(extra or {})
    return env


def wandb_mirror(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``wandb-mirror ARGS`` to completion; returns its exit status and output."""
    return subprocess.run(
        [console_script(), *args],
        capture_output=True,
        text=True,
        env=cli_env(env, home=home),
        cwd=cwd,
        timeout=timeout,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting exit 1, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    return lines[0]
