"""What a database file is, said the same way by every command (issue 9, item 17): missing,
an empty file, not a database, a database that is not a mirror, a mirror behind or ahead of
this code, up to date. One line each, naming the file, with advice that works."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cli_process import one_error_line, wandb_mirror

from mirror.cli import main
from mirror.store import migrate


@pytest.fixture(scope="module")
def mirror_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("kinds") / "mirror.db"
    assert main(["--db", str(db), "init"]) == 0
    return db


def _copy(source: Path, target: Path) -> None:
    """A consistent copy of a WAL-mode file (a plain copy would miss what the WAL holds)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def _make(kind: str, mirror_file: Path, path: Path) -> None:
    if kind == "empty file":
        path.touch()
    elif kind == "not a database":
        path.write_text("just some text, not SQLite\n" * 100)
    elif kind == "foreign database":
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (body TEXT)")
        conn.close()
    elif kind in ("behind", "ahead"):
        _copy(mirror_file, path)
        with sqlite3.connect(path) as conn:
            version = "0002" if kind == "behind" else "0999"
            conn.execute("UPDATE alembic_version SET version_num = ?", (version,))
        conn.close()


#: kind → the one line every command that needs a mirror gives, and whether ``init`` refuses
NOT_A_MIRROR = {
    "missing": ("no mirror at {path}; create one with `wandb-mirror init`", False),
    "empty file": (
        "no mirror at {path} (an empty database); create one with `wandb-mirror init`",
        False,
    ),
    "not a database": (
        "{path} is not an SQLite database (SQLite says: file is not a database); "
        "choose another --db",
        True,
    ),
    "foreign database": (
        "{path} is not a wandb-mirror database (it holds tables notes); choose another --db",
        True,
    ),
}


def _in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The same command in this process: the variants of one case, quicker than a child each."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("kind", list(NOT_A_MIRROR))
def test_every_command_gives_one_diagnosis_of_a_file_that_is_not_a_mirror(
    kind, mirror_file, tmp_path, capsys
):
    path = tmp_path / "x.db"
    _make(kind, mirror_file, path)
    template, init_refuses = NOT_A_MIRROR[kind]
    expected = f"wandb-mirror: error: {template.format(path=path)}"
    assert one_error_line(wandb_mirror("--db", str(path), "runs", "e/p")) == expected
    for command in (["db", "current"], ["db", "check"]):
        assert _in_process(capsys, "--db", str(path), *command) == (1, "", expected + "\n")
    code, _out, err = _in_process(capsys, "--db", str(path), "init")
    if init_refuses:  # the advice never sends the user to a command that then refuses
        assert (code, err) == (1, expected + "\n")
    else:
        assert code == 0, err


HEAD = migrate.head_revision()


@pytest.mark.parametrize(
    ("kind", "current", "problem"),
    [
        ("behind", f"0002 (behind: latest is {HEAD})", "is at schema 0002, this wandb-mirror "
         f"needs {HEAD}; run `wandb-mirror db upgrade`"),
        ("ahead", f"0999 (ahead: this wandb-mirror knows up to {HEAD})", "is at schema 0999, "
         f"which this wandb-mirror does not know (it knows up to {HEAD}): a newer wandb-mirror "
         "wrote it; upgrade wandb-mirror to use it"),
    ],
)  # fmt: skip
def test_a_mirror_at_another_schema(kind, current, problem, mirror_file, tmp_path, capsys):
    path = tmp_path / "x.db"
    _make(kind, mirror_file, path)
    expected = f"wandb-mirror: error: the mirror at {path} {problem}"
    assert one_error_line(wandb_mirror("--db", str(path), "db", "check")) == expected
    assert _in_process(capsys, "--db", str(path), "db", "current") == (0, current + "\n", "")
    commands = [["runs", "e/p"]] + ([["init"]] if kind == "ahead" else [])
    for command in commands:
        assert _in_process(capsys, "--db", str(path), *command) == (1, "", expected + "\n")


def test_an_up_to_date_mirror_and_one_changed_behind_its_back(mirror_file, tmp_path, capsys):
    assert (
        _in_process(capsys, "--db", str(mirror_file), "db", "current")[1]
        == f"{HEAD} (up to date)\n"
    )
    changed = tmp_path / "changed.db"
    _copy(mirror_file, changed)
    with sqlite3.connect(changed) as conn:
        conn.execute("DROP TABLE outbox")
    conn.close()
    line = one_error_line(wandb_mirror("--db", str(changed), "db", "check"))
    assert line.startswith(f"wandb-mirror: error: the mirror at {changed} is at schema {HEAD} but")
    assert "missing table outbox" in line and "Table(" not in line


def test_a_database_error_names_the_database(tmp_path):
    """A failure the diagnosis cannot foresee (a table dropped behind the mirror's back) still
    names the database it happened in."""
    db = tmp_path / "m.db"
    assert main(["--db", str(db), "seed", "e/p", "--runs", "1", "--steps", "1"]) == 0
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE outbox")
        (name,) = conn.execute("SELECT name FROM runs").fetchone()
    conn.close()
    result = wandb_mirror("--db", str(db), "edit", f"e/p/{name}", "--notes", "x")
    assert one_error_line(result) == (
        f"wandb-mirror: database error in {db}: no such table: outbox"
    )
