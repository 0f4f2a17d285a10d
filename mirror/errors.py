"""Errors users see. Each carries a message that says what is wrong and what to do."""

from __future__ import annotations


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
