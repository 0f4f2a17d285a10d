"""The daemon's log: stderr by default (journald and launchd keep it), a rotating file on request.

The API key never reaches a log line through the code, but a server's error text or an
exception from a library could echo it: every record is passed through a filter that replaces
the key (and its Basic form) before any handler formats it.
"""

from __future__ import annotations

import base64
import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mirror.config import DaemonSettings
from mirror.errors import ConfigError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Replaces each secret in a record's message and arguments; never drops a record."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
            if record.exc_text:
                record.exc_text = record.exc_text.replace(secret, REDACTED)
        record.msg, record.args = text, None
        return True


def secret_forms(api_key: str | None) -> list[str]:
    """The key as it may appear: itself and inside an ``Authorization: Basic`` value."""
    if not api_key:
        return []
    return [api_key, base64.b64encode(f"api:{api_key}".encode()).decode()]


def configure(settings: DaemonSettings, secrets: Sequence[str] = ()) -> None:
    """Send the ``mirror`` and ``apscheduler`` loggers to stderr or the configured file."""
    level = getattr(logging, settings.log_level.upper())
    if settings.log_file:
        path = Path(settings.log_file).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.handlers.RotatingFileHandler(
                path,
                maxBytes=settings.log_max_bytes,
                backupCount=settings.log_backups,
                encoding="utf-8",
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot write the log file {path}: {exc.strerror or exc}; fix daemon.log_file"
            ) from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler's own lines would double each of ours ("Running job ..."), or repeat that a
    # run was skipped while the previous one still runs, which is the coalescing we ask for
    logging.getLogger("apscheduler").setLevel(max(level, logging.ERROR))
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
    if os.environ.get("INVOCATION_ID") and not settings.log_file:
        # under systemd the journal stamps each line itself
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
