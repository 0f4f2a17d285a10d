"""Errors users see. Each carries a message that says what is wrong and what to do."""

from __future__ import annotations

import logging


class MirrorError(Exception):
    """A failure the user can act on; the CLI prints its message as one line."""


class CommError(MirrorError):
    """The database (offline) or W&B (online) could not be reached or answered badly.

    Named and shaped like ``wandb.errors.CommError`` so code written for ``wandb.Api`` catches it;
    ``exc`` holds the original exception.
    """

    def __init__(self, message: str, exc: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exc = exc


class FilterError(MirrorError, ValueError):
    """A filter or order that cannot be evaluated; the message names the offending path."""


class ConfigError(MirrorError):
    """A configuration file or setting that cannot be used."""


class ArgumentError(MirrorError, ValueError):
    """An argument that would give an empty or meaningless answer; the message names it (a
    ValueError, as ``wandb.Api`` raises for the same mistakes)."""


#: PostgreSQL's SQLSTATE for "permission denied" (``psycopg.errors.InsufficientPrivilege``)
INSUFFICIENT_PRIVILEGE = "42501"
#: what a write refused to a read-only role should tell the user
READ_ONLY_ADVICE = (
    "this needs the writer role, and the database user given may only read; "
    "give the writer's URL (--db or WANDB_MIRROR_DB)"
)


class ReadOnlyRoleError(MirrorError):
    """A write refused because the database role may only read (a read-only PostgreSQL role)."""


def permission_denied(exc: BaseException) -> bool:
    """Whether ``exc`` (SQLAlchemy's wrapper or the driver's own) is PostgreSQL refusing a
    statement for lack of privilege: found by SQLSTATE, so that no driver is imported here."""
    inner = getattr(exc, "orig", None) or exc
    return getattr(inner, "sqlstate", None) == INSUFFICIENT_PRIVILEGE


def database_reason(exc: BaseException) -> str:
    """Why a database statement failed, as one line without its SQL or parameters.

    SQLAlchemy's message holds the statement and its values; the driver's first line names the
    problem. A read-only role's "permission denied" also says what to do about it, since that
    is what a team gets when it points a writing command at the reporting role.
    """
    inner = getattr(exc, "orig", None) or exc
    lines = str(inner).strip().splitlines()
    reason = lines[0] if lines else type(inner).__name__
    if permission_denied(exc):
        return f"{reason}: {READ_ONLY_ADVICE}"
    return reason


def quiet_driver_warnings() -> None:
    """Keep psycopg's "error ignored terminating <Pipeline ...>" warnings off the terminal.

    When a statement of a batch fails (a read-only role's "permission denied"), psycopg logs
    that it also failed to end the batch, depending on timing, before the error itself is
    raised and reported in one line; the warning adds a second line that says nothing new.
    """
    logging.getLogger("psycopg").setLevel(logging.ERROR)
