"""A randomized, stateful test of write-back (hypothesis ``RuleBasedStateMachine``).

Steps: a remote edit (W&B's side changes), a local edit (``mirror.Api``), a pull, a push, a push
that crashes before or after its write reaches W&B (the process dies: nothing after that point
runs), a restart (every object made anew from the files), and resolving a conflict. The upstream
is ``serve`` as a real process; each example gets a project of its own and a fresh mirror (a
file, or a database of the PostgreSQL test server).

Invariants after every step: no local edit is ever silently lost (W&B holds it, or it is open
in the outbox); after a push and a pull with nothing open the mirror equals the remote; and the
pull bookmarks never go backwards.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from mirror_db import Database, is_postgres
from sqlalchemy import select
from sync_env import KEY, Upstream, seed_upstream

from mirror import Api
from mirror.config import SyncSettings
from mirror.remote.auth import Credentials
from mirror.remote.client import RemoteClient, RemoteSettings
from mirror.remote.project import RemoteProject
from mirror.store import migrate, outbox
from mirror.store.engine import make_engine, write_transaction
from mirror.store.fields import loads
from mirror.store.models import runs, sync_state
from mirror.store.read import find_project, find_run
from mirror.sync.pull import ProjectPull
from mirror.sync.push import Pusher
from mirror.synth_activity import add_run, edit_run

ENTITY = "acme"
KEYS = ("a", "b", "c")
RUN = "stateful"
_projects = itertools.count()


class _Crash(Exception):
    """The push process dies here."""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stateful")
    db = seed_upstream(root / "upstream.db", 1, 1)
    with Upstream(db, root / "serve.log") as up:
        yield up, root


class WriteBack(RuleBasedStateMachine):
    up: Upstream
    new_mirror: Callable[[str], Database]  # project name → a fresh mirror of its own

    def __init__(self) -> None:
        super().__init__()
        self.project = f"stateful{next(_projects)}"
        self.path = f"{ENTITY}/{self.project}"
        self.upstream_engine = make_engine(self.up.db)
        add_run(self.upstream_engine, ENTITY, self.project, RUN, 3)
        self.mirror_file = type(self).new_mirror(self.project)
        self.pending: dict[str, int] = {}  # key → the latest local value not yet on W&B
        self.bookmarks: list[str] = []
        self._open()
        self.pull()

    def _open(self) -> None:
        self.engine = make_engine(self.mirror_file)
        migrate.upgrade(self.engine)
        client = RemoteClient(Credentials(self.up.url, KEY), RemoteSettings(max_attempts=2))
        self.remote = RemoteProject(client, ENTITY, self.project)

    def teardown(self) -> None:
        self.engine.dispose()
        self.upstream_engine.dispose()

    # --- what W&B and the mirror hold ---------------------------------------------------------

    def remote_summary(self) -> dict:
        with self.upstream_engine.connect() as conn:
            project = find_project(conn, ENTITY, self.project)
            return loads(find_run(conn, project["id"], RUN)["summary_metrics"], {}) or {}

    def mirror_summary(self) -> dict:
        with self.engine.connect() as conn:
            project = find_project(conn, ENTITY, self.project)
            return loads(find_run(conn, project["id"], RUN)["summary_metrics"], {}) or {}

    def open_edits(self) -> list[outbox.OpenEdit]:
        with self.engine.connect() as conn:
            run_id = conn.execute(select(runs.c.id).where(runs.c.name == RUN)).scalar_one()
            return outbox.open_edits(conn, [run_id]).get(run_id, [])

    # --- rules ------------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), value=st.integers(0, 3))
    def remote_edit(self, key: str, value: int) -> None:
        summary = {**self.remote_summary(), key: value}
        edit_run(
            self.upstream_engine, ENTITY, self.project, RUN, summaryMetrics=json.dumps(summary)
        )

    @rule(key=st.sampled_from(KEYS), value=st.integers(10, 13))
    def local_edit(self, key: str, value: int) -> None:
        api = Api(database=self.engine)
        run = api.run(f"{self.path}/{RUN}")
        run.summary[key] = value
        run.update()
        self.pending[key] = value

    @rule()
    def pull(self) -> None:
        ProjectPull(self.engine, self.remote, SyncSettings()).run()
        with self.engine.connect() as conn:
            self.bookmarks.append(
                conn.execute(select(sync_state.c.last_pull_finished_at)).scalars().all()[-1]
            )

    @rule(policy=st.sampled_from(["abort", "local-wins", "remote-wins"]))
    def push(self, policy: str) -> None:
        """The decision table: a key changed on both sides keeps W&B's value unless the
        policy lets the local side win; anything else takes the local value. Under ``abort`` an
        edit holding such a key is written not at all and becomes a visible conflict (edits of
        one run are merged into one, so that takes its other keys along, kept, not lost)."""
        before = self.remote_summary()
        expected = {}
        aborted = []  # under abort, an edit with one key moved on both sides is held whole
        for edit in self.open_edits():
            if edit.status == outbox.CONFLICT and policy == "abort":
                continue
            outcome = {}
            clashed = False
            for key, value in edit.patch.items():
                base = edit.base["values"].get(key, [])
                moved = (base[0] if base else None) != before.get(key)
                clash = moved and before.get(key) != value
                clashed |= clash
                keep_remote = clash and policy != "local-wins"
                outcome[key] = before.get(key) if keep_remote else value
            if clashed and policy == "abort":
                aborted.append(edit.id)
            else:
                expected.update(outcome)
        Pusher(self.engine, self.remote, policy).run()
        after = self.remote_summary()
        for key, value in expected.items():
            assert after.get(key) == value, (policy, key, before, after)
        if aborted:
            untouched = {k: v for k, v in after.items() if k not in expected}
            assert untouched == {k: v for k, v in before.items() if k not in expected}
            status = {e.id: e.status for e in self.open_edits()}
            assert all(status.get(i) == outbox.CONFLICT for i in aborted), status
        self._settle(policy)

    @rule(after_write=st.booleans())
    def crashing_push(self, after_write: bool) -> None:
        original = self.remote.push_edit

        def dying(fields: dict) -> None:
            if after_write:
                original(fields)
            raise _Crash

        self.remote.push_edit = dying  # type: ignore[method-assign]
        try:
            Pusher(self.engine, self.remote).run()
        except _Crash:
            pass
        finally:
            del self.remote.push_edit
        self.restart()
        self._settle("abort")  # a push with nothing left to write completes before any crash

    @rule()
    def restart(self) -> None:
        self.engine.dispose()
        self._open()

    @precondition(lambda self: any(e.status == outbox.CONFLICT for e in self.open_edits()))
    @rule(take=st.sampled_from(["local", "remote", "discard"]))
    def resolve(self, take: str) -> None:
        edit = next(e for e in self.open_edits() if e.status == outbox.CONFLICT)
        with write_transaction(self.engine) as conn:
            outbox.resolve(conn, edit.id, take)
        if take != "local":  # the user chose to give these keys up: not lost silently
            for key in edit.patch:
                if take == "discard" or key in edit.remote:
                    self.pending.pop(key, None)
        self.pending = {k: v for k, v in self.pending.items() if self._open_or_remote(k, v)}

    def _open_or_remote(self, key: str, value: int) -> bool:
        return self.remote_summary().get(key) == value or any(
            e.patch.get(key) == value for e in self.open_edits()
        )

    def _settle(self, policy: str) -> None:
        """Keys W&B now holds are no longer pending; remote-wins gives up the others."""
        remote = self.remote_summary()
        open_keys = {k for e in self.open_edits() for k in e.patch}
        for key, value in list(self.pending.items()):
            if (
                remote.get(key) == value
                and key not in open_keys
                or policy == "remote-wins"
                and key not in open_keys
            ):
                del self.pending[key]

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def no_local_edit_is_silently_lost(self) -> None:
        remote = self.remote_summary()
        edits = self.open_edits()
        for key, value in self.pending.items():
            held = remote.get(key) == value
            queued = any(e.patch.get(key) == value for e in edits)
            assert held or queued, (key, value, remote, [e.patch for e in edits])

    @invariant()
    def the_mirror_shows_every_open_edit(self) -> None:
        shown = self.mirror_summary()
        for edit in self.open_edits():
            for key, value in edit.patch.items():
                assert shown.get(key) == value, (key, value, shown)

    @invariant()
    def bookmarks_never_go_backwards(self) -> None:
        assert self.bookmarks == sorted(self.bookmarks)

    @precondition(lambda self: not self.open_edits())
    @invariant()
    def with_nothing_open_a_pull_gives_the_remote(self) -> None:
        self.pull()
        assert self.mirror_summary() == self.remote_summary()


#: examples per database: fewer on PostgreSQL, whose run repeats the same rules on other storage
EXAMPLES = {"sqlite": 15, "postgresql": 12}


def test_write_back_never_loses_an_edit(upstream, request, database):
    up, root = upstream
    kind = "postgresql" if is_postgres(database) else "sqlite"
    WriteBack.up = up
    if kind == "postgresql":
        server = request.getfixturevalue("pg_server")
        WriteBack.new_mirror = staticmethod(lambda _project: server.new_database())
    else:
        WriteBack.new_mirror = staticmethod(lambda project: root / f"{project}.db")
    runner = WriteBack.TestCase
    runner.settings = settings(
        max_examples=EXAMPLES[kind],
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    runner().runTest()


def test_an_edit_aborted_on_one_key_holds_its_other_keys(upstream):
    """The sequence Hypothesis found: two local edits of one run merged into one, one of its
    keys then changed on W&B too; ``abort`` writes none of it and holds it all as a conflict."""
    up, root = upstream
    WriteBack.up = up
    WriteBack.new_mirror = staticmethod(lambda project: root / f"{project}.db")
    state = WriteBack()
    try:
        state.local_edit(key="b", value=10)
        state.crashing_push(after_write=False)
        state.remote_edit(key="a", value=0)
        state.restart()
        state.local_edit(key="a", value=10)
        state.push(policy="abort")
        (edit,) = state.open_edits()
        assert (edit.status, edit.patch) == (outbox.CONFLICT, {"b": 10, "a": 10})
        assert "b" not in state.remote_summary()
        state.no_local_edit_is_silently_lost()
    finally:
        state.teardown()
