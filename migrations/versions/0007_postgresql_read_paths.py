"""postgresql read paths: an index in the listing's order over live runs, and the runs' packed
documents kept beside their rows

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 01:45:00.000000

PostgreSQL only; SQLite is left as it is.

* A listing is ordered newest first with the run id as tie-break (``created_at DESC, name``)
  over runs not deleted. The index of 0001 on ``(project_id, deleted_at, created_at, name)``
  cannot give that order on PostgreSQL: ``deleted_at IS NULL`` is not an equality its planner
  can skip, and the two keys run in opposite directions. So the first page of a 100,000-run
  project sorted every run (about 90 ms). A partial index over live runs in exactly that order
  lets it read the first page off the index, and walk it until a page of matches is found.
* A run's four JSON documents are zstd frames already (``mirror.store.packing``): PostgreSQL's
  own compression of them is wasted work, and kept in the row they make it about 1.3 kB, so
  that a filter reading a run attribute (a regex on display names, a state) scans 130 MB for
  100,000 runs. Stored out of line (``STORAGE EXTERNAL``, moved there once a row passes 128
  bytes), the rows scanned are about 400 bytes; a run read whole fetches its documents by index.
  Existing rows are rewritten so that they move too (autovacuum reclaims the old versions).
  History chunks are zstd frames too: new ones skip PostgreSQL's compression the same way.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: as ``mirror.store.postgresql.INDEXES`` holds it when this was written
LIVE_ORDER = (
    "CREATE INDEX ix_runs_live_order ON runs (project_id, created_at DESC, name) "
    "WHERE deleted_at IS NULL"
)
DOCUMENTS = ("config", "summary_metrics", "system_metrics", "history_keys")


def _storage(kind: str) -> str:
    return ", ".join(f"ALTER COLUMN {column} SET STORAGE {kind}" for column in DOCUMENTS)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(LIVE_ORDER)
    op.execute(f"ALTER TABLE runs SET (toast_tuple_target = 128), {_storage('EXTERNAL')}")
    op.execute("UPDATE runs SET config = config || ''::bytea")
    op.execute("ALTER TABLE history_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX ix_runs_live_order")
    op.execute(f"ALTER TABLE runs RESET (toast_tuple_target), {_storage('EXTENDED')}")
    op.execute("ALTER TABLE history_chunks ALTER COLUMN data SET STORAGE EXTENDED")
