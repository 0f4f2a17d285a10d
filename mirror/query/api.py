"""The offline ``Api``: the read side of ``wandb.Api``, answered from the mirror.

Code written against ``wandb.Api`` should run unchanged: the same names (``run.id`` is the run
id, ``run.name`` the display name), lazy ``Runs`` with ``len`` from one COUNT, pages of
``per_page``, ``api.flush()`` clearing the caches. Where W&B surprises people the mirror does
not: ``history()`` returns every row unless ``samples`` is given (then an even, deterministic
sample), and ``keys`` selects rows holding *any* of the keys, not only rows holding all of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, select
from sqlalchemy.exc import SQLAlchemyError, StatementError

from mirror.errors import CommError, FilterError, MirrorError, database_reason
from mirror.query import frames
from mirror.query.filters import Node, Order, parse_filter, parse_order
from mirror.query.history_args import check_window, checked_keys
from mirror.query.paths import project_path, run_path
from mirror.query.sampling import sample_indices
from mirror.query.sql import count_query, ordered_ids, runs_query
from mirror.store import migrate
from mirror.store import read as store_read
from mirror.store.engine import make_engine, read_transaction, write_transaction
from mirror.store.fields import dumps, loads, unwrap_config
from mirror.store.models import projects
from mirror.store.models import runs as runs_table
from mirror.store.outbox import DELETE, Edit, record_edit

_EVERY_RUN = sys.maxsize  # a position past any listing: read it whole

#: what SQLite says when one statement outgrows its limits: the filter is too large
_TOO_LARGE = (
    "too many SQL variables",
    "Expression tree is too large",
    "too many terms in compound SELECT",
    "parser stack overflow",
    "string or blob too big",
)


def _database_error(exc: SQLAlchemyError, doing: str) -> MirrorError:
    """One line for a failed statement: the driver's words, never the SQL or its parameters,
    which would carry the filter's values and tell the user nothing."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        reason = str(exc.orig)
    else:
        reason = str(exc.args[0]) if exc.args else type(exc).__name__
    if any(limit in reason for limit in _TOO_LARGE):
        return FilterError(
            f"filters: too large for the database to evaluate ({reason}); split the query"
        )
    return CommError(f"cannot {doing} the mirror database: {reason}", exc)


class NotFound(MirrorError, ValueError):
    """A project or run the mirror does not hold (a ValueError, as ``wandb.Api`` raises)."""


class Api:
    """Entry point, as ``wandb.Api()``: ``Api()`` or ``Api(database="sqlite:///path/mirror.db")``.

    ``database`` is a path or an SQLAlchemy URL; by default ``WANDB_MIRROR_DB`` or the default
    mirror file. ``overrides={"entity": ...}`` (or ``WANDB_ENTITY``) lets paths omit the entity.
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | Engine | None = None,
        overrides: dict[str, Any] | None = None,
        timeout: float | None = None,
        api_key: str | None = None,
    ) -> None:
        del timeout, api_key  # accepted for wandb.Api compatibility; offline needs neither
        self._database = database
        self._engine: Engine | None = database if isinstance(database, Engine) else None
        self._checked = False
        self.default_entity = (overrides or {}).get("entity") or os.environ.get("WANDB_ENTITY")
        self._runs_cache: dict[tuple[Any, ...], Runs] = {}
        self._run_cache: dict[str, Run] = {}

    @property
    def engine(self) -> Engine:
        """The database engine, opened (never created) and checked on first use."""
        if not self._checked:
            try:
                if self._engine is None:
                    self._engine = make_engine(self._database, create=False)  # type: ignore[arg-type]
                migrate.require_current(self._engine)
            except MirrorError as exc:
                raise CommError(str(exc), exc) from exc
            except SQLAlchemyError as exc:
                raise _database_error(exc, "open") from None
            except OSError as exc:
                raise CommError(f"cannot open the mirror database: {exc}", exc) from exc
            self._checked = True
        return self._engine  # type: ignore[return-value]

    def close(self) -> None:
        """Release the database connections (an engine passed in stays open)."""
        if self._engine is not None and not isinstance(self._database, Engine):
            self._engine.dispose()
            self._engine = None
            self._checked = False

    def _read(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one snapshot, failures as ``CommError``.

        One snapshot on PostgreSQL too (``read_transaction``): a history read lists a run's
        chunks before it fetches them, while the daemon may merge them into new ones meanwhile.
        """
        try:
            with read_transaction(self.engine) as conn:
                return fn(conn, *args)
        except SQLAlchemyError as exc:
            raise _database_error(exc, "read") from None

    def _project_id(self, conn: Connection, entity: str, project: str) -> int:
        found = store_read.find_project(conn, entity, project)
        if found is None:
            raise NotFound(f"Could not find project {entity}/{project} in the mirror")
        return found["id"]

    def projects(self, entity: str | None = None) -> list[str]:
        """``entity/project`` for every mirrored project (of one entity, if given)."""
        query = select(projects.c.entity, projects.c.name).order_by(projects.c.entity, "name")
        if entity:
            query = query.where(projects.c.entity == entity)
        rows = self._read(lambda conn: conn.execute(query).all())
        return [f"{e}/{n}" for e, n in rows]

    def runs(
        self,
        path: str,
        filters: dict[str, Any] | None = None,
        order: str = "-created_at",
        per_page: int = 50,
        include_sweeps: bool = True,
        lazy: bool = True,
    ) -> Runs:
        """The runs of a project matching a MongoDB filter, lazily, in ``per_page`` pages."""
        del include_sweeps, lazy
        entity, project = project_path(path, self.default_entity)
        node = parse_filter(filters)
        parsed_order = parse_order(order)
        key = (entity, project, repr(node), repr(parsed_order), per_page)
        if key not in self._runs_cache:
            project_id = self._read(self._project_id, entity, project)
            self._runs_cache[key] = Runs(
                self, entity, project, project_id, node, parsed_order, per_page
            )
        return self._runs_cache[key]

    def run(self, path: str) -> Run:
        """One run by ``entity/project/run_id`` (or any path form wandb accepts)."""
        entity, project, run_id = run_path(path, self.default_entity)
        cache_key = f"{entity}/{project}/{run_id}"
        if cache_key not in self._run_cache:

            def load(conn: Connection) -> RowMapping | None:
                return store_read.find_run(conn, self._project_id(conn, entity, project), run_id)

            row = self._read(load)
            if row is None:
                raise NotFound(f"Could not find run {cache_key} in the mirror")
            self._run_cache[cache_key] = Run(self, entity, project, row)
        return self._run_cache[cache_key]

    def flush(self) -> None:
        """Forget cached results, so the next read sees what a sync wrote since."""
        self._runs_cache.clear()
        self._run_cache.clear()


class Runs(Sequence["Run"]):
    """A lazy, list-like result: ``len`` is one COUNT, rows are fetched a page at a time."""

    def __init__(
        self,
        api: Api,
        entity: str,
        project: str,
        project_id: int,
        node: Node,
        order: Order,
        per_page: int,
    ) -> None:
        self._api = api
        self.entity = entity
        self.project = project
        self._project_id = project_id
        self._node = node
        self._order = order
        self.per_page = max(1, int(per_page))
        self._length: int | None = None
        self._ids: list[int] = []  # the listing as far as it has been read
        self._complete = False
        self._pages: dict[int, list[Run]] = {}

    def __len__(self) -> int:
        if self._complete:
            return len(self._ids)
        if self._length is None:
            query = count_query(self._project_id, self._node)
            self._length = int(self._api._read(lambda conn: conn.execute(query).scalar_one()))
        return self._length

    def _listing(self, upto: int) -> list[int]:
        """The ordered run ids, read far enough to cover positions below ``upto``.

        The first page is read with a LIMIT (fast, the common case); anything beyond it reads
        the whole id list once and appends the runs not yet listed, so the pages of one listing
        never repeat or skip a run even when a sync writes between them (W&B's paging does,
        issues 6614/7666).
        """
        if self._complete or len(self._ids) >= upto:
            return self._ids
        query = ordered_ids(runs_query(self._project_id, self._node, self._order))
        if not self._ids and upto <= self.per_page:
            limited = query.limit(self.per_page)
            self._ids = self._api._read(lambda conn: conn.execute(limited).scalars().all())
            self._complete = len(self._ids) < self.per_page
            return self._ids
        everything = self._api._read(lambda conn: conn.execute(query).scalars().all())
        listed = set(self._ids)
        self._ids = self._ids + [run_id for run_id in everything if run_id not in listed]
        self._complete = True
        return self._ids

    def _page(self, number: int) -> list[Run]:
        if number not in self._pages:
            start = number * self.per_page
            ids = self._listing(start + self.per_page)[start : start + self.per_page]
            rows = self._api._read(lambda conn: list(store_read.iter_runs(conn, ids)))
            self._pages[number] = [Run(self._api, self.entity, self.project, r) for r in rows]
        return self._pages[number]

    def __iter__(self) -> Iterator[Run]:
        number = 0
        while number * self.per_page < len(self._listing((number + 1) * self.per_page)):
            yield from self._page(number)
            number += 1

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            stop = index.stop
            bounded = stop is not None and stop >= 0 and (index.start or 0) >= 0
            count = len(self._listing(stop if bounded else _EVERY_RUN))
            return [self[i] for i in range(*index.indices(count))]
        if index < 0:
            index += len(self._listing(_EVERY_RUN))
        if index < 0 or index >= len(self._listing(index + 1)):
            raise IndexError("runs index out of range")
        page = self._page(index // self.per_page)
        offset = index % self.per_page
        if offset >= len(page):
            raise IndexError(f"run {index} was deleted since this listing was read")
        return page[offset]

    def histories(
        self,
        samples: int | None = None,
        keys: Sequence[str] | None = None,
        x_axis: str = "_step",
        format: str = "pandas",
        stream: str = "default",
    ) -> Any:
        """Every matching run's history in one frame with a ``run_id`` column, as W&B's
        ``Runs.histories``, but every row unless ``samples`` is given (then each run is sampled
        as ``run.history(samples=...)`` samples it).

        It equals concatenating each run's ``history()`` (runs in listing order, columns
        sorted as W&B sorts them), read in one pass over the store rather than a query per run.
        ``format``: ``"pandas"``, ``"polars"`` or ``"default"`` (a list of dicts, as W&B's).
        """
        frames.check_format(format)
        keys = checked_keys(keys)
        check_window(samples, None, None)
        if format == "default":
            return [
                {**row, "run_id": run.id}
                for run in self
                for row in run.history(samples, keys, x_axis, pandas=False, stream=stream)
            ]
        listing = [(run._row["id"], run.id) for run in self]
        stream_name = _stream_name(stream)
        frame = self._api._read(frames.histories_frame, listing, stream_name, keys, samples, x_axis)
        return frames.to_polars(frame) if format == "polars" else frame

    def to_dataframe(self, columns: Sequence[str] | None = None, format: str = "pandas") -> Any:
        """The listing as a DataFrame, one row per run in order: ``id``, ``name``, ``state``,
        ``group``, ``tags``, ``created_at`` and every ``config.<key>`` and ``summary.<key>``,
        or just ``columns`` (those names, other run attributes, nested ``config.a.b``).

        The frame W&B's docs build by hand from a loop over ``api.runs``.
        """
        frames.check_format(format)
        if format == "default":
            raise ValueError("format must be pandas or polars for a DataFrame")
        frame = frames.runs_frame(list(self), columns)
        return frames.to_polars(frame) if format == "polars" else frame

    def __repr__(self) -> str:
        return f"<Runs {self.entity}/{self.project}>"


class Summary(dict):
    """A run's summary: a dict of W&B's summary metrics (media objects keep ``_type``).

    As with ``wandb``'s: ``summary[k] = v`` and ``del summary[k]`` are kept until
    ``run.update()``; ``summary.update({...})`` queues its keys at once.
    """

    def __init__(self, values: dict[str, Any], run: Run | None = None) -> None:
        super().__init__(values)
        self._run = run

    @property
    def _json_dict(self) -> dict[str, Any]:
        """As ``wandb``'s summary exposes its raw JSON."""
        return dict(self)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Set the keys and queue the whole change of the run for write-back now."""
        super().update(*args, **kwargs)
        if self._run is not None:
            self._run.update()


class Run:
    """One mirrored run, read-only, with the attribute names of ``wandb.apis.public.Run``."""

    def __init__(self, api: Api, entity: str, project: str, row: RowMapping) -> None:
        self._api = api
        self.entity = entity
        self.project = project
        self._load(row)

    def _load(self, row: RowMapping) -> None:
        """Take the run's values from its row; the JSON columns parse again on first use."""
        self._row = row
        for name in ("rawconfig", "config", "summary", "system_metrics", "history_keys"):
            self.__dict__.pop(name, None)
        self.id: str = row["name"]
        self.storage_id: str = row["storage_id"]
        self.name: str | None = row["display_name"]
        self.display_name = self.name
        self.state: str | None = row["state"]
        self.tags: list[str] = loads(row["tags"], [])
        self.group: str | None = row["group_name"]
        self.job_type: str | None = row["job_type"]
        self.notes: str | None = row["notes"]
        self.description: str | None = row["description"]
        self.commit: str | None = row["commit"]
        self.host: str | None = row["host"]
        self.sweep_name: str | None = row["sweep_name"]
        self.created_at: str = row["created_at"]
        self.heartbeat_at: str | None = row["heartbeat_at"]
        self.updated_at: str | None = row["updated_at"]
        self.history_line_count: int = row["history_line_count"]
        self.deleted_at: str | None = row["deleted_at"]
        self.user = {"username": row["username"], "name": row["user_name"]}

    # The JSON columns are parsed on first use: listing 50 runs to read their ids should not
    # pay for 50 summaries.

    @cached_property
    def rawconfig(self) -> dict[str, Any]:
        """The config as W&B stores it: values wrapped, ``_wandb`` included."""
        return loads(self._row["config"], {}) or {}

    @cached_property
    def config(self) -> dict[str, Any]:
        """The config as ``wandb`` shows it: unwrapped, without ``_wandb``."""
        return unwrap_config(self.rawconfig)

    @cached_property
    def summary(self) -> Summary:
        """The summary metrics (pending edits included); NaN and Infinity come back as floats."""
        return Summary(loads(self._row["summary_metrics"], {}) or {}, self)

    @cached_property
    def system_metrics(self) -> dict[str, Any]:
        """The last system-metric sample W&B keeps with the run."""
        return loads(self._row["system_metrics"], {}) or {}

    @cached_property
    def history_keys(self) -> dict[str, Any] | None:
        """W&B's ``historyKeys``: the keys logged, their type counts and the last step."""
        return loads(self._row["history_keys"], None)

    @property
    def path(self) -> list[str]:
        """``[entity, project, run_id]``, as wandb gives it."""
        return [self.entity, self.project, self.id]

    @property
    def url(self) -> str:
        """Where the run lives on W&B."""
        return f"https://wandb.ai/{self.entity}/{self.project}/runs/{self.id}"

    @property
    def summary_metrics(self) -> dict[str, Any]:
        """The summary under wandb's other name for it."""
        return self.summary

    @property
    def json_config(self) -> str:
        """The raw config as JSON text, as W&B stores it (values wrapped)."""
        return self._row["config"]

    @property
    def lastHistoryStep(self) -> int:  # noqa: N802 - wandb's name
        """The last step logged, or -1 for a run without history."""
        if self.history_keys and "lastStep" in self.history_keys:
            return int(self.history_keys["lastStep"])
        return -1

    def scan_history(
        self,
        keys: Sequence[str] | None = None,
        page_size: int = 1000,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every row in ``[min_step, max_step)``, streamed a chunk at a time (bounded memory).

        The arguments are checked at the call, as ``history()`` checks them.
        """
        del page_size  # rows stream by stored chunk; the argument is kept for compatibility
        check_window(None, min_step, max_step)
        return self._scan(checked_keys(keys), min_step, max_step)

    def _scan(
        self, keys: list[str] | None, min_step: int | None, max_step: int | None
    ) -> Iterator[dict[str, Any]]:
        run_id = self._row["id"]
        spans = self._api._read(store_read.chunk_spans, run_id, "history", min_step, max_step)
        wanted = None if keys is None else [*keys, "_step"]
        for span in spans:  # one short read per chunk: a paused scan pins no snapshot
            rows = self._api._read(lambda conn, s=span: store_read.load_chunk(conn, s).rows(wanted))
            yield from store_read.window(rows, span.first_step, min_step, max_step, keys)

    def history(
        self,
        samples: int | None = None,
        keys: Sequence[str] | None = None,
        x_axis: str = "_step",
        pandas: bool = True,
        stream: str = "default",
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> Any:
        """History rows: all of them unless ``samples`` is given, as a DataFrame by default.

        Arguments that can only give nothing raise ``ArgumentError`` (a ValueError) naming
        them: ``keys`` as a string rather than a list, ``samples`` below 1, ``max_step`` not
        above ``min_step``. With ``keys``, the columns are the keys, ``_step`` and ``x_axis``
        (as W&B adds it).
        """
        keys = checked_keys(keys)
        check_window(samples, min_step, max_step)
        stream_name = _stream_name(stream)
        if pandas:
            frame = self._api._read(
                frames.history_frame,
                self._row["id"],
                stream_name,
                min_step,
                max_step,
                keys,
                x_axis,
            )
            if samples is not None:
                frame = frame.iloc[sample_indices(len(frame), samples)].reset_index(drop=True)
            return frame
        rows = self._api._read(
            lambda conn: list(
                store_read.iter_rows(
                    conn, self._row["id"], stream_name, min_step, max_step, keys, x_axis
                )
            )
        )
        if samples is not None:
            rows = [rows[i] for i in sample_indices(len(rows), samples)]
        return rows

    def update(self) -> None:
        """Queue what changed in ``summary``, ``config``, ``tags`` and ``notes`` for W&B.

        The edit goes to the mirror's outbox in one transaction and shows at once in every
        query; ``wandb-mirror push`` (or the next ``sync``) sends it to W&B without
        overwriting what changed there meanwhile. Deleting a config key raises
        ``EditError``: W&B keeps every config key it has seen.
        """
        edit = self._changes()
        if edit is None:
            return
        run_id = self._row["id"]

        def write(conn: Connection) -> RowMapping:
            current = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).mappings()
            record_edit(conn, current.one(), edit)
            return (
                conn.execute(select(runs_table).where(runs_table.c.id == run_id)).mappings().one()
            )

        try:
            with write_transaction(self._api.engine) as conn:
                row = write(conn)
        except SQLAlchemyError as exc:
            raise CommError(f"cannot queue the edit: {database_reason(exc)}", exc) from None
        self._api.flush()
        self._load(row)

    def _changes(self) -> Edit | None:
        """What differs between the loaded run and its attributes now."""
        before_summary = loads(self._row["summary_metrics"], {}) or {}
        before_config = unwrap_config(loads(self._row["config"], {}) or {})
        before_tags = loads(self._row["tags"], [])
        summary: dict[str, Any] = {}
        if "summary" in self.__dict__:
            now = dict(self.summary)
            summary = {k: v for k, v in now.items() if _differs(before_summary, k, v)}
            summary.update(dict.fromkeys(set(before_summary) - set(now), DELETE))
        config: dict[str, Any] = {}
        if "config" in self.__dict__:
            now = self.config
            config = {k: v for k, v in now.items() if _differs(before_config, k, v)}
            config.update(dict.fromkeys(set(before_config) - set(now), DELETE))
        tags = list(self.tags)
        edit = Edit(
            summary=summary,
            config=config,
            add_tags=[t for t in tags if t not in before_tags],
            remove_tags=[t for t in before_tags if t not in tags],
            notes=self.notes,
            set_notes=self.notes != self._row["notes"],
        )
        return edit if edit.patches() else None

    def __repr__(self) -> str:
        return f"<Run {self.entity}/{self.project}/{self.id} ({self.state})>"


def _stream_name(stream: str) -> str:
    """W&B's stream names → the store's."""
    if stream in ("default", "history"):
        return "history"
    if stream in ("system", "events"):
        return "events"
    raise ValueError(f"unknown history stream {stream!r}; use 'default' or 'system'")


def _differs(before: dict[str, Any], key: str, value: Any) -> bool:
    return key not in before or dumps(before[key]) != dumps(value)
