"""``/data/<entity>/<project>/series``: the points the charts draw, as JSON.

``run`` and ``key`` (repeated) name the series, ``x`` the x key, ``width`` the chart's width in
pixels, ``lo``/``hi`` a window of x (a zoom). Each series is decimated with M4 over that many
pixel columns, so it carries at most ``4 * width`` points whatever the run's length; a window
with fewer points than that comes back whole, every logged point of it. Each series also says
how many points it has in the window, its minimum and maximum (which the drawn points hold),
and how many values were NaN or infinite (never drawn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from sqlalchemy import Connection

from mirror.serve.dashboard.decimate import m4
from mirror.serve.dashboard.request import PageError, Request
from mirror.serve.dashboard.run_page import MAX_COMPARE
from mirror.serve.dashboard.series import Series, SeriesCache
from mirror.store.read import find_project, find_run

MAX_WIDTH = 4000
MAX_KEYS = 20


def _extreme(series: Series, index: int) -> list[float]:
    return [float(series.x[index]), float(series.y[index])]


def _encoded(series: Series, picked: np.ndarray, whole_x: bool) -> dict[str, Any]:
    xs = series.x[picked]
    return {
        "x": xs.astype(np.int64) if whole_x else xs,
        "y": series.y[picked],
        "points": len(series.x),
        "min": _extreme(series, int(np.argmin(series.y))) if len(series.y) else None,
        "max": _extreme(series, int(np.argmax(series.y))) if len(series.y) else None,
        "nan": series.nan,
        "posinf": series.posinf,
        "neginf": series.neginf,
    }


def series_json(
    conn: Connection, request: Request, entity: str, project: str, cache: SeriesCache
) -> bytes:
    """The JSON document of the series asked for (a 400 or 404 for a bad request)."""
    found = find_project(conn, entity, project)
    if found is None:
        raise PageError(404, f"the mirror holds no project {entity}/{project}")
    names, keys = request.args("run"), request.args("key")
    if not names or not keys:
        raise PageError(400, "series: name at least one run and one key")
    if len(names) > MAX_COMPARE or len(keys) > MAX_KEYS:
        raise PageError(400, f"series: at most {MAX_COMPARE} runs and {MAX_KEYS} keys at once")
    x_key = request.arg("x", "_step")
    width = request.whole("width", 1000, 10, MAX_WIDTH)
    lo, hi = request.number("lo"), request.number("hi")
    picked: list[tuple[str, str, Series]] = []
    for name in names:
        row = find_run(conn, found["id"], name)
        if row is None:
            raise PageError(404, f"the mirror holds no run {entity}/{project}/{name}")
        for key, series in cache.get(conn, row["id"], row["storage_id"], keys, x_key).items():
            picked.append((name, key, series.window(lo, hi)))
    shown = [s for _, _, s in picked if len(s.x)]
    low = lo if lo is not None else min((float(s.x[0]) for s in shown), default=0.0)
    high = hi if hi is not None else max((float(s.x[-1]) for s in shown), default=0.0)
    whole_x = x_key == "_step"
    out = []
    for name, key, series in picked:
        chosen = m4(series.x, series.y, width, low, high)
        out.append({"run": name, "key": key, **_encoded(series, chosen, whole_x)})
    document = {"x": x_key, "width": width, "lo": low, "hi": high, "series": out}
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
