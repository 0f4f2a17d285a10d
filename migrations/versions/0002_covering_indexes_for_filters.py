"""covering indexes for filters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 01:23:13.229715
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run_fields", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_fields_key_id_kind_num"))
        batch_op.drop_index(batch_op.f("ix_run_fields_key_id_kind_txt"))
        batch_op.create_index(
            batch_op.f("ix_run_fields_key_id_kind_num_run_id"),
            ["key_id", "kind", "num", "run_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_run_fields_key_id_kind_txt_run_id"),
            ["key_id", "kind", "txt", "run_id"],
            unique=False,
        )

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_project_id_created_at_name"))
        batch_op.create_index(
            batch_op.f("ix_runs_project_id_deleted_at_created_at_name"),
            ["project_id", "deleted_at", "created_at", "name"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_project_id_deleted_at_created_at_name"))
        batch_op.create_index(
            batch_op.f("ix_runs_project_id_created_at_name"),
            ["project_id", "created_at", "name"],
            unique=False,
        )

    with op.batch_alter_table("run_fields", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_fields_key_id_kind_txt_run_id"))
        batch_op.drop_index(batch_op.f("ix_run_fields_key_id_kind_num_run_id"))
        batch_op.create_index(
            batch_op.f("ix_run_fields_key_id_kind_txt"), ["key_id", "kind", "txt"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_run_fields_key_id_kind_num"), ["key_id", "kind", "num"], unique=False
        )
