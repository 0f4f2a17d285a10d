"""History chunk codecs: the bytes each compressor and layout takes, and how fast chunks read back.

The chunk layout (``mirror.store.history``) is compressed as one frame. This script takes the
synthetic generator's history, lays each chunk out as the store does, and frames it with zlib
(levels 1 and 6: schema 0004 wrote level 1) and zstd (levels 1, 3, 9, 19), each with the numeric
buffers byte-shuffled and ints delta-encoded (as 0005 writes them) and without (as 0004 did).
Reading is timed through ``history.decode``, which reads every variant, so the figure is what a
history read costs: decompression and the columns as numpy arrays.

Two shapes: small chunks (2,000 runs x 10 steps, plus their system-metric events, as a
metadata-heavy project holds them) and full chunks (20 runs x 10,000 steps).

Usage: ``.venv/bin/python bench/bench_codec.py``. For information: it has no target.
"""

from __future__ import annotations

import json
import struct
import sys
import time
import zlib
from collections.abc import Callable

import numpy as np
import zstandard
from common import machine, table

from mirror.store import history as codec
from mirror.synth import generate_runs


def layouts(runs: int, steps: int) -> list[bytes]:
    """Every chunk of a synthetic project, as the uncompressed 0005 layout."""
    found = []
    for run in generate_runs("bench", "codec", runs, steps, 7):
        for stream in (list(run.history), list(run.events)):
            for start in range(0, len(stream), codec.CHUNK_ROWS):
                frame = codec.encode(stream[start : start + codec.CHUNK_ROWS])
                found.append(zstandard.ZstdDecompressor().decompress(frame))
    return found


def plain(layout: bytes) -> bytes:
    """The same layout with its buffers as 0004 wrote them: not shuffled, ints not deltas."""
    (head_len,) = struct.unpack_from("<I", layout)
    head = json.loads(layout[4 : 4 + head_len])
    body = bytearray(layout[4 + head_len :])
    for entry in head["c"]:
        if entry.pop("s", None):
            start, length = entry["v"]
            buf = bytes(body[start : start + length])
            planes = np.frombuffer(buf, dtype=np.uint8).reshape(8, -1)
            values = np.ascontiguousarray(planes.T).view("<i8" if entry["t"] == "i" else "<f8")
            if entry.pop("d", None):
                values = np.cumsum(values, dtype="<i8")
            body[start : start + length] = values.tobytes()
    head_bytes = json.dumps(head).encode()
    return struct.pack("<I", len(head_bytes)) + head_bytes + bytes(body)


def compressors() -> dict[str, Callable[[bytes], bytes]]:
    found: dict[str, Callable[[bytes], bytes]] = {
        f"zlib {level}": (lambda data, level=level: zlib.compress(data, level)) for level in (1, 6)
    }
    for level in (1, 3, 9, 19):
        found[f"zstd {level}"] = zstandard.ZstdCompressor(level=level).compress
    return found


def measure(name: str, chunks: list[bytes]) -> list[list[object]]:
    shuffled = chunks
    unshuffled = [plain(c) for c in chunks]
    raw = sum(map(len, chunks))
    rows: list[list[object]] = []
    baseline = None
    for label, compress in compressors().items():
        for layout_name, source in (("plain", unshuffled), ("shuffled", shuffled)):
            started = time.perf_counter()
            frames = [compress(c) for c in source]
            packing = time.perf_counter() - started
            reads = []
            for _ in range(3):
                started = time.perf_counter()
                for frame in frames:
                    codec.decode(frame)
                reads.append(time.perf_counter() - started)
            size = sum(map(len, frames))
            baseline = baseline or size
            rows.append(
                [
                    name,
                    label,
                    layout_name,
                    size / 1e6,
                    size / baseline,
                    raw / packing / 1e6,
                    raw / min(reads) / 1e6,
                ]
            )
    return rows


def main() -> int:
    print(f"machine: {machine()}")
    rows = measure("2,000 runs x 10 steps", layouts(2000, 10))
    rows += measure("20 runs x 10,000 steps", layouts(20, 10_000))
    headers = ["chunks", "codec", "layout", "MB", "vs zlib 1 plain", "write MB/s", "read MB/s"]
    print()
    print(table(headers, rows))
    print("\nMB/s are of the uncompressed layout; reads go through history.decode (best of 3).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
