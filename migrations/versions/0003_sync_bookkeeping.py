"""sync bookkeeping: per-run sync state, last success and summary per project, the remote
values under each queued edit

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 15:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_sync",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=True),
        sa.Column("synced_at", sa.String(length=32), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_sync_run_id_runs")),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_run_sync")),
    )
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_success_at", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("last_summary", sa.Text(), nullable=True))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("remote", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("remote")
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.drop_column("last_summary")
        batch_op.drop_column("last_success_at")
    op.drop_table("run_sync")
