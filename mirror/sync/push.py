"""Pushing queued edits to W&B without losing anyone's change.

W&B's own write path is read-modify-write with the last writer winning, so the push is the
conflict detection W&B lacks. For each batch of runs with open edits:

1. read the runs from W&B (one request for up to ``record_batch`` runs);
2. per edited key: if W&B still holds the value the edit was made against, or already holds the
   edited value, the edit applies; if W&B moved it to something else, the key conflicts and the
   policy decides (``abort``: the edit becomes a visible conflict; ``local-wins``;
   ``remote-wins``). Tags are a set and always merge. A summary key that a *running* run logs
   would be overwritten by the run itself, so such an edit waits until the run has ended;
3. one ``upsertBucket`` per run (several runs at once) writes the merged summary (W&B replaces it whole), only the
   edited config keys (W&B deep-merges config), the merged tags and the notes;
4. read the runs back (one request per batch) and mark an edit done only if W&B holds it.

A run deleted on W&B, or deleted and created again under the same id, turns its edits into
conflicts: they are never pushed to a run they were not made on. A kill at any step is safe: the
next push finds the keys already at their edited values, which counts as applied.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from mirror.errors import CommError
from mirror.remote.client import AuthError
from mirror.remote.project import ProjectNotFound, RemoteProject
from mirror.store import outbox
from mirror.store.engine import write_transaction
from mirror.store.fields import dumps
from mirror.store.models import outbox as outbox_table
from mirror.store.models import runs
from mirror.store.outbox import OpenEdit
from mirror.store.read import find_project
from mirror.store.upsert import upsert_runs

POLICIES = ("abort", "local-wins", "remote-wins")


@dataclass
class PushReport:
    """What one push of one project did."""

    path: str
    pushed: int = 0
    conflicts: int = 0
    waiting: int = 0
    failed: int = 0
    requests: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not (self.conflicts or self.failed)

    def line(self) -> str:
        if self.error:
            return f"{self.path}: edits not pushed: {self.error}"
        return (
            f"{self.path}: {self.pushed} edits pushed, {self.conflicts} in conflict, "
            f"{self.waiting} waiting, {self.failed} failed, {self.requests} requests, "
            f"{self.seconds:.1f}s"
        )


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (NaN equals NaN, 1 equals 1.0 only when W&B sends it so)."""
    return dumps(a) == dumps(b)


def _values(edit: OpenEdit, node: dict[str, Any]) -> tuple[Any, dict[str, list[Any]]]:
    doc = outbox.document(edit.target, node, node=True)
    return doc, outbox.held(edit.target, doc, edit.patch)


def _config_values(held: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Config keys compared by their value, not W&B's ``desc`` beside it."""
    return {
        k: [v[0].get("value") if isinstance(v[0], dict) else v[0]] if v else []
        for k, v in held.items()
    }


@dataclass
class _Decision:
    edit: OpenEdit
    patch: dict[str, Any]  # what to apply (conflicting keys removed under remote-wins)
    done: bool = False  # W&B already holds the edited values


class Pusher:
    """Push one project's open edits; ``run()`` once."""

    def __init__(
        self,
        engine: Engine,
        remote: RemoteProject,
        policy: str = "abort",
        wait_for_running: bool = True,
        batch: int = 100,
        concurrency: int = 4,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown conflict policy {policy!r}; use one of {POLICIES}")
        self.engine = engine
        self.remote = remote
        self.policy = policy
        self.wait_for_running = wait_for_running
        self.batch = batch
        self.concurrency = concurrency
        self.report = PushReport(remote.path)
        self._ids: dict[str, int] = {}

    def run(self) -> PushReport:
        started = time.perf_counter()
        before = self.remote.client.stats.requests
        try:
            work = self._open()
            names = list(work)
            for start in range(0, len(names), self.batch):
                self._push_batch({n: work[n] for n in names[start : start + self.batch]})
        except (AuthError, ProjectNotFound):
            raise
        except CommError as exc:
            self.report.error = exc.message
        self.report.requests = self.remote.client.stats.requests - before
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _open(self) -> dict[str, list[OpenEdit]]:
        """Run name → its pushable edits. Conflicts wait for ``outbox resolve``
        under ``abort``; a push told to let one side win settles them with it."""
        with self.engine.connect() as conn:
            project = find_project(conn, self.remote.entity, self.remote.project)
            if project is None:
                return {}
            edited = (
                select(runs.c.id, runs.c.name)
                .where(runs.c.project_id == project["id"])
                .where(select(outbox_table.c.id).where(outbox_table.c.run_id == runs.c.id).exists())
            )
            names = dict(conn.execute(edited).all())  # only the runs with edits: no JSON read
            edits = outbox.open_edits(conn, names)
        self._ids = {name: run_id for run_id, name in names.items()}
        work = {}
        for run_id, found in edits.items():
            pushable = [e for e in found if e.status != outbox.CONFLICT or self.policy != "abort"]
            self.report.conflicts += len(found) - len(pushable)
            if pushable:
                work[names[run_id]] = pushable
        return work

    def _push_batch(self, work: dict[str, list[OpenEdit]]) -> None:
        """Read, decide, write the runs' edits at once (``concurrency`` writes in flight), verify."""
        nodes = {n["name"]: n for n in self.remote.records(list(work))}
        decided: dict[str, list[_Decision]] = {}
        for name, edits in work.items():
            decisions = self._decide(edits, nodes.get(name))
            if decisions:
                decided[name] = decisions
        to_write = {n: d for n, d in decided.items() if not all(x.done for x in d)}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="mirror-push") as pool:
            sent = {
                name: pool.submit(self.remote.push_edit, self._input(nodes[name], decisions))
                for name, decisions in to_write.items()
            }
            for name, future in sent.items():
                try:
                    future.result()
                except (AuthError, ProjectNotFound):
                    raise
                except CommError as exc:
                    self._mark(decided.pop(name), outbox.FAILED, exc.message)
        if decided:
            self._verify(decided)

    def _decide(self, edits: Sequence[OpenEdit], node: dict[str, Any] | None) -> list[_Decision]:
        """What to push of each edit of one run; conflicts and waits are recorded here."""
        if node is None:
            self._mark_edits(edits, outbox.CONFLICT, "the run was deleted on W&B")
            return []
        created = edits[0].base.get("createdAt")
        if created and node.get("createdAt") != created:
            self._mark_edits(edits, outbox.CONFLICT, "the run was deleted on W&B and created again")
            return []
        decisions = []
        logged = set(((node.get("historyKeys") or {}).get("keys") or {}).keys())
        for edit in edits:
            remote_doc, now = _values(edit, node)
            raw_now = now
            if edit.target == "tags":
                decisions.append(
                    _Decision(
                        edit,
                        edit.patch,
                        _same(outbox.apply("tags", remote_doc, edit.patch), remote_doc),
                    )
                )
                continue
            desired = outbox.held(
                edit.target, outbox.apply(edit.target, remote_doc, edit.patch), edit.patch
            )
            base = edit.base.get("values", {})
            if edit.target == "config":
                now, desired, base = (
                    _config_values(now),
                    _config_values(desired),
                    _config_values(base),
                )
            clashing = [
                k
                for k in edit.patch
                if not _same(now[k], base.get(k, now[k])) and not _same(now[k], desired[k])
            ]
            patch = dict(edit.patch)
            if clashing and self.policy == "abort":
                detail = "; ".join(
                    f"{k}: local {desired[k][0] if desired[k] else '(deleted)'!r}, "
                    f"W&B now {now[k][0] if now[k] else '(absent)'!r}"
                    for k in clashing[:5]
                )
                self._conflict(edit, raw_now, f"changed on both sides: {detail}")
                continue
            if clashing and self.policy == "remote-wins":
                patch = {k: v for k, v in patch.items() if k not in clashing}
            if (
                edit.target == "summary"
                and self.wait_for_running
                and node.get("state") == "running"
                and logged & set(patch)
            ):
                keys = ", ".join(sorted(logged & set(patch))[:5])
                self._mark_edits(
                    [edit], outbox.WAITING, f"the run is running and logs {keys} itself"
                )
                continue
            done = all(_same(now[k], desired[k]) for k in patch)
            decisions.append(_Decision(edit, patch, done))
        return decisions

    def _input(self, node: dict[str, Any], decisions: list[_Decision]) -> dict[str, Any]:
        """The ``upsertBucket`` input that writes every decided edit of one run."""
        fields: dict[str, Any] = {"id": node["id"]}
        for d in decisions:
            target = d.edit.target
            remote_doc = outbox.document(target, node, node=True)
            if target == "summary":
                fields["summaryMetrics"] = dumps(outbox.apply(target, remote_doc, d.patch))
            elif target == "config":
                fields["config"] = dumps(d.patch)  # only the edited keys: W&B merges config
            elif target == "tags":
                fields["tags"] = outbox.apply(target, remote_doc, d.patch)
            else:
                fields["notes"] = d.patch.get("notes", remote_doc["notes"])
        return fields

    def _verify(self, written: dict[str, list[_Decision]]) -> None:
        """Read the runs back; an edit is done only when W&B holds its values."""
        nodes = {n["name"]: n for n in self.remote.records(list(written))}
        with write_transaction(self.engine) as conn:
            fresh = [nodes[n] for n in written if n in nodes]
            for name, decisions in written.items():
                node = nodes.get(name)
                for d in decisions:
                    if node is not None and self._holds(node, d):
                        # keys given up to the remote side show W&B's value with the fresh record
                        outbox.finish(conn, d.edit.id)
                        self.report.pushed += 1
                    else:
                        outbox.set_status(
                            conn, d.edit.id, outbox.FAILED, "W&B did not keep the edit"
                        )
                        self.report.failed += 1
            if fresh:
                run_ids = {name: self._ids[name] for name in written if name in nodes}
                outbox.overlay(conn, fresh, run_ids)
                upsert_runs(conn, self.remote.entity, self.remote.project, fresh)

    def _holds(self, node: dict[str, Any], d: _Decision) -> bool:
        remote_doc, now = _values(d.edit, node)
        if d.edit.target == "tags":
            return _same(outbox.apply("tags", remote_doc, d.patch), remote_doc)
        want = outbox.held(d.edit.target, outbox.apply(d.edit.target, remote_doc, d.patch), d.patch)
        if d.edit.target == "config":
            now, want = _config_values(now), _config_values(want)
        return all(_same(now[k], want[k]) for k in d.patch)

    # --- bookkeeping ---------------------------------------------------------------------------

    def _mark_edits(self, edits: Sequence[OpenEdit], status: str, reason: str) -> None:
        with write_transaction(self.engine) as conn:
            for edit in edits:
                outbox.set_status(conn, edit.id, status, reason)
        counter = {outbox.CONFLICT: "conflicts", outbox.WAITING: "waiting"}.get(status, "failed")
        setattr(self.report, counter, getattr(self.report, counter) + len(edits))
        self.report.problems.append(reason)

    def _mark(self, decisions: Sequence[_Decision], status: str, reason: str) -> None:
        self._mark_edits([d.edit for d in decisions], status, reason)

    def _conflict(self, edit: OpenEdit, now: dict[str, list[Any]], reason: str) -> None:
        """A conflict shows both sides: the edit's patch, and W&B's values in ``remote``."""
        with write_transaction(self.engine) as conn:
            outbox.record_remote(conn, edit.id, now)
        self._mark_edits([edit], outbox.CONFLICT, reason)
