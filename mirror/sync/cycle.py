"""A sync cycle over several projects: one client, one key check, one report per project.

A project that does not exist or cannot be read is reported in one line and the others still
sync; a key that W&B refuses ends the whole cycle at once, since nothing else can work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from mirror.config import HistoryChoice, Settings
from mirror.errors import ConfigError
from mirror.query.paths import project_path
from mirror.remote import queries
from mirror.remote.auth import resolve_credentials
from mirror.remote.client import AuthError, RemoteClient
from mirror.remote.project import ProjectNotFound, RemoteProject
from mirror.sync.pull import Progress, ProjectPull, PullOptions, PullReport
from mirror.sync.push import Pusher, PushReport


@dataclass(frozen=True)
class Target:
    """A project to pull, and which of its history to keep."""

    entity: str
    project: str
    history: HistoryChoice

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}"


def targets(settings: Settings, paths: Sequence[str], no_history: bool = False) -> list[Target]:
    """The projects named on the command line, else those of the config's ``[[project]]``."""
    configured = {p.path: p.history for p in settings.projects}
    if not paths:
        paths = list(configured)
    if not paths:
        raise ConfigError(
            "no project to sync: name one (wandb-mirror sync ENTITY/PROJECT) or list them as "
            "[[project]] tables in the config file (see config.example.toml)"
        )
    found = []
    for text in paths:
        entity, project = project_path(text, settings.entity)
        history = configured.get(f"{entity}/{project}")
        history = settings.sync.history if history is None else history
        found.append(Target(entity, project, False if no_history else history))
    return found


def make_client(
    settings: Settings, api_key: str | None = None, cancel: threading.Event | None = None
) -> RemoteClient:
    """A client for the configured W&B host with the key from the environment or netrc.

    Setting ``cancel`` stops every request and retry wait of the client (the daemon's TERM).
    """
    return RemoteClient(
        resolve_credentials(settings.base_url, api_key), settings.remote, cancel=cancel
    )


def check_key(client: RemoteClient) -> None:
    """``viewer`` answers null for a key W&B does not know (it may also answer 401)."""
    if client.execute(queries.VIEWER).get("viewer") is None:
        creds = client.credentials
        raise AuthError(
            f"{creds.host} does not accept the API key from {creds.source}; {creds.login_hint()}"
        )


@dataclass
class Outcome:
    """One project's cycle: its push (of queued edits) and its pull, each when it ran."""

    target: Target
    push: PushReport | None = None
    pull: PullReport | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in (self.push, self.pull) if r is not None)


def run_cycle(
    open_engine: Callable[[], Engine],
    client: RemoteClient,
    settings: Settings,
    wanted: Sequence[Target],
    push: bool = True,
    pull: bool = True,
    full: bool = False,
    force_deletions: bool = False,
    policy: str | None = None,
    progress: Progress | None = None,
    verify_key: bool = True,
) -> list[Outcome]:
    """Check the key, then per project push its queued edits and pull it.

    The push comes first, so that the pull reads back what was pushed. The database is opened
    only once W&B answered, so a bad key or an unreachable host writes nothing, not even an
    empty database file. A caller that checked this client's key before may skip the check.
    """
    if verify_key:
        check_key(client)
    engine = open_engine()
    outcomes = []
    for target in wanted:
        outcome = Outcome(target)
        remote = RemoteProject(client, target.entity, target.project)
        try:
            if push:
                outcome.push = Pusher(
                    engine,
                    remote,
                    policy or settings.push.policy,
                    settings.push.wait_for_running,
                    settings.sync.record_batch,
                    settings.sync.concurrency,
                ).run()
            if pull:
                options = PullOptions(
                    full=full, history=target.history, force_deletions=force_deletions
                )
                outcome.pull = ProjectPull(engine, remote, settings.sync, options, progress).run()
        except ProjectNotFound as exc:
            outcome.pull = PullReport(target.path, error=exc.message)
        outcomes.append(outcome)
    return outcomes


def pull_all(
    open_engine: Callable[[], Engine],
    client: RemoteClient,
    settings: Settings,
    wanted: Sequence[Target],
) -> list[PullReport]:
    """Only pull (the demo's two passes): one report per project."""
    outcomes = run_cycle(open_engine, client, settings, wanted, push=False)
    return [o.pull for o in outcomes if o.pull is not None]
