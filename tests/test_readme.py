"""The README's promises about the command line hold (issue 9, item 19): its example errors
are what the commands print, errors (bad options included) are one line and exit 1, the
options it names are documented with their defaults, and ``--format json`` is standard JSON."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from cli_process import one_error_line, wandb_mirror

from mirror.cli import build_parser, main
from mirror.query.filters import parse_filter

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _console_examples() -> list[tuple[str, list[str]]]:
    """``(command, expected stderr lines)`` of every ```console block in the README."""
    examples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", README, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                examples.append((line[2:], []))
            elif line.strip():
                examples[-1][1].append(line)
    return examples


EXAMPLES = _console_examples()


@pytest.fixture(scope="module")
def demo_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mirror holding the project the README's examples name."""
    db = tmp_path_factory.mktemp("readme") / "m.db"
    assert main(["--db", str(db), "seed", "demo/synthetic", "--runs", "5", "--steps", "10"]) == 0
    return db


def test_the_readme_has_error_examples():
    assert len(EXAMPLES) >= 4 and all(expected for _command, expected in EXAMPLES)


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_each_example_prints_what_the_readme_shows(command, expected, demo_mirror):
    argv = shlex.split(command)
    assert argv[0] == "wandb-mirror"
    result = wandb_mirror(*argv[1:], env={"WANDB_MIRROR_DB": str(demo_mirror)}, timeout=60)
    if any(": error: " in line for line in expected):
        assert one_error_line(result) == "\n".join(expected)
    else:
        assert result.returncode == 0 and result.stderr.splitlines() == expected


def test_inline_filter_errors_in_the_prose_are_real_ones():
    """A message quoted in running text must be one an example above prints."""
    printed = " ".join(line for _command, lines in EXAMPLES for line in lines)
    quoted = re.findall(r"`(filters\.[^`]+)`", README.replace("\n", " "))
    assert quoted
    for message in quoted:
        assert " ".join(message.split()) in printed, message


@pytest.mark.parametrize("op", ["$elemMatch", "$type", "$expr"])
def test_operators_the_readme_calls_unsupported_say_so(op):
    spec = {op: {}} if op == "$expr" else {"config.x": {op: 1}}
    with pytest.raises(ValueError, match=re.escape(f"{op} is not supported by the mirror")):
        parse_filter(spec)


def _section(command: str) -> str:
    start = README.index(f"### `{command}`")
    end = README.find("\n### ", start + 1)
    return README[start:end]


@pytest.mark.parametrize(
    ("command", "flag"),
    [("history", "--samples"), ("demo", "--runs"), ("demo", "--steps"), ("seed", "--runs"),
     ("seed", "--steps"), ("seed", "--seed"), ("runs", "--nonfinite")],
)  # fmt: skip
def test_options_are_documented_with_their_defaults(command, flag):
    section = _section(command)
    assert f"`{flag}" in section
    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    action = next(a for a in subcommands[command]._actions if flag in a.option_strings)
    if action.default is not None:
        assert str(action.default) in section, (command, flag, action.default)


def test_the_seed_example_writes_a_database_of_its_own():
    example = next(line for line in _section("seed").splitlines() if " seed " in line)
    assert "--db " in example and "demo/synthetic" not in example


@pytest.mark.parametrize(
    "args",
    [["nosuchcommand"], ["runs"], ["runs", "e/p", "--limit", "ten"], ["history", "--nonsense"]],
)
def test_bad_options_are_one_line_and_exit_1(args):
    line = one_error_line(wandb_mirror(*args))
    assert re.match(r"wandb-mirror( \w+)?: error: .* \(see wandb-mirror( \w+)? --help\)$", line)


def _strict(text: str) -> object:
    def refuse(token: str) -> object:
        raise ValueError(f"bare {token}")

    return json.loads(text, parse_constant=refuse)


def test_runs_json_is_standard_json_unless_asked_for_raw(demo_mirror):
    base = ["--db", str(demo_mirror), "runs", "demo/synthetic", "--format", "json"]
    strings = wandb_mirror(*base)
    assert strings.returncode == 0, strings.stderr
    assert len([_strict(line) for line in strings.stdout.splitlines()]) == 5
    assert all(f'"{token}"' in strings.stdout for token in ("NaN", "Infinity", "-Infinity"))
    nulls = wandb_mirror(*base, "--nonfinite", "null")
    assert "NaN" not in nulls.stdout and "Infinity" not in nulls.stdout
    [_strict(line) for line in nulls.stdout.splitlines()]
    raw = wandb_mirror(*base, "--nonfinite", "raw")
    with pytest.raises(ValueError, match="bare"):
        [_strict(line) for line in raw.stdout.splitlines()]
