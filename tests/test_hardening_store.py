"""The store and the exchange under concurrency and bad input.

Concurrent first use (several processes opening a fresh or old database at once), an import that
must not starve other writers while staying all or nothing, and exports and imports of every run
id and every file W&B or a user could hand over, each failure one readable line.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mirror import cli, exchange
from mirror.errors import MirrorError
from mirror.exchange import export_project, import_dir
from mirror.store import migrate
from mirror.store.engine import make_engine, read_transaction, write_transaction
from mirror.store.models import history_chunks, projects, runs
from mirror.store.upsert import append_history, upsert_runs

ENTITY, PROJECT = "acme", "exchange"


# ------------------------------------------------------- 5. concurrent first use


def _at_once(barrier: Any, argv: list[str]) -> None:
    barrier.wait()
    with open(os.devnull, "w") as quiet:
        sys.stdout = sys.stderr = quiet
        code = cli.main(argv)
    os._exit(code)


def _run_together(argv: list[str], count: int) -> list[int]:
    """``wandb-mirror ARGV`` in ``count`` processes released at the same instant."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(count)
    procs = [context.Process(target=_at_once, args=(barrier, argv)) for _ in range(count)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    return [proc.exitcode for proc in procs]


def test_several_processes_can_create_and_upgrade_one_database_at_once(tmp_path):
    for trial in range(3):
        db = tmp_path / f"fresh{trial}.db"
        assert _run_together(["--db", str(db), "init"], 4) == [0, 0, 0, 0], f"trial {trial}"
        engine = make_engine(db, create=False)
        assert migrate.current_revision(engine) == migrate.head_revision()
        engine.dispose()
    for trial in range(3):
        db = tmp_path / f"old{trial}.db"
        engine = make_engine(db)
        migrate.upgrade(engine, "0001")
        engine.dispose()
        assert _run_together(["--db", str(db), "db", "upgrade"], 4) == [0, 0, 0, 0]
        engine = make_engine(db, create=False)
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert not migrate.schema_differences(engine)
        engine.dispose()


# ------------------------------------------------------- 4. imports and other writers


def _write_export(
    directory: Path, runs_count: int, width: int, steps: int = 5, with_history: int | None = None
) -> Path:
    """A jsonl export of ``runs_count`` runs with ``width`` config keys each, written directly;
    the first ``with_history`` runs (all by default) have ``steps`` history rows."""
    (directory / "history").mkdir(parents=True)
    with (directory / "runs.jsonl").open("w") as handle:
        for i in range(runs_count):
            line = {
                "entity": ENTITY,
                "project": PROJECT,
                "name": f"wide{i:04d}",
                "createdAt": f"2024-03-01T00:{i // 60 % 60:02d}:{i % 60:02d}",
                "config": {f"key{j}": {"value": (i * j) % 97 / 7} for j in range(width)},
                "summaryMetrics": {"loss": i / 10},
            }
            handle.write(json.dumps(line) + "\n")
            if with_history is not None and i >= with_history:
                continue
            rows = (json.dumps({"_step": s, "loss": s / (i + 1)}) for s in range(steps))
            (directory / "history" / f"wide{i:04d}.jsonl").write_text("\n".join(rows) + "\n")
    return directory


def _fresh(path: Path) -> Any:
    engine = make_engine(path)
    migrate.upgrade(engine)
    return engine


def test_a_long_import_lets_other_writers_take_turns(tmp_path):
    source = _write_export(tmp_path / "export", 1000, 200, with_history=10)
    db = tmp_path / "mirror.db"
    engine = _fresh(db)
    command = [sys.executable, "-m", "mirror.cli", "--db", str(db), "import", str(source)]
    started = time.monotonic()
    importer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waits: list[float] = []
    seeder = None
    while importer.poll() is None:
        began = time.monotonic()
        with write_transaction(engine) as conn:  # what upsertBucket does, in short
            waits.append(time.monotonic() - began)  # the wait for the write lock
            upsert_runs(conn, ENTITY, "other", [{"name": f"w{len(waits)}", "createdAt": "x"}])
        if seeder is None and time.monotonic() - started > 1:
            seed = [sys.executable, "-m", "mirror.cli", "--db", str(db), "seed", "acme/seeded"]
            seeder = subprocess.Popen(
                [*seed, "--runs", "3", "--steps", "5"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        time.sleep(0.1)
    out, err = importer.communicate()
    took = time.monotonic() - started
    assert seeder is not None
    seeder.wait(60)
    assert importer.returncode == 0, err
    assert seeder.returncode == 0, seeder.stderr.read() if seeder.stderr else ""
    assert "1000 runs, 50 history rows" in out
    assert max(waits) < min(0.25 * took, 5), (max(waits), took)  # was most of the import
    with read_transaction(engine) as conn:
        count = conn.execute(select(func.count()).select_from(runs)).scalar_one()
    assert count == 1000 + 3 + len(waits)
    engine.dispose()


def test_an_import_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    source = _write_export(tmp_path / "export", 40, 20)
    engine = _fresh(tmp_path / "mirror.db")
    real = exchange.append_histories

    def failing(conn: Any, items: Any) -> list[int]:
        real(conn, items[: len(items) // 2])  # half of the staged rows are written, then
        raise OSError("disk full")  # the disk fills up

    monkeypatch.setattr(exchange, "append_histories", failing)
    with pytest.raises(OSError, match="disk full"):
        import_dir(engine, source)
    with read_transaction(engine) as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(history_chunks)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(projects)).scalar_one() == 0

    monkeypatch.setattr(exchange, "append_histories", real)
    import_dir(engine, source)  # the project exists now: a failed re-import changes nothing
    with read_transaction(engine) as conn:
        before = [dict(r) for r in conn.execute(select(runs).order_by(runs.c.id)).mappings()]
    lines = (source / "runs.jsonl").read_text().splitlines()
    edited = [json.loads(line) for line in lines]
    for line in edited:
        line["displayName"] = "edited"
    (source / "runs.jsonl").write_text("\n".join(json.dumps(x) for x in edited) + "\n")
    for i in range(40):
        with (source / "history" / f"wide{i:04d}.jsonl").open("a") as handle:
            handle.write(json.dumps({"_step": 99, "loss": 0.0}) + "\n")
    monkeypatch.setattr(exchange, "append_histories", failing)
    with pytest.raises(OSError, match="disk full"):
        import_dir(engine, source)
    with read_transaction(engine) as conn:
        after = [dict(r) for r in conn.execute(select(runs).order_by(runs.c.id)).mappings()]
        rows = conn.execute(select(func.sum(history_chunks.c.row_count))).scalar_one()
    assert after == before and rows == 40 * 5

    monkeypatch.setattr(exchange, "append_histories", real)
    summary = import_dir(engine, source)
    assert (summary.runs, summary.history_rows) == (40, 40)
    with read_transaction(engine) as conn:
        names = conn.execute(select(runs.c.display_name).distinct()).scalars().all()
        ids = [r["id"] for r in conn.execute(select(runs).order_by(runs.c.id)).mappings()]
    assert names == ["edited"] and ids == [r["id"] for r in before]
    engine.dispose()


# ------------------------------------------------------- 10. exchange through the CLI


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


#: ids W&B accepts that file systems struggle with: too long, non-ASCII, hidden, with a slash
AWKWARD_IDS = ["a" * 300, "运行-ü-" * 30, ".hidden", "odd/run", "plain01", "x+y~z"]


def _export(tmp_path: Path, capsys: Any, names: list[str]) -> Path:
    """A mirror holding runs of these ids, exported as jsonl through the CLI."""
    engine = _fresh(tmp_path / "source.db")
    nodes = [
        {"name": n, "createdAt": f"2024-01-01T00:00:0{i}", "config": {"k": {"value": i}}}
        for i, n in enumerate(names)
    ]
    with write_transaction(engine) as conn:
        ids = upsert_runs(conn, ENTITY, PROJECT, nodes)
        for name, run_id in ids.items():
            append_history(conn, run_id, [{"_step": s, "v": s / 3, "who": name} for s in range(4)])
    engine.dispose()
    out = tmp_path / "out"
    code, printed, err = _cli(
        capsys, "--db", str(tmp_path / "source.db"), "export", f"{ENTITY}/{PROJECT}",
        "--format", "jsonl", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert f"{len(names)} runs, {4 * len(names)} history rows" in printed
    return out


@pytest.fixture
def export(tmp_path: Path, capsys: Any) -> Path:
    return _export(tmp_path, capsys, ["run00", "run01", "run02", "plain01"])


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_run_id_exports_and_imports_back_exactly(tmp_path, capsys):
    export = _export(tmp_path, capsys, AWKWARD_IDS)
    assert max(len(p.name.encode()) for p in export.rglob("*")) < 200
    assert not [p for p in export.rglob(".*")]  # no hidden file: import would miss it
    target = tmp_path / "target.db"
    code, printed, err = _cli(capsys, "--db", str(target), "import", str(export))
    assert code == 0 and "6 runs, 24 history rows" in printed, err
    again = tmp_path / "again"
    code, _printed, err = _cli(
        capsys, "--db", str(target), "export", f"{ENTITY}/{PROJECT}", "--out", str(again)
    )
    assert code == 0, err
    assert _tree(again) == _tree(export)


def _import_error(capsys: Any, tmp_path: Path, directory: Path) -> str:
    db = tmp_path / "target.db"
    code, _out, err = _cli(capsys, "--db", str(db), "import", str(directory))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wandb-mirror: error: "), err
    assert not db.exists()  # every file is checked before the database is opened
    return lines[0]


def _edit_line(path: Path, index: int, text: bytes) -> None:
    lines = path.read_bytes().splitlines()
    lines[index] = lines[index][:-1] + text + b"}"
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_a_number_beyond_float_range_is_one_line(export, tmp_path, capsys):
    _edit_line(export / "runs.jsonl", 1, b', "summaryMetrics": {"huge": 1' + b"0" * 400 + b"}")
    message = _import_error(capsys, tmp_path, export)
    assert "runs.jsonl:2: summaryMetrics.huge is an integer of 401 digits" in message


def test_a_lone_surrogate_is_one_line(export, tmp_path, capsys):
    _edit_line(export / "runs.jsonl", 2, b', "notes": "broken \\ud83d text"')
    message = _import_error(capsys, tmp_path, export)
    assert "runs.jsonl:3: holds \\ud83d, a lone UTF-16 surrogate" in message


def test_bytes_that_are_not_utf8_are_one_line(export, tmp_path, capsys):
    _edit_line(export / "runs.jsonl", 3, b', "notes": "caf\xe9"')
    message = _import_error(capsys, tmp_path, export)
    assert "runs.jsonl:4: not UTF-8 text (byte 0xe9" in message


def test_one_bad_history_file_imports_nothing(export, tmp_path, capsys):
    bad = export / "history" / "plain01.jsonl"
    bad.write_text(bad.read_text() + '{"_step": 2, "v": 1}\n')
    message = _import_error(capsys, tmp_path, export)
    assert "history/plain01.jsonl:5: _step 2 is not after the previous 3" in message
    events = export / "events"
    events.mkdir()
    (events / "plain01.jsonl").write_bytes(b'{"_step": 0, "cpu": "\xff"}\n')
    bad.write_text("\n".join(bad.read_text().splitlines()[:-1]) + "\n")
    assert "events/plain01.jsonl:1: not UTF-8" in _import_error(capsys, tmp_path, export)


def test_importing_a_missing_directory_creates_no_database(tmp_path):
    db = tmp_path / "never.db"
    command = [sys.executable, "-m", "mirror.cli", "--db", str(db), "import", str(tmp_path / "no")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"wandb-mirror: error: {tmp_path / 'no'} does not exist; import expects a directory "
        "written by export"
    ]
    assert not db.exists()


def test_a_failed_export_leaves_no_partial_output(export, tmp_path, monkeypatch):
    engine = make_engine(tmp_path / "source.db", create=False)
    calls = {"n": 0}
    real = exchange._export_stream

    def failing(*args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device", "history/x.jsonl")
        return real(*args, **kwargs)

    monkeypatch.setattr(exchange, "_export_stream", failing)
    fresh = tmp_path / "fresh"
    with pytest.raises(MirrorError, match="No space left on device"):
        export_project(engine, ENTITY, PROJECT, "jsonl", fresh)
    assert not fresh.exists()
    before = _tree(export)
    calls["n"] = 0
    with pytest.raises(MirrorError, match="No space left on device"):
        export_project(engine, ENTITY, PROJECT, "parquet", export)
    assert _tree(export) == before  # the previous export is untouched
    assert not [p for p in tmp_path.iterdir() if ".export-" in p.name]

    monkeypatch.setattr(exchange, "_export_stream", real)
    (export / "history" / "stale.jsonl").write_text('{"_step": 0}\n')
    export_project(engine, ENTITY, PROJECT, "jsonl", export)
    assert _tree(export) == before  # an export again replaces the old one, stale files too
    engine.dispose()
