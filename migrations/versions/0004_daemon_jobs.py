"""daemon jobs: what each scheduled job last did and when it runs next

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 18:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daemon_jobs",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column("next_run_at", sa.String(length=32), nullable=True),
        sa.Column("last_started_at", sa.String(length=32), nullable=True),
        sa.Column("last_finished_at", sa.String(length=32), nullable=True),
        sa.Column("last_success_at", sa.String(length=32), nullable=True),
        sa.Column("last_failure_at", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_summary", sa.Text(), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daemon_jobs")),
    )


def downgrade() -> None:
    op.drop_table("daemon_jobs")
