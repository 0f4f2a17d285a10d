"""The dashboard in a real headless Chromium (Playwright on Debian's ``chromium``), against
``python -m mirror.serve`` as a real process over a seeded mirror.

What a user sees must be what ``mirror.Api`` says: the runs a typed filter and order list, a bad
filter's error, the points a chart holds (exactly what the decimation promises, the series' min
and max among them, every point of a zoomed window), one curve per compared run; and the pages
must not reach beyond 127.0.0.1 for anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from dashboard_data import LONG_PROJECT, LONG_RUN
from server_process import ENTITY, PROJECT, ServerProcess

from mirror import Api
from mirror.serve.dashboard.decimate import m4

CHROMIUM = os.environ.get("WANDB_MIRROR_CHROMIUM") or shutil.which("chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (apt-get install chromium chromium-driver; "
    "CI installs it)",
)


@pytest.fixture(scope="module")
def server(dashboard_db: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("dashboard-log") / "serve.log"
    with ServerProcess(dashboard_db, log, args=("--threads", "4")) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any):
    """A fresh page whose every request is recorded, and checked to stay on 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert requested, "the page requested nothing"
    outside = [
        u for u in requested if urlparse(u).scheme != "data" and urlparse(u).hostname != "127.0.0.1"
    ]
    assert outside == []
    assert errors == []


@pytest.fixture(scope="module")
def api(dashboard_db: Path):
    api = Api(database=dashboard_db)
    yield api
    api.close()


def shown_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")


def charts_drawn(page: Any) -> None:
    page.wait_for_function("document.documentElement.dataset.charts === 'drawn'", timeout=20_000)


def test_runs_table_shows_what_the_api_returns(page: Any, server: ServerProcess, api: Api):
    filters = {"state": {"$in": ["finished", "crashed"]}, "tags": {"$ne": "debug"}}
    page.goto(f"{server.url}/projects/{ENTITY}/{PROJECT}")
    page.fill("#filter", json.dumps(filters))
    page.fill("#order", "-summary.loss")
    page.click("#apply")
    page.wait_for_load_state()
    expected = [r.id for r in api.runs(f"{ENTITY}/{PROJECT}", filters, order="-summary.loss")]
    assert len(expected) > 50
    assert shown_ids(page) == expected[:50]
    assert page.get_attribute(".pager .count", "data-total") == str(len(expected))
    page.click("#next-page")
    page.wait_for_load_state()
    assert shown_ids(page) == expected[50:100]
    page.click('th[data-column="state"] a')  # sort by a column: first click is descending
    page.wait_for_load_state()
    by_state = api.runs(f"{ENTITY}/{PROJECT}", filters, order="-state")
    assert shown_ids(page) == [r.id for r in by_state][:50]


def test_a_bad_filter_shows_its_error_in_place(page: Any, server: ServerProcess, api: Api):
    page.goto(f"{server.url}/projects/{ENTITY}/{PROJECT}")
    text = '{"config.lr": {"$gt": 1, "$lt": []}}'
    page.fill("#filter", text)
    page.click("#apply")
    page.wait_for_load_state()
    with pytest.raises(ValueError) as raised:
        len(api.runs(f"{ENTITY}/{PROJECT}", json.loads(text)))
    assert page.inner_text("#filter-error") == str(raised.value)
    assert page.input_value("#filter") == text
    assert shown_ids(page) == []


def chart_state(page: Any, index: int = 0) -> dict[str, Any]:
    return page.evaluate(
        """(i) => { const c = window.mirrorCharts[i];
        return {data: c.uplot.data.map(a => Array.from(a)), payload: c.payload,
                labels: c.uplot.series.slice(1).map(s => s.label)}; }""",
        index,
    )


def test_run_chart_holds_the_decimated_points_and_zoom_refetches(
    page: Any, server: ServerProcess, api: Api
):
    page.goto(f"{server.url}/projects/{ENTITY}/{LONG_PROJECT}/runs/{LONG_RUN}?key=loss")
    charts_drawn(page)
    state = chart_state(page)
    history = api.run(f"{ENTITY}/{LONG_PROJECT}/{LONG_RUN}").history(keys=["loss"])
    finite = history[np.isfinite(history["loss"])]
    x, y = finite["_step"].to_numpy(float), finite["loss"].to_numpy(float)
    payload = state["payload"]
    picked = m4(x, y, payload["width"], payload["lo"], payload["hi"])
    assert len(picked) < len(x)  # decimated: the run has more points than the chart has room
    assert state["data"] == [x[picked].tolist(), y[picked].tolist()]
    assert min(state["data"][1]) == y.min() and max(state["data"][1]) == y.max()
    assert "of 59,997 points drawn" in page.inner_text(".chart .info")

    box = page.locator(".chart .u-over").bounding_box()
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.40, middle)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.43, middle, steps=5)
    page.mouse.up()
    page.wait_for_function(
        "() => { const c = window.mirrorCharts[0]; return c.payload !== c.overview; }"
    )
    zoomed = chart_state(page)
    lo, hi = zoomed["payload"]["lo"], zoomed["payload"]["hi"]
    inside = (x >= lo) & (x <= hi)
    assert 0 < inside.sum() < len(picked)
    assert zoomed["data"] == [x[inside].tolist(), y[inside].tolist()]  # every point, none dropped
    page.dblclick(".chart .u-over")
    assert chart_state(page)["data"] == state["data"]


def test_compare_draws_one_series_per_run(page: Any, server: ServerProcess, api: Api):
    page.goto(f"{server.url}/projects/{ENTITY}/{PROJECT}?filter=%7B%22state%22%3A%22finished%22%7D")
    boxes = page.locator('#runs input[name="run"]')
    for i in range(3):
        boxes.nth(i).check()
    picked = shown_ids(page)[:3]
    page.click("#compare button")
    page.wait_for_load_state()
    charts_drawn(page)
    state = chart_state(page)
    runs = [api.run(f"{ENTITY}/{PROJECT}/{name}") for name in picked]
    assert state["labels"] == [r.name for r in runs]
    assert len(state["data"]) == 1 + len(runs)
    key = state["payload"]["series"][0]["key"]
    for run, series in zip(runs, state["payload"]["series"], strict=True):
        values = run.history(keys=[key])[key].to_numpy(float)
        assert series["run"] == run.id and series["points"] == int(np.isfinite(values).sum())
