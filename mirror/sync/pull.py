"""One pull cycle of one project: listing, records of the runs that moved, their history.

Fetching runs on a pool of threads (W&B answers slowly, so many runs are fetched at once); every
write happens on the calling thread, one transaction per page of records or of history, so there
is one writer and each page commits together with its resume point:

* a record batch commits the runs; a run whose history needs nothing more gets its fingerprint
  in the same transaction;
* a page of history commits its rows (the last mirrored step *is* the resume point), and the
  run's last page commits its fingerprint too.

A run without a current fingerprint is fetched again next cycle, so a kill at any moment, even
``kill -9``, loses nothing and duplicates nothing: the next cycle re-reads that run's record and
continues its history after the last mirrored step.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine

from mirror.config import HistoryChoice, SyncSettings
from mirror.errors import CommError
from mirror.remote.client import AuthError
from mirror.remote.parquet import ExportedFile
from mirror.remote.project import ProjectNotFound, RemoteProject
from mirror.store import outbox
from mirror.store.engine import analyze_if_stale, write_transaction
from mirror.store.history import step_of
from mirror.store.read import find_project, find_run
from mirror.store.upsert import append_history, ensure_project, upsert_runs, utcnow
from mirror.sync import state
from mirror.sync.exports import CheckedExport, check_export
from mirror.sync.plan import (
    HistoryNeed,
    data_moved,
    fingerprint,
    history_need,
    keep_keys,
    plan_listing,
    settled,
)

log = logging.getLogger("mirror.sync")

#: ``maxStep`` for a window that runs to the end of a run's history
END_OF_HISTORY = 2**62
#: windows tried for a run whose history W&B gives no last step for, before giving up on it
MAX_OPEN_WINDOWS = 10_000


@dataclass(frozen=True)
class PullOptions:
    """What one cycle does beyond the configured defaults."""

    full: bool = False  # every run treated as moved: catches UI edits, resumes, rewrites
    history: HistoryChoice = True
    force_deletions: bool = False


class Progress:
    """Progress callbacks; the default shows nothing (the CLI draws bars on a terminal)."""

    def start(self, path: str, runs: int, rows: int) -> None:
        """A project's fetch begins: ``runs`` to fetch, about ``rows`` history rows."""

    def more_rows(self, rows: int) -> None:
        """More history rows turned out to be due (a run's record said so)."""

    def advance(self, runs: int = 0, rows: int = 0) -> None:
        """Runs finished and rows written since the last call."""

    def finish(self) -> None:
        """The project is done."""


@dataclass
class PullReport:
    """What one cycle of one project did: the closing summary line, and what went wrong."""

    path: str
    new: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    history_rows: int = 0
    event_rows: int = 0
    requests: int = 0
    retries: int = 0
    downloads: int = 0
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)  # run name → reason
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the project could not be synced at all
    held_back: str | None = None  # why deletions were not applied (listing incomplete, guard)

    @property
    def ok(self) -> bool:
        """Everything W&B holds is mirrored, deletions included."""
        return self.error is None and not self.skipped and self.held_back is None

    def line(self) -> str:
        if self.error:
            return f"{self.path}: not synced: {self.error}"
        downloads = f", {self.downloads} file downloads" if self.downloads else ""
        return (
            f"{self.path}: {self.new} runs new, {self.changed} changed, {self.deleted} deleted, "
            f"{self.history_rows:,} history rows, {self.requests} requests{downloads}, "
            f"{self.retries} retries, {len(self.skipped)} skipped, {self.seconds:.1f}s"
        )


@dataclass
class _RunWork:
    """One run's fetch of history and events, decided from its record."""

    name: str
    run_id: int
    fingerprint: str
    need: HistoryNeed
    events: bool
    parquet: bool


def _has_events(node: dict[str, Any]) -> bool:
    """W&B keeps a run's latest system metrics in ``systemMetrics``: empty, it logged none."""
    found = node.get("systemMetrics")
    return found not in (None, "", "{}", {})


class _ExportOdds:
    """Whether asking for exports still pays this cycle: a W&B that has exported none of the
    first few runs asked about (a server without exports) is not asked for each of the rest."""

    GIVE_UP_AFTER = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.found = 0
        self.missing = 0

    def saw(self, exported: bool) -> None:
        with self._lock:
            if exported:
                self.found += 1
            else:
                self.missing += 1

    def worth_asking(self) -> bool:
        with self._lock:
            return self.found > 0 or self.missing < self.GIVE_UP_AFTER


class _Stopped(Exception):
    """The cycle is being abandoned (interrupted, or a fatal error elsewhere)."""


class ProjectPull:
    """Pull one project into the store; ``run()`` once."""

    def __init__(
        self,
        engine: Engine,
        remote: RemoteProject,
        settings: SyncSettings,
        options: PullOptions | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.engine = engine
        self.remote = remote
        self.settings = settings
        self.options = options or PullOptions()
        self.progress = progress or Progress()
        self.report = PullReport(remote.path)
        history = self.options.history
        self.keys: tuple[str, ...] | None = history if isinstance(history, tuple) else None
        self.with_history = history is not False
        self.mode = "none" if not self.with_history else ",".join(self.keys or ("*",))
        self._messages: queue.Queue[tuple[Any, ...]] = queue.Queue(
            maxsize=max(2, settings.concurrency * 2)
        )
        self._stop = threading.Event()
        self._local_ids: dict[str, int] = {}
        self._exports = _ExportOdds()

    # --- the cycle -------------------------------------------------------------------------

    def run(self) -> PullReport:
        """List, plan, fetch and write; a failure of the whole project lands in ``error``."""
        started_clock = time.perf_counter()
        started = utcnow()
        client = self.remote.client
        before = (client.stats.requests, client.stats.retries, client.stats.downloads)
        try:
            self._cycle(started)
        except (ProjectNotFound, AuthError):
            raise
        except CommError as exc:
            self.report.error = exc.message
            self._record_failure(exc.message)
        finally:
            self.progress.finish()
            stats = client.stats
            self.report.requests = stats.requests - before[0]
            self.report.retries = stats.retries - before[1]
            self.report.downloads = stats.downloads - before[2]
            self.report.seconds = time.perf_counter() - started_clock
        self._record_outcome(started)
        return self.report

    def _record_failure(self, reason: str) -> None:
        with write_transaction(self.engine) as conn:
            found = find_project(conn, self.remote.entity, self.remote.project)
            if found is not None:
                state.record_pull(conn, found["id"], last_error=reason[:500])

    def _record_outcome(self, started: str) -> None:
        if self.report.error:
            return
        report = self.report
        reason = report.held_back
        if report.skipped:
            first = next(iter(report.skipped.items()))
            reason = f"{len(report.skipped)} runs skipped, e.g. {first[0]}: {first[1]}"[:500]
        with write_transaction(self.engine) as conn:
            project_id = ensure_project(conn, self.remote.entity, self.remote.project)
            now = utcnow()
            values: dict[str, Any] = {
                "last_pull_started_at": started,
                "last_pull_finished_at": now,
                "last_error": reason,
                "last_summary": report.line(),
            }
            if report.ok:
                values["last_success_at"] = started
            if self.options.full:
                values["last_reconcile_at"] = now
            state.record_pull(conn, project_id, **values)

    def _cycle(self, started: str) -> None:
        listed, run_count, complete = self._list()
        with write_transaction(self.engine) as conn:
            project_id = ensure_project(conn, self.remote.entity, self.remote.project)
            local = state.local_runs(conn, project_id)
            plan = plan_listing(
                listed,
                local,
                mode=self.mode,
                complete=complete,
                full=self.options.full,
                max_delete_fraction=self.settings.max_delete_fraction,
                force_deletions=self.options.force_deletions,
            )
            self._local_ids = {run.name: run.id for run in local}
            state.tombstone(conn, [self._local_ids[name] for name in plan.gone])
            state.record_pull(
                conn, project_id, last_pull_started_at=started, remote_run_count=run_count
            )
        self.report.held_back = plan.guard or (
            None if complete else "W&B's listing stayed incomplete, so no run was tombstoned"
        )
        old = {run.name: run.fingerprint for run in local}
        self.report.deleted = len(plan.gone)
        self.report.unchanged = plan.unchanged
        self._fetch(plan.to_fetch, listed, old, set(plan.new), set(plan.revived))
        if self.report.new:
            analyze_if_stale(self.engine)

    # --- listing -----------------------------------------------------------------------------

    def _list(self) -> tuple[dict[str, dict[str, Any]], int, bool]:
        """Every run W&B lists, deduplicated, checked against ``runCount``.

        W&B repeats and skips runs across pages while ``runCount`` stays right (issues 6614,
        7666): when the distinct runs fall short, the listing is read again in the other order,
        and then for exactly the runs not yet seen, before the cycle goes on.
        """
        page_size = self.settings.listing_page
        listed: dict[str, dict[str, Any]] = {}
        count = self._read_listing(listed, page_size, "+created_at")
        if len(listed) < count:
            short = count - len(listed)
            self.report.notes.append(
                f"W&B's listing repeated runs and left out {short} of {count}; listed again"
            )
            self._read_listing(listed, page_size, "-created_at")
            for _ in range(3):
                if len(listed) >= count:
                    break
                self._read_listing(
                    listed, page_size, "+created_at", {"name": {"$nin": sorted(listed)}}
                )
        complete = len(listed) >= count
        if not complete:
            self.report.notes.append(
                f"W&B's listing gave {len(listed)} distinct runs of {count}; the missing ones "
                "are fetched next cycle"
            )
        return listed, count, complete

    def _read_listing(
        self,
        listed: dict[str, dict[str, Any]],
        page_size: int,
        order: str,
        filters: dict[str, Any] | None = None,
    ) -> int:
        count = 0
        for page in self.remote.listing(page_size, order=order, filters=filters):
            if filters is None:
                count = page.run_count
            for node in page.nodes:
                listed[node["name"]] = node
        return count if filters is None else len(listed)

    # --- fetching and writing ----------------------------------------------------------------

    def _fetch(
        self,
        names: Sequence[str],
        listed: dict[str, dict[str, Any]],
        old: dict[str, str | None],
        new: set[str],
        revived: set[str],
    ) -> None:
        if not names:
            return
        rows_due = sum(
            max(0, int(listed[n].get("historyLineCount") or 0)) for n in names if n in new
        )
        self.progress.start(self.remote.path, len(names), rows_due if self.with_history else 0)
        batch = self.settings.record_batch
        pending = 0
        with ThreadPoolExecutor(
            max_workers=self.settings.concurrency, thread_name_prefix="mirror-sync"
        ) as pool:
            try:
                for start in range(0, len(names), batch):
                    pool.submit(self._job, self._records_job, list(names[start : start + batch]))
                    pending += 1
                while pending:
                    message = self._messages.get()
                    kind = message[0]
                    if kind == "records":
                        work = self._write_records(
                            message[1], message[2], listed, old, new, revived
                        )
                        for item in work:
                            pool.submit(self._job, self._history_job, item)
                        pending += len(work) - 1
                    elif kind == "rows":
                        _, item, stream, rows, final = message
                        self._write_rows(item, stream, rows, final)
                        pending -= 1 if final else 0
                    elif kind == "note":
                        self.report.notes.append(message[1])
                    elif kind == "failed":
                        _, what, reason = message
                        self._skip(what, reason)
                        pending -= 1
                    else:  # "fatal": an AuthError or a bug in a worker
                        raise message[1]
            except BaseException:
                self._stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                self._stop.set()
                self._drain()

    def _drain(self) -> None:
        """Unblock workers waiting to hand over a message, so the pool can shut down."""
        while True:
            try:
                self._messages.get_nowait()
            except queue.Empty:
                return

    def _emit(self, *message: Any) -> None:
        while not self._stop.is_set():
            try:
                self._messages.put(message, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _job(self, fn: Callable[[Any], None], item: Any) -> None:
        """Run a fetch on a worker thread; its failure becomes a message to the writer."""
        try:
            if self._stop.is_set():
                return
            fn(item)
        except _Stopped:
            return
        except (AuthError, ProjectNotFound) as exc:
            self._try_emit("fatal", exc)
        except CommError as exc:
            what = item if isinstance(item, list) else [item.name]
            self._try_emit("failed", what, exc.message)
        except BaseException as exc:  # a bug: the writer re-raises it with its traceback
            self._try_emit("fatal", exc)

    def _try_emit(self, *message: Any) -> None:
        with contextlib.suppress(_Stopped):
            self._emit(*message)

    def _records_job(self, names: list[str]) -> None:
        self._emit("records", names, self.remote.records(names))

    def _write_records(
        self,
        names: list[str],
        nodes: list[dict[str, Any]],
        listed: dict[str, dict[str, Any]],
        old: dict[str, str | None],
        new: set[str],
        revived: set[str],
    ) -> list[_RunWork]:
        """Upsert a batch of records; decide each run's history work (one transaction)."""
        wanted = set(names)
        nodes = [n for n in nodes if n.get("name") in wanted]
        work: list[_RunWork] = []
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with write_transaction(self.engine) as conn:
            outbox.overlay(conn, nodes, self._local_ids)  # W&B's values go under open edits
            ids = upsert_runs(conn, self.remote.entity, self.remote.project, nodes)
            for name in revived & ids.keys():
                state.drop_history(conn, ids[name])
            mirrored = state.mirrored_history(conn, list(ids.values()))
            for node in nodes:
                name = node["name"]
                run_id = ids[name]
                mark = fingerprint(
                    listed[name], self.mode, settled(listed[name], now, self.settings.lag_window)
                )
                if not self.with_history:
                    state.mark_synced(conn, run_id, mark)
                    continue
                need = history_need(node, *mirrored.get(run_id, (0, None)))
                if need.rewritten:
                    state.drop_history(conn, run_id)
                events = (
                    need.rewritten or self.options.full or data_moved(old.get(name), mark)
                ) and _has_events(node)
                if not need.wanted and not events:
                    state.mark_synced(conn, run_id, mark)
                    continue
                # W&B exports a run some hours after it ends: asking earlier costs a request
                parquet = (
                    self.settings.parquet
                    and node.get("state") == "finished"
                    and need.remaining >= max(1, self.settings.parquet_min_rows)
                    and settled(
                        {"heartbeatAt": node.get("heartbeatAt")}, now, self.settings.parquet_after
                    )
                )
                work.append(_RunWork(name, run_id, mark, need, events, parquet))
                if name not in new:
                    self.progress.more_rows(max(0, need.remaining))
        returned = {n["name"] for n in nodes}
        self.report.new += len(returned & new)
        self.report.changed += len(returned - new)
        done = len(returned) - len(work)
        self.progress.advance(runs=done + len(wanted - returned))
        return work

    def _write_rows(
        self, item: _RunWork, stream: str, rows: list[dict[str, Any]], final: bool
    ) -> None:
        """One page of a run's history or events, and its fingerprint with the last page."""
        kept = keep_keys(rows, self.keys) if stream == "history" else rows
        with write_transaction(self.engine) as conn:
            added = append_history(conn, item.run_id, kept, stream) if kept else 0
            if final:
                state.mark_synced(conn, item.run_id, item.fingerprint)
        if stream == "history":
            self.report.history_rows += added
            self.progress.advance(rows=added)
        else:
            self.report.event_rows += added
        if final:
            self.report.skipped.pop(item.name, None)
            self.progress.advance(runs=1)

    def _skip(self, names: list[str], reason: str) -> None:
        log.info("%s: skipped %s: %s", self.remote.path, ", ".join(names[:3]), reason)
        with write_transaction(self.engine) as conn:
            project = find_project(conn, self.remote.entity, self.remote.project)
            if project is not None:
                for name in names:
                    run = find_run(conn, project["id"], name, include_deleted=True)
                    if run is not None:
                        state.mark_failed(conn, run["id"], reason)
        for name in names:
            self.report.skipped[name] = reason
        self.progress.advance(runs=len(names))

    # --- one run's history (on a worker thread) -------------------------------------------------

    def _history_job(self, item: _RunWork) -> None:
        need = item.need
        next_step, remaining, last = need.next_step, need.remaining, need.last_step
        events_due = item.events
        if item.parquet and self._exports.worth_asking():
            export = self._checked_export(item, events_due)
            events_due = False  # they came with the export's answer
            if export is not None:
                for rows in export.rows():
                    rows = [r for r in rows if step_of(r, -1) >= next_step]
                    if rows:
                        self._emit("rows", item, "history", rows, False)
                if export.boundary is None:
                    next_step, remaining = (last + 1 if last is not None else END_OF_HISTORY), 0
                else:
                    next_step, remaining = max(next_step, export.boundary), export.live_rows
        for rows, events in self._pages(item.name, next_step, remaining, last, events_due):
            if events is not None:
                events_due = False
                self._emit("rows", item, "events", events, False)
            if rows:
                self._emit("rows", item, "history", rows, False)
        if events_due:
            events = self.remote.events(item.name, self.settings.event_samples)
            if events is None:
                raise CommError("the run was deleted on W&B during the sync")
            self._emit("rows", item, "events", events, False)
        self._emit("rows", item, "history", [], True)

    def _pages(
        self, name: str, next_step: int, remaining: int, last: int | None, events_due: bool
    ) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]:
        """History in windows W&B never samples, or, once the rows left fit in a page, one
        window to the end of the run.

        A window ``page`` steps wide holds at most ``page`` rows, so W&B never samples it. Steps
        are often sparse (``wandb.log(step=global_step)``, a run resumed at step 5000): a window
        that comes back sparse is widened for the next one, to about a page of rows at the
        density seen, and a window wider than a page asks for one row more than a page, so that
        an answer that may have been sampled shows as a full one and is asked again, narrower.
        """
        page = self.settings.history_page
        width = page
        narrow = False
        for _ in range(MAX_OPEN_WINDOWS):
            if self._stop.is_set():
                raise _Stopped
            if (last is not None and next_step > last) or (last is None and remaining <= 0):
                return
            tail = not narrow and remaining <= page
            stop = last + 1 if last is not None else END_OF_HISTORY
            end = stop if tail else min(stop, next_step + width)
            wide = end - next_step > page
            found = self.remote.history(
                name,
                next_step,
                end,
                page + 1 if wide else page,
                self.settings.event_samples if events_due else None,
            )
            if found is None:
                raise CommError("the run was deleted on W&B during the sync")
            rows, events = found
            events_due = events_due and events is None
            if wide and len(rows) > page:
                # more rows than a page in this window: W&B may have sampled them
                narrow = narrow or tail
                width = max(page, min(width, end - next_step) // 2)
                yield [], events
                continue
            rows = sorted(
                (r for r in rows if next_step <= step_of(r, -1) < end), key=lambda r: step_of(r, -1)
            )
            yield rows, events
            remaining -= len(rows)
            next_step = end
            if tail:
                return
            if len(rows) < page // 2:  # sparse steps: about a page of rows at this density
                width = min(width * 16, max(page, width * page * 4 // (5 * max(len(rows), 1))))
        raise CommError("W&B gives no last step for this run's history and it does not end")

    def _checked_export(self, item: _RunWork, events_due: bool) -> CheckedExport | None:
        """The run's exported files, downloaded and verified; ``None``: page it instead.

        The run's events, when due, come in the same request and are handed to the writer.
        """
        samples = self.settings.event_samples if events_due else None
        answer = self.remote.parquet_history(item.name, samples)
        if answer is None:
            raise CommError("the run was deleted on W&B during the sync")
        found, events = answer
        if events is not None:
            self._emit("rows", item, "events", events, False)
        self._exports.saw(bool(found.urls))
        if not found.urls:
            return None
        what = f"{self.remote.path}/{item.name}"
        files = [ExportedFile(self.remote.client.download(url), what) for url in found.urls]
        checked = check_export(files, found.live_steps, item.need.line_count, item.need.last_step)
        if isinstance(checked, str):
            self._emit("note", f"{item.name}: exported history not used, {checked}; paged instead")
            return None
        return checked
