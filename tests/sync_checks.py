"""What the fault and crash tests check of a mirror file and of the server's access log."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import mirror_compare
from mirror_compare import same, snapshot
from mirror_db import Database, is_postgres, tables
from sqlalchemy import select, text

from mirror.store.engine import make_engine
from mirror.store.history import decode, number_rows
from mirror.store.models import history_chunks, run_sync, runs

SKIPPED = re.compile(r"^(?P<path>[\w.-]+/[\w.-]+)/(?P<run>[\w.-]+): skipped: (?P<reason>.+)$")


def integrity(db: Database) -> str:
    """``PRAGMA integrity_check`` of a SQLite file: ``"ok"`` when nothing is broken.

    Opened read-write, as the next sync would open it, so a WAL left by a killed writer is
    recovered first; the check itself writes nothing.

    PostgreSQL has no such check to run: a killed client's transaction is rolled back by the
    server, whose pages the client never touches. What can be checked there is that every
    table answers, with a count, once the killed session is gone.
    """
    if is_postgres(db):
        engine = make_engine(db, create=False)
        try:
            with engine.connect() as conn:
                for name in tables(db):
                    conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
        finally:
            engine.dispose()
        return "ok"
    conn = sqlite3.connect(db)
    try:
        return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def step_problems(db: Database) -> list[str]:
    """Chunks that overlap, repeat a step, or hold other than ``row_count`` rows (empty: none).

    Every chunk of every run and stream is decoded; steps must rise strictly from one chunk to
    the next and within each chunk, so a page written twice, or half of one, shows here.
    """
    engine = make_engine(db, create=False)
    problems: list[str] = []
    try:
        with engine.connect() as conn:
            c = history_chunks.c
            query = (
                select(runs.c.name, c.stream, c.first_step, c.last_step, c.row_count, c.data)
                .join(runs, runs.c.id == c.run_id)
                .order_by(c.run_id, c.stream, c.first_step)
            )
            previous: dict[tuple[str, str], int] = {}
            for name, stream, first, last, count, data in conn.execute(query):
                where = f"{name}/{stream}@{first}"
                rows = decode(data).rows()
                steps = [step for step, _ in number_rows(rows, first)]
                if len(rows) != count:
                    problems.append(f"{where}: {len(rows)} rows, row_count says {count}")
                if steps and (steps[0] != first or steps[-1] != last):
                    problems.append(f"{where}: steps {steps[0]}..{steps[-1]}, not {first}..{last}")
                if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
                    problems.append(f"{where}: steps repeat or go backwards inside the chunk")
                before = previous.get((name, stream))
                if before is not None and first <= before:
                    problems.append(f"{where}: overlaps the previous chunk (ending at {before})")
                previous[(name, stream)] = last
    finally:
        engine.dispose()
    return problems


def run_sync_rows(db: Database) -> dict[str, dict[str, Any]]:
    """Run name → its ``run_sync`` row (fingerprint, failures, last_error), for every run."""
    engine = make_engine(db, create=False)
    try:
        with engine.connect() as conn:
            query = select(
                runs.c.name, run_sync.c.fingerprint, run_sync.c.failures, run_sync.c.last_error
            ).select_from(runs.outerjoin(run_sync, run_sync.c.run_id == runs.c.id))
            return {row.name: dict(row._mapping) for row in conn.execute(query)}
    finally:
        engine.dispose()


def skipped_lines(stderr: str) -> dict[str, str]:
    """``PATH/RUN: skipped: REASON`` lines of a sync's output, as run name → reason."""
    found = {}
    for line in stderr.splitlines():
        match = SKIPPED.match(line)
        if match:
            found[match["run"]] = match["reason"]
    return found


def summary_count(line: str, what: str) -> int:
    """A number from a sync's summary line: ``summary_count(line, "retries")``."""
    match = re.search(rf"([\d,]+) {what}\b", line)
    assert match, f"no {what!r} in {line!r}"
    return int(match.group(1).replace(",", ""))


_ACCESS = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*POST /graphql "
    r"(?P<status>\d{3}|dropped) [\d.]+ms ?(?P<label>\S*)"
)


@dataclass(frozen=True)
class Logged:
    """One GraphQL request in a serve access log."""

    at: float  # seconds (epoch, millisecond resolution)
    status: str  # "200", "429", ... or "dropped"
    label: str  # the operation, or "(fault)" for an injected failure

    @property
    def fault(self) -> bool:
        return self.label == "(fault)"


def graphql_log(log: str) -> list[Logged]:
    """The GraphQL requests of a serve log, in the order it answered them."""
    found = []
    for line in log.splitlines():
        match = _ACCESS.match(line)
        if match:
            at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append(Logged(at, match["status"], match["label"]))
    return found


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Reference:
    """An upstream that does not change, read once: ``differences`` of many mirrors against it
    (``mirror_compare.differences`` itself, with this snapshot in place of re-reading it)."""

    def __init__(self, db: Database, entity: str, project: str) -> None:
        self.db = db if is_postgres(db) else Path(db)
        self.entity = entity
        self.project = project
        self.runs = snapshot(self.db, entity, project)

    def differences(self, mirror: Database, limit: int = 10) -> list[str]:
        real = mirror_compare.snapshot

        def cached(db: Database, entity: str, project: str) -> dict[str, dict[str, Any]]:
            if db is self.db and (entity, project) == (self.entity, self.project):
                return self.runs
            return real(db, entity, project)

        with mock.patch.object(mirror_compare, "snapshot", cached):
            return mirror_compare.differences(self.db, mirror, self.entity, self.project, limit)

    def gaps(self, mirror: Reference) -> list[str]:
        """Runs of ``mirror`` whose history or events are not a prefix of the upstream's: what
        a sync cut short may leave is less, never different, never with a hole."""
        found = []
        for name, run in mirror.runs.items():
            want = self.runs.get(name)
            if want is None:
                found.append(f"{name}: not upstream")
                continue
            for stream in ("history", "events"):
                rows = run[stream]
                if not same(rows, want[stream][: len(rows)]):
                    found.append(f"{name}.{stream}: {len(rows)} rows, not a prefix of upstream's")
        return found

    def rows(self, stream: str = "history") -> int:
        return sum(len(run[stream]) for run in self.runs.values())
