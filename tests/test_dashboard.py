"""The dashboard without a browser: decimation, routes, the data endpoint, assets, keys and
status, through the WSGI app in process (the browser tests drive a real server)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import subprocess
import sys
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
import pytest
from dashboard_data import LONG_PROJECT, LONG_RUN, LONG_STEPS, long_rows
from server_process import ENTITY, PROJECT

from mirror import Api
from mirror.errors import FilterError
from mirror.serve.app import MirrorApp
from mirror.serve.auth import KeyChecker
from mirror.serve.dashboard.decimate import m4
from mirror.status import write_report
from mirror.store.engine import make_engine

pytest_plugins = ["serve_databases"]


@pytest.fixture(scope="module")
def engine(dashboard_database: str):
    eng = make_engine(dashboard_database, create=False)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def app(engine) -> MirrorApp:
    return MirrorApp(engine, KeyChecker([]))


@pytest.fixture(scope="module")
def api(dashboard_database: str):
    api = Api(database=dashboard_database)
    yield api
    api.close()


def call(
    app: MirrorApp, path: str, params: Any = (), headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET through the WSGI app, as waitress would hand it over."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path.encode().decode("latin-1"),
        "QUERY_STRING": urlencode(params, doseq=True),
        "wsgi.input": io.BytesIO(b""),
    }
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in (headers or {}).items()})
    answer: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        answer["status"] = int(status.split()[0])
        answer["headers"] = dict(response_headers)

    body = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], body


def listed_ids(html: str) -> list[str]:
    import re

    return re.findall(r'<tr data-run="([^"]+)"', html)


# --- decimation ---------------------------------------------------------------------------------


def brute_m4(x: np.ndarray, y: np.ndarray, width: int, lo: float, hi: float) -> set[int]:
    edges = lo + (hi - lo) * np.arange(1, width) / width
    column = np.array([int((edges <= v).sum()) for v in x])
    keep: set[int] = set()
    for c in np.unique(column):
        where = np.flatnonzero(column == c)
        keep.update({where[0], where[-1], where[np.argmin(y[where])], where[np.argmax(y[where])]})
    return keep


@pytest.mark.parametrize("n", [10, 4_000, 50_000])
def test_m4_keeps_first_last_min_max_of_every_pixel_column(n: int):
    rng = np.random.default_rng(n)
    x = np.sort(rng.uniform(0, 1000, n))
    y = np.round(rng.standard_normal(n), 2)  # ties: the first of equal extremes is kept
    picked = m4(x, y, 250, float(x[0]), float(x[-1]))
    if n <= 1000:
        assert list(picked) == list(range(n))
        return
    assert set(picked.tolist()) == brute_m4(x, y, 250, float(x[0]), float(x[-1]))
    assert len(picked) <= 1000
    assert y[picked].min() == y.min() and y[picked].max() == y.max()


# --- pages --------------------------------------------------------------------------------------


def test_projects_page_lists_every_project(app: MirrorApp):
    status, headers, body = call(app, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for path in (f"{ENTITY}/{PROJECT}", f"{ENTITY}/{LONG_PROJECT}", f"{ENTITY}/sdk"):
        assert f'href="/projects/{path}"' in body.decode()


def test_runs_table_is_the_api_listing(app: MirrorApp, api: Api):
    filters = {"state": {"$in": ["finished", "crashed"]}, "config.lr": {"$lt": 0.01}}
    expected = [r.id for r in api.runs(f"{ENTITY}/{PROJECT}", filters, order="+summary.loss")]
    params = {"filter": json.dumps(filters), "order": "+summary.loss", "per_page": "25"}
    pages = []
    for number in (1, 2, 3):
        status, _, body = call(app, f"/projects/{ENTITY}/{PROJECT}", {**params, "page": number})
        assert status == 200
        pages.append(listed_ids(body.decode()))
    assert pages[0] + pages[1] + pages[2] == expected[:75]
    assert f'data-total="{len(expected)}"' in body.decode()


def test_runs_table_columns_show_config_and_summary(app: MirrorApp, api: Api):
    params = {"col": ["state", "config.lr", "summary.loss"], "order": "-config.lr"}
    _, _, body = call(app, f"/projects/{ENTITY}/{PROJECT}", params)
    html = body.decode()
    first = api.runs(f"{ENTITY}/{PROJECT}", order="-config.lr")[0]
    assert listed_ids(html)[0] == first.id
    assert '<th data-column="config.lr"><a href=' in html and "config.lr ▼" in html
    assert f"<td>{first.config['lr']:.6g}</td>" in html
    assert 'value="summary.loss" checked' in html  # the picker shows what is chosen


@pytest.mark.parametrize(
    "text", ['{"config.lr": {"$gt": }}', '{"config.lr": {"$near": 1}}', '{"$or": {}}']
)
def test_a_bad_filter_shows_its_one_line_error(app: MirrorApp, api: Api, text: str):
    status, _, body = call(app, f"/projects/{ENTITY}/{PROJECT}", {"filter": text})
    html = body.decode()
    assert status == 400
    try:
        api.runs(f"{ENTITY}/{PROJECT}", json.loads(text))
        message = None
    except json.JSONDecodeError as exc:
        message = f"filter: not valid JSON: {exc}"
    except FilterError as exc:
        message = str(exc)
    import html as html_module

    assert f'<p class="error" id="filter-error">{html_module.escape(message)}</p>' in html
    assert "\n" not in message and listed_ids(html) == []
    assert html_module.escape(text) in html  # the filter stays in its box to be fixed


def test_unknown_project_and_run_are_404_pages(app: MirrorApp):
    assert call(app, "/projects/acme/nothing")[0] == 404
    status, _, body = call(app, f"/projects/{ENTITY}/{PROJECT}/runs/nosuchrun")
    assert status == 404 and b"no run acme/vision/nosuchrun" in body
    assert call(app, "/projects/acme")[0] == 404


def test_run_page_shows_the_run(app: MirrorApp, api: Api):
    run = api.run(f"{ENTITY}/{LONG_PROJECT}/{LONG_RUN}")
    status, _, body = call(app, f"/projects/{ENTITY}/{LONG_PROJECT}/runs/{LONG_RUN}")
    html = body.decode()
    assert status == 200
    assert '<span class="tag">long</span>' in html and run.notes in html
    assert "<th>lr</th><td>0.001</td>" in html and "<th>loss</th><td>0.05</td>" in html
    assert 'data-keys="[&quot;loss&quot;, &quot;acc&quot;]"' in html
    assert '<option value="_runtime">' in html  # another x axis to choose


def test_unicode_run_ids_and_keys_route(app: MirrorApp, api: Api):
    run = api.run(f"{ENTITY}/sdk/realsdk1")
    status, _, body = call(app, quote(f"/projects/{ENTITY}/sdk/runs/{run.id}"))
    assert status == 200 and "ünïcode" in body.decode()


# --- data ---------------------------------------------------------------------------------------


def series(app: MirrorApp, **params: Any) -> dict[str, Any]:
    status, headers, body = call(app, f"/data/{ENTITY}/{LONG_PROJECT}/series", params)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def test_series_are_decimated_with_extremes_and_counts(app: MirrorApp):
    rows = long_rows(LONG_STEPS)
    loss = np.array([r["loss"] for r in rows])
    finite = np.isfinite(loss)
    got = series(app, run=LONG_RUN, key=["loss", "acc"], x="_step", width=500)
    drawn, acc = got["series"]
    assert drawn["points"] == int(finite.sum()) and len(drawn["x"]) <= 2000
    assert drawn["min"] == [
        float(np.flatnonzero(finite)[np.argmin(loss[finite])]),
        loss[finite].min(),
    ]
    assert drawn["max"][1] == loss[finite].max()
    assert min(drawn["y"]) == loss[finite].min() and max(drawn["y"]) == loss[finite].max()
    assert (drawn["nan"], drawn["posinf"], drawn["neginf"]) == (1, 1, 1)
    assert drawn["x"][0] == 0 and drawn["x"][-1] == LONG_STEPS - 1
    assert acc["points"] == len(range(0, LONG_STEPS, 7))


def test_a_zoomed_window_comes_back_whole(app: MirrorApp):
    got = series(app, run=LONG_RUN, key="loss", x="_step", width=500, lo=1000, hi=2499)
    (window,) = got["series"]
    assert window["x"] == list(range(1000, 2500))  # every point: no decimation
    by_runtime = series(app, run=LONG_RUN, key="loss", x="_runtime", width=500, lo=100, hi=110)
    assert by_runtime["series"][0]["x"] == [100 + 0.5 * i for i in range(21)]


def test_series_errors_are_one_line(app: MirrorApp):
    status, _, body = call(app, f"/data/{ENTITY}/{LONG_PROJECT}/series", {"run": LONG_RUN})
    assert status == 400 and b"name at least one run and one key" in body
    status, _, body = call(
        app, f"/data/{ENTITY}/{LONG_PROJECT}/series", {"run": LONG_RUN, "key": "loss", "lo": "x"}
    )
    assert status == 400 and b"lo: not a number" in body


# --- assets, keys, status -----------------------------------------------------------------------


def test_assets_ship_in_the_package_and_go_gzipped(app: MirrorApp):
    status, headers, body = call(
        app, "/static/uPlot.iife.min.js", headers={"Accept-Encoding": "gzip"}
    )
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).startswith(b"/*! https://github.com/leeoniya/uPlot")
    status, _, body = call(app, "/static/uPlot.LICENSE.txt")
    assert status == 200 and b"MIT License" in body
    assert call(app, "/static/../app.py")[0] == 404


def test_with_keys_every_page_needs_one(engine):
    guarded = MirrorApp(engine, KeyChecker(["s3cret"]))
    for path in ("/", "/static/charts.js", f"/projects/{ENTITY}/{PROJECT}", "/status"):
        status, headers, _ = call(guarded, path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    good = "Basic " + base64.b64encode(b"api:s3cret").decode()
    bad = "Basic " + base64.b64encode(b"api:wrong").decode()
    assert call(guarded, "/", headers={"Authorization": bad})[0] == 401
    assert call(guarded, "/", headers={"Authorization": good})[0] == 200


def test_status_page_shows_what_status_prints(app: MirrorApp, engine):
    import html as html_module

    _, _, body = call(app, "/status")
    text = body.decode()
    printed = io.StringIO()
    write_report(engine, "", printed)
    for line in printed.getvalue().splitlines():
        shown = html_module.escape(line.strip()).replace("`", "")
        assert shown in text.replace("<code>", "").replace("</code>", "")


def test_serve_and_query_never_import_sync_or_remote():
    code = (
        "import sys, mirror.serve.server, mirror.serve.dashboard, mirror.query.api;"
        "print(sorted(m for m in sys.modules if m.startswith(('mirror.sync', 'mirror.remote'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
