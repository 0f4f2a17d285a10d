"""The mirror's tables.

The schema itself is created only by the Alembic scripts in ``migrations/``; these declarations
are what the code reads and writes through, and a test checks that both agree.

Three representations of a run live side by side, each for one job, and each value is stored
once in the form its job needs (schema 0005):

* ``runs`` keeps every field exactly as W&B sends it (config, summary and system metrics as the
  raw JSON text, NaN and Infinity tokens included), so exports and the GraphQL server can hand
  back byte-for-byte what came in. The JSON documents are only ever read whole, so they are
  stored compressed (``mirror.store.packing``); every reader still gets the exact text.
* ``run_fields`` is a flattened index of the run as a MongoDB-like document (see
  ``mirror.store.fields``): one row per dotted path (and per array element), typed, so that
  filters compile to indexed SQL on any database instead of JSON functions SQLite 3.40 lacks.
  Its rows are clustered by run (the primary key), which serves reindexing and the per-run
  lookups of sorting, and one covering index by key and value serves every filter leaf. Run
  attributes have no rows (filters read their ``runs`` columns), and a long document or array
  is indexed by a bounded key, not by a copy of itself.
* ``history_chunks`` keeps history and system-metric events in columnar compressed chunks (see
  ``mirror.store.history``), so a 200,000-step read is a handful of blob reads, not 200,000 rows.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from mirror.store.packing import PackedText
from mirror.store.texts import ByteText

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("entity", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("entity", "name"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    # Tombstone and sync time first: a filter checks them on every candidate run, and SQLite reads
    # a row from its start, so they must not sit behind kilobytes of config and summary JSON.
    Column("deleted_at", String(32)),  # deleted remotely, kept locally
    Column("synced_at", String(32)),
    Column("name", ByteText(255), nullable=False),  # the run id users see
    Column("storage_id", String(512), nullable=False),
    Column("display_name", ByteText()),
    Column("state", ByteText(32)),
    Column("tags", Text, nullable=False, default="[]"),  # JSON list
    Column("group_name", ByteText()),
    Column("job_type", ByteText()),
    Column("notes", ByteText()),
    Column("description", ByteText()),
    Column("commit", ByteText(255)),
    Column("host", ByteText()),
    Column("sweep_name", ByteText(255)),
    Column("username", ByteText(255)),
    Column("user_name", String(255)),
    Column("created_at", ByteText(32), nullable=False),  # naive UTC ISO text, as W&B sends it
    Column("heartbeat_at", ByteText(32)),
    Column("updated_at", ByteText(32)),
    Column("history_line_count", Integer, nullable=False, default=0),
    Column("history_keys", PackedText),  # raw JSON, as W&B's historyKeys
    Column("config", PackedText, nullable=False, default="{}"),  # raw JSON text, values wrapped
    Column("summary_metrics", PackedText, nullable=False, default="{}"),
    Column("system_metrics", PackedText, nullable=False, default="{}"),
    UniqueConstraint("project_id", "name"),
    Index(None, "project_id", "deleted_at", "created_at", "name"),
    Index(None, "project_id", "display_name"),
)

#: W&B GraphQL ``Run`` field → ``runs`` column, for fields stored as plain values
NODE_COLUMNS: dict[str, str] = {
    "id": "storage_id",
    "name": "name",
    "displayName": "display_name",
    "state": "state",
    "group": "group_name",
    "jobType": "job_type",
    "notes": "notes",
    "description": "description",
    "commit": "commit",
    "host": "host",
    "sweepName": "sweep_name",
    "createdAt": "created_at",
    "heartbeatAt": "heartbeat_at",
    "updatedAt": "updated_at",
    "historyLineCount": "history_line_count",
}

#: W&B GraphQL ``Run`` field → ``runs`` column, for fields stored as JSON text
NODE_JSON_COLUMNS: dict[str, str] = {
    "tags": "tags",
    "config": "config",
    "summaryMetrics": "summary_metrics",
    "systemMetrics": "system_metrics",
    "historyKeys": "history_keys",
}

field_keys = Table(
    "field_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("path", ByteText(), nullable=False),
    UniqueConstraint("project_id", "path"),
)

run_fields = Table(
    "run_fields",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("key_id", Integer, ForeignKey("field_keys.id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),  # the row's place in the run
    Column("elem", SmallInteger, nullable=False),  # 0: the value at the path, 1: an array element
    Column("kind", SmallInteger, nullable=False),  # mirror.store.fields.Kind
    # A number, or an array's length; NULL for text, documents, null and NaN, so that a test on
    # ``txt`` pins ``num IS NULL`` and the one index below serves numbers and texts alike.
    Column("num", Float),
    Column("txt", ByteText()),  # a text, a document key (fields.document_key), "NaN", a big int
    # covering: a filter leaf never reads the table
    Index(None, "key_id", "kind", "num", "txt", "run_id", "elem"),
    # On SQLite the table is its primary key's B-tree (no rowid, no separate run index).
    sqlite_with_rowid=False,
)

history_chunks = Table(
    "history_chunks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("stream", String(16), nullable=False),  # "history" or "events"
    Column("first_step", BigInteger, nullable=False),
    Column("last_step", BigInteger, nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    UniqueConstraint("run_id", "stream", "first_step"),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("project_id", Integer, ForeignKey("projects.id"), primary_key=True),
    Column("created_at_bookmark", String(32)),  # newest createdAt fully mirrored
    Column("last_pull_started_at", String(32)),
    Column("last_pull_finished_at", String(32)),
    Column("last_reconcile_at", String(32)),
    Column("remote_run_count", Integer),
    Column("last_error", Text),
    Column("last_success_at", String(32)),
    Column("last_summary", Text),  # the closing line of the last pull, for ``status``
)

run_sync = Table(
    "run_sync",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    # What W&B's lightweight listing showed when everything of the run was last mirrored; a run
    # whose listing differs (or that has none, after a crash mid-run) is fetched again.
    Column("fingerprint", Text),
    Column("synced_at", String(32)),
    Column("failures", Integer, nullable=False, default=0),  # consecutive failed cycles
    Column("last_error", Text),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("target", String(16), nullable=False),  # summary | config | tags | meta
    Column("patch", Text, nullable=False),  # JSON merge patch
    Column("base", Text, nullable=False),  # the values the patch was made against
    Column("status", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("remote", Text),  # the values W&B held at the last pull or push (they move under it)
    Index(None, "status", "run_id"),
)

daemon_jobs = Table(
    "daemon_jobs",
    metadata,
    # The daemon's jobs as it last ran and scheduled them, for ``status`` (any process may read
    # it): ``pull:ENTITY/PROJECT``, ``push``, ``reconcile``, ``backup``, ``export``.
    Column("id", String(300), primary_key=True),
    Column("next_run_at", String(32)),
    Column("last_started_at", String(32)),
    Column("last_finished_at", String(32)),
    Column("last_success_at", String(32)),
    Column("last_failure_at", String(32)),
    Column("last_error", Text),
    Column("last_summary", Text),
    Column("runs", Integer, nullable=False, default=0),  # times it ran since it was first set up
    Column("failures", Integer, nullable=False, default=0),  # consecutive failed runs
)
