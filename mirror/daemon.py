"""``wandb-mirror daemon``: the service that keeps a mirror current for months without attention.

APScheduler 3 runs the jobs the config describes, each under a fixed id so a reload replaces
them instead of adding twins: ``pull:ENTITY/PROJECT`` at the project's interval, ``push`` of
the outbox, a full ``reconcile`` and a ``backup`` on cron expressions, an optional ``export``.
Every job coalesces and runs one instance at a time with a generous misfire grace, so a laptop
that slept through ten pulls runs one when it wakes, and a backup due at night still happens.
The jobs that write the mirror share one worker thread: they are the database's one writer.
Backups and exports only read, on a thread of their own, so a long pull does not delay them.

The daemon holds the mirror's writer lock for its whole life (``mirror.store.lock``), so a second
daemon, a ``sync`` or a ``restore`` is refused with one line naming it.

Signals (offlineimap's convention): TERM and INT stop at the next safe point (the page being
written commits, no request is sent after) and exit 0; the same signal again exits at once.
HUP reloads the config and rebuilds the jobs; USR1 runs every pull now. The handlers only note
the signal: the main thread reads it from a wakeup pipe and acts outside signal context, where
taking the scheduler's locks is safe.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from mirror import logs
from mirror.config import Settings, load_settings, parse_schedule
from mirror.errors import MirrorError
from mirror.remote.auth import resolve_credentials
from mirror.remote.client import Interrupted, RemoteClient, RetryBudget
from mirror.store import jobs, migrate, outbox
from mirror.store.engine import make_engine, sqlite_path, write_transaction
from mirror.store.lock import LockHeld, WriterLock
from mirror.sync.cycle import Outcome, Target, make_client, run_cycle, targets

log = logging.getLogger("mirror.daemon")

#: after TERM, the process exits at the latest this many seconds later, whatever still runs
STOP_GRACE_S = 60.0
WRITER = "writer"
READER = "reader"


@dataclass(frozen=True)
class JobSpec:
    """A job as the config asks for it; two specs that compare equal need no rebuild."""

    id: str
    kind: str  # pull | push | reconcile | backup | export
    every: float | None  # seconds between runs, or None for a cron job
    cron: str  # a crontab expression (local time) when ``every`` is None
    executor: str
    grace: float  # seconds late a run may still start (then it runs once)
    target: Target | None = None

    def make_trigger(self) -> BaseTrigger:
        if self.every is not None:
            return IntervalTrigger(seconds=self.every)
        return CronTrigger.from_crontab(self.cron)


def job_specs(settings: Settings) -> list[JobSpec]:
    """The jobs a config describes, pulls first; none for a project-less config but backups."""
    d, b = settings.daemon, settings.backup
    grace = d.misfire_grace
    specs = []
    wanted = targets(settings, []) if settings.projects else []
    intervals = {p.path: p.interval for p in settings.projects}
    for target in wanted:
        every = intervals.get(target.path) or d.pull_interval
        specs.append(JobSpec(f"pull:{target.path}", "pull", every, "", WRITER, grace, target))
    scheduled = [("backup", b.schedule, READER)]
    if wanted:
        specs.append(JobSpec("push", "push", d.push_interval, "", WRITER, grace))
        scheduled += [("reconcile", d.reconcile, WRITER), ("export", b.export_schedule, READER)]
    for kind, text, executor in scheduled:
        if text:
            every = parse_schedule(text, kind)
            specs.append(JobSpec(kind, kind, every, "" if every else text, executor, grace))
    return specs


def _iso(when: datetime | None) -> str | None:
    """A scheduler time as the store writes dates: naive UTC, seconds."""
    if when is None:
        return None
    return when.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


class Daemon:
    """One mirror's scheduler, lock and signal loop; ``run()`` once."""

    def __init__(self, database: str | None, config_path: str | None) -> None:
        self.database = database
        self.config_path = config_path
        self.settings = load_settings(config_path)
        self.stopping = threading.Event()  # set: every client stops sending, jobs end early
        self._stop_signalled = False
        self._specs: dict[str, JobSpec] = {}
        self.engine: Engine | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.served: Any = None
        self._client: RemoteClient | None = None
        self._key_checked = False
        self._busy = threading.Condition()  # guards ``_running``: jobs inside ``_run_job``
        self._running = 0
        self._lock: WriterLock | None = None
        self._lock_lost = False

    # --- start and stop ----------------------------------------------------------------------

    def run(self) -> int:
        """Lock, upgrade, schedule, serve, then wait for signals; the exit code."""
        database = self.database or self.settings.database
        lock = self._lock = WriterLock(database, "wandb-mirror daemon").acquire()
        try:
            with self._signals() as signals:
                try:
                    self._start(database)
                    self._signal_loop(signals)
                finally:
                    self._shut_down()
            return 1 if self._lock_lost else 0
        finally:
            lock.release()

    def _start(self, database: str | None) -> None:
        self.engine = make_engine(database, create=True)
        snapshot = migrate.upgrade(self.engine)
        self._configure_logging()
        if snapshot:
            log.info("snapshot taken before the schema upgrade: %s", snapshot)
        self.scheduler = self._make_scheduler()
        self.scheduler.start(paused=True)
        self._apply(self.settings)
        self.scheduler.resume()
        self._start_serving()
        log.info(
            "daemon started (pid %d): %d jobs on %s",
            os.getpid(),
            len(self._specs),
            self.engine.url.render_as_string(hide_password=True),
        )

    def _configure_logging(self) -> None:
        try:
            key = resolve_credentials(self.settings.base_url).api_key
        except MirrorError:
            key = None  # no key yet: the first pull says so in its own line
        logs.configure(self.settings.daemon, logs.secret_forms(key))

    def _make_scheduler(self) -> BackgroundScheduler:
        return BackgroundScheduler(
            executors={
                WRITER: ThreadPoolExecutor(1, pool_kwargs={"thread_name_prefix": "mirror-writer"}),
                READER: ThreadPoolExecutor(1, pool_kwargs={"thread_name_prefix": "mirror-reader"}),
            },
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    def _start_serving(self) -> None:
        serve = self.settings.serve
        if not serve.enabled:
            return
        from mirror.serve.arguments import with_environment
        from mirror.serve.auth import configured_keys
        from mirror.serve.limits import Limits
        from mirror.serve.server import build_server

        self.served = build_server(
            self.engine.url.render_as_string(hide_password=False),
            host=serve.host,
            port=serve.port,
            api_keys=configured_keys(list(serve.api_keys)),
            threads=serve.threads,
            limits=Limits(**with_environment(serve.limits)),  # type: ignore[arg-type]
            role="mirror",
            backup_dest=self.settings.backup.dest,
        )
        self.served.start()
        log.info("%s", self.served.describe(serve.host))

    def _shut_down(self) -> None:
        """Let running jobs reach their safe point, then stop the scheduler.

        APScheduler's ``shutdown(wait=True)`` holds its job store lock while it waits for the
        jobs, and a job's last step reads its next run time under that lock: so the jobs are
        waited for first, here, and ``shutdown`` then finds none running.
        """
        self.stopping.set()
        faulthandler.dump_traceback_later(STOP_GRACE_S, exit=True)
        try:
            if self.served is not None:
                self.served.stop()
            if self.scheduler is not None and self.scheduler.running:
                self.scheduler.pause()
                with self._busy:
                    self._busy.wait_for(lambda: self._running == 0)
                self.scheduler.shutdown(wait=True)
            if self.engine is not None:
                self.engine.dispose()
        finally:
            faulthandler.cancel_dump_traceback_later()
        log.info("daemon stopped")

    # --- signals -----------------------------------------------------------------------------

    @contextmanager
    def _signals(self) -> Iterator[socket.socket]:
        """Handlers that only note signals, for the daemon's whole life (shutdown included, so
        a second TERM during it still exits at once); yields the socket the numbers arrive on."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        old_fd = signal.set_wakeup_fd(writer.fileno())
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            yield reader
        finally:
            signal.set_wakeup_fd(old_fd)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            reader.close()
            writer.close()

    def _signal_loop(self, reader: socket.socket) -> None:
        """Act on each signal outside signal context; returns once asked to stop."""
        while not self._stop_signalled:
            ready, _, _ = select.select([reader], [], [], 60.0)
            if ready:
                for signum in reader.recv(64):
                    try:
                        self._act(signum)
                    except SQLAlchemyError as exc:  # saving the new schedule: jobs go on
                        reason = getattr(exc, "orig", None) or exc
                        log.error("%s: database error: %s", signal.Signals(signum).name, reason)

    def _on_signal(self, signum: int, _frame: object) -> None:
        """Runs in signal context: only notes a stop, or ends the process on the second one."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self._stop_signalled:
                os._exit(128 + signum)
            self._stop_signalled = True  # the main loop sees it and sets ``stopping``

    def _act(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping.set()
            log.info(
                "%s: stopping at the next safe point (send it again to exit at once)",
                signal.Signals(signum).name,
            )
        elif signum == signal.SIGHUP:
            self.reload()
        elif signum == signal.SIGUSR1:
            self.pull_now()

    def reload(self) -> None:
        """Read the config again and rebuild the jobs; a broken file keeps the old ones."""
        try:
            settings = load_settings(self.config_path)
        except MirrorError as exc:
            log.error("HUP: config not reloaded, the jobs stay as they were: %s", exc)
            return
        if settings.serve != self.settings.serve:
            log.warning("HUP: [serve] changes take effect when the daemon restarts")
        if (self.database or settings.database) != (self.database or self.settings.database):
            log.warning("HUP: a new database takes effect when the daemon restarts")
        self.settings = settings
        self._client, self._key_checked = None, False  # [remote] or the key may have changed
        self._configure_logging()
        self._apply(settings)
        log.info("HUP: config reloaded, %d jobs", len(self._specs))

    def pull_now(self) -> None:
        """USR1: every pull is due now (one run each, coalesced with any already due)."""
        assert self.scheduler is not None
        now = datetime.now(timezone.utc)
        pulls = [spec.id for spec in self._specs.values() if spec.kind == "pull"]
        for job_id in pulls:
            self.scheduler.modify_job(job_id, next_run_time=now)
        log.info("USR1: pulling %d projects now", len(pulls))
        self._record_schedule()

    # --- jobs --------------------------------------------------------------------------------

    def _apply(self, settings: Settings) -> None:
        """Make the scheduler's jobs those of ``settings``; unchanged jobs keep their timing."""
        assert self.scheduler is not None
        wanted = {spec.id: spec for spec in job_specs(settings)}
        for job_id in set(self._specs) - set(wanted):
            self.scheduler.remove_job(job_id)
        now = datetime.now(timezone.utc)
        for job_id, spec in wanted.items():
            if self._specs.get(job_id) == spec:
                continue
            self.scheduler.add_job(
                self._run_job,
                spec.make_trigger(),
                args=[spec.id],
                id=spec.id,
                name=spec.id,
                executor=spec.executor,
                misfire_grace_time=int(spec.grace),
                replace_existing=True,
                # pulls and pushes start at once; cron jobs wait for their time
                **({"next_run_time": now} if spec.kind in ("pull", "push") else {}),
            )
        self._specs = wanted
        if not any(spec.kind == "pull" for spec in wanted.values()):
            log.warning("no [[project]] in the config: nothing to pull (add one, then send HUP)")
        self._record_schedule()

    def _next_run(self, job_id: str) -> datetime | None:
        job: Job | None = self.scheduler.get_job(job_id) if self.scheduler else None
        return job.next_run_time if job is not None else None

    def _schedule(self) -> dict[str, str | None]:
        return {job_id: _iso(self._next_run(job_id)) for job_id in self._specs}

    def _record_schedule(self) -> None:
        with write_transaction(self._engine()) as conn:
            jobs.set_schedule(conn, self._schedule())

    def _engine(self) -> Engine:
        assert self.engine is not None
        return self.engine

    def _run_job(self, job_id: str) -> None:
        """A job as the scheduler calls it, counted while it runs so that a stop can wait."""
        with self._busy:
            if self.stopping.is_set():
                return  # queued before the stop: it would only wait for the scheduler
            self._running += 1
        try:
            self._run_job_once(job_id)
        finally:
            with self._busy:
                self._running -= 1
                self._busy.notify_all()

    def _run_job_once(self, job_id: str) -> None:
        """One run of a job: its figures in one log line, its outcome in ``daemon_jobs``."""
        spec = self._specs.get(job_id)
        if spec is None:
            return
        work: dict[str, Callable[[JobSpec], tuple[str | None, str | None]]] = {
            "pull": self._pull,
            "push": self._push,
            "reconcile": self._reconcile,
            "backup": self._backup,
            "export": self._export,
        }
        started = time.perf_counter()
        if spec.executor == WRITER and not self._still_the_writer():
            return
        try:
            with write_transaction(self._engine()) as conn:
                jobs.job_started(conn, job_id)
            summary, error = work[spec.kind](spec)
        except Interrupted:
            log.info("%s: stopped at a safe point; the next start resumes it", job_id)
            return
        except MirrorError as exc:
            summary, error = None, str(exc)
        except SQLAlchemyError as exc:  # a full disk, a database locked for too long
            summary, error = None, "database error: " + str(getattr(exc, "orig", exc) or exc)
        except Exception as exc:  # a bug must not end the daemon: log it whole, go on
            log.exception("%s: internal error", job_id)
            summary, error = None, f"internal error: {type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        with write_transaction(self._engine()) as conn:
            failures = jobs.job_finished(conn, job_id, summary, error, _iso(self._next_run(job_id)))
        if error is None:
            if summary and spec.kind == "pull":
                log.info("pull %s", summary)  # the pull's own line has its path and time
            elif summary:
                log.info("%s: %s (%.1f s)", job_id, summary, seconds)
            return
        delay = self._backoff(spec, failures)
        log.warning(
            "%s failed (%d in a row): %s; next try in %.0f s", job_id, failures, error, delay
        )

    def _still_the_writer(self) -> bool:
        """Before a job that writes: the writer lock is still ours, or taken again.

        On PostgreSQL the lock lives in a database session, which a server restart or an
        administrator can end while the daemon runs on. Then it is taken again; if another
        writer took it meanwhile, the daemon stops (exit 1) rather than be a second writer.
        """
        lock = self._lock
        if self._lock_lost:
            return False  # stopping already: a second TERM would end the daemon at once
        if lock is None or lock.held():
            return True
        log.warning("the writer lock's database session has ended; taking the lock again")
        lock.release()
        try:
            lock.acquire()
        except LockHeld as exc:
            log.error("writer lock lost: %s; stopping, a mirror has one writer", exc)
            self._lock_lost = True
            os.kill(os.getpid(), signal.SIGTERM)  # the usual stop, from the main thread
            return False
        except SQLAlchemyError as exc:  # the server is still away: this run of the job waits
            log.warning("the writer lock cannot be taken again yet: %s", getattr(exc, "orig", exc))
            return False
        log.info("the writer lock is held again")
        return True

    def _backoff(self, spec: JobSpec, failures: int) -> float:
        """Seconds to the job's next try: after repeated failures of an interval job, doubling
        from its interval up to ``failure_backoff_max``; a cron job keeps its schedule."""
        now = datetime.now(timezone.utc)
        if spec.every is None or self.scheduler is None:
            when = self._next_run(spec.id)
            return (when - now).total_seconds() if when else 0.0
        cap = max(spec.every, self.settings.daemon.failure_backoff_max)
        delay = min(cap, spec.every * 2 ** (failures - 1))
        self.scheduler.modify_job(spec.id, next_run_time=now + timedelta(seconds=delay))
        self._record_schedule()
        return delay

    def _cycle(self, wanted: list[Target], **how: Any) -> list[Outcome]:
        """One sync cycle, stopped by TERM.

        The client lives as long as the config (its connections stay open between cycles) and
        gets a fresh retry budget each cycle. Its key is checked once; after any failure the
        next cycle checks it again, so a revoked key is named as such.
        """
        if self._client is None:
            self._client = make_client(self.settings, cancel=self.stopping)
        self._client.budget = RetryBudget(self.settings.remote.retry_budget)
        try:
            outcomes = run_cycle(
                lambda: self._engine(),
                self._client,
                self.settings,
                wanted,
                verify_key=not self._key_checked,
                **how,
            )
        except MirrorError:
            self._key_checked = False
            raise
        self._key_checked = all(outcome.ok for outcome in outcomes)
        return outcomes

    def _pull(self, spec: JobSpec) -> tuple[str | None, str | None]:
        assert spec.target is not None
        outcome = self._cycle([spec.target], push=False)[0]
        report = outcome.pull
        assert report is not None
        for name, reason in list(report.skipped.items())[:5]:
            log.warning("%s/%s: skipped: %s", report.path, name, reason)
        if report.held_back:
            log.warning("%s: deletions held back: %s", report.path, report.held_back)
        return report.line(), report.error

    def _push(self, _spec: JobSpec) -> tuple[str | None, str | None]:
        with self._engine().connect() as conn:
            waiting = outbox.pushable(conn, self.settings.push.policy != "abort")
        if not waiting:
            return None, None  # nothing queued: no request at all
        outcomes = self._cycle(self._targets(), pull=False)
        lines = [o.push.line() for o in outcomes if o.push is not None]
        errors = [o.push.error for o in outcomes if o.push is not None and o.push.error]
        return "; ".join(lines), "; ".join(errors) or None

    def _reconcile(self, _spec: JobSpec) -> tuple[str | None, str | None]:
        outcomes = self._cycle(self._targets(), push=False, full=True)
        reports = [o.pull for o in outcomes if o.pull is not None]
        errors = [f"{r.path}: {r.error}" for r in reports if r.error]
        return "; ".join(r.line() for r in reports), "; ".join(errors) or None

    def _targets(self) -> list[Target]:
        return [spec.target for spec in self._specs.values() if spec.target is not None]

    def _backup(self, _spec: JobSpec) -> tuple[str | None, str | None]:
        from mirror.store import backup

        b = self.settings.backup
        engine = self._engine()
        directory = backup.backup_dir(engine, b.dest)
        taken = backup.take_backup(engine, directory)
        removed = backup.prune(directory, b.keep_last, b.keep_daily, b.keep_weekly)
        return f"{taken.path} ({taken.bytes / 1e6:.1f} MB); {len(removed)} old removed", None

    def _export(self, _spec: JobSpec) -> tuple[str | None, str | None]:
        from mirror.exchange import export_project

        base = self.settings.backup.export_dest
        engine = self._engine()
        root = Path(base).expanduser() if base else default_export_dir(engine)
        lines = []
        for target in self._targets():
            final = root / target.entity / target.project
            partial = final.with_name(f".{final.name}.partial")
            _remove_tree(partial)
            lines.append(
                str(export_project(engine, target.entity, target.project, "jsonl", partial))
            )
            old = final.with_name(f".{final.name}.old")
            _remove_tree(old)
            if final.exists():
                final.rename(old)
            partial.rename(final)  # the previous export stays whole until the new one is
            _remove_tree(old)
        return "; ".join(lines), None


def default_export_dir(engine: Engine) -> Path:
    """``exports/`` beside an SQLite mirror."""
    path = sqlite_path(str(engine.url))
    if path is None:
        raise MirrorError("set [backup] export_dest: this database has no directory of its own")
    return path.parent / "exports"


def _remove_tree(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)


def run_daemon(database: str | None, config_path: str | None) -> int:
    """The ``daemon`` command: runs until TERM or INT; 0 after a clean stop."""
    return Daemon(database, config_path).run()
