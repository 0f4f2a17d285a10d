"""The command line: readers, database commands, and one-line errors without tracebacks."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mirror.cli import main
from mirror.query.api import Api


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("cli") / "mirror.db"
    assert main(["--db", str(db), "seed", "ent/proj", "--runs", "30", "--steps", "60"]) == 0
    return db


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a child process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mirror.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_init_current_check(tmp_path: Path, capsys):
    db = str(tmp_path / "m.db")
    assert main(["--db", db, "db", "check"]) == 1
    assert "no mirror at" in capsys.readouterr().err
    assert not Path(db).exists()  # a check creates nothing
    assert main(["--db", db, "init"]) == 0
    assert main(["--db", db, "db", "current"]) == 0
    assert "(up to date)" in capsys.readouterr().out
    assert main(["--db", db, "db", "check"]) == 0


def test_runs_formats_agree_with_the_api(seeded: Path, capsys):
    filters = '{"state": "finished"}'
    expected = [r.id for r in Api(database=str(seeded)).runs("ent/proj", json.loads(filters))]
    assert expected
    assert (
        main(["--db", str(seeded), "runs", "ent/proj", "--filter", filters, "--format", "json"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == expected
    assert main(
        ["--db", str(seeded), "runs", "ent/proj", "--filter", filters, "--format", "csv",
         "--columns", "config.lr,summary.loss"]
    ) == 0  # fmt: skip
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["id"] for row in table] == expected and "config.lr" in table[0]
    assert main(["--db", str(seeded), "runs", "ent/proj", "--limit", "3"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 4 and "3 of 30 runs" in captured.err


def test_history_formats(seeded: Path, tmp_path: Path, capsys):
    run = Api(database=str(seeded)).runs("ent/proj", order="+created_at")[0]
    path = f"ent/proj/{run.id}"
    expected = run.history(pandas=False, min_step=10, max_step=40)
    assert main(
        ["--db", str(seeded), "history", path, "--format", "json", "--min-step", "10",
         "--max-step", "40"]
    ) == 0  # fmt: skip
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert json.dumps(got) == json.dumps(expected)
    out = tmp_path / "h.parquet"
    assert (
        main(["--db", str(seeded), "history", path, "--format", "parquet", "--out", str(out)]) == 0
    )
    table = pq.read_table(out)
    assert table.num_rows == len(run.history(pandas=False))
    assert main(["--db", str(seeded), "history", path, "--keys", "loss"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert set(rows[0]) == {"loss", "_step"}
    assert len(rows) == sum(1 for r in run.history(pandas=False) if "loss" in r)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "ent/proj", "--filter", "{bad json"], "--filter is not valid JSON"),
        (["runs", "ent/proj", "--filter", '{"$or": 3}'], "filters.$or"),
        (["runs", "ent/nope"], "Could not find project ent/nope"),
        (["runs", "no-slash-path"], "expected ENTITY/PROJECT"),
        (["history", "ent/proj/zzzzzzzz"], "Could not find run"),
    ],
)
def test_user_errors_are_one_line(seeded: Path, args: list[str], message: str):
    result = run_cli("--db", str(seeded), *args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_database_and_broken_config(tmp_path: Path):
    result = run_cli("--db", str(tmp_path / "none.db"), "runs", "ent/proj")
    assert result.returncode == 1 and "wandb-mirror init" in result.stderr
    config = tmp_path / "bad.toml"
    config.write_text("database = [\n")
    result = run_cli("--config", str(config), "runs", "ent/proj")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(config) in result.stderr and "not valid TOML" in result.stderr


def test_demo_mirrors_a_served_upstream_twice_and_queries_it(tmp_path: Path):
    result = run_cli("--db", str(tmp_path / "demo.db"), "demo", "--runs", "20", "--steps", "40")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "upstream: seeded demo/synthetic with 20 runs x 40 steps" in out
    assert "sync 1: demo/synthetic: 20 runs new, 0 changed, 0 deleted" in out
    # listing + one record batch + one window for each run that logged steps (running, new)
    assert (
        "sync 2 (incremental): demo/synthetic: 1 runs new, 2 changed, 1 deleted, 250 history rows, 4 requests"
        in out
    )
    assert "eval/acc=0.999" in out  # the summary edited upstream, found offline
    assert "top 5 finished runs" in out and "40 rows x" in out
    again = run_cli("--db", str(tmp_path / "demo.db"), "demo", "--runs", "20", "--steps", "40")
    assert again.returncode == 0, again.stderr
    # a fresh upstream again: last time's new run is tombstoned, its deleted run comes back
    # (history fetched anew), the run that logged 200 steps there has 40 here (rewritten)
    assert (
        "sync 1: demo/synthetic: 0 runs new, 3 changed, 1 deleted, 80 history rows" in again.stdout
    )


def test_export_then_import_through_the_cli(seeded: Path, tmp_path: Path, capsys):
    out = tmp_path / "export"
    assert (
        main(["--db", str(seeded), "export", "ent/proj", "--format", "jsonl", "--out", str(out)])
        == 0
    )
    copy = tmp_path / "copy.db"
    assert main(["--db", str(copy), "import", str(out)]) == 0
    capsys.readouterr()
    original = Api(database=str(seeded))
    restored = Api(database=str(copy))
    assert [r.id for r in restored.runs("ent/proj")] == [r.id for r in original.runs("ent/proj")]
    run = original.runs("ent/proj")[0]
    again = restored.run(f"ent/proj/{run.id}")
    assert json.dumps(again.history(pandas=False)) == json.dumps(run.history(pandas=False))
    assert json.dumps(dict(again.summary)) == json.dumps(dict(run.summary))
    result = run_cli("--db", str(copy), "import", str(tmp_path / "nowhere"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
