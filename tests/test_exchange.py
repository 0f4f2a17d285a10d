"""Export and import: lossless jsonl round trips, readable parquet/csv, line-exact errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select

from mirror.errors import MirrorError
from mirror.exchange import export_project, file_stem, import_dir
from mirror.store import migrate
from mirror.store.engine import make_engine, read_transaction, write_transaction
from mirror.store.fields import loads
from mirror.store.models import history_chunks, runs
from mirror.store.read import iter_rows
from mirror.store.upsert import append_history, upsert_runs
from mirror.synth import seed_project

ENTITY, PROJECT = "acme", "vision"
#: columns that belong to the mirror itself, not to the W&B run
LOCAL_COLUMNS = {"id", "project_id", "synced_at"}

ODD_RUN = {
    "name": "odd/run",
    "displayName": "odd · ünïcode 损失",
    "state": "finished",
    "tags": ["重要"],
    "createdAt": "2020-01-01T00:00:00",
    "config": {
        "name.with.dot": {"value": 1, "desc": None},
        "nan": {"value": math.nan, "desc": None},
        "température": {"value": {"inner": -math.inf}, "desc": None},
    },
    "summaryMetrics": {"big": math.inf, "small": -math.inf, "bad": math.nan, "one": 1.0},
}
ODD_ROWS = [
    {"_step": 3, "x": math.nan, "y": math.inf, "z": -math.inf, "损失": 1.0, "n": 1},
    {"_step": 9, "x": 0.5, "media": {"_type": "image-file", "path": "a.png"}, "s": "text"},
]


def _fresh(path: Path):
    engine = make_engine(path, create=True)
    migrate.upgrade(engine)
    return engine


@pytest.fixture
def source(db_engine):
    """A seeded project plus one hand-made run with every awkward value (on each database)."""
    engine = db_engine
    seed_project(engine, ENTITY, PROJECT, 14, 60, seed=11)
    with write_transaction(engine) as conn:
        ids = upsert_runs(conn, ENTITY, PROJECT, [ODD_RUN])
        append_history(conn, ids["odd/run"], ODD_ROWS)
    return engine


@pytest.fixture
def target(source, request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh mirror on the source's kind of database."""
    if source.dialect.name == "postgresql":
        engine = make_engine(request.getfixturevalue("pg_server").new_database())
    else:
        engine = _fresh(tmp_path / "target.db")
    yield engine
    engine.dispose()


def _canon(rows: Any) -> list[str]:
    """Rows as comparable text: NaN equals NaN, 1 differs from 1.0, key order ignored."""
    return [json.dumps(row, sort_keys=True, allow_nan=True) for row in rows]


def _snapshot(engine) -> dict[str, Any]:
    """Every run's W&B columns and both of its streams, by run name."""
    out: dict[str, Any] = {}
    with read_transaction(engine) as conn:
        for row in conn.execute(select(runs)).mappings():
            columns = {k: v for k, v in row.items() if k not in LOCAL_COLUMNS}
            streams = [_canon(iter_rows(conn, row["id"], s)) for s in ("history", "events")]
            out[row["name"]] = (columns, streams)
    return out


def _row_count(engine) -> tuple[int, int]:
    with read_transaction(engine) as conn:
        run_count = conn.execute(select(func.count()).select_from(runs)).scalar()
        rows = conn.execute(select(func.sum(history_chunks.c.row_count))).scalar() or 0
    return run_count, rows


def test_jsonl_round_trip_is_exact(source, target, tmp_path: Path) -> None:
    exported = export_project(source, ENTITY, PROJECT, "jsonl", tmp_path / "out")
    imported = import_dir(target, tmp_path / "out")
    assert exported.runs == imported.runs == 15
    assert (exported.history_rows, exported.event_rows) == (
        imported.history_rows,
        imported.event_rows,
    )
    before, after = _snapshot(source), _snapshot(target)
    assert after == before
    odd_columns, (odd_history, _events) = after["odd/run"]
    assert odd_history == _canon(ODD_ROWS)
    assert loads(odd_columns["summary_metrics"])["one"] == 1.0
    assert isinstance(loads(odd_columns["summary_metrics"])["one"], float)


def test_jsonl_layout_is_wandb_shaped(source, tmp_path: Path) -> None:
    export_project(source, ENTITY, PROJECT, "jsonl", tmp_path / "out")
    text = (tmp_path / "out" / "runs.jsonl").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 15
    assert "NaN" in text and "-Infinity" in text and "损失" in text
    for line in lines:
        assert (line["entity"], line["project"]) == (ENTITY, PROJECT)
        for key in ("config", "summaryMetrics", "systemMetrics"):
            assert isinstance(line[key], dict)
        assert all("value" in wrapped for wrapped in line["config"].values())
        history = tmp_path / "out" / "history" / f"{file_stem(line['name'])}.jsonl"
        if line["historyLineCount"]:
            assert len(history.read_text().splitlines()) == line["historyLineCount"]
    odd = next(line for line in lines if line["name"] == "odd/run")
    assert odd["config"]["name.with.dot"] == {"value": 1, "desc": None}
    assert (tmp_path / "out" / "history" / "odd%2Frun.jsonl").is_file()
    assert list((tmp_path / "out" / "events").glob("*.jsonl"))


def test_import_again_updates_instead_of_duplicating(source, target, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_project(source, ENTITY, PROJECT, "jsonl", out)
    import_dir(target, out)
    counts = _row_count(target)
    again = import_dir(target, out)
    assert (again.history_rows, again.event_rows) == (0, 0)
    assert _row_count(target) == counts

    lines = (out / "runs.jsonl").read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[0])
    edited["displayName"] = "renamed"
    lines[0] = json.dumps(edited, ensure_ascii=False)
    (out / "runs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    history = out / "history" / f"{file_stem(edited['name'])}.jsonl"
    last = json.loads(history.read_text().splitlines()[-1])
    with history.open("a") as handle:
        handle.write(json.dumps({"_step": last["_step"] + 1, "loss": 0.25}) + "\n")
    import_dir(target, out)
    assert _row_count(target) == (counts[0], counts[1] + 1)
    with read_transaction(target) as conn:
        name = conn.execute(select(runs.c.display_name).where(runs.c.name == edited["name"]))
        assert name.scalar() == "renamed"


def test_bad_run_line_names_file_and_line_and_imports_nothing(
    source, target, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    export_project(source, ENTITY, PROJECT, "jsonl", out)
    original = (out / "runs.jsonl").read_text(encoding="utf-8").splitlines()
    truncated = [*original[:12], original[12][:-5], *original[13:]]
    (out / "runs.jsonl").write_text("\n".join(truncated) + "\n", encoding="utf-8")
    with pytest.raises(MirrorError, match=r"^runs\.jsonl:13: not valid JSON"):
        import_dir(target, out)
    assert _row_count(target) == (0, 0)

    bad = json.loads(original[1])
    bad["config"] = "not an object"
    wrong = [original[0], json.dumps(bad), *original[2:]]
    (out / "runs.jsonl").write_text("\n".join(wrong) + "\n", encoding="utf-8")
    with pytest.raises(MirrorError, match=r"^runs\.jsonl:2: expected 'config' to be a JSON object"):
        import_dir(target, out)
    assert _row_count(target) == (0, 0)


def _stream_counts(engine) -> dict[tuple[str, str], int]:
    """``(stream, run name) → rows stored``, for every run."""
    with read_transaction(engine) as conn:
        found = conn.execute(select(runs.c.name, runs.c.id)).all()
        return {
            (stream, name): sum(1 for _ in iter_rows(conn, run_id, stream))
            for name, run_id in found
            for stream in ("history", "events")
        }


def test_a_bad_history_line_imports_nothing_and_a_fixed_file_imports_all(
    source, target, tmp_path: Path
) -> None:
    """One rule for every import: all or nothing. A bad line in any file leaves the mirror as
    it was (no run, no row of any file); importing again once fixed gives everything."""
    out = tmp_path / "out"
    export_project(source, ENTITY, PROJECT, "jsonl", out)
    path = out / "history" / "odd%2Frun.jsonl"
    good_text = path.read_text()
    path.write_text(good_text + '{"_step": 4, "x": 1}\n')
    with pytest.raises(MirrorError, match=r"^history/odd%2Frun\.jsonl:3: _step 4 is not after"):
        import_dir(target, out)
    assert _row_count(target) == (0, 0)

    path.write_text(good_text)
    import_dir(target, out)
    assert _stream_counts(target) == _stream_counts(source)

    path.write_text('{"_step": 3}\n[1, 2]\n')
    with pytest.raises(MirrorError, match=r"^history/odd%2Frun\.jsonl:2: expected a JSON object"):
        import_dir(target, out)


@pytest.mark.parametrize("step", ["2.5", "true", '"7"', "NaN", "Infinity", "null", "[1]"])
def test_a_step_that_is_not_a_whole_number_is_refused(source, target, tmp_path, step) -> None:
    out = tmp_path / "out"
    export_project(source, ENTITY, PROJECT, "jsonl", out)
    path = out / "history" / "odd%2Frun.jsonl"
    path.write_text(path.read_text() + f'{{"_step": {step}, "x": 1}}\n')
    with pytest.raises(MirrorError, match=r"odd%2Frun\.jsonl:3: expected '_step' to be a whole"):
        import_dir(target, out)


def test_a_whole_float_step_is_accepted(source, target, tmp_path) -> None:
    out = tmp_path / "out"
    export_project(source, ENTITY, PROJECT, "jsonl", out)
    path = out / "history" / "odd%2Frun.jsonl"
    path.write_text(path.read_text() + '{"_step": 12.0, "x": 1}\n')
    import_dir(target, out)
    with read_transaction(target) as conn:
        run_id = conn.execute(select(runs.c.id).where(runs.c.name == "odd/run")).scalar_one()
        assert [r["_step"] for r in iter_rows(conn, run_id)] == [3, 9, 12]


def test_history_file_for_an_unknown_run_is_refused(source, target, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_project(source, ENTITY, PROJECT, "jsonl", out)
    (out / "history" / "ghost123.jsonl").write_text('{"_step": 0}\n')
    with pytest.raises(MirrorError, match="ghost123"):
        import_dir(target, out)
    assert _row_count(target) == (0, 0)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_tables_are_readable_and_complete(source, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / fmt
    summary = export_project(source, ENTITY, PROJECT, fmt, out)
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    table = read(out / f"runs.{fmt}")
    assert len(table) == 15 == summary.runs
    for column in ("name", "state", "config.name.with.dot", "config.model", "summary.loss"):
        assert column in table.columns
    odd = table.set_index("name").loc["odd/run"]
    assert odd["summary.big"] == math.inf and odd["summary.small"] == -math.inf
    assert math.isnan(odd["summary.bad"])
    assert json.loads(odd["config.température"]) == {"inner": -math.inf}
    assert json.loads(table["config.model"].dropna().iloc[0])["depth"] >= 2

    with read_transaction(source) as conn:
        for row in conn.execute(select(runs.c.id, runs.c.name)).all():
            stored = list(iter_rows(conn, row.id))
            path = out / "history" / f"{file_stem(row.name)}.{fmt}"
            if not stored:
                assert not path.exists()
                continue
            frame = read(path)
            assert len(frame) == len(stored)
            assert list(frame["_step"]) == [r["_step"] for r in stored]
            for key in {"loss", "eval/loss"} & set(frame.columns):  # eval/loss: every 10th row
                expected = [r.get(key, math.nan) for r in stored]
                assert frame[key].tolist() == pytest.approx(expected, nan_ok=True, rel=1e-15)
    odd_history = read(out / "history" / f"odd%2Frun.{fmt}")
    assert odd_history["y"].iloc[0] == math.inf and odd_history["z"].iloc[0] == -math.inf
    assert odd_history["n"].iloc[0] == 1 and pd.isna(odd_history["n"].iloc[1])
    assert json.loads(odd_history["media"].iloc[1])["_type"] == "image-file"
    assert sum(1 for _ in (out / "events").iterdir()) > 0


def test_import_refuses_table_exports(source, target, tmp_path: Path) -> None:
    export_project(source, ENTITY, PROJECT, "parquet", tmp_path / "pq")
    with pytest.raises(MirrorError, match="jsonl"):
        import_dir(target, tmp_path / "pq")


def test_export_of_unknown_project_or_format(source, tmp_path: Path) -> None:
    with pytest.raises(MirrorError, match="acme/nothing"):
        export_project(source, ENTITY, "nothing", "jsonl", tmp_path / "x")
    with pytest.raises(MirrorError, match="xlsx"):
        export_project(source, ENTITY, PROJECT, "xlsx", tmp_path / "x")  # type: ignore[arg-type]
