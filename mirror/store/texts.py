"""Text columns the filter engine compares and sorts: byte order, and NUL, on every database.

MongoDB orders strings by their UTF-8 bytes (code point order), and so does SQLite's default
``BINARY`` collation. A PostgreSQL database usually collates by a language (``en_US``, ICU),
where ``"B" < "a"`` is false and punctuation weighs little, so an order or a range filter would
answer differently there. These columns are therefore declared ``COLLATE "C"`` on PostgreSQL
(bytes, the same order), by migration 0006 and here alike so that ``db check`` agrees.

PostgreSQL's ``text`` cannot hold U+0000 at all, where W&B values and SQLite can. Refusing such a
run would lose data, and cutting or dropping the character would make ``"x\\0y"`` equal ``"xy"``.
So on PostgreSQL these columns store text through an escape that keeps equality and byte order
exactly: U+0000 is written U+0001 U+0001 and U+0001 is written U+0001 U+0002, every other
character as itself. The two escapes begin with the smallest character left and are ordered as
the characters they stand for, so comparing escaped texts byte by byte gives the order of the
originals, and the escape is undone on every read (a filter value is escaped when bound, a
result unescaped when read), so no caller sees it. SQLite stores the text as is: no escape, no
processing cost.

Their declared lengths (``VARCHAR(255)``) are SQLite's documentation only, which it never
enforces; on PostgreSQL they are plain ``text``, so a mirror there holds every value W&B sent
(a 5,000-character commit field, a long name) as the SQLite one does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

#: the collation that compares UTF-8 bytes on PostgreSQL
BYTE_COLLATION = "C"
#: characters of a text PostgreSQL's indexes hold (see :data:`PREFIX_INDEXES`)
INDEXED_CHARS = 600
#: On PostgreSQL these indexes hold the first ``INDEXED_CHARS`` characters of their text
#: column, ``left(column, 600)``, where SQLite's hold the whole text: a B-tree entry there
#: cannot exceed about 2.7 kB, so a longer config string (a prompt, an encoded blob) would make
#: the whole page of runs fail to insert. The table keeps the whole text, so answers stay exact;
#: a filter bounds the prefix too, so the index still finds the rows (``mirror.query.sql``).
#: Index name → (table, column).
PREFIX_INDEXES: dict[str, tuple[str, str]] = {
    "ix_run_fields_key_id_kind_num_txt_run_id_elem": ("run_fields", "txt"),
    "ix_runs_project_id_display_name": ("runs", "display_name"),
}
_ESCAPE = "\x01"
_ESCAPED = str.maketrans({"\x00": "\x01\x01", "\x01": "\x01\x02"})


def escape_nul(text: str) -> str:
    """``text`` as PostgreSQL stores it: NUL and the escape character escaped, order kept."""
    if "\x00" in text or _ESCAPE in text:
        return text.translate(_ESCAPED)
    return text


def indexed_prefix(text: str) -> str:
    """What PostgreSQL's :data:`PREFIX_INDEXES` hold of ``text``: the first ``INDEXED_CHARS``
    characters of what is stored (escaped), as a plain text parameter."""
    return escape_nul(text)[:INDEXED_CHARS]


def unescape_nul(text: str) -> str:
    """The text :func:`escape_nul` was given."""
    if _ESCAPE not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == _ESCAPE and i + 1 < len(text):
            out.append("\x00" if text[i + 1] == _ESCAPE else "\x01")
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


class ByteText(TypeDecorator[str]):
    """A text column compared by bytes and able to hold NUL on every database (module
    docstring): ``COLLATE "C"`` and the NUL escape on PostgreSQL, plain text elsewhere."""

    impl = Text
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return Text(collation=BYTE_COLLATION)
        return Text() if self.length is None else String(self.length)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "postgresql":
            return None
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name != "postgresql":
            return None
        return super().result_processor(dialect, coltype)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return escape_nul(value) if isinstance(value, str) else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return unescape_nul(value) if isinstance(value, str) else value

    def __repr__(self) -> str:
        return "ByteText()" if self.length is None else f"ByteText({self.length})"
