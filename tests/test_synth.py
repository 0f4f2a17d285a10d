"""The synthetic projects: deterministic, shaped like the real SDK run, and realistic enough."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mirror import synth
from mirror.store.engine import read_transaction
from mirror.store.fields import dumps, loads
from mirror.store.history import history_keys_of
from mirror.store.models import history_chunks, runs
from mirror.store.read import find_project, find_run, iter_rows
from mirror.store.upsert import storage_id
from mirror.synth import STATES, SynthRun, generate_runs, seed_project

EXAMPLE = json.loads(Path("/work/shared/wandb/examples/real-sdk-run.json").read_text())
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
NODE_FIELDS = {
    "id",
    "name",
    "displayName",
    "state",
    "tags",
    "group",
    "jobType",
    "notes",
    "description",
    "commit",
    "host",
    "sweepName",
    "createdAt",
    "heartbeatAt",
    "updatedAt",
    "historyLineCount",
    "historyKeys",
    "config",
    "summaryMetrics",
    "systemMetrics",
    "user",
}


@pytest.fixture(scope="module")
def project() -> list[tuple[SynthRun, list[dict[str, Any]]]]:
    """40 runs of up to 150 steps, each with its history materialised once."""
    return [(run, list(run.history)) for run in generate_runs("acme", "vision", 40, 150, seed=7)]


def _values(value: Any) -> list[Any]:
    """Every scalar inside a JSON value."""
    if isinstance(value, dict):
        return [v for sub in value.values() for v in _values(sub)]
    if isinstance(value, list):
        return [v for sub in value for v in _values(sub)]
    return [value]


def _canon(rows: Any) -> list[str]:
    """Rows as comparable text: NaN equals NaN, 1 differs from 1.0, key order ignored."""
    return [json.dumps(row, sort_keys=True, allow_nan=True) for row in rows]


def _fingerprint(runs_: list[SynthRun]) -> str:
    return dumps([[r.node, list(r.history), list(r.events)] for r in runs_])


def test_same_seed_same_data_other_seed_other_data() -> None:
    first = _fingerprint(list(generate_runs("e", "p", 12, 60, seed=3)))
    again = _fingerprint(list(generate_runs("e", "p", 12, 60, seed=3)))
    other = list(generate_runs("e", "p", 12, 60, seed=4))
    assert first == again
    assert first != _fingerprint(other)
    names = {r.node["name"] for r in generate_runs("e", "p", 12, 60, seed=3)}
    assert names.isdisjoint(r.node["name"] for r in other)


def test_nodes_have_the_graphql_run_shape(project) -> None:
    names = set()
    for run, _rows in project:
        node = run.node
        assert set(node) == NODE_FIELDS
        assert re.fullmatch(r"[a-z0-9]{8}", node["name"])
        assert node["id"] == storage_id("acme", "vision", node["name"])
        assert re.fullmatch(r"[a-z]+-[a-z]+-\d+", node["displayName"])
        assert node["state"] in STATES
        assert all(ISO.match(node[k]) for k in ("createdAt", "heartbeatAt", "updatedAt"))
        assert node["createdAt"] <= node["heartbeatAt"] <= node["updatedAt"]
        assert isinstance(node["tags"], list)
        assert set(node["user"]) == {"name", "username"}
        for key in ("config", "summaryMetrics", "systemMetrics"):
            assert isinstance(node[key], str)
            assert isinstance(loads(node[key]), dict)
        names.add(node["name"])
    assert len(names) == len(project)


def test_config_is_wrapped_as_wandb_stores_it(project) -> None:
    for run, _rows in project:
        config = loads(run.node["config"])
        assert "_wandb" in config
        for key, wrapped in config.items():
            assert set(wrapped) == {"value", "desc"}, key
            assert wrapped["desc"] is None


def test_history_keys_and_line_count_agree_with_the_rows(project) -> None:
    for run, rows in project:
        node = run.node
        assert node["historyLineCount"] == len(rows) == len(run.history)
        assert dumps(node["historyKeys"]) == dumps(history_keys_of(rows))


def test_summary_holds_the_last_value_of_every_key(project) -> None:
    for run, rows in project:
        summary = loads(run.node["summaryMetrics"])
        if not rows:
            assert run.node["state"] == "pending"
            continue
        last: dict[str, Any] = {}
        for row in rows:
            last.update(row)
        assert {k: dumps(summary[k]) for k in last} == {k: dumps(v) for k, v in last.items()}
        assert summary["_step"] == rows[-1]["_step"]
        assert isinstance(summary["_wandb"]["runtime"], int)
        assert summary["_wandb"]["runtime"] >= summary["_runtime"]


def test_every_state_sweeps_tags_groups_job_types(project) -> None:
    nodes = [run.node for run, _rows in project]
    assert {n["state"] for n in nodes} == set(STATES)
    sweeps = [n["sweepName"] for n in nodes if n["sweepName"]]
    assert 0 < len(sweeps) < len(nodes)
    assert len(set(sweeps)) < len(sweeps)  # sweeps hold several runs
    assert any(n["tags"] for n in nodes) and any(not n["tags"] for n in nodes)
    assert any(n["group"] for n in nodes) and any(n["group"] is None for n in nodes)
    assert len({n["jobType"] for n in nodes}) >= 3


def test_creation_time_increases_with_the_index(project) -> None:
    created = [run.node["createdAt"] for run, _rows in project]
    assert created == sorted(created)
    assert len(set(created)) > len(created) // 2


def test_config_values_filters_can_match(project) -> None:
    configs = [{k: v["value"] for k, v in loads(r.node["config"]).items()} for r, _rows in project]
    assert 1 < len({c["experiment_name"] for c in configs}) <= 20
    assert len({c["optimizer"] for c in configs}) > 1
    for config in configs:
        assert isinstance(config["lr"], float)
        assert isinstance(config["batch_size"], int)
        assert isinstance(config["use_amp"], bool)
        assert isinstance(config["layers"], list)
        assert {"depth", "act"} <= set(config["model"])
        assert "name.with.dot" in config and "température" in config
    clip = [c["clip_grad"] for c in configs]
    dropout = [c["dropout"] for c in configs]
    assert math.inf in clip
    assert any(isinstance(d, float) and math.isnan(d) for d in dropout)


def test_non_finite_floats_in_history_and_summary(project) -> None:
    history = [v for _run, rows in project for row in rows for v in row.values()]
    summaries = [v for run, _rows in project for v in _values(loads(run.node["summaryMetrics"]))]
    for values in (history, summaries):
        floats = [v for v in values if isinstance(v, float)]
        assert any(math.isnan(v) for v in floats)
        assert math.inf in floats
        assert -math.inf in floats


def test_media_objects_shaped_like_the_sdks(project) -> None:
    example_rows = EXAMPLE["history"]
    histogram_keys = {k for r in example_rows for k in r.get("weights", {})}
    image_keys = {k for r in example_rows for k in r.get("sample", {})}
    kinds = set()
    for _run, rows in project:
        for row in rows:
            for value in row.values():
                if isinstance(value, dict):
                    kinds.add(value["_type"])
                    expected = histogram_keys if value["_type"] == "histogram" else image_keys
                    assert set(value) == expected
                    if value["_type"] == "histogram":
                        assert len(value["bins"]) == len(value["values"]) + 1 == 65
    assert kinds == {"histogram", "image-file"}


def test_integral_floats_are_logged_as_ints(project) -> None:
    every = [v for _run, rows in project for row in rows for v in _values(row)]
    every += [v for run, _rows in project for v in _values(loads(run.node["config"]))]
    every += [v for run, _rows in project for v in _values(loads(run.node["summaryMetrics"]))]
    floats = [v for v in every if isinstance(v, float) and math.isfinite(v)]
    assert not [v for v in floats if v.is_integer()]
    assert any(type(v) is int for _run, rows in project for row in rows for v in row.values())


def test_history_keys_unicode_sparse_late_start_and_gaps(project) -> None:
    long_runs = [(run, rows) for run, rows in project if len(rows) >= 100]
    assert long_runs
    for _run, rows in long_runs:
        keys = {k for row in rows for k in row}
        assert 20 <= len(keys) <= 50
        assert {"température", "损失", "_step", "_runtime", "_timestamp"} <= keys
        with_eval = [i for i, row in enumerate(rows) if "eval/loss" in row]
        assert with_eval == list(range(0, len(rows), 10))
    first_steps = [rows[0]["_step"] for _run, rows in project if rows]
    assert 0 in first_steps and any(s > 0 for s in first_steps)
    gaps = [
        any(b["_step"] - a["_step"] > 1 for a, b in itertools.pairwise(rows))
        for _run, rows in project
    ]
    assert any(gaps) and not all(gaps)


def test_events_are_system_metrics_without_step(project) -> None:
    seen = 0
    for run, rows in project:
        events = list(run.events)
        assert bool(events) == bool(rows)
        assert len(events) < max(len(rows), 1)
        for event in events:
            assert {"system.cpu", "system.memory", "_runtime", "_timestamp"} <= set(event)
            assert "_step" not in event
        if events:
            assert loads(run.node["systemMetrics"]) == events[-1]
        seen += len(events)
    assert seen


def test_a_million_steps_are_generated_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    """Making a run and taking ``len()`` decode a block or two of its 1,000, not all of them."""
    made: list[int] = []
    real_block = synth._history_block

    def counting_block(plan: Any, b: int) -> list[dict[str, Any]]:
        made.append(b)
        return real_block(plan, b)

    monkeypatch.setattr(synth, "_history_block", counting_block)
    run = next(generate_runs("e", "p", 1, 1_000_000, seed=0))
    assert run.node["state"] == "finished"
    assert run.node["historyLineCount"] == len(run.history) == 1_000_000
    assert len(made) <= 2 and set(made) <= {998, 999}  # the summary's last values only
    made.clear()
    head = list(itertools.islice(run.history(), 3))
    assert [r["_step"] for r in head] == [0, 1, 2]
    assert made == [0]
    assert run.node["historyKeys"]["lastStep"] >= 999_999


def test_seed_project_writes_everything_and_is_idempotent(engine) -> None:
    done: list[int] = []
    assert seed_project(engine, "acme", "vision", 12, 40, seed=2, progress=done.append) == 12
    assert done[-1] == 12
    expected = list(generate_runs("acme", "vision", 12, 40, seed=2))
    with read_transaction(engine) as conn:
        project_id = find_project(conn, "acme", "vision")["id"]
        for run in expected:
            row = find_run(conn, project_id, run.node["name"])
            assert row["summary_metrics"] == run.node["summaryMetrics"]
            assert row["config"] == run.node["config"]
            assert row["created_at"] == run.node["createdAt"]
            assert _canon(iter_rows(conn, row["id"])) == _canon(run.history)
            assert _canon(iter_rows(conn, row["id"], "events")) == _canon(run.events)
        before = _counts(conn)
    seed_project(engine, "acme", "vision", 12, 40, seed=2)
    with read_transaction(engine) as conn:
        assert _counts(conn) == before


def test_seed_project_batches_report_progress(engine) -> None:
    done: list[int] = []
    assert seed_project(engine, "acme", "many", 2300, 0, seed=1, progress=done.append) == 2300
    assert done == [1000, 2000, 2300]
    with read_transaction(engine) as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar() == 2300


def _counts(conn) -> tuple[int, int]:
    run_count = conn.execute(select(func.count()).select_from(runs)).scalar()
    rows = conn.execute(select(func.sum(history_chunks.c.row_count))).scalar()
    return run_count, rows
