"""Write resolvers with W&B's semantics for ``upsertBucket``, ``deleteRun``, ``updateRunState``.

In the mirror role (a database synced from W&B) the writes of a client are the user's edits:
``upsertBucket`` queues them in the outbox with the same rules as ``mirror.Api`` (the next read
shows them; ``sync`` pushes them without clobbering W&B), and deleting runs or changing their
state is refused. In the upstream role, the stand-in for W&B, ``upsertBucket`` deep-merges
config (a key missing from the input survives, W&B issue 11055), replaces summary and tags, sets
the plain fields it is given, and creates a run from ``name`` + ``modelName`` + ``entityName``.
``deleteRun`` tombstones the run, so it leaves every listing and
``run`` answers null; re-creating a deleted run starts afresh (no old history, fields or config),
as on W&B, where a deleted run is gone. ``updateRunState`` allows exactly the transitions W&B documents.
Each mutation is one write transaction through ``mirror.store.upsert``.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from graphql import GraphQLResolveInfo
from sqlalchemy import Connection, RowMapping, delete, select, update

from mirror.serve.context import RequestContext, guarded
from mirror.serve.errors import RequestError
from mirror.serve.resolvers import default_entity
from mirror.store.fields import dumps, loads, unwrap_config
from mirror.store.models import NODE_COLUMNS, NODE_JSON_COLUMNS, history_chunks, projects, runs
from mirror.store.outbox import DELETE, Edit, record_edit
from mirror.store.read import find_project, find_run, find_run_by_storage_id
from mirror.store.upsert import upsert_runs, utcnow

DEFAULT_PROJECT = "uncategorized"

#: target state → states W&B lets a run move from (wandb SDK ``Run.update_state``)
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "failed", "crashed", "preempted"}),
    "failed": frozenset({"pending", "running"}),
}

#: UpsertBucketInput fields copied as given → Run node keys
_PLAIN_INPUTS = {
    "displayName": "displayName",
    "description": "description",
    "notes": "notes",
    "groupName": "group",
    "jobType": "jobType",
    "commit": "commit",
    "host": "host",
    "state": "state",
    "sweep": "sweepName",
}


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` over ``base``, recursing into objects both sides hold; nothing is removed."""
    merged = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _json_object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{name} must be a JSON object")
    return value


def _new_run_name() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _names(conn: Connection, project_id: int) -> tuple[str, str]:
    row = conn.execute(
        select(projects.c.entity, projects.c.name).where(projects.c.id == project_id)
    ).one()
    return row.entity, row.name


def _locate(conn: Connection, data: dict[str, Any]) -> tuple[str, str, str, RowMapping | None]:
    """``(entity, project, run name, existing row or None)`` for an upsert input."""
    if data.get("id"):
        found = find_run_by_storage_id(conn, data["id"])
        if found is not None and found["deleted_at"] is None:
            entity, project = _names(conn, found["project_id"])
            return entity, project, found["name"], found
        if not data.get("name"):
            raise RequestError(f"run {data['id']!r} not found")
    entity = data.get("entityName") or default_entity(conn)
    project = data.get("modelName") or DEFAULT_PROJECT
    name = data.get("name") or _new_run_name()
    project_row = find_project(conn, entity, project)
    existing = None
    if project_row is not None:
        existing = find_run(conn, project_row["id"], name, include_deleted=True)
    return entity, project, name, existing


def _node(data: dict[str, Any], name: str, existing: RowMapping | None) -> dict[str, Any]:
    """The W&B Run node to upsert: only what the input sets, merged as W&B merges it.

    ``existing`` is the live run the input updates; ``None`` makes a new run, every field reset.
    """
    now = utcnow()
    node: dict[str, Any] = {"name": name, "updatedAt": now}
    if existing is None:
        node.update(dict.fromkeys([*NODE_COLUMNS, *NODE_JSON_COLUMNS]))  # every field reset
        node.update(name=name, createdAt=now, heartbeatAt=now, updatedAt=now, state="running")
        node.update(config={}, summaryMetrics={}, systemMetrics={}, tags=[], historyLineCount=0)
        node.update(user={"name": None, "username": None})
    else:
        node["id"] = existing["storage_id"]
    for key, target in _PLAIN_INPUTS.items():
        if data.get(key) is not None:
            node[target] = data[key]
    if data.get("tags") is not None:
        node["tags"] = list(data["tags"])
    if data.get("config") is not None:
        patch = _json_object(data["config"], "config")
        base = {} if existing is None else loads(existing["config"], {}) or {}
        node["config"] = dumps(deep_merge(base, patch))
    if data.get("summaryMetrics") is not None:
        node["summaryMetrics"] = dumps(_json_object(data["summaryMetrics"], "summaryMetrics"))
    return node


def _edit_of(run: RowMapping, data: dict[str, Any]) -> Edit:
    """What an ``upsertBucket`` from a client changes of a mirrored run, as an outbox edit.

    The SDK sends the whole summary (a key it leaves out was deleted), the whole config (W&B
    merges config, so a key left out stays), the whole tag list and the notes.
    """
    edit = Edit()
    if data.get("summaryMetrics") is not None:
        new = _json_object(data["summaryMetrics"], "summaryMetrics")
        old = loads(run["summary_metrics"], {}) or {}
        edit.summary = {k: v for k, v in new.items() if k not in old or dumps(old[k]) != dumps(v)}
        edit.summary.update(dict.fromkeys(old.keys() - new.keys(), DELETE))
    if data.get("config") is not None:
        new = unwrap_config(_json_object(data["config"], "config"))
        old = unwrap_config(loads(run["config"], {}) or {})
        edit.config = {k: v for k, v in new.items() if k not in old or dumps(old[k]) != dumps(v)}
    if data.get("tags") is not None:
        old_tags = loads(run["tags"], [])
        edit.add_tags = [t for t in data["tags"] if t not in old_tags]
        edit.remove_tags = [t for t in old_tags if t not in data["tags"]]
    if data.get("notes") is not None and data["notes"] != run["notes"]:
        edit.notes, edit.set_notes = data["notes"], True
    for key, target in _PLAIN_INPUTS.items():
        if key != "notes" and data.get(key) is not None and data[key] != run[NODE_COLUMNS[target]]:
            raise RequestError(
                f"the mirror queues summary, config, tags and notes edits for W&B; change "
                f"{key} on W&B itself"
            )
    return edit


def _queue_edit(ctx: RequestContext, data: dict[str, Any]) -> dict:
    """Mirror role: the write becomes an outbox edit, shown at once, pushed by ``sync``."""
    with ctx.write() as conn:
        entity, project, name, existing = _locate(conn, data)
        if existing is None or existing["deleted_at"] is not None:
            raise RequestError(
                f"run {entity}/{project}/{name} is not in the mirror: create runs on W&B"
            )
        edit = _edit_of(existing, data)
        if edit.patches():
            record_edit(conn, existing, edit)
        bucket = conn.execute(select(runs).where(runs.c.id == existing["id"])).mappings().one()
    return {"bucket": bucket, "inserted": False}


def resolve_upsert_bucket(_root: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict:
    """Update a run by storage id, or create one by name, project and entity (upstream role);
    queue the change for W&B (mirror role)."""
    ctx: RequestContext = info.context
    ctx.end_read()
    if ctx.role == "mirror":
        return _queue_edit(ctx, input)
    with ctx.write() as conn:
        entity, project, name, existing = _locate(conn, input)
        inserted = existing is None or existing["deleted_at"] is not None
        ids = upsert_runs(
            conn, entity, project, [_node(input, name, None if inserted else existing)]
        )
        if existing is not None and inserted:
            # the row is reused, but the run is new: nothing of the deleted run's history stays
            conn.execute(delete(history_chunks).where(history_chunks.c.run_id == ids[name]))
        bucket = conn.execute(select(runs).where(runs.c.id == ids[name])).mappings().one()
    return {"bucket": bucket, "inserted": inserted}


def _live_run(conn: Connection, storage_id: str) -> RowMapping:
    found = find_run_by_storage_id(conn, storage_id)
    if found is None or found["deleted_at"] is not None:
        raise RequestError(f"run {storage_id!r} not found")
    return found


def _upstream_only(ctx: RequestContext, what: str) -> None:
    if ctx.role == "mirror":
        raise RequestError(f"the mirror does not {what}: do it on W&B, the next sync follows")


def resolve_delete_run(_root: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict:
    """Tombstone the run: gone from listings and lookups, its rows kept."""
    ctx: RequestContext = info.context
    _upstream_only(ctx, "delete runs")
    ctx.end_read()
    with ctx.write() as conn:
        run = _live_run(conn, input["id"])
        now = utcnow()
        conn.execute(update(runs).where(runs.c.id == run["id"]).values(deleted_at=now))
    return {"clientMutationId": input.get("clientMutationId")}


def resolve_update_run_state(_root: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict:
    """Move a run to ``pending`` or ``failed`` where W&B allows it; refuse anything else."""
    ctx: RequestContext = info.context
    _upstream_only(ctx, "change run states")
    target = input["state"]
    ctx.end_read()
    with ctx.write() as conn:
        run = _live_run(conn, input["id"])
        allowed = ALLOWED_TRANSITIONS.get(target)
        if allowed is None:
            raise RequestError(
                f"cannot set run state to {target!r}: only "
                + " or ".join(repr(s) for s in ALLOWED_TRANSITIONS)
                + " can be set"
            )
        if run["sweep_name"]:
            raise RequestError("the state of a sweep run cannot be updated")
        if run["state"] not in allowed:
            raise RequestError(
                f"cannot change run state from {run['state']!r} to {target!r} "
                f"(allowed from: {', '.join(sorted(allowed))})"
            )
        entity, project = _names(conn, run["project_id"])
        node = {"name": run["name"], "id": run["storage_id"], "state": target}
        upsert_runs(conn, entity, project, [{**node, "updatedAt": utcnow()}])
    return {"success": True}


MUTATION_FIELDS = {
    "upsertBucket": guarded(resolve_upsert_bucket),
    "deleteRun": guarded(resolve_delete_run),
    "updateRunState": guarded(resolve_update_run_state),
}
