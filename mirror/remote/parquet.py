"""Reading W&B's exported history files (parquet) back into history rows.

W&B writes one column per history key, ``_step`` among them, and a null where a row did not log
the key (or splits rows into files by the keys they hold, so that steps interleave across
files); rows come back as ``HistoryPage`` sends them: only the keys a row holds, nested objects
(histograms, images, tables) as dicts, NaN and ±Infinity as floats. A file is read in record
batches, so a million-step export never becomes a million dicts at once.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mirror.errors import CommError

BATCH_ROWS = 10_000


class ExportedFile:
    """One downloaded export; a CommError when it is not parquet or has no ``_step``."""

    def __init__(self, data: bytes, what: str) -> None:
        self.what = what
        try:
            self._file = pq.ParquetFile(io.BytesIO(data))
            if "_step" not in self._file.schema_arrow.names:
                raise CommError(f"{what}: the exported history has no _step column")
            column = self._file.read(columns=["_step"]).column("_step")
        except CommError:
            raise
        except Exception as exc:  # pyarrow raises several unrelated types for a broken file
            raise CommError(
                f"{what}: not a readable parquet file ({type(exc).__name__})", exc
            ) from None
        if column.null_count:
            raise CommError(f"{what}: the exported history has rows without a _step")
        self.steps = np.asarray(column.to_numpy(), dtype=np.float64)

    @property
    def num_rows(self) -> int:
        return len(self.steps)

    def rows(self) -> Iterator[dict[str, Any]]:
        """The file's rows, read a batch at a time, each holding only the keys it logged."""
        for batch in self._file.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                yield {k: v for k, v in row.items() if v is not None}
