"""A run's page (config, summary, tags, notes, state, charts of chosen keys) and the compare
page (one key, several runs' curves on one chart).

The pages carry no data points: the charts fetch them from ``/data/.../series`` (see
``mirror.serve.dashboard.data``), decimated for drawing on the server, so a million-step run
sends a few thousand points, and zooming fetches the window again at full detail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import Connection, RowMapping

from mirror.serve.chunk_cache import ChunkCache
from mirror.serve.dashboard.html import esc, fmt, key_values, options, page, url
from mirror.serve.dashboard.request import PageError, Request
from mirror.store.fields import loads, unwrap_config
from mirror.store.read import find_project, find_run

#: charts a run page draws when no key is chosen
DEFAULT_CHARTS = 4
#: runs one compare chart takes at most (one request reads each of them)
MAX_COMPARE = 20


def _project_id(conn: Connection, entity: str, project: str) -> int:
    found = find_project(conn, entity, project)
    if found is None:
        raise PageError(404, f"the mirror holds no project {entity}/{project}")
    return int(found["id"])


def _run(conn: Connection, project_id: int, entity: str, project: str, run_id: str) -> RowMapping:
    row = find_run(conn, project_id, run_id)
    if row is None:
        raise PageError(404, f"the mirror holds no run {entity}/{project}/{run_id}")
    return row


def numeric_keys(conn: Connection, row: RowMapping, chunks: ChunkCache) -> list[str]:
    """The history keys a run logged numbers under, in the order it first logged them (W&B's
    ``historyKeys``; computed from the rows for runs imported without it)."""
    described = loads(row["history_keys"], None)
    if not described:
        described = chunks.history_keys(conn, row["id"])
    keys = (described or {}).get("keys") or {}
    return [
        key
        for key, info in keys.items()
        if any(t.get("type") == "number" for t in info.get("typeCounts") or [])
    ]


def x_choices(keys: Sequence[str]) -> list[str]:
    """``_step`` first, then W&B's own clocks, then any other numeric key."""
    own = [k for k in ("_runtime", "_timestamp") if k in keys]
    return ["_step", *own, *(k for k in keys if k not in ("_step", *own))]


def _charts(
    src: str, x: str, runs: Sequence[tuple[str, str]], keys: Sequence[str], chart_class: str
) -> str:
    """The element ``charts.js`` fills: which series to fetch and how to label them."""
    return (
        f'<div class="charts {chart_class}" id="charts" data-src="{esc(src)}" data-x="{esc(x)}" '
        f'data-runs="{esc(json.dumps([r for r, _ in runs]))}" '
        f'data-labels="{esc(json.dumps([label for _, label in runs]))}" '
        f'data-keys="{esc(json.dumps(list(keys)))}"></div>'
    )


def _key_boxes(keys: Sequence[str], chosen: Sequence[str]) -> str:
    return "".join(
        f'<label><input type="checkbox" name="key" value="{esc(k)}"'
        f"{' checked' if k in chosen else ''}> {esc(k)}</label>"
        for k in keys
    )


def run_page(
    conn: Connection, request: Request, entity: str, project: str, run_id: str, chunks: ChunkCache
) -> str:
    """Everything about one run, and its charts."""
    row = _run(conn, _project_id(conn, entity, project), entity, project, run_id)
    config = unwrap_config(loads(row["config"], {}) or {})
    summary = loads(row["summary_metrics"], {}) or {}
    tags = loads(row["tags"], [])
    keys = numeric_keys(conn, row, chunks)
    plotted = [k for k in keys if not k.startswith("_")]
    chosen = [k for k in request.args("key") if k in keys] or plotted[:DEFAULT_CHARTS]
    x = request.arg("x", "_step")
    if x not in x_choices(keys):
        x = "_step"
    facts = [
        ("id", row["name"]),
        ("state", row["state"]),
        ("created", row["created_at"]),
        ("last heartbeat", row["heartbeat_at"]),
        ("group", row["group_name"]),
        ("job type", row["job_type"]),
        ("sweep", row["sweep_name"]),
        ("user", row["username"]),
        ("history rows", f"{row['history_line_count']:,}"),
    ]
    facts_html = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in facts if v is not None
    )
    tag_html = "".join(f'<span class="tag">{esc(t)}</span>' for t in tags) or (
        '<span class="muted">none</span>'
    )
    notes = row["notes"] or ""
    here = url("projects", entity, project, "runs", row["name"])
    chart_form = (
        f'<form id="chart-form" method="get" action="{esc(here)}">'
        f'<details class="picker"><summary>Keys ({len(chosen)} of {len(keys)})</summary>'
        f'<div class="keys">{_key_boxes(keys, chosen)}</div></details>'
        f'<label>x axis <select name="x">{options(x_choices(keys), [x])}</select></label>'
        '<button type="submit">Draw</button></form>'
    )
    label = row["display_name"] or row["name"]
    src = url("data", entity, project, "series")
    charts = (
        _charts(src, x, [(row["name"], label)], chosen, "run")
        if chosen
        else '<p class="muted">This run logged no numeric history.</p>'
    )
    body = (
        f'<h1>{esc(label)} <span class="state state-{esc(row["state"])}">{esc(row["state"])}'
        f"</span></h1>"
        f'<div class="tags" id="tags">{tag_html}</div>'
        f'<p class="notes" id="notes">{esc(notes) if notes else "<span class=muted>no notes</span>"}</p>'
        f"<section><h2>Charts</h2>{chart_form}{charts}</section>"
        f'<div class="columns"><section><h2>Run</h2><table class="kv">{facts_html}</table></section>'
        f'<section id="config"><h2>Config</h2>{key_values(config, "no config")}</section>'
        f'<section id="summary"><h2>Summary</h2>{key_values(summary, "no summary")}</section></div>'
    )
    crumbs = [(f"{entity}/{project}", url("projects", entity, project)), (row["name"], here)]
    return page(str(label), body, crumbs, charts=bool(chosen))


def compare_page(
    conn: Connection, request: Request, entity: str, project: str, chunks: ChunkCache
) -> str:
    """One key of several runs on one chart, with the runs' summary of that key."""
    project_id = _project_id(conn, entity, project)
    names = request.args("run")
    if not names:
        raise PageError(400, "compare: pick runs in the runs table first")
    if len(names) > MAX_COMPARE:
        raise PageError(400, f"compare: at most {MAX_COMPARE} runs at once, not {len(names)}")
    rows = [_run(conn, project_id, entity, project, name) for name in names]
    per_run = [numeric_keys(conn, row, chunks) for row in rows]
    union = list(dict.fromkeys(k for keys in per_run for k in keys))
    common = [k for k in union if all(k in keys for keys in per_run) and not k.startswith("_")]
    key = request.arg("key") or (common or [k for k in union if not k.startswith("_")] or [""])[0]
    x = request.arg("x", "_step")
    if x not in x_choices(union):
        x = "_step"
    here = url("projects", entity, project, "compare")
    hidden = "".join(f'<input type="hidden" name="run" value="{esc(n)}">' for n in names)
    form = (
        f'<form id="chart-form" method="get" action="{esc(here)}">{hidden}'
        f'<label>key <select name="key">{options(union, [key])}</select></label>'
        f'<label>x axis <select name="x">{options(x_choices(union), [x])}</select></label>'
        '<button type="submit">Draw</button></form>'
    )
    listed = "".join(
        f'<tr><td><a href="{esc(url("projects", entity, project, "runs", row["name"]))}">'
        f"{esc(row['name'])}</a></td><td>{esc(row['display_name'] or '')}</td>"
        f"<td>{esc(row['state'])}</td>"
        f"<td>{esc(fmt((loads(row['summary_metrics'], {}) or {}).get(key)))}</td></tr>"
        for row in rows
    )
    labelled = [(row["name"], row["display_name"] or row["name"]) for row in rows]
    charts = _charts(url("data", entity, project, "series"), x, labelled, [key], "compare")
    body = (
        f"<h1>Compare {len(rows)} runs</h1>{form}{charts if key else ''}"
        '<table class="runs"><thead><tr><th>id</th><th>name</th><th>state</th>'
        f"<th>summary {esc(key)}</th></tr></thead><tbody>{listed}</tbody></table>"
    )
    crumbs = [(f"{entity}/{project}", url("projects", entity, project)), ("compare", here)]
    return page(f"compare · {entity}/{project}", body, crumbs, charts=bool(key))
