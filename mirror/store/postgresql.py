"""What a PostgreSQL mirror has beyond the models' one declaration for every database.

Indexes PostgreSQL's planner needs and SQLite's does not (migration 0007 creates them), by
name with the words their definition must hold, so that ``db check`` finds one missing or
changed.
"""

from __future__ import annotations

#: index name → the parts ``pg_indexes.indexdef`` must hold (quotes removed)
INDEXES: dict[str, tuple[str, ...]] = {
    # the listing's order (newest first, run id as tie-break) over live runs
    "ix_runs_live_order": (
        "runs USING btree (project_id, created_at DESC, name)",
        "WHERE (deleted_at IS NULL)",
    ),
}
