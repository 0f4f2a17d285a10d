"""Read resolvers: W&B's ``Query``, ``Project`` and ``Run`` fields over the store.

Sources are plain rows of the ``projects`` and ``runs`` tables; every field turns one row into
exactly what W&B sends: JSON *strings* for config and summaries, JSON objects for
``historyKeys`` and sampled rows, naive UTC dates, storage ids, ``null`` for what is missing.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import Any

from graphql import GraphQLResolveInfo
from sqlalchemy import Connection, RowMapping, case, func, select

from mirror.query.filters import parse_filter, parse_order
from mirror.query.sql import count_query, fetch_page, runs_query
from mirror.serve import history
from mirror.serve.context import (
    RequestContext,
    Resolver,
    guarded,
    json_size,
    sized,
    text_size,
)
from mirror.serve.errors import HttpError, RequestError
from mirror.serve.jsonout import RawJSON
from mirror.serve.limits import MAX_PAGE_SIZE
from mirror.serve.paging import encode_cursor, start_after
from mirror.store.fields import dumps, loads
from mirror.store.models import NODE_COLUMNS, projects, runs
from mirror.store.read import find_project, find_run

DEFAULT_PAGE_SIZE = 50


def _ctx(info: GraphQLResolveInfo) -> RequestContext:
    return info.context


def _conn(info: GraphQLResolveInfo) -> Connection:
    return _ctx(info).conn()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- viewer and server ---------------------------------------------------------------------


def default_entity(conn: Connection) -> str:
    """The viewer's entity: the owner of the first project mirrored, else ``mirror``."""
    first = conn.execute(select(projects.c.entity).order_by(projects.c.id).limit(1)).scalar()
    return first or "mirror"


def resolve_viewer(_root: Any, info: GraphQLResolveInfo, entityName: str | None = None) -> dict:
    """The one user the mirror knows. Keys are checked before execution, so it is never null."""
    conn = _conn(info)
    teams = conn.execute(select(projects.c.entity).distinct().order_by(projects.c.entity))
    return {
        "id": _b64("User:mirror"),
        "name": "mirror",
        "username": "mirror",
        "email": None,
        "admin": False,
        "flags": "{}",
        "entity": default_entity(conn),
        "photoUrl": None,
        "deletedAt": None,
        "apiKeys": {"edges": []},
        "teams": {
            "edges": [
                {"cursor": encode_cursor(i), "node": {"id": _b64(f"Entity:{name}"), "name": name}}
                for i, name in enumerate(teams.scalars())
            ]
        },
    }


def resolve_server_info(_root: Any, _info: GraphQLResolveInfo) -> dict:
    """No CLI version advice and no optional server features: clients take their plain paths."""
    return {"cliVersionInfo": {}, "latestLocalVersionInfo": None, "features": []}


# --- projects --------------------------------------------------------------------------------


def resolve_project(
    _root: Any, info: GraphQLResolveInfo, name: str | None = None, entityName: str | None = None
) -> RowMapping | None:
    """A project by entity and name; ``null`` when the mirror does not hold it."""
    if name is None:
        return None
    conn = _conn(info)
    return find_project(conn, entityName or default_entity(conn), name)


def resolve_models(
    _root: Any,
    info: GraphQLResolveInfo,
    entityName: str | None = None,
    after: str | None = None,
    first: int | None = None,
) -> dict:
    """The entity's projects, paged like run listings."""
    conn = _conn(info)
    entity = entityName or default_entity(conn)
    start = start_after(after)
    size = page_size(first)
    rows = (
        conn.execute(
            select(projects)
            .where(projects.c.entity == entity)
            .order_by(projects.c.id)
            .offset(start)
            .limit(size + 1)
        )
        .mappings()
        .all()
    )
    return _connection(rows[:size], start, len(rows) > size)


def _project_row(info: GraphQLResolveInfo, project_id: int) -> RowMapping:
    cache = _ctx(info).cache
    key = ("project", project_id)
    if key not in cache:
        cache[key] = (
            _conn(info)
            .execute(select(projects).where(projects.c.id == project_id))
            .mappings()
            .one()
        )
    return cache[key]


def _reject_summary_keys(filters: Any) -> None:
    """W&B answers ``summary.<key>`` filter keys with HTTP 400 (it wants ``summary_metrics.``)."""
    if isinstance(filters, dict):
        for key, value in filters.items():
            if isinstance(key, str) and key.startswith("summary."):
                raise HttpError(
                    400, f"invalid filter key {key!r}: use summary_metrics.{key[8:]} instead"
                )
            _reject_summary_keys(value)
    elif isinstance(filters, list):
        for item in filters:
            _reject_summary_keys(item)


def _filter_node(filters: Any) -> Any:
    if filters is None or filters == "":
        filters = {}
    if not isinstance(filters, dict):
        raise RequestError("filters must be a JSON object")
    _reject_summary_keys(filters)
    return parse_filter(filters)


def resolve_run_count(project: RowMapping, info: GraphQLResolveInfo, filters: Any = None) -> int:
    """How many runs match, counted with the same filter engine as the listing."""
    return _conn(info).execute(count_query(project["id"], _filter_node(filters))).scalar_one()


def page_size(first: int | None) -> int:
    """The page a listing answers: ``first`` (50 when absent) clamped to 1,000; the
    client sees ``hasNextPage`` and goes on from the last cursor."""
    return min(DEFAULT_PAGE_SIZE if first is None else max(first, 0), MAX_PAGE_SIZE)


def _connection(rows: list[RowMapping], start: int, has_next: bool) -> dict:
    edges = [{"cursor": encode_cursor(start + i), "node": row} for i, row in enumerate(rows)]
    return {
        "edges": edges,
        "pageInfo": {
            "hasNextPage": has_next,
            "hasPreviousPage": start > 0,
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


def resolve_runs(
    project: RowMapping,
    info: GraphQLResolveInfo,
    filters: Any = None,
    order: str | None = None,
    after: str | None = None,
    before: str | None = None,
    first: int | None = None,
    last: int | None = None,
) -> dict:
    """One page of runs: ``first`` edges after the ``after`` cursor, in the requested order.

    With the page-repeat fault (N), a page after the first opens with the last N runs of the
    previous page in place of its own first N, while its cursors count as if it had not: those
    runs repeat, the replaced ones are never listed, and ``runCount`` stays right.
    """
    if before is not None or last is not None:
        raise RequestError("paging backwards (before/last) is not supported by the mirror")
    node = _filter_node(filters)
    query = runs_query(project["id"], node, parse_order(order or None))
    start = start_after(after)
    if first is not None and first < 0:
        raise RequestError("first must not be negative")
    size = page_size(first)
    repeat = min(start, size, _ctx(info).page_repeat)
    fetched = fetch_page(_conn(info), query, start - repeat, repeat + size + 1)
    page = fetched[:repeat] + fetched[2 * repeat : repeat + size]
    result = _connection(list(page), start, len(fetched) > repeat + size)
    count = lambda _info: resolve_run_count(project, info, filters)  # noqa: E731 - lazy field
    result["totalCount"] = count
    return result


def resolve_project_run(
    project: RowMapping, info: GraphQLResolveInfo, name: str, missingOk: bool | None = None
) -> RowMapping | None:
    """A run by its run id; ``null`` when missing or deleted."""
    return find_run(_conn(info), project["id"], name)


def resolve_sweep(project: RowMapping, info: GraphQLResolveInfo, sweepName: str) -> dict | None:
    """A sweep as far as the mirror knows it: from the runs that name it (``null`` if none)."""
    conn = _conn(info)
    cond = (
        (runs.c.project_id == project["id"])
        & (runs.c.sweep_name == sweepName)
        & runs.c.deleted_at.is_(None)
    )
    count, created, running = conn.execute(
        select(
            func.count(),
            func.min(runs.c.created_at),
            func.sum(case((runs.c.state == "running", 1), else_=0)),
        ).where(cond)
    ).one()
    if not count:
        return None
    return {
        "id": _b64(f"Sweep:v1:{sweepName}:{project['name']}:{project['entity']}"),
        "name": sweepName,
        "displayName": None,
        "method": "unknown",
        "state": "RUNNING" if running else "FINISHED",
        "description": None,
        "bestLoss": None,
        "config": "{}",
        "createdAt": created,
        "updatedAt": None,
        "runCount": count,
        "runCountExpected": None,
        "agent": lambda _info, agentName: None,
    }


# --- runs ------------------------------------------------------------------------------------


def _keys_subset(text: str | None, keys: list[str] | None) -> str | None:
    if keys is None or text is None:
        return text
    doc = loads(text, {}) or {}
    return dumps({k: doc[k] for k in keys if k in doc})


def resolve_history_keys(run: RowMapping, info: GraphQLResolveInfo) -> Any:
    """Stored as W&B sent it; computed from the mirrored rows when W&B's copy is missing (older
    mirrors hold the text ``null`` for runs that ``upsertBucket`` made: missing too)."""
    if run["history_keys"] not in (None, "null"):
        return RawJSON(run["history_keys"])
    return _ctx(info).chunks.history_keys(_conn(info), run["id"])


def resolve_history(
    run: RowMapping,
    info: GraphQLResolveInfo,
    samples: int | None = None,
    minStep: int | None = None,
    maxStep: int | None = None,
) -> list[str]:
    """Rows as JSON strings, ``[minStep, maxStep)``, at most ``samples``."""
    rows = history.stream_rows(
        _conn(info), _ctx(info).chunks, run["id"], "history", samples, minStep, maxStep
    )
    return _metered(info, (dumps(row) for row in rows), len)


def resolve_events(run: RowMapping, info: GraphQLResolveInfo, samples: int | None = None) -> list:
    """System-metric events, sampled like unwindowed history."""
    rows = history.stream_rows(
        _conn(info), _ctx(info).chunks, run["id"], "events", samples, None, None
    )
    return _metered(info, (dumps(row) for row in rows), len)


def resolve_sampled_history(run: RowMapping, info: GraphQLResolveInfo, specs: list) -> list:
    """One list of row objects per spec."""
    return [
        _metered(info, history.sampled_rows(_conn(info), _ctx(info).chunks, run["id"], spec))
        for spec in specs
    ]


def _metered(
    info: GraphQLResolveInfo, items: Iterable[Any], size: Callable[[Any], int] = json_size
) -> list[Any]:
    """``items`` listed, each counted against the response size as it comes: a history answer
    is stopped at the limit, not built whole first."""
    budget = _ctx(info).budget
    out = []
    for item in items:
        budget.charge(size(item))
        out.append(item)
    return out


def resolve_parquet_history(run: RowMapping, info: GraphQLResolveInfo, liveKeys: list) -> dict:
    """W&B's exported history: signed URLs of parquet files, and the steps not in them.

    Only for finished runs whose last heartbeat is at least the export delay old (W&B exports
    hours after a run ends); other runs, and servers without exports, answer no files and no
    live steps, and clients then page everything with ``HistoryPage``. ``liveData`` holds only
    the ``liveKeys`` of the steps after the export; NaN and ±Infinity become strings there, as
    in every JSON-typed field (wandb-core decodes them strictly: see ``schema``).
    """
    ctx = _ctx(info)
    if ctx.exports is None:
        return {"parquetUrls": [], "liveData": []}
    return ctx.exports.parquet_history(_conn(info), ctx.chunks, run, liveKeys, ctx.base_url)


def _user(run: RowMapping) -> dict:
    """The run's author; every W&B run has one (the SDK fails on null), so unknown is ``mirror``."""
    username = run["username"] or run["user_name"] or "mirror"
    return {
        "id": _b64(f"User:{username}"),
        "name": run["user_name"] or username,
        "username": username,
    }


def _compute_seconds(run: RowMapping) -> float:
    runtime = (loads(run["summary_metrics"], {}) or {}).get("_runtime")
    return runtime if isinstance(runtime, (int, float)) and not isinstance(runtime, bool) else 0


def _column(name: str) -> Resolver:
    return lambda run, _info: run[name]


RUN_FIELDS: dict[str, Resolver] = {
    **{field: _column(column) for field, column in NODE_COLUMNS.items()},
    "tags": lambda run, _info: loads(run["tags"], []),
    "readOnly": lambda _run, _info: False,
    "projectId": lambda run, _info: str(run["project_id"]),
    "user": lambda run, _info: _user(run),
    "project": lambda run, info: _project_row(info, run["project_id"]),
    "config": sized(lambda run, _info, keys=None: _keys_subset(run["config"], keys), text_size),
    "summaryMetrics": sized(
        lambda run, _info, keys=None: _keys_subset(run["summary_metrics"], keys), text_size
    ),
    "systemMetrics": sized(_column("system_metrics"), text_size),
    "historyKeys": guarded(resolve_history_keys, json_size),
    "history": guarded(resolve_history),
    "events": guarded(resolve_events),
    "sampledHistory": guarded(resolve_sampled_history),
    "parquetHistory": guarded(resolve_parquet_history, json_size),
    "computeSeconds": lambda run, _info: _compute_seconds(run),
    "logLineCount": lambda _run, _info: None,
}

QUERY_FIELDS: dict[str, Resolver] = {
    "viewer": guarded(resolve_viewer),
    "project": guarded(resolve_project),
    "model": guarded(resolve_project),
    "models": guarded(resolve_models),
    "serverInfo": resolve_server_info,
}

PROJECT_FIELDS: dict[str, Resolver] = {
    "id": lambda p, _i: _b64(f"Project:v1:{p['name']}:{p['entity']}"),
    "internalId": lambda p, _i: str(p["id"]),
    "name": lambda p, _i: p["name"],
    "entityName": lambda p, _i: p["entity"],
    "createdAt": lambda p, _i: p["created_at"],
    "updatedAt": lambda p, _i: None,
    "readOnly": lambda p, _i: False,
    "entity": lambda p, _i: {"id": _b64(f"Entity:{p['entity']}"), "name": p["entity"]},
    "runCount": guarded(resolve_run_count),
    "runs": guarded(resolve_runs),
    "run": guarded(resolve_project_run),
    "bucket": guarded(resolve_project_run),
    "sweep": guarded(resolve_sweep),
}
