"""byte order texts: on PostgreSQL, the texts filters compare and sort collate as "C" and hold
NUL through an escape

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 21:30:00.000000

MongoDB (and SQLite) order strings by their bytes; a PostgreSQL database's own collation (a
language's, often ICU) does not, so the run attributes filters and orders read, the field index's
texts and its paths are switched to ``COLLATE "C"``, and to unbounded text (SQLite never enforced
their lengths, so a value W&B sent that SQLite holds must fit here too). PostgreSQL's text cannot hold NUL, so
``mirror.store.texts.ByteText`` stores these columns with an order-keeping escape from now on;
U+0001 already stored is escaped here, so that it is not read as the start of one. SQLite
compares bytes already and holds NUL as it is: nothing changes there.

A B-tree entry on PostgreSQL holds at most about 2.7 kB, so its indexes on the field index's texts
and on display names hold their first 600 characters (``left(txt, 600)``); the tables keep every
text whole. Going down, the collation returns to the database's default, the escape of U+0001 is undone,
and an escaped NUL, which plain PostgreSQL text cannot hold, becomes U+FFFD.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: (table, column, length or None for text), as at 0005
COLUMNS = [
    ("runs", "name", 255),
    ("runs", "display_name", None),
    ("runs", "state", 32),
    ("runs", "group_name", None),
    ("runs", "job_type", None),
    ("runs", "notes", None),
    ("runs", "description", None),
    ("runs", "commit", 255),
    ("runs", "host", None),
    ("runs", "sweep_name", 255),
    ("runs", "username", 255),
    ("runs", "created_at", 32),
    ("runs", "heartbeat_at", 32),
    ("runs", "updated_at", 32),
    ("field_keys", "path", None),
    ("run_fields", "txt", None),
]
_ESCAPE = "chr(1)"


def _type(length: int | None, collation: str | None) -> sa.types.TypeEngine:
    return sa.Text(collation=collation) if length is None else sa.String(length, collation)


#: the indexes of 0005 on the texts, by name: (table, columns); see
#: ``mirror.store.texts.PREFIX_INDEXES`` for the form they take on PostgreSQL from 0006 on
INDEXES = {
    "ix_run_fields_key_id_kind_num_txt_run_id_elem": (
        "run_fields",
        ["key_id", "kind", "num", "txt", "run_id", "elem"],
    ),
    "ix_runs_project_id_display_name": ("runs", ["project_id", "display_name"]),
}
_PREFIX = 600  # mirror.store.texts.INDEXED_CHARS when this was written


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (table, _columns) in INDEXES.items():
        op.drop_index(name, table_name=table)
    for table, column, length in COLUMNS:
        op.alter_column(table, column, type_=_type(None, "C"), existing_type=_type(length, None))
        op.execute(
            f'UPDATE {table} SET "{column}" = replace("{column}", {_ESCAPE}, '
            f'{_ESCAPE} || chr(2)) WHERE strpos("{column}", {_ESCAPE}) > 0'
        )
    for name, (table, columns) in INDEXES.items():
        listed = ", ".join(
            f'left("{c}", {_PREFIX})' if c in ("txt", "display_name") else f'"{c}"' for c in columns
        )
        op.execute(f"CREATE INDEX {name} ON {table} ({listed})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (table, _columns) in INDEXES.items():
        op.drop_index(name, table_name=table)
    for table, column, length in COLUMNS:
        # left to right, escapes never overlap: NUL's first, then U+0001's
        op.execute(
            f'UPDATE {table} SET "{column}" = replace(replace("{column}", '
            f"{_ESCAPE} || {_ESCAPE}, chr(65533)), {_ESCAPE} || chr(2), {_ESCAPE}) "
            f'WHERE strpos("{column}", {_ESCAPE}) > 0'
        )
        op.alter_column(table, column, type_=_type(length, None), existing_type=_type(None, "C"))
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)
