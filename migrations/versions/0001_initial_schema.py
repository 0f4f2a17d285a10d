"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 00:46:44.806237
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("entity", "name", name=op.f("uq_projects_entity_name")),
    )
    op.create_table(
        "field_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_field_keys_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_field_keys")),
        sa.UniqueConstraint("project_id", "path", name=op.f("uq_field_keys_project_id_path")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("deleted_at", sa.String(length=32), nullable=True),
        sa.Column("synced_at", sa.String(length=32), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("storage_id", sa.String(length=512), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=True),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("group_name", sa.Text(), nullable=True),
        sa.Column("job_type", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("commit", sa.String(length=255), nullable=True),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("sweep_name", sa.String(length=255), nullable=True),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("user_name", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("heartbeat_at", sa.String(length=32), nullable=True),
        sa.Column("updated_at", sa.String(length=32), nullable=True),
        sa.Column("history_line_count", sa.Integer(), nullable=False),
        sa.Column("history_keys", sa.Text(), nullable=True),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("summary_metrics", sa.Text(), nullable=False),
        sa.Column("system_metrics", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_runs_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_runs_project_id_name")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_runs_project_id_created_at_name"),
            ["project_id", "created_at", "name"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_runs_project_id_display_name"),
            ["project_id", "display_name"],
            unique=False,
        )

    op.create_table(
        "sync_state",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("created_at_bookmark", sa.String(length=32), nullable=True),
        sa.Column("last_pull_started_at", sa.String(length=32), nullable=True),
        sa.Column("last_pull_finished_at", sa.String(length=32), nullable=True),
        sa.Column("last_reconcile_at", sa.String(length=32), nullable=True),
        sa.Column("remote_run_count", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_sync_state_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "history_chunks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(length=16), nullable=False),
        sa.Column("first_step", sa.BigInteger(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_history_chunks_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_history_chunks")),
        sa.UniqueConstraint(
            "run_id",
            "stream",
            "first_step",
            name=op.f("uq_history_chunks_run_id_stream_first_step"),
        ),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=16), nullable=False),
        sa.Column("patch", sa.Text(), nullable=False),
        sa.Column("base", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_outbox_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_outbox_status_run_id"), ["status", "run_id"], unique=False
        )

    op.create_table(
        "run_fields",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("elem", sa.SmallInteger(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("num", sa.Float(), nullable=True),
        sa.Column("txt", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"], ["field_keys.id"], name=op.f("fk_run_fields_key_id_field_keys")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_fields_run_id_runs")),
    )
    with op.batch_alter_table("run_fields", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_run_fields_key_id_kind_num"), ["key_id", "kind", "num"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_run_fields_key_id_kind_txt"), ["key_id", "kind", "txt"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_run_fields_run_id_key_id"), ["run_id", "key_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("run_fields", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_fields_run_id_key_id"))
        batch_op.drop_index(batch_op.f("ix_run_fields_key_id_kind_txt"))
        batch_op.drop_index(batch_op.f("ix_run_fields_key_id_kind_num"))

    op.drop_table("run_fields")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_status_run_id"))

    op.drop_table("outbox")
    op.drop_table("history_chunks")
    op.drop_table("sync_state")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_project_id_display_name"))
        batch_op.drop_index(batch_op.f("ix_runs_project_id_created_at_name"))

    op.drop_table("runs")
    op.drop_table("field_keys")
    op.drop_table("projects")
