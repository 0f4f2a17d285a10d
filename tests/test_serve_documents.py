"""Every GraphQL document a released SDK sends, validated and executed against the server.

Answers are checked against the store, read through ``mirror.store.read`` and plain SQL, never
through the server's own code.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from graphql import build_schema, parse, validate
from server_process import DATA, ENTITY, PROJECT, SDK_PROJECT, SDK_RUN
from sqlalchemy import select

from mirror.serve.chunk_cache import ChunkCache
from mirror.serve.history import DEFAULT_SAMPLES, stream_rows
from mirror.serve.schema import sdl
from mirror.store.engine import make_engine, read_transaction, write_transaction
from mirror.store.fields import loads
from mirror.store.history import step_of
from mirror.store.models import runs
from mirror.store.read import find_project, find_run, iter_rows
from mirror.store.upsert import append_history, upsert_runs

pytest_plugins = ["serve_databases"]

DOCS = sorted((DATA / "sdk-queries").glob("*.graphql"))


def doc(name: str) -> str:
    return (DATA / "sdk-queries" / f"{name}.graphql").read_text()


def post(server: Any, query: str, variables: dict | None = None, **extra: Any) -> requests.Response:
    body = {"query": query, "variables": variables or {}, **extra}
    return requests.post(server.graphql_url, json=body, timeout=30)


def data(server: Any, query: str, variables: dict | None = None) -> dict:
    response = post(server, query, variables)
    assert response.status_code == 200, response.text
    body = loads(response.text)
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture(scope="module")
def store(served_database: str):
    """A read connection on the served database."""
    engine = make_engine(served_database)
    with read_transaction(engine) as conn:
        yield conn
    engine.dispose()


def stored_runs(conn: Any, project: str = PROJECT) -> list[Any]:
    project_id = find_project(conn, ENTITY, project)["id"]
    query = select(runs).where(runs.c.project_id == project_id, runs.c.deleted_at.is_(None))
    return list(conn.execute(query).mappings())


def run_vars(name: str, project: str = PROJECT) -> dict[str, str]:
    return {"entity": ENTITY, "project": project, "name": name, "run": name, "runName": name}


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (JSON text comparison keeps the tokens)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --- the documents ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.stem)
def test_every_sdk_document_validates(path: Path):
    assert validate(build_schema(sdl()), parse(path.read_text())) == []


def test_there_is_a_document_for_every_operation_the_brief_names():
    names = {p.stem for p in DOCS}
    assert len(names) >= 31
    assert {"sdk_head_Runs_full", "sdk_v0.25_HistoryPage", "core_query_parquethistory"} <= names


# --- viewer and server --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["core_query_viewer", "sdk_head_GET_DEFAULT_ENTITY_GQL", "sdk_head_GET_VIEWER_GQL"],
)
def test_viewer_documents_name_the_mirror_user_and_its_entity(served_on, name):
    viewer = data(served_on, doc(name))["viewer"]
    assert viewer["id"]
    assert viewer["entity"] == ENTITY
    if "teams" in viewer:
        assert [e["node"]["name"] for e in viewer["teams"]["edges"]] == [ENTITY]
    if "apiKeys" in viewer:
        assert viewer["apiKeys"]["edges"] == []


def test_an_api_key_check_gets_a_viewer(served_on):
    assert data(served_on, doc("sdk_validate_api_key"))["viewer"]["id"]


def test_server_info_and_features(served_on):
    info = data(served_on, doc("core_query_server_info"))["serverInfo"]
    assert info["cliVersionInfo"] == {}
    assert data(served_on, doc("core_query_server_features"))["serverInfo"]["features"] == []


@pytest.mark.parametrize(
    ("name", "type_name"),
    [("sdk_v0.25_ProbeProjectInput", "Project"), ("sdk_v0.25_ProbeRunInput", "Run")],
)
def test_introspection_probes_list_the_schema_fields(served_on, name, type_name):
    answer = next(iter(data(served_on, doc(name)).values()))
    fields = {f["name"] for f in answer["fields"]}
    assert fields == set(build_schema(sdl()).type_map[type_name].fields)


# --- runs ---------------------------------------------------------------------------------------


def check_node(node: dict, row: Any, full: bool) -> None:
    """A Run node against its ``runs`` row, field by field, in W&B's encodings."""
    storage = base64.b64encode(f"Run:v1:{row['name']}:{PROJECT}:{ENTITY}".encode()).decode()
    assert node["id"] == storage == row["storage_id"]
    assert node["projectId"] == str(row["project_id"])
    assert node["displayName"] == row["display_name"]
    assert node["state"] == row["state"]
    assert node["tags"] == loads(row["tags"])
    assert node["group"] == row["group_name"]
    assert node["jobType"] == row["job_type"]
    assert node["sweepName"] == row["sweep_name"]
    assert node["createdAt"] == row["created_at"]
    assert "T" in node["createdAt"] and "+" not in node["createdAt"]
    assert node["heartbeatAt"] == row["heartbeat_at"]
    assert node["historyLineCount"] == row["history_line_count"]
    assert node["user"]["username"] == (row["username"] or row["user_name"])
    if full:
        assert node["config"] == row["config"]  # the raw text, as W&B sent it
        assert node["summaryMetrics"] == row["summary_metrics"]
        assert node["systemMetrics"] == row["system_metrics"]
        assert same(node["historyKeys"], loads(row["history_keys"]))
    else:
        assert "config" not in node


@pytest.mark.parametrize(
    ("name", "full"),
    [("sdk_head_Runs_full", True), ("sdk_head_Runs_lazy", False), ("sdk_v0.25_Runs_lazy", False)],
)
def test_runs_pages_cover_the_project_once_in_order(served_on, store, name, full):
    expected = sorted(stored_runs(store), key=lambda r: (r["created_at"], r["name"]))
    variables = {**run_vars("x"), "order": "+created_at", "filters": "{}", "perPage": 23}
    seen: list[dict] = []
    cursor = None
    while True:
        project = data(served_on, doc(name), {**variables, "cursor": cursor})["project"]
        assert project["runCount"] == len(expected)
        assert project["internalId"] == str(expected[0]["project_id"])
        edges = project["runs"]["edges"]
        assert len({e["cursor"] for e in edges}) == len(edges)
        seen += [e["node"] for e in edges]
        info = project["runs"]["pageInfo"]
        assert info["endCursor"] == (edges[-1]["cursor"] if edges else None)
        if not info["hasNextPage"]:
            break
        assert len(edges) == 23
        cursor = info["endCursor"]
    assert [n["name"] for n in seen] == [r["name"] for r in expected]
    for node, row in zip(seen, expected, strict=True):
        check_node(node, row, full)


def test_runs_filters_and_order_go_through_the_engine(served_on, store):
    expected = sorted(
        (r for r in stored_runs(store) if r["state"] == "finished"), key=lambda r: r["name"]
    )
    expected.sort(key=lambda r: r["created_at"], reverse=True)  # ties: run id ascending
    variables = {**run_vars("x"), "filters": json.dumps({"state": "finished"}), "perPage": 1000}
    project = data(served_on, doc("sdk_head_Runs_lazy"), {**variables, "order": "-created_at"})
    names = [e["node"]["name"] for e in project["project"]["runs"]["edges"]]
    assert project["project"]["runCount"] == len(expected)
    assert names == [r["name"] for r in expected]


def test_a_missing_project_or_run_is_null_not_an_error(served_on):
    variables = {**run_vars("nosuchrun"), "filters": "{}"}
    assert data(served_on, doc("sdk_head_Run_full"), variables)["project"]["run"] is None
    missing = {**variables, "project": "nosuchproject"}
    assert data(served_on, doc("sdk_head_Runs_full"), missing)["project"] is None
    assert data(served_on, doc("sdk_head_RunState"), missing)["project"] is None


@pytest.mark.parametrize(
    ("name", "full"), [("sdk_head_Run_full", True), ("sdk_head_Run_lazy", False)]
)
def test_run_documents_match_the_store(served_on, store, name, full):
    for row in stored_runs(store)[:5]:
        node = data(served_on, doc(name), run_vars(row["name"]))["project"]["run"]
        check_node(node, row, full)


def test_the_real_sdk_run_round_trips_nan_and_infinity(served_on, store):
    project_id = find_project(store, ENTITY, SDK_PROJECT)["id"]
    row = find_run(store, project_id, SDK_RUN)
    response = post(served_on, doc("sdk_head_Run_full"), run_vars(SDK_RUN, SDK_PROJECT))
    run = loads(response.text)["data"]["project"]["run"]
    summary = loads(run["summaryMetrics"])
    assert math.isnan(summary["bad"]) and summary["big"] == math.inf
    assert run["config"] == row["config"]
    assert loads(run["config"])["name.with.dot"] == {"value": 1}


def test_run_state(served_on, store):
    row = stored_runs(store)[3]
    answer = data(served_on, doc("sdk_head_RunState"), run_vars(row["name"]))
    assert answer["project"]["run"]["state"] == row["state"]


# --- history -------------------------------------------------------------------------------------


def longest_run(conn: Any) -> Any:
    return max(stored_runs(conn), key=lambda r: (r["history_line_count"], r["name"]))


def store_rows(conn: Any, row: Any, stream: str = "history") -> list[dict]:
    return list(iter_rows(conn, row["id"], stream))


def test_history_keys_match_the_store(served_on, store):
    row = longest_run(store)
    keys = data(served_on, doc("sdk_head_RunHistoryKeys"), run_vars(row["name"]))
    assert same(keys["project"]["run"]["historyKeys"], loads(row["history_keys"]))
    assert keys["project"]["run"]["historyKeys"]["lastStep"] == step_of(
        store_rows(store, row)[-1], 0
    )


@pytest.mark.parametrize("name", ["sdk_v0.25_HistoryPage", "core_query_runhistory_backend"])
def test_history_pages_return_every_row_of_the_window(served_on, store, name):
    row = longest_run(store)
    rows = store_rows(store, row)
    steps = [step_of(r, i) for i, r in enumerate(rows)]
    lo, hi = steps[len(steps) // 4], steps[3 * len(steps) // 4]
    variables = {**run_vars(row["name"]), "minStep": lo, "maxStep": hi, "pageSize": hi - lo}
    page = data(served_on, doc(name), variables)["project"]["run"]["history"]
    assert all(isinstance(line, str) for line in page)
    expected = [r for r, s in zip(rows, steps, strict=True) if lo <= s < hi]
    assert same([loads(line) for line in page], expected)


def test_a_history_page_smaller_than_its_window_samples_evenly_keeping_the_ends(served_on, store):
    row = longest_run(store)
    rows = store_rows(store, row)
    variables = {**run_vars(row["name"]), "minStep": 0, "maxStep": 10**12, "pageSize": 7}
    page = data(served_on, doc("sdk_v0.25_HistoryPage"), variables)["project"]["run"]["history"]
    assert len(page) == 7
    assert same(loads(page[0]), rows[0]) and same(loads(page[-1]), rows[-1])
    again = data(served_on, doc("sdk_v0.25_HistoryPage"), variables)["project"]["run"]["history"]
    assert again == page


def test_history_without_samples_is_capped_at_500_with_or_without_a_window(database_engine):
    engine = database_engine
    with write_transaction(engine) as conn:
        run_id = upsert_runs(conn, ENTITY, "capped", [{"name": "long0001"}])["long0001"]
        append_history(conn, run_id, [{"_step": i, "x": i} for i in range(1200)])
    cache = ChunkCache()
    with read_transaction(engine) as conn:
        for lo, hi, first, last in [
            (None, None, 0, 1199),
            (0, 10**9, 0, 1199),
            (100, 1100, 100, 1099),
        ]:
            rows = list(stream_rows(conn, cache, run_id, "history", None, lo, hi))
            assert len(rows) == DEFAULT_SAMPLES == 500
            assert rows[0]["_step"] == first and rows[-1]["_step"] == last
        every = list(stream_rows(conn, cache, run_id, "history", 1000, 100, 1100))
        assert [r["_step"] for r in every] == list(range(100, 1100))


#: the bare JSON tokens, each counted apart: ``Infinity`` not preceded by ``-``
TOKENS = {
    "NaN": re.compile(r"(?<![\w-])NaN\b"),
    "Infinity": re.compile(r"(?<![\w-])Infinity\b"),
    "-Infinity": re.compile(r"(?<!\w)-Infinity\b"),
}


def token_counts(text: str) -> dict[str, int]:
    return {token: len(pattern.findall(text)) for token, pattern in TOKENS.items()}


def test_history_text_keeps_nan_and_infinity_tokens(served_on, store):
    """A run whose stored history holds NaN, Infinity and -Infinity is served with all three."""
    for row in sorted(stored_runs(store), key=lambda r: r["name"]):
        stored = token_counts(json.dumps(store_rows(store, row)))
        if all(stored.values()):
            break
    else:
        pytest.fail("the seeded project has no run with NaN, Infinity and -Infinity")
    variables = {**run_vars(row["name"]), "minStep": 0, "maxStep": 10**12, "pageSize": 10**6}
    page = data(served_on, doc("sdk_v0.25_HistoryPage"), variables)["project"]["run"]["history"]
    assert len(page) == row["history_line_count"]
    assert token_counts("\n".join(page)) == stored


@pytest.mark.parametrize(
    ("name", "var"),
    [
        ("sdk_v0.25_SampledHistoryPage", "spec"),
        ("core_query_runhistory_backend_keys", "spec"),
        ("sdk_head_RunSampledHistory", "specs"),
    ],
)
def test_sampled_history_keeps_rows_holding_all_keys_with_inclusive_max(
    served_on, store, name, var
):
    row = longest_run(store)
    rows = store_rows(store, row)
    keys = ["acc", "eval/acc"]  # dense (every row) and sparse (every 10th row)
    steps = [step_of(r, i) for i, r in enumerate(rows)]
    lo, hi = steps[3], steps[-4]
    window = [r for r, s in zip(rows, steps, strict=True) if lo <= s <= hi]
    holding = [r for r in window if all(k in r for k in keys)]
    assert 0 < len(holding) < len(window) // 5  # the sparse key really is sparse
    spec = json.dumps({"keys": ["_step", *keys], "samples": 10**6, "minStep": lo, "maxStep": hi})
    value: Any = [spec] if var == "specs" else spec
    result = data(served_on, doc(name), {**run_vars(row["name"]), var: value})
    [got] = result["project"]["run"]["sampledHistory"]
    assert all(set(r) == {"_step", *keys} for r in got)
    assert len(got) == len(holding)
    assert same(got, [{k: r[k] for k in ["_step", *keys]} for r in holding])
    assert got[0]["_step"] >= lo and got[-1]["_step"] <= hi


def test_sampled_rows_are_json_objects_with_non_finite_values_as_strings(served_on, store):
    """``sampledHistory`` is typed JSON: wandb-core decodes it with Go's strict decoder, so NaN
    and ±Infinity travel as the strings W&B's own sweep code reads."""
    project_id = find_project(store, ENTITY, SDK_PROJECT)["id"]
    run_id = find_run(store, project_id, SDK_RUN)["id"]
    rows = list(iter_rows(store, run_id))
    nan_keys = {
        k for r in rows for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)
    }
    assert nan_keys, "the real SDK run logs NaN and Infinity"
    spec = json.dumps({"keys": sorted(nan_keys), "samples": 1000})
    response = post(
        served_on,
        doc("sdk_head_RunSampledHistory"),
        {**run_vars(SDK_RUN, SDK_PROJECT), "specs": [spec]},
    )
    assert '"NaN"' in response.text or '"Infinity"' in response.text
    assert ":NaN" not in response.text and ":Infinity" not in response.text
    assert ":-Infinity" not in response.text
    assert json.loads(response.text)["data"]["project"]["run"]["sampledHistory"][0]


@pytest.mark.parametrize(
    ("name", "stream"),
    [("sdk_head_RunFullHistory_history", "history"), ("sdk_head_RunFullHistory_events", "events")],
)
def test_full_history_and_events_are_even_samples(served_on, store, name, stream):
    row = longest_run(store)
    rows = store_rows(store, row, stream)
    node = "history" if stream == "history" else "events"
    for samples in (5, 10**6):
        got = data(served_on, doc(name), {**run_vars(row["name"]), "samples": samples})
        lines = got["project"]["run"][node]
        assert len(lines) == min(samples, len(rows))
        assert same(loads(lines[0]), rows[0]) and same(loads(lines[-1]), rows[-1])


def test_parquet_history_has_nothing_exported(served_on, store):
    row = longest_run(store)
    got = data(
        served_on, doc("core_query_parquethistory"), {**run_vars(row["name"]), "liveKeys": []}
    )
    assert got["project"]["run"]["parquetHistory"] == {"parquetUrls": [], "liveData": []}


# --- sweeps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sdk_head_GET_SWEEP_GQL", "sdk_head_GET_SWEEP_LEGACY_GQL"])
def test_sweeps_come_from_the_runs_that_name_them(served_on, store, name):
    sweeps = sorted({r["sweep_name"] for r in stored_runs(store) if r["sweep_name"]})
    assert sweeps, "the synthetic project has sweeps"
    variables = {"entity": ENTITY, "project": PROJECT, "name": sweeps[0]}
    sweep = data(served_on, doc(name), variables)["project"]["sweep"]
    assert sweep["name"] == sweeps[0] and sweep["config"]
    if "runCount" in sweep:
        assert sweep["runCount"] == sum(r["sweep_name"] == sweeps[0] for r in stored_runs(store))
    missing = data(served_on, doc(name), {**variables, "name": "nosweep"})
    assert missing["project"]["sweep"] is None


def test_agent_runs_of_an_unknown_agent_are_null(served_on, store):
    sweep = next(r["sweep_name"] for r in stored_runs(store) if r["sweep_name"])
    variables = {"entity": ENTITY, "project": PROJECT, "sweep": sweep, "agentID": "a1"}
    got = data(served_on, doc("sdk_head_GET_AGENT_RUNS_GQL"), variables)
    assert got["project"]["sweep"]["agent"] is None
