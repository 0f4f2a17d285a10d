"""A project's runs table: the MongoDB filter box, sortable columns, a column picker over the
project's config and summary keys, and server-side pages, so tens of thousands of runs cost one
COUNT and one page of rows per view.

The filter, the order and the paging go through the query engine (``mirror.query``) exactly as
``mirror.Api`` runs them, so the table shows what ``api.runs(path, filter, order)`` returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, RowMapping

from mirror.errors import MirrorError
from mirror.query.filters import Order, parse_filter, parse_order
from mirror.query.frames import lookup
from mirror.query.sql import count_query, fetch_page, runs_query
from mirror.serve.dashboard.html import esc, fmt, options, page, url
from mirror.serve.dashboard.request import PageError, Request
from mirror.store.fields import loads, unwrap_config
from mirror.store.read import field_paths, find_project

DEFAULT_COLUMNS = ("name", "state", "created_at", "tags")
PAGE_SIZES = (25, 50, 100, 200, 500)
DEFAULT_ORDER = "-created_at"

#: plain columns: label, the filter key that sorts by it, and its value in a ``runs`` row
BASE_COLUMNS: dict[str, tuple[str, str, Callable[[RowMapping], Any]]] = {
    "name": ("name", "displayName", lambda row: row["display_name"]),
    "state": ("state", "state", lambda row: row["state"]),
    "created_at": ("created", "createdAt", lambda row: row["created_at"]),
    "tags": ("tags", "tags", lambda row: loads(row["tags"], [])),
    "group": ("group", "group", lambda row: row["group_name"]),
    "job_type": ("job type", "jobType", lambda row: row["job_type"]),
    "heartbeat_at": ("heartbeat", "heartbeatAt", lambda row: row["heartbeat_at"]),
}
_POSITION = re.compile(r"\.\d+(\.|$)")


def picker_keys(paths: list[str]) -> list[str]:
    """The project's config and summary keys as columns (``config.x``, ``summary.x``), without
    array positions and W&B's own bookkeeping (``_wandb``, media ``_type``)."""
    out = []
    for path in paths:
        if _POSITION.search(path) or "._wandb" in path or path.endswith("._type"):
            continue
        out.append(path.replace("summary_metrics.", "summary.", 1))
    return out


def sort_key(column: str) -> str:
    """The order key that sorts a column."""
    if column in BASE_COLUMNS:
        return BASE_COLUMNS[column][1]
    return column


def cell(row: RowMapping, column: str, docs: dict[str, Any]) -> Any:
    """A run's value in a column (config and summary parsed once per row, on first need)."""
    if column in BASE_COLUMNS:
        return BASE_COLUMNS[column][2](row)
    source, _, key = column.partition(".")
    if source not in docs:
        raw = row["config"] if source == "config" else row["summary_metrics"]
        parsed = loads(raw, {}) or {}
        docs[source] = unwrap_config(parsed) if source == "config" else parsed
    return lookup(docs[source], key)[1]


def _parsed(request: Request) -> tuple[Any, Order, str | None]:
    """The filter and order asked for, or the one-line reason they cannot be used."""
    text = request.arg("filter").strip()
    order_text = request.arg("order").strip() or DEFAULT_ORDER
    try:
        filters = loads(text) if text else None
    except ValueError as exc:
        return None, parse_order(DEFAULT_ORDER), f"filter: not valid JSON: {exc}"
    try:
        return parse_filter(filters), parse_order(order_text), None
    except (MirrorError, ValueError) as exc:
        return None, parse_order(DEFAULT_ORDER), str(exc)


def _header(column: str, label: str, order: Order, link: Callable[..., str]) -> str:
    key = sort_key(column)
    try:
        sorted_here = parse_order(key).path == order.path
    except (MirrorError, ValueError):
        return f"<th>{esc(label)}</th>"
    flip = ("+" if order.descending else "-") if sorted_here else "-"
    arrow = (" ▼" if order.descending else " ▲") if sorted_here else ""
    href = link(order=flip + key, page=None)
    return f'<th data-column="{esc(column)}"><a href="{esc(href)}">{esc(label)}{arrow}</a></th>'


def runs_page(conn: Connection, request: Request, entity: str, project: str) -> tuple[int, str]:
    """The table page; a bad filter or order shows its error in place (status 400)."""
    found = find_project(conn, entity, project)
    if found is None:
        raise PageError(404, f"the mirror holds no project {entity}/{project}")
    node, order, error = _parsed(request)
    columns = request.args("col") or list(DEFAULT_COLUMNS)
    per_page = request.whole("per_page", 50, 1, max(PAGE_SIZES))
    number = request.whole("page", 1, 1, 10**9)
    state = {
        "filter": request.arg("filter").strip(),
        "order": request.arg("order").strip(),
        "col": columns if request.args("col") else None,
        "per_page": per_page if per_page != 50 else None,
    }

    def link(**changes: Any) -> str:
        return url("projects", entity, project, **{**state, "page": number, **changes})

    total, rows = 0, []
    if error is None:
        total = int(conn.execute(count_query(found["id"], node)).scalar_one())
        number = min(number, max(1, math.ceil(total / per_page)))
        query = runs_query(found["id"], node, order)
        rows = fetch_page(conn, query, (number - 1) * per_page, per_page)
    pages = max(1, math.ceil(total / per_page))
    keys = picker_keys(field_paths(conn, found["id"]))
    picker = "".join(
        f'<label><input type="checkbox" name="col" value="{esc(k)}"'
        f"{' checked' if k in columns else ''}> {esc(k)}</label>"
        for k in [*BASE_COLUMNS, *keys]
    )
    error_line = f'<p class="error" id="filter-error">{esc(error)}</p>' if error else ""
    form = (
        f'<form id="query" method="get" action="{esc(url("projects", entity, project))}">'
        '<label for="filter">Filter (MongoDB, as <code>api.runs</code> takes it)</label>'
        f'<textarea id="filter" name="filter" rows="2" spellcheck="false" '
        f'placeholder=\'{{"state": "finished", "config.lr": {{"$lt": 0.01}}}}\'>'
        f"{esc(state['filter'])}</textarea>{error_line}"
        '<div class="row"><label>Order <input id="order" name="order" '
        f'value="{esc(state["order"])}" placeholder="{DEFAULT_ORDER}"></label>'
        f'<label>Per page <select name="per_page">'
        f"{options([str(s) for s in PAGE_SIZES], [str(per_page)])}</select></label>"
        '<button id="apply" type="submit">Apply</button></div>'
        f'<details class="picker"><summary>Columns ({len(columns)})</summary>'
        '<input class="picker-search" type="search" placeholder="find a key" '
        f'oninput="mirrorPick(this)"><div class="keys">{picker}</div></details></form>'
    )
    head = "".join(
        _header(c, BASE_COLUMNS[c][0] if c in BASE_COLUMNS else c, order, link) for c in columns
    )
    body_rows = []
    for row in rows:
        docs: dict[str, Any] = {}
        run_url = url("projects", entity, project, "runs", row["name"])
        cells = "".join(f"<td>{esc(fmt(cell(row, c, docs)))}</td>" for c in columns)
        body_rows.append(
            f'<tr data-run="{esc(row["name"])}"><td><input type="checkbox" name="run" '
            f'value="{esc(row["name"])}" form="compare"></td>'
            f'<td class="id"><a href="{esc(run_url)}">{esc(row["name"])}</a></td>{cells}</tr>'
        )
    pager = _pager(number, pages, total, link) if error is None else ""
    compare = (
        f'<form id="compare" method="get" action="{esc(url("projects", entity, project, "compare"))}">'
        '<button type="submit">Compare selected runs</button></form>'
    )
    table = (
        f'<table class="runs" id="runs"><thead><tr><th></th>{_header("id", "id", order, link)}'
        f"{head}</tr></thead><tbody>{''.join(body_rows)}</tbody></table>"
    )
    script = (
        "<script>function mirrorPick(box){const q=box.value.toLowerCase();"
        "for(const l of box.parentNode.querySelectorAll('.keys label'))"
        "l.hidden=!l.textContent.toLowerCase().includes(q);}</script>"
    )
    body = f"<h1>{esc(entity)}/{esc(project)}</h1>{form}{pager}{compare}{table}{pager}{script}"
    crumbs = [(f"{entity}/{project}", url("projects", entity, project))]
    return (400 if error else 200), page(f"{entity}/{project}", body, crumbs)


def _pager(number: int, pages: int, total: int, link: Callable[..., str]) -> str:
    def go(label: str, target: int, ident: str) -> str:
        if target == number or not 1 <= target <= pages:
            return f'<span class="muted">{label}</span>'
        return f'<a id="{ident}" href="{esc(link(page=target))}">{label}</a>'

    return (
        '<nav class="pager">'
        f"{go('« first', 1, 'first-page')} {go('‹ previous', number - 1, 'prev-page')} "
        f'<span class="count" data-total="{total}">page {number:,} of {pages:,} '
        f"({total:,} runs)</span> "
        f"{go('next ›', number + 1, 'next-page')} {go('last »', pages, 'last-page')}</nav>"
    )
