"""compact store: runs' JSON documents packed, run_fields clustered by run with one covering
index, without rows for run attributes, documents indexed by bounded keys

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:00:00.000000

Every run and history row is kept. The field index is derived data: it is dropped and rebuilt
from the runs in the new layout (and, going down, in the old one). History chunks stay as they
are (their zlib frames are read beside the new zstd ones). The tables written here are declared
in this file as they are at 0005, so later changes to ``mirror.store.models`` cannot change
what this step does; the flattening rules are the store's own.
"""

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

from mirror.store.fields import (
    MAX_INDEXED_ARRAY,
    RUN_ATTRIBUTES,
    Kind,
    canonical,
    flatten,
    index_document,
    run_document,
    typed,
)
from mirror.store.packing import pack_text, unpack_text

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PACKED = ("config", "summary_metrics", "system_metrics", "history_keys")
_NOT_NULL = {"config": True, "summary_metrics": True, "system_metrics": True, "history_keys": False}
_RUNS_PER_BATCH = 500


def upgrade() -> None:
    conn = op.get_bind()
    op.drop_table("run_fields")
    op.create_table(
        "run_fields",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("elem", sa.SmallInteger(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("num", sa.Float(), nullable=True),
        sa.Column("txt", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"], ["field_keys.id"], name=op.f("fk_run_fields_key_id_field_keys")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_fields_run_id_runs")),
        sa.PrimaryKeyConstraint("run_id", "key_id", "seq", name=op.f("pk_run_fields")),
        sqlite_with_rowid=False,
    )
    op.create_index(
        op.f("ix_run_fields_key_id_kind_num_txt_run_id_elem"),
        "run_fields",
        ["key_id", "kind", "num", "txt", "run_id", "elem"],
        unique=False,
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for name in PACKED:
            batch_op.alter_column(
                name,
                existing_type=sa.Text(),
                type_=sa.LargeBinary(),
                existing_nullable=not _NOT_NULL[name],
                postgresql_using=f"convert_to({name}, 'UTF8')",
            )
    runs = sa.table("runs", sa.column("id"), *(sa.column(name) for name in PACKED))
    for batch in _batches(conn, ["project_id", "tags", *PACKED]):
        packed = [{"b_id": row["id"], **{n: _pack(row[n]) for n in PACKED}} for row in batch]
        statement = runs.update().where(runs.c.id == sa.bindparam("b_id"))
        conn.execute(statement.values({n: sa.bindparam(n) for n in PACKED}), packed)
        _index(conn, batch, _rows_0005, with_seq=True)
    # keys only the old index had rows for (run attributes, mostly) are of no use now
    conn.exec_driver_sql(
        "DELETE FROM field_keys WHERE id NOT IN (SELECT DISTINCT key_id FROM run_fields)"
    )


def downgrade() -> None:
    conn = op.get_bind()
    op.drop_index(op.f("ix_run_fields_key_id_kind_num_txt_run_id_elem"), table_name="run_fields")
    op.drop_table("run_fields")
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
    runs = sa.table("runs", sa.column("id"), *(sa.column(name) for name in PACKED))
    # PostgreSQL keeps the texts as UTF-8 bytes until the type change below decodes them
    encode = conn.dialect.name == "postgresql"
    for batch in _batches(conn, list(PACKED)):
        texts = [
            {"b_id": row["id"], **{n: _unpack(row[n], encode) for n in PACKED}} for row in batch
        ]
        statement = runs.update().where(runs.c.id == sa.bindparam("b_id"))
        conn.execute(statement.values({n: sa.bindparam(n) for n in PACKED}), texts)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for name in PACKED:
            batch_op.alter_column(
                name,
                existing_type=sa.LargeBinary(),
                type_=sa.Text(),
                existing_nullable=not _NOT_NULL[name],
                postgresql_using=f"convert_from({name}, 'UTF8')",
            )
    for batch in _batches(conn, ["project_id", *_DOCUMENT_COLUMNS]):
        _index(conn, batch, _rows_0004, with_seq=False)
    with op.batch_alter_table("run_fields", schema=None) as batch_op:
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
        batch_op.create_index(
            batch_op.f("ix_run_fields_run_id_key_id"), ["run_id", "key_id"], unique=False
        )


def _batches(conn: sa.Connection, columns: list[str]) -> Iterator[list[Any]]:
    """Every run's ``id`` and ``columns``, a batch at a time in id order."""
    runs = sa.table("runs", sa.column("id"), *(sa.column(name) for name in columns))
    after = 0
    while True:
        query = sa.select(runs).where(runs.c.id > after).order_by(runs.c.id)
        batch = conn.execute(query.limit(_RUNS_PER_BATCH)).mappings().all()
        if not batch:
            return
        yield batch
        after = batch[-1]["id"]


def _pack(value: str | bytes | None) -> bytes | None:
    """A 0004 text (or the bytes a type change cast it to), packed."""
    if value is None:
        return None
    return pack_text(value.decode("utf-8") if isinstance(value, bytes) else value)


def _unpack(value: bytes | None, encode: bool) -> str | bytes | None:
    if value is None:
        return None
    text = unpack_text(value)
    return text.encode("utf-8") if encode else text


FieldRows = Callable[[Any], Iterable[tuple[str, int, int, float | None, str | None]]]


def _rows_0005(run: Any) -> Iterable[tuple[str, int, int, float | None, str | None]]:
    texts = [_text(run[name]) for name in ("tags", "config", "summary_metrics")]
    return flatten(index_document(*texts))


def _index(conn: sa.Connection, batch: list[Any], rows_of: FieldRows, with_seq: bool) -> None:
    """The index rows of a batch of runs, by ``rows_of`` (with 0005's ``seq`` or without)."""
    field_keys = sa.table("field_keys", sa.column("id"), sa.column("project_id"), sa.column("path"))
    columns = ["run_id", "key_id", "seq", "elem", "kind", "num", "txt"]
    run_fields = sa.table("run_fields", *(sa.column(c) for c in columns if with_seq or c != "seq"))
    keys: dict[tuple[int, str], int] = {}
    for project_id in {run["project_id"] for run in batch}:
        query = sa.select(field_keys.c.path, field_keys.c.id).where(
            field_keys.c.project_id == project_id
        )
        keys.update({(project_id, path): key for path, key in conn.execute(query)})
    rows = []
    for run in batch:
        for seq, (path, elem, kind, num, txt) in enumerate(rows_of(run)):
            key = keys.get((run["project_id"], path))
            if key is None:
                key = conn.execute(
                    field_keys.insert()
                    .values(project_id=run["project_id"], path=path)
                    .returning(field_keys.c.id)
                ).scalar_one()
                keys[(run["project_id"], path)] = key
            row = {"run_id": run["id"], "key_id": key, "elem": elem, "kind": kind}
            rows.append(row | {"num": num, "txt": txt} | ({"seq": seq} if with_seq else {}))
    if rows:
        conn.execute(run_fields.insert(), rows)


def _text(value: str | bytes | None) -> str | None:
    return value.decode("utf-8") if isinstance(value, bytes) else value


# ---- the 0004 index, for the downgrade: attributes included, documents as canonical text

_DOCUMENT_COLUMNS = (*RUN_ATTRIBUTES.values(), "tags", "config", "summary_metrics")


def _rows_0004(run: Any) -> Iterator[tuple[str, int, int, float | None, str | None]]:
    seen: set[str] = set()
    for key, value in run_document(dict(run)).items():
        for path, elem, kind, num, txt in _flatten_0004(key, value, 0):
            if elem == 0:
                if path in seen:
                    elem = 1
                else:
                    seen.add(path)
            yield path, elem, kind, num, txt


def _typed_0004(value: Any) -> tuple[Kind, float | None, str | None]:
    kind, num, txt = typed(value)
    return kind, num, canonical(value) if kind in (Kind.OBJECT, Kind.ARRAY) else txt


def _flatten_0004(
    path: str, value: Any, elem: int
) -> Iterator[tuple[str, int, int, float | None, str | None]]:
    kind, num, txt = _typed_0004(value)
    yield path, elem, int(kind), num, txt
    if kind is Kind.OBJECT:
        if "_type" in value:
            yield from _flatten_0004(f"{path}._type", value["_type"], elem)
            return
        for key, sub in value.items():
            yield from _flatten_0004(f"{path}.{key}", sub, elem)
    elif kind is Kind.ARRAY and len(value) <= MAX_INDEXED_ARRAY:
        for i, item in enumerate(value):
            ikind, inum, itxt = _typed_0004(item)
            yield path, 1, int(ikind), inum, itxt
            if ikind is Kind.OBJECT:
                if "_type" in item:
                    yield from _flatten_0004(f"{path}._type", item["_type"], 1)
                else:
                    for key, sub in item.items():
                        yield from _flatten_0004(f"{path}.{key}", sub, 1)
            yield from _flatten_0004(f"{path}.{i}", item, elem)
