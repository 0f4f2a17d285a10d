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

Going down, the collation returns to the database's default, the escape of U+0001 is undone,
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


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, length in COLUMNS:
        op.alter_column(table, column, type_=_type(None, "C"), existing_type=_type(length, None))
        op.execute(
            f'UPDATE {table} SET "{column}" = replace("{column}", {_ESCAPE}, '
            f'{_ESCAPE} || chr(2)) WHERE strpos("{column}", {_ESCAPE}) > 0'
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, length in COLUMNS:
        # left to right, escapes never overlap: NUL's first, then U+0001's
        op.execute(
            f'UPDATE {table} SET "{column}" = replace(replace("{column}", '
            f"{_ESCAPE} || {_ESCAPE}, chr(65533)), {_ESCAPE} || chr(2), {_ESCAPE}) "
            f'WHERE strpos("{column}", {_ESCAPE}) > 0'
        )
        op.alter_column(table, column, type_=_type(length, None), existing_type=_type(None, "C"))
