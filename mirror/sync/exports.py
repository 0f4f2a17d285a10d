"""Trusting W&B's parquet exports only after checking them against the run's own counts.

A run's export may be several files whose steps interleave (split by the keys rows hold), so
rows are merged by step. The export path had real bugs (no rows for runs not starting at step 0, steps duplicated or
dropped at page edges: wandb 0.27.2 and 0.28.0, issue 12067), so before a single row from the
files is written, their steps must be strictly increasing across all files, all below the export
boundary (the first live step), and together with the live steps they must add up to exactly
``historyLineCount`` and end at ``historyKeys.lastStep``. Anything else and the run is paged
through ``HistoryPage`` instead.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mirror.remote.parquet import BATCH_ROWS, ExportedFile


@dataclass(frozen=True)
class CheckedExport:
    """Export files whose rows were verified; ``boundary`` is the first live step, if any."""

    files: list[ExportedFile]
    boundary: int | None
    live_rows: int

    def rows(self, batch: int = BATCH_ROWS) -> Iterator[list[dict[str, Any]]]:
        """Every row in step order, merged across the files, in lists of ``batch`` rows."""
        merged = heapq.merge(*(f.rows() for f in self.files), key=lambda row: row["_step"])
        while part := list(itertools.islice(merged, batch)):
            yield part


def check_export(
    files: list[ExportedFile],
    live_steps: list[int],
    line_count: int,
    last_step: int | None,
) -> CheckedExport | str:
    """The files in step order if they hold exactly what W&B's counts say; else why not."""
    files = [f for f in files if f.num_rows]
    if any(np.any(np.diff(f.steps) <= 0) for f in files):
        return "the steps of a file repeat or go backwards"
    steps = np.sort(np.concatenate([f.steps for f in files])) if files else np.empty(0)
    if len(steps) and not np.all(np.diff(steps) > 0):
        return "its files hold the same step twice"
    if len(steps) and not np.all(np.mod(steps, 1) == 0):
        return "it holds steps that are not whole numbers"
    boundary = live_steps[0] if live_steps else None
    if boundary is not None and len(steps) and steps[-1] >= boundary:
        return f"it holds steps at or after the first live step {boundary}"
    if len(steps) + len(live_steps) != line_count:
        return (
            f"it holds {len(steps)} rows and {len(live_steps)} live ones where "
            f"historyLineCount is {line_count}"
        )
    ends = [int(steps[-1])] if len(steps) else []
    ends += live_steps[-1:]
    if last_step is not None and ends and max(ends) != last_step:
        return f"it ends at step {max(ends)} where historyKeys.lastStep is {last_step}"
    return CheckedExport(files, boundary, len(live_steps))
