"""Arguments that can only give nothing are errors naming the argument; an empty answer that
is legitimate says why on stderr (issue 9, item 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_process import one_error_line, wandb_mirror

from mirror.cli import main
from mirror.query.api import Api


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("empty") / "m.db"
    assert main(["--db", str(db), "seed", "e/p", "--runs", "3", "--steps", "30"]) == 0
    return db


@pytest.fixture(scope="module")
def run_path(seeded: Path) -> str:
    run = next(r for r in Api(database=str(seeded)).runs("e/p") if r.lastHistoryStep > 5)
    return f"e/p/{run.id}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--min-step", "200", "--max-step", "100"],
            "--max-step 100 must be above --min-step 200 (--max-step is exclusive",
        ),
        (["--samples", "0"], "--samples must be a whole number, 1 or more"),
        (["--keys", ","], "--keys needs at least one key name"),
    ],
)
def test_history_arguments_that_select_nothing_are_errors(seeded, run_path, args, message):
    result = wandb_mirror("--db", str(seeded), "history", run_path, *args)
    assert message in one_error_line(result) and result.stdout == ""


def test_a_legitimately_empty_history_says_why(seeded, run_path, capsys):
    result = wandb_mirror("--db", str(seeded), "history", run_path, "--keys", "nosuchkey")
    assert result.returncode == 0
    assert result.stderr.startswith(f"wandb-mirror: note: {run_path} never logged nosuchkey; ")
    assert "it logged loss, " in result.stderr and len(result.stderr.splitlines()) == 1
    last = Api(database=str(seeded)).run(run_path).lastHistoryStep
    assert main(["--db", str(seeded), "history", run_path, "--min-step", "100000"]) == 0
    assert capsys.readouterr().err == (
        f"wandb-mirror: note: {run_path} has no step at --min-step 100000 or later: "
        f"its last step is {last}\n"
    )


def test_an_order_of_two_keys_is_refused_not_ignored(seeded):
    result = wandb_mirror("--db", str(seeded), "runs", "e/p", "--order=-config.lr,+name")
    assert "order: '-config.lr,+name' names more than one key" in one_error_line(result)


def test_the_api_refuses_what_wandb_refuses_and_empty_answers(seeded, run_path):
    run = Api(database=str(seeded)).run(run_path)
    with pytest.raises(
        ValueError, match=r"keys must be specified in a list, e\.g\. keys=\['loss'\]"
    ):
        run.history(keys="loss")
    with pytest.raises(ValueError, match="keys must be specified in a list"):
        run.scan_history(keys="loss")  # at the call, as wandb's, not at the first row
    for samples in (0, -1, True):
        with pytest.raises(ValueError, match="samples must be a whole number, 1 or more"):
            run.history(samples=samples)
    with pytest.raises(ValueError, match="max_step 3 must be above min_step 3"):
        run.history(min_step=3, max_step=3, pandas=False)
    with pytest.raises(ValueError, match="order: .* names more than one key"):
        Api(database=str(seeded)).runs("e/p", order="-config.lr,+name")
    every = json.dumps(run.history(pandas=False))
    assert json.dumps(run.history(keys=[], pandas=False)) == every  # every key, as in wandb
    assert len(run.history(samples=2, pandas=False)) == 2
