"""Local edits of runs, queued for W&B, and the mirror's view with them on top.

An edit is stored per run and per target (``summary``, ``config``, ``tags``, ``meta`` for the
notes) as a patch plus the remote values it was made against (``base``) and the remote values
the last pull or push saw (``remote``):

* summary, config, meta: ``{key: value}`` replaces a top-level key whole, ``{key: null}``
  deletes it (a JSON merge patch one level deep; config values wrapped as W&B stores them);
* tags: ``{"add": [...], "remove": [...]}``, which commutes with any remote change of the tags.

``runs`` always holds what the user should see: the remote values with the open edits on top.
So every reader (filters, order, ``mirror.Api``, the CLI, ``serve``) shows pending edits with
no change of its own, and a pull lays its fresh remote values *under* the edit rather than over
it (:func:`overlay`). ``base`` and ``remote`` keep a key that was absent apart from one holding
null: each key maps to ``[value]`` or ``[]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, RowMapping, delete, func, insert, select, update

from mirror.errors import MirrorError
from mirror.store.fields import dumps, loads
from mirror.store.index import reindex
from mirror.store.models import outbox, projects, runs
from mirror.store.upsert import utcnow

PENDING, WAITING, CONFLICT, FAILED = "pending", "waiting", "conflict", "failed"
OPEN = (PENDING, WAITING, CONFLICT, FAILED)
#: target → the ``runs`` column it edits
COLUMNS = {"summary": "summary_metrics", "config": "config", "tags": "tags", "meta": "notes"}
#: target → the W&B ``Run`` node field it edits
NODE_FIELDS = {"summary": "summaryMetrics", "config": "config", "tags": "tags", "meta": "notes"}


class EditError(MirrorError, ValueError):
    """An edit W&B could not take (deleting a config key) or that names nothing."""


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: the value of a summary key to delete
DELETE = _Delete()


@dataclass
class Edit:
    """What a user changed on one run, in the terms of ``wandb``'s Run object."""

    summary: dict[str, Any] = field(default_factory=dict)  # value, or DELETE
    config: dict[str, Any] = field(default_factory=dict)
    add_tags: list[str] = field(default_factory=list)
    remove_tags: list[str] = field(default_factory=list)
    notes: str | None = None
    set_notes: bool = False

    def patches(self) -> dict[str, dict[str, Any]]:
        """Target → patch; refuses what W&B cannot do."""
        found: dict[str, dict[str, Any]] = {}
        if self.summary:
            found["summary"] = {k: None if v is DELETE else v for k, v in self.summary.items()}
        if self.config:
            deleted = [k for k, v in self.config.items() if v is DELETE]
            if deleted:
                raise EditError(
                    f"config key {deleted[0]!r} cannot be deleted: W&B merges config and keeps "
                    "every key it has seen; set it to another value instead"
                )
            found["config"] = {k: {"value": v, "desc": None} for k, v in self.config.items()}
        if self.add_tags or self.remove_tags:
            found["tags"] = {"add": list(self.add_tags), "remove": list(self.remove_tags)}
        if self.set_notes:
            found["meta"] = {"notes": self.notes}
        return found


def apply(target: str, value: Any, patch: Mapping[str, Any]) -> Any:
    """A target's value with a patch on top (``value`` as the target's document)."""
    if target == "tags":
        tags = [t for t in value or [] if t not in patch.get("remove", [])]
        return tags + [t for t in patch.get("add", []) if t not in tags]
    doc = dict(value or {})
    for key, new in patch.items():
        if new is None:
            doc.pop(key, None)
        else:
            doc[key] = new
    return doc


def document(target: str, source: Mapping[str, Any], node: bool = False) -> Any:
    """A target's value out of a ``runs`` row (or, with ``node``, a W&B Run node)."""
    raw = source.get(NODE_FIELDS[target] if node else COLUMNS[target])
    if target == "meta":
        return {"notes": raw}
    if target == "tags":
        return loads(raw, []) if isinstance(raw, str) else list(raw or [])
    return (loads(raw, {}) if isinstance(raw, str) else raw) or {}


def _stored(target: str, doc: Any) -> Any:
    """A target's document as its ``runs`` column / node field holds it."""
    if target == "meta":
        return doc["notes"]
    return dumps(doc)


def held(target: str, doc: Any, patch: Mapping[str, Any]) -> dict[str, list[Any]]:
    """What ``doc`` holds at the keys ``patch`` touches (tags: the whole list)."""
    if target == "tags":
        return {"tags": [list(doc)]}
    return {key: [doc[key]] if key in doc else [] for key in patch}


@dataclass(frozen=True)
class OpenEdit:
    """An open edit, decoded."""

    id: int
    run_id: int
    target: str
    patch: dict[str, Any]
    base: dict[str, Any]  # {"createdAt": ..., "values": {key: [v] | []}}
    remote: dict[str, list[Any]]
    status: str
    attempts: int
    last_error: str | None
    updated_at: str

    @classmethod
    def of(cls, row: RowMapping) -> OpenEdit:
        base = loads(row["base"], {})
        return cls(
            id=row["id"],
            run_id=row["run_id"],
            target=row["target"],
            patch=loads(row["patch"], {}),
            base=base,
            remote=loads(row["remote"], None) or base.get("values", {}),
            status=row["status"],
            attempts=row["attempts"],
            last_error=row["last_error"],
            updated_at=row["updated_at"],
        )


def pushable(conn: Connection, with_conflicts: bool) -> int:
    """How many edits a push would try (conflicts only under a policy that settles them)."""
    statuses = [PENDING, WAITING, FAILED] + ([CONFLICT] if with_conflicts else [])
    query = select(func.count()).select_from(outbox).where(outbox.c.status.in_(statuses))
    return int(conn.execute(query).scalar_one())


def open_edits(conn: Connection, run_ids: Iterable[int]) -> dict[int, list[OpenEdit]]:
    """Run id → its open edits."""
    ids = list(run_ids)
    found: dict[int, list[OpenEdit]] = {}
    for start in range(0, len(ids), 500):
        query = select(outbox).where(
            outbox.c.run_id.in_(ids[start : start + 500]), outbox.c.status.in_(OPEN)
        )
        for row in conn.execute(query.order_by(outbox.c.id)).mappings():
            found.setdefault(row["run_id"], []).append(OpenEdit.of(row))
    return found


def _merge(target: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    if target != "tags":
        return {**old, **new}
    add = [t for t in old.get("add", []) if t not in new["remove"]]
    remove = [t for t in old.get("remove", []) if t not in new["add"]]
    add += [t for t in new["add"] if t not in add]
    remove += [t for t in new["remove"] if t not in remove]
    return {"add": add, "remove": remove}


def record_edit(conn: Connection, run: RowMapping, edit: Edit) -> list[int]:
    """Queue an edit of a live run and show it at once; returns the outbox ids it touched.

    One transaction (the caller's): the outbox rows and the run's visible values change
    together. A further edit of the same run merges into its open edit, whose base stays the
    remote value the first edit was made against.
    """
    patches = edit.patches()
    if not patches:
        raise EditError("nothing to edit: give a summary, config, tag or notes change")
    now = utcnow()
    existing = {e.target: e for e in open_edits(conn, [run["id"]]).get(run["id"], [])}
    changes: dict[str, Any] = {}
    touched = []
    for target, patch in patches.items():
        current = document(target, run)
        old = existing.get(target)
        if old is None:
            values = held(target, current, patch)
            base = {"createdAt": run["created_at"], "values": values}
            row_id = conn.execute(
                insert(outbox)
                .values(
                    run_id=run["id"],
                    created_at=now,
                    updated_at=now,
                    target=target,
                    patch=dumps(patch),
                    base=dumps(base),
                    remote=dumps(values),
                    status=PENDING,
                    attempts=0,
                )
                .returning(outbox.c.id)
            ).scalar_one()
        else:
            # keys touched for the first time: the visible value is still the remote one
            fresh = {k: v for k, v in held(target, current, patch).items() if k not in old.remote}
            base = {**old.base, "values": {**fresh, **old.base.get("values", {})}}
            row_id = old.id
            conn.execute(
                update(outbox)
                .where(outbox.c.id == old.id)
                .values(
                    patch=dumps(_merge(target, old.patch, patch)),
                    base=dumps(base),
                    remote=dumps({**fresh, **old.remote}),
                    status=PENDING,
                    last_error=None,
                    updated_at=now,
                )
            )
        touched.append(row_id)
        changes[COLUMNS[target]] = _stored(target, apply(target, current, patch))
    conn.execute(update(runs).where(runs.c.id == run["id"]).values(**changes))
    reindex(conn, run["project_id"], [run["id"]])
    return touched


def _restore(doc: Any, values: Mapping[str, list[Any]]) -> Any:
    """``doc`` with the keys of ``values`` put back to what they hold."""
    out = dict(doc)
    for key, held_value in values.items():
        if held_value:
            out[key] = held_value[0]
        else:
            out.pop(key, None)
    return out


def overlay(conn: Connection, nodes: Sequence[dict[str, Any]], run_ids: Mapping[str, int]) -> None:
    """Lay pulled W&B values under the open edits of their runs (nodes changed in place).

    The edit's ``remote`` learns what W&B holds now, and the node, about to be written to
    ``runs``, carries that value with the patch on top: a pull never overwrites an edit.
    """
    by_run = open_edits(conn, [run_ids[n["name"]] for n in nodes if n["name"] in run_ids])
    for node in nodes:
        for edit in by_run.get(run_ids.get(node["name"], -1), []):
            field_name = NODE_FIELDS[edit.target]
            if field_name not in node:
                continue
            remote_doc = document(edit.target, node, node=True)
            remote = held(edit.target, remote_doc, edit.patch)
            conn.execute(update(outbox).where(outbox.c.id == edit.id).values(remote=dumps(remote)))
            shown = apply(edit.target, remote_doc, edit.patch)
            node[field_name] = shown["notes"] if edit.target == "meta" else dumps(shown)


def set_status(conn: Connection, edit_id: int, status: str, reason: str | None = None) -> None:
    """Move an edit to ``status`` (one of OPEN), with the reason shown to the user."""
    conn.execute(
        update(outbox)
        .where(outbox.c.id == edit_id)
        .values(
            status=status,
            last_error=None if reason is None else reason[:1000],
            attempts=outbox.c.attempts + (1 if status == FAILED else 0),
            updated_at=utcnow(),
        )
    )


def record_remote(conn: Connection, edit_id: int, remote: Mapping[str, list[Any]]) -> None:
    """What W&B holds now at the edit's keys (shown beside the edit in a conflict)."""
    conn.execute(update(outbox).where(outbox.c.id == edit_id).values(remote=dumps(dict(remote))))


def finish(conn: Connection, edit_id: int) -> None:
    """The edit is on W&B: it leaves the outbox."""
    conn.execute(delete(outbox).where(outbox.c.id == edit_id))


def drop_keys(conn: Connection, edit: OpenEdit, keys: Iterable[str]) -> None:
    """Give up the edit of some keys (the remote side wins them); the run shows W&B's values."""
    keys = set(keys)
    patch = {k: v for k, v in edit.patch.items() if k not in keys}
    run = conn.execute(select(runs).where(runs.c.id == edit.run_id)).mappings().one()
    restored = _restore(document(edit.target, run), {k: edit.remote.get(k, []) for k in keys})
    conn.execute(
        update(runs)
        .where(runs.c.id == edit.run_id)
        .values({COLUMNS[edit.target]: _stored(edit.target, restored)})
    )
    if patch:
        conn.execute(
            update(outbox)
            .where(outbox.c.id == edit.id)
            .values(patch=dumps(patch), status=PENDING, last_error=None, updated_at=utcnow())
        )
    else:
        finish(conn, edit.id)
    reindex(conn, run["project_id"], [edit.run_id])


def discard(conn: Connection, edit: OpenEdit) -> None:
    """Forget the edit: the run shows W&B's values again."""
    if edit.target == "tags":
        run = conn.execute(select(runs).where(runs.c.id == edit.run_id)).mappings().one()
        remote = edit.remote.get("tags", [[]])
        conn.execute(
            update(runs)
            .where(runs.c.id == edit.run_id)
            .values(tags=dumps(remote[0] if remote else []))
        )
        finish(conn, edit.id)
        reindex(conn, run["project_id"], [edit.run_id])
        return
    drop_keys(conn, edit, list(edit.patch))


def rebase(
    conn: Connection, edit: OpenEdit, remote: Mapping[str, list[Any]], created_at: str
) -> None:
    """Take the local side of a conflict: the edit now counts as made against ``remote``."""
    base = {"createdAt": created_at, "values": dict(remote)}
    conn.execute(
        update(outbox)
        .where(outbox.c.id == edit.id)
        .values(base=dumps(base), status=PENDING, last_error=None, updated_at=utcnow())
    )


@dataclass(frozen=True)
class EditView:
    """An open edit as ``outbox list`` shows it."""

    id: int
    path: str  # entity/project/run
    target: str
    status: str
    keys: list[str]
    local: dict[str, Any]  # key → the edited value (None: deleted)
    remote: dict[str, Any]  # key → W&B's value at the last look (absent keys left out)
    reason: str | None


def describe(conn: Connection) -> list[EditView]:
    """Every open edit, oldest first."""
    query = (
        select(outbox, runs.c.name, projects.c.entity, projects.c.name.label("project"))
        .select_from(outbox.join(runs, runs.c.id == outbox.c.run_id).join(projects))
        .where(outbox.c.status.in_(OPEN))
        .order_by(outbox.c.id)
    )
    views = []
    for row in conn.execute(query).mappings():
        edit = OpenEdit.of(row)
        if edit.target == "tags":
            keys = [f"+{t}" for t in edit.patch.get("add", [])]
            keys += [f"-{t}" for t in edit.patch.get("remove", [])]
            local = {"tags": edit.patch}
            remote = {k: v[0] for k, v in edit.remote.items() if v}
        else:
            keys = list(edit.patch)
            local = {k: _shown_value(edit.target, v) for k, v in edit.patch.items()}
            remote = {k: _shown_value(edit.target, v[0]) for k, v in edit.remote.items() if v}
        views.append(
            EditView(
                id=edit.id,
                path=f"{row['entity']}/{row['project']}/{row['name']}",
                target=edit.target,
                status=edit.status,
                keys=keys,
                local=local,
                remote=remote,
                reason=edit.last_error,
            )
        )
    return views


def _shown_value(target: str, value: Any) -> Any:
    """Config values unwrapped, as users set and read them."""
    if target == "config" and isinstance(value, dict) and "value" in value:
        return value["value"]
    return value


def resolve(conn: Connection, edit_id: int, take: str) -> str:
    """Settle an open edit: ``local`` pushes it over W&B's value, ``remote`` gives up the keys
    W&B changed, ``discard`` forgets it; returns what was done, in words."""
    row = conn.execute(select(outbox).where(outbox.c.id == edit_id)).mappings().first()
    if row is None or row["status"] not in OPEN:
        raise EditError(f"no open edit {edit_id}; `wandb-mirror outbox list` shows them")
    edit = OpenEdit.of(row)
    run = conn.execute(select(runs).where(runs.c.id == edit.run_id)).mappings().one()
    if take == "discard":
        discard(conn, edit)
        return f"edit {edit_id} discarded; the run shows W&B's values again"
    if take == "local":
        if run["deleted_at"] is not None:
            raise EditError(f"the run of edit {edit_id} is gone from W&B; discard the edit")
        rebase(conn, edit, edit.remote, run["created_at"])
        return f"edit {edit_id} will be pushed over W&B's values at the next push"
    if take != "remote":
        raise EditError(f"--take must be local, remote or discard, not {take!r}")
    base = edit.base.get("values", {})
    moved = [k for k in edit.patch if dumps(edit.remote.get(k)) != dumps(base.get(k))]
    if edit.target == "tags" or not moved:
        discard(conn, edit)
        return f"edit {edit_id} discarded: W&B's values kept"
    drop_keys(conn, edit, moved)
    return f"edit {edit_id}: W&B's values kept for {', '.join(moved)}"
