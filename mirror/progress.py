"""Progress bars for a sync on a terminal: runs done, and history rows with their rate."""

from __future__ import annotations

from typing import Any

from mirror.sync.pull import Progress


class BarProgress(Progress):
    """Two tqdm bars per project, on stderr, gone when the project is done."""

    def __init__(self) -> None:
        self._runs: Any = None
        self._rows: Any = None

    def start(self, path: str, runs: int, rows: int) -> None:
        from tqdm import tqdm

        self._runs = tqdm(total=runs, desc=f"{path} runs", unit="run", leave=False)
        self._rows = tqdm(
            total=rows, desc=f"{path} history", unit="row", unit_scale=True, leave=False
        )

    def more_rows(self, rows: int) -> None:
        if self._rows is not None and rows:
            self._rows.total += rows
            self._rows.refresh()

    def advance(self, runs: int = 0, rows: int = 0) -> None:
        if self._runs is not None and runs:
            self._runs.update(runs)
        if self._rows is not None and rows:
            self._rows.update(rows)

    def finish(self) -> None:
        for bar in (self._runs, self._rows):
            if bar is not None:
                bar.close()
        self._runs = self._rows = None
