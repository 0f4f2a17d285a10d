"""Deciding what a pull must fetch: pure functions of the listing and of what the mirror holds.

Kept apart from fetching and writing so that each rule (what counts as moved, when history was
rewritten, when a listing may tombstone runs) is a small function tested on plain data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mirror.remote.queries import LISTING_FIELDS

#: listing fields whose change means the run's history or events may have grown
_DATA_FIELDS = ("state", "heartbeatAt", "historyLineCount")
#: a deletion guard never trips for fewer missing runs than this, unless the listing is empty
MIN_GUARDED_DELETIONS = 10


def fingerprint(node: Mapping[str, Any], mode: str, settled: bool = True) -> str:
    """What the lightweight listing says of a run, and which history the mirror keeps of it
    (``mode``), as canonical text: equal means nothing to fetch.

    A run that changed within the lag window is not ``settled``: W&B's API lags its UI and
    ``updatedAt`` has a precision of seconds, so a second change could hide behind an equal
    listing. Its fingerprint then never equals a listing's, and the next cycle reads its
    record again.
    """
    shown = {k: node.get(k) for k in LISTING_FIELDS if k != "name"}
    extra = {} if settled else {"settled": False}
    return json.dumps({**shown, "mode": mode, **extra}, sort_keys=True)


def settled(node: Mapping[str, Any], now: datetime, lag_s: float) -> bool:
    """Whether the run's last change (``updatedAt``, ``heartbeatAt``) is older than the lag."""
    for key in ("updatedAt", "heartbeatAt"):
        value = node.get(key)
        if not isinstance(value, str):
            continue
        try:
            when = datetime.fromisoformat(value.rstrip("Z"))
        except ValueError:
            continue
        if when.tzinfo is not None:
            when = when.astimezone(timezone.utc).replace(tzinfo=None)
        if (now - when).total_seconds() < lag_s:
            return False
    return True


def data_moved(old: str | None, new: str) -> bool:
    """Whether history or events may have grown since the run was last mirrored in full.

    A run with no fingerprint was never finished (new, or a crash came in between), so it is
    checked in full; one whose tags, notes or name alone changed needs its record only.
    """
    if old is None:
        return True
    before, after = json.loads(old), json.loads(new)
    return any(before.get(k) != after.get(k) for k in (*_DATA_FIELDS, "mode"))


@dataclass(frozen=True)
class LocalRun:
    """What the mirror holds of a run, for planning."""

    id: int
    name: str
    deleted: bool
    fingerprint: str | None


@dataclass
class ListingPlan:
    """The outcome of comparing a complete (or incomplete) listing with the mirror."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    revived: list[str] = field(default_factory=list)  # tombstoned here, listed again there
    unchanged: int = 0
    gone: list[str] = field(default_factory=list)  # live here, not listed: to tombstone
    guard: str | None = None  # why nothing is tombstoned, when something would have been

    @property
    def to_fetch(self) -> list[str]:
        return [*self.new, *self.revived, *self.changed]


def plan_listing(
    listed: Mapping[str, Mapping[str, Any]],
    local: Iterable[LocalRun],
    *,
    mode: str,
    complete: bool,
    full: bool,
    max_delete_fraction: float,
    force_deletions: bool = False,
) -> ListingPlan:
    """Which runs to fetch and which to tombstone.

    Deletions need a complete listing, and the mass-deletion guard (as vdirsyncer's): an empty
    listing against a mirror that holds runs, or more than ``max_delete_fraction`` of the
    mirror's live runs missing at once (and at least ``MIN_GUARDED_DELETIONS``), tombstones
    nothing and says why, unless ``force_deletions``.
    """
    plan = ListingPlan()
    known = {run.name: run for run in local}
    for name, node in listed.items():
        run = known.get(name)
        if run is None:
            plan.new.append(name)
        elif run.deleted:
            plan.revived.append(name)
        elif full or run.fingerprint != fingerprint(node, mode):
            plan.changed.append(name)
        else:
            plan.unchanged += 1
    live = [run.name for run in known.values() if not run.deleted]
    missing = [name for name in live if name not in listed]
    if not missing:
        return plan
    if not complete:
        plan.guard = "the listing was incomplete, so no run is taken for deleted"
    elif not force_deletions and not listed:
        plan.guard = (
            f"W&B listed no runs while the mirror holds {len(live)}; nothing is tombstoned "
            "(pass --force-deletions if they really were all deleted)"
        )
    elif (
        not force_deletions
        and len(missing) >= MIN_GUARDED_DELETIONS
        and len(missing) > max_delete_fraction * len(live)
    ):
        plan.guard = (
            f"{len(missing)} of the mirror's {len(live)} runs are missing from W&B's listing, more "
            f"than sync.max_delete_fraction ({max_delete_fraction:g}); nothing is tombstoned "
            "(pass --force-deletions if they really were deleted)"
        )
    else:
        plan.gone = missing
    return plan


@dataclass(frozen=True)
class HistoryNeed:
    """What to fetch of one run's history, from its record and what the mirror holds."""

    rewritten: bool  # the mirrored history is not a prefix of W&B's: drop it, fetch it anew
    next_step: int  # the first step to fetch
    remaining: int  # rows W&B holds that the mirror does not
    last_step: int | None  # W&B's last step, when it says
    line_count: int  # W&B's historyLineCount

    @property
    def wanted(self) -> bool:
        return self.remaining > 0 or (
            self.last_step is not None and self.next_step <= self.last_step
        )


def remote_last_step(node: Mapping[str, Any]) -> int | None:
    """``historyKeys.lastStep``, when W&B gives a usable one."""
    keys = node.get("historyKeys")
    step = keys.get("lastStep") if isinstance(keys, dict) else None
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        return None
    if isinstance(step, float) and not (math.isfinite(step) and step.is_integer()):
        return None
    return int(step) if step >= 0 else None


def history_need(
    node: Mapping[str, Any], mirrored_rows: int, mirrored_last: int | None
) -> HistoryNeed:
    """Compare W&B's ``historyLineCount``/``lastStep`` with the mirrored rows.

    More rows here than there, or a later last step here, means W&B's history was rewritten
    (a resume with rewind, a re-created run): the mirrored rows are dropped and fetched anew.
    """
    count = node.get("historyLineCount") or 0
    count = count if isinstance(count, int) and not isinstance(count, bool) else 0
    last = remote_last_step(node)
    rewritten = mirrored_rows > count or (
        mirrored_last is not None and last is not None and mirrored_last > last
    )
    if rewritten or mirrored_last is None:
        return HistoryNeed(rewritten, 0, count, last, count)
    return HistoryNeed(False, mirrored_last + 1, count - mirrored_rows, last, count)


def keep_keys(rows: Sequence[dict[str, Any]], keys: Sequence[str] | None) -> list[dict[str, Any]]:
    """Rows holding only the configured history keys (and W&B's own ``_step``-like keys)."""
    if keys is None:
        return list(rows)
    wanted = {*keys, "_step", "_runtime", "_timestamp"}
    return [{k: v for k, v in row.items() if k in wanted} for row in rows]
