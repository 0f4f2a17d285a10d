"""Project and run paths in every form ``wandb.Api`` accepts."""

from __future__ import annotations

from urllib.parse import urlparse

from mirror.errors import MirrorError


class PathError(MirrorError, ValueError):
    """A project or run path that cannot be understood (a ValueError, as in ``wandb.Api``)."""


def _parts(path: str) -> list[str]:
    text = path.strip()
    if "://" in text:
        text = urlparse(text).path
    parts = [p for p in text.split("/") if p]
    if len(parts) == 4 and parts[2] == "runs":
        del parts[2]
    return parts


def project_path(path: str, default_entity: str | None = None) -> tuple[str, str]:
    """``entity/project`` (or ``project`` with a default entity, or a W&B URL) → both parts."""
    parts = _parts(path)
    if len(parts) == 1 and default_entity:
        return default_entity, parts[0]
    if len(parts) != 2:
        raise PathError(f"{path!r} is not a project path; expected ENTITY/PROJECT")
    return parts[0], parts[1]


def run_path(path: str, default_entity: str | None = None) -> tuple[str, str, str]:
    """``entity/project/run_id``, ``entity/project/runs/run_id``, a URL, or ``project/run_id``."""
    parts = _parts(path)
    if len(parts) == 2 and default_entity:
        parts.insert(0, default_entity)
    if len(parts) != 3:
        raise PathError(f"{path!r} is not a run path; expected ENTITY/PROJECT/RUN_ID")
    return parts[0], parts[1], parts[2]
