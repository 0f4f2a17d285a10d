"""A W&B project as the sync sees it: pages of the listing, run records, history, exports.

Thin, typed calls over :mod:`mirror.remote.queries`; they decode what W&B sends and check its
shape, and leave every decision (what moved, what to fetch next) to ``mirror.sync``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mirror.errors import CommError
from mirror.remote import queries
from mirror.remote.client import RemoteClient
from mirror.remote.jsontext import loads


class ProjectNotFound(CommError):
    """W&B answers ``project: null``: it does not exist, or this key cannot see it."""


@dataclass(frozen=True)
class ListingPage:
    """One page of the lightweight listing, and ``runCount`` from the same answer."""

    nodes: list[dict[str, Any]]
    run_count: int
    end_cursor: str | None
    has_next: bool


@dataclass(frozen=True)
class ParquetHistory:
    """Where W&B's exported history files are, and the steps logged after the export."""

    urls: list[str]
    live_steps: list[int]


class RemoteProject:
    """One ``entity/project`` on one W&B host."""

    def __init__(self, client: RemoteClient, entity: str, project: str) -> None:
        self.client = client
        self.entity = entity
        self.project = project

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}"

    def _project(self, document: str, **variables: Any) -> dict[str, Any]:
        data = self.client.execute(
            document, {"entity": self.entity, "project": self.project, **variables}
        )
        project = data.get("project")
        if project is None:
            raise ProjectNotFound(
                f"{self.path} does not exist on {self.client.credentials.host}, "
                "or this API key cannot read it"
            )
        return project

    def _run(self, document: str, name: str, **variables: Any) -> dict[str, Any] | None:
        return self._project(document, run=name, **variables).get("run")

    def listing(
        self,
        page_size: int,
        order: str = "+created_at",
        filters: dict[str, Any] | None = None,
        cursor: str | None = None,
    ) -> Iterator[ListingPage]:
        """The lightweight listing, page after page, from ``cursor`` on."""
        while True:
            project = self._project(
                queries.RUN_LISTING,
                cursor=cursor,
                perPage=page_size,
                order=order,
                filters=json.dumps(filters or {}),
            )
            runs = project.get("runs") or {}
            edges = runs.get("edges") or []
            info = runs.get("pageInfo") or {}
            nodes = [e["node"] for e in edges if isinstance(e, dict) and e.get("node")]
            if any(not isinstance(n.get("name"), str) for n in nodes):
                raise CommError(f"{self.path}: W&B listed a run without a name")
            cursor = info.get("endCursor") or (edges[-1].get("cursor") if edges else None)
            has_next = bool(info.get("hasNextPage")) and bool(edges) and cursor is not None
            yield ListingPage(nodes, int(project.get("runCount") or 0), cursor, has_next)
            if not has_next:
                return

    def records(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """Full records (config, summary, system metrics, historyKeys) of the named runs."""
        project = self._project(
            queries.RUN_RECORDS,
            filters=json.dumps({"name": {"$in": list(names)}}),
            perPage=len(names),
        )
        edges = (project.get("runs") or {}).get("edges") or []
        nodes = [e["node"] for e in edges if isinstance(e, dict) and e.get("node")]
        for node in nodes:
            if isinstance(node.get("historyKeys"), str):  # some servers send it as text
                node["historyKeys"] = loads(node["historyKeys"])
        return nodes

    def history(
        self,
        name: str,
        min_step: int,
        max_step: int,
        page_size: int,
        event_samples: int | None = None,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None] | None:
        """History rows with ``min_step <= _step < max_step`` (at most ``page_size``), and the
        run's events when ``event_samples`` is given; ``None`` when the run is gone."""
        document = (
            queries.HISTORY_PAGE if event_samples is None else queries.HISTORY_PAGE_WITH_EVENTS
        )
        extra = {} if event_samples is None else {"eventSamples": event_samples}
        run = self._run(
            document, name, minStep=min_step, maxStep=max_step, pageSize=page_size, **extra
        )
        if run is None:
            return None
        rows = _rows(run.get("history"), self.path, name)
        events = None if event_samples is None else _rows(run.get("events"), self.path, name)
        return rows, events

    def events(self, name: str, samples: int) -> list[dict[str, Any]] | None:
        """The run's system-metric events (W&B offers no window for them)."""
        run = self._run(queries.EVENTS, name, eventSamples=samples)
        return None if run is None else _rows(run.get("events"), self.path, name)

    def push_edit(self, fields: dict[str, Any]) -> None:
        """``upsertBucket`` of an existing run (``fields["id"]`` is its storage id)."""
        data = self.client.execute(queries.PUSH_EDIT, {"input": fields})
        if not (data.get("upsertBucket") or {}).get("bucket"):
            raise CommError(f"{self.path}: W&B did not take the edit (no run in its answer)")

    def parquet_history(
        self, name: str, event_samples: int | None = None
    ) -> tuple[ParquetHistory, list[dict[str, Any]] | None] | None:
        """The run's exported history files and the live steps after them, and its events
        when ``event_samples`` is given (in the same request)."""
        if event_samples is None:
            run = self._run(queries.PARQUET_HISTORY, name, liveKeys=["_step"])
        else:
            run = self._run(
                queries.PARQUET_HISTORY_WITH_EVENTS,
                name,
                liveKeys=["_step"],
                eventSamples=event_samples,
            )
        if run is None:
            return None
        events = None if event_samples is None else _rows(run.get("events"), self.path, name)
        found = run.get("parquetHistory") or {}
        urls = [u for u in found.get("parquetUrls") or [] if isinstance(u, str)]
        steps = []
        for item in found.get("liveData") or []:
            step = item.get("_step") if isinstance(item, dict) else None
            if isinstance(step, (int, float)) and not isinstance(step, bool):
                steps.append(int(step))
        return ParquetHistory(urls, sorted(steps)), events


def _rows(values: Any, path: str, name: str) -> list[dict[str, Any]]:
    """History or events: a list of JSON strings, one row each."""
    if not isinstance(values, list):
        raise CommError(f"{path}/{name}: W&B sent history that is not a list")
    rows = []
    for value in values:
        try:
            row = loads(value) if isinstance(value, str) else value
        except ValueError:
            raise CommError(f"{path}/{name}: W&B sent a history row that is not JSON") from None
        if not isinstance(row, dict):
            raise CommError(f"{path}/{name}: W&B sent a history row that is not an object")
        rows.append(row)
    return rows
