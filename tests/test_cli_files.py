"""What ``import`` and ``--out`` may create or write over (issue 9, items 15 and 16): an import
that cannot succeed creates nothing, and nothing existing is written over without ``--force``,
one rule for ``export --out DIR`` and ``history --out FILE``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_process import one_error_line, wandb_mirror

from mirror.cli import main
from mirror.query.api import Api


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("files") / "m.db"
    assert main(["--db", str(db), "seed", "e/p", "--runs", "3", "--steps", "20"]) == 0
    return db


@pytest.fixture(scope="module")
def exported(seeded: Path) -> Path:
    out = seeded.parent / "export"
    assert main(["--db", str(seeded), "export", "e/p", "--out", str(out)]) == 0
    return out


def _broken_copy(exported: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    if how == "not utf-8":
        with (copy / "runs.jsonl").open("ab") as runs:
            runs.write(b'{"notes": "caf\xe9"}\n')
        return copy, "runs.jsonl:4: not UTF-8 text (byte 0xe9"
    history = sorted((copy / "history").iterdir())[-1]
    lines = history.read_text().splitlines()
    last = json.loads(lines[-1])["_step"]
    with history.open("a") as rows:
        rows.write('{"_step": 0, "loss": 1}\n')
    return (
        copy,
        f"history/{history.name}:{len(lines) + 1}: _step 0 is not after the previous {last}",
    )


@pytest.mark.parametrize("how", ["not utf-8", "one bad history file"])
def test_an_import_that_cannot_succeed_creates_no_database(exported, tmp_path, how):
    source, message = _broken_copy(exported, tmp_path, how)
    db = tmp_path / "new.db"
    line = one_error_line(wandb_mirror("--db", str(db), "import", str(source)))
    assert message in line
    assert not list(tmp_path.glob("new.db*"))  # neither the database nor its lock file


def test_one_bad_history_file_keeps_nothing_of_the_import(exported, tmp_path):
    """The rule: all or nothing. The good files of a broken export are not imported either."""
    source, message = _broken_copy(exported, tmp_path, "one bad history file")
    db = tmp_path / "m.db"
    assert main(["--db", str(db), "init"]) == 0
    assert message in one_error_line(wandb_mirror("--db", str(db), "import", str(source)))
    assert Api(database=str(db)).projects() == []


def test_export_out_empty_refuses_instead_of_using_the_current_directory(seeded, tmp_path):
    (tmp_path / "runs.jsonl").write_text("mine\n")
    result = wandb_mirror("--db", str(seeded), "export", "e/p", "--out", "", cwd=tmp_path)
    assert "--out needs a path, not an empty name" in one_error_line(result)
    assert [p.name for p in tmp_path.iterdir()] == ["runs.jsonl"]
    assert (tmp_path / "runs.jsonl").read_text() == "mine\n"


def test_export_into_a_directory_that_holds_anything_needs_force(seeded, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs.jsonl").write_text("mine\n")
    (out / "notes.txt").write_text("keep\n")
    result = wandb_mirror("--db", str(seeded), "export", "e/p", "--out", str(out))
    assert f"{out} is not empty; give another --out, or --force" in one_error_line(result)
    assert (out / "runs.jsonl").read_text() == "mine\n"
    forced = wandb_mirror("--db", str(seeded), "export", "e/p", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert len((out / "runs.jsonl").read_text().splitlines()) == 3
    assert (out / "notes.txt").read_text() == "keep\n"


def test_history_out_follows_the_same_rule(seeded, tmp_path):
    run = Api(database=str(seeded)).runs("e/p")[0]
    target = tmp_path / "h.csv"
    target.write_text("mine\n")
    args = ("--db", str(seeded), "history", f"e/p/{run.id}", "--out")
    result = wandb_mirror(*args, str(target))
    assert f"{target} exists; give another --out, or --force" in one_error_line(result)
    assert target.read_text() == "mine\n"
    assert "is a directory" in one_error_line(wandb_mirror(*args, str(tmp_path)))
    assert "--out needs a path" in one_error_line(wandb_mirror(*args, ""))
    forced = wandb_mirror(*args, str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "_step" in target.read_text().splitlines()[0].split(",")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.csv"]  # no temporary file left
