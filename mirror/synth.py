"""Synthetic W&B projects: the stand-in for W&B in the demo, the tests and the benchmarks.

Runs come out in the exact shape W&B's GraphQL API returns them (see
``/work/shared/wandb/examples/real-sdk-run.json``), with the awkward parts real projects have:
wrapped nested configs with ``_wandb``, NaN and ±Infinity, media and histogram objects, unicode
keys, a config key with a literal dot, every run state, sweeps, histories that start late or have
gaps, sparse eval keys, system-metric events, integral floats logged as ints.

Everything is a pure function of ``(seed, run index)``: the same seed gives the same project
byte for byte, in any process. History rows are a pure function of ``(seed, run index, row
index)`` too, generated in numpy blocks on demand, so a 1,000,000-step run never sits in memory and
the summary (the last value of each key) and ``historyKeys`` are computed without replaying the
history.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import Engine

from mirror.store.engine import analyze_if_stale, write_transaction
from mirror.store.fields import dumps, wrap_config
from mirror.store.upsert import Appended, append_histories, storage_id, upsert_runs

STATES = (
    "finished",
    "running",
    "crashed",
    "failed",
    "killed",
    "preempting",
    "preempted",
    "pending",
)
_STATE_WEIGHTS = (70, 6, 8, 6, 4, 1, 2, 3)
EXPERIMENTS = tuple(
    f"{a}-{b}"
    for a in ("baseline", "wide", "deep", "distill", "lowrank")
    for b in ("cifar", "imagenet", "wiki", "code")
)
OPTIMIZERS = ("adam", "adamw", "sgd", "lion")
TAGS = ("baseline", "ablation", "v2", "prod", "debug", "long-run", "重要")
USERS = (
    {"name": "Ada Lovelace", "username": "ada"},
    {"name": "Alan Turing", "username": "aturing"},
    {"name": "Zoë Müller", "username": "zoe"},
    {"name": "李雷", "username": "lilei"},
    {"name": "Grace Hopper", "username": "ghopper"},
)
_ADJECTIVES = ("brisk", "quiet", "golden", "misty", "bold", "gentle", "lively", "crimson", "silent")
_NOUNS = ("river", "forest", "meadow", "comet", "breeze", "canyon", "harbor", "glade", "summit")

BLOCK = 1000  # history rows generated together (one numpy pass)
EVAL_EVERY = 10  # sparse eval keys: every 10th row
_BASE_EPOCH = 1_672_531_200  # 2023-01-01T00:00:00Z
_ID_SPACE = 36**8
_ID_STRIDE = 2_654_435_761  # coprime with 36, so index → run id is a bijection (ids never collide)
_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"

_FIXED = ("loss", "acc", "lr", "epoch", "grad_norm", "min_logit")
_FIXED += ("train/loss", "train/acc", "température", "损失")
_EVAL = ("eval/loss", "eval/acc", "eval/f1")
_MEDIA = (("weights", 50, 5, "histogram"), ("sample", 100, 5, "image-file"))  # key, every, at
#: keys not on every row: key → (every, at row index ≡ at, W&B type)
_SPARSE = {key: (EVAL_EVERY, 0, "number") for key in _EVAL} | {
    key: (every, at, kind) for key, every, at, kind in _MEDIA
}
_TAIL = ("_timestamp", "_runtime", "_step")


class RowStream:
    """A run's history (or events), regenerated on every iteration instead of kept in memory.

    Iterate it (``for row in run.history``) or call it (``run.history()``) for a fresh iterator;
    ``len()`` is the row count without generating anything.
    """

    def __init__(self, count: int, block: Callable[[int], list[dict[str, Any]]]) -> None:
        self.count = count
        self._block = block

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for b in range(math.ceil(self.count / BLOCK)):
            yield from self._block(b)

    def __call__(self) -> Iterator[dict[str, Any]]:
        return iter(self)

    def last(self) -> dict[str, Any]:
        """The last row (``{}`` when there is none), generating only its block."""
        if not self.count:
            return {}
        return self._block((self.count - 1) // BLOCK)[-1]


@dataclass(frozen=True)
class SynthRun:
    """One synthetic run: the GraphQL ``Run`` node, and its lazily generated rows."""

    node: dict[str, Any]
    history: RowStream
    events: RowStream


@dataclass(frozen=True)
class _Plan:
    """Everything a run's rows are computed from (so any row can be made on its own)."""

    seed: int
    index: int
    name: str
    rows: int  # rows actually logged
    total: int  # steps planned (a crashed run stops early)
    first_step: int
    gap_at: int  # row index where a gap in the steps begins (rows when none)
    gap_len: int
    step_seconds: float
    created: float  # epoch seconds
    extra: int  # filler metrics metrics/mNN
    levels: tuple[float, ...]  # their means
    loss0: float
    decay: float
    acc_max: float
    lr0: float
    schedule: str
    epochs: int
    diverge_at: int  # row index from which loss is NaN (rows when never)
    overflow: bool  # the last row's gradients overflowed (±Infinity): why it failed

    def keys(self) -> list[str]:
        """History keys in the order a row holds them."""
        filler = [f"metrics/m{j:02d}" for j in range(self.extra)]
        return [*_FIXED, *filler, *_EVAL, *(m[0] for m in _MEDIA), *_TAIL]

    def steps(self, idx: np.ndarray) -> np.ndarray:
        return self.first_step + idx + np.where(idx >= self.gap_at, self.gap_len, 0)

    def n_events(self) -> int:
        return 0 if self.rows == 0 else self.rows // 20 + 1


def run_id(seed: int, index: int) -> str:
    """The 8-character run id of run ``index``: random-looking, unique within a seed."""
    offset = int.from_bytes(hashlib.sha256(f"offset:{seed}".encode()).digest()[:8], "big")
    value = (index * _ID_STRIDE + offset) % _ID_SPACE
    return _base36(value)


def _base36(value: int) -> str:
    chars = []
    for _ in range(8):
        value, digit = divmod(value, 36)
        chars.append(_ALNUM[digit])
    return "".join(reversed(chars))


def _sweep_id(seed: int, bucket: int) -> str:
    digest = hashlib.sha256(f"sweep:{seed}:{bucket}".encode()).digest()
    return _base36(int.from_bytes(digest[:8], "big") % _ID_SPACE)


def iso(epoch: float) -> str:
    """Epoch seconds → naive UTC ISO text as W&B writes dates (``2023-11-05T17:46:35``)."""
    moment = datetime.fromtimestamp(int(epoch), timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds")


def logged(values: np.ndarray) -> list[Any]:
    """Floats as the SDK logs them: integral values become ints (1.0 → 1), the rest stay.

    Takes a vector or a matrix (one row per key, converted in one pass for speed).
    """
    flat = values.ravel().tolist()
    whole = np.isfinite(values) & (values == np.floor(values))
    for i in np.flatnonzero(whole).tolist():
        flat[i] = int(flat[i])
    if values.ndim == 1:
        return flat
    width = values.shape[-1]
    return [flat[k : k + width] for k in range(0, len(flat), width)]


def _logged_columns(arrays: dict[str, np.ndarray]) -> dict[str, list[Any]]:
    """Equal-length float columns → logged value lists, by key."""
    return dict(zip(arrays, logged(np.vstack(list(arrays.values()))), strict=True))


def _whole(value: float) -> float | int:
    return int(value) if math.isfinite(value) and value.is_integer() else value


def generate_runs(
    entity: str, project: str, runs: int, steps: int, seed: int = 0
) -> Iterator[SynthRun]:
    """``runs`` synthetic runs of up to ``steps`` history rows each, oldest first.

    Creation times increase with the index (sometimes two runs share a second, as sweep agents
    do). Finished and running runs log ``steps`` rows; crashed, failed, killed and preempted runs
    stop early; pending runs have none. The first eight runs take the eight states in turn so
    that even a small project has each of them.
    """
    clock = float(_BASE_EPOCH)
    for index in range(runs):
        rng = random.Random(f"wandb-mirror:{seed}:{index}")
        clock += 0 if rng.random() < 0.08 else rng.randint(5, 600)
        yield _make_run(entity, project, seed, index, steps, clock, rng)


def _make_run(
    entity: str, project: str, seed: int, index: int, steps: int, created: float, rng: random.Random
) -> SynthRun:
    state = STATES[index] if index < len(STATES) else rng.choices(STATES, _STATE_WEIGHTS)[0]
    plan = _plan(seed, index, steps, created, state, rng)
    history = RowStream(plan.rows, lambda b: _history_block(plan, b))
    events = RowStream(plan.n_events(), lambda b: _events_block(plan, b))
    node = _node(entity, project, plan, state, rng, events)
    return SynthRun(node=node, history=history, events=events)


def _plan(
    seed: int, index: int, steps: int, created: float, state: str, rng: random.Random
) -> _Plan:
    """Draw a run's shape: how far it got, where its steps start and skip, its curves."""
    rows = steps
    if state == "pending":
        rows = 0
    elif state in ("crashed", "failed", "killed", "preempted", "preempting"):
        rows = int(steps * rng.uniform(0.5, 1.0))
    first_step = rng.choice((100, 500, 1000, 2500)) if rng.random() < 0.1 else 0
    gap_at, gap_len = rows, 0
    if rows > 2 and rng.random() < 0.1:
        gap_at, gap_len = rng.randint(1, rows - 1), EVAL_EVERY * rng.randint(1, 50)
    extra = rng.randint(2, 32)
    return _Plan(
        seed=seed,
        index=index,
        name=run_id(seed, index),
        rows=rows,
        total=max(steps, 1),
        first_step=first_step,
        gap_at=gap_at,
        gap_len=gap_len,
        step_seconds=rng.uniform(0.05, 2.0),
        created=created,
        extra=extra,
        levels=tuple(rng.uniform(-10, 100) for _ in range(extra)),
        loss0=rng.uniform(1.5, 4.0),
        decay=rng.uniform(1.0, 6.0),
        acc_max=rng.uniform(0.6, 0.99),
        lr0=rng.choice((1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.1)),
        schedule=rng.choice(("cosine", "linear", "constant")),
        epochs=rng.choice((1, 3, 10, 30, 100)),
        diverge_at=int(rows * 0.9) if _diverges(state, rng) else rows,
        overflow=state == "failed",
    )


def _diverges(state: str, rng: random.Random) -> bool:
    """Failed runs end with a NaN loss (that is why they failed); some crashed ones too."""
    return state == "failed" or (state == "crashed" and rng.random() < 0.3)


def _history_block(plan: _Plan, b: int) -> list[dict[str, Any]]:
    """Rows ``b*BLOCK`` to ``(b+1)*BLOCK - 1`` of a run's history (a pure function of its inputs)."""
    idx = np.arange(b * BLOCK, min((b + 1) * BLOCK, plan.rows))
    if idx.size == 0:
        return []
    rng = np.random.default_rng([plan.seed, plan.index, b, 0])
    arrays = _dense_arrays(plan, idx, rng)
    evals = _logged_columns(_eval_arrays(arrays["loss"], arrays["acc"], rng))
    media = _media_rows(plan, idx, rng)
    runtime = (idx + 1) * plan.step_seconds + rng.uniform(0, plan.step_seconds / 2, idx.size)
    arrays |= {
        "_timestamp": plan.created + runtime,
        "_runtime": runtime,
        "_step": plan.steps(idx).astype(float),
    }
    columns = _logged_columns(arrays)
    tail = {key: columns.pop(key) for key in _TAIL}
    names = list(columns)
    rows: list[dict[str, Any]] = []
    for j, values in enumerate(zip(*columns.values(), strict=True)):
        row = dict(zip(names, values, strict=True))
        i = int(idx[j])
        if i % EVAL_EVERY == 0:
            row.update({key: col[j] for key, col in evals.items()})
        row.update(media.get(i, {}))
        for key, col in tail.items():
            row[key] = col[j]
        rows.append(row)
    return rows


def _dense_arrays(plan: _Plan, idx: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The metrics every row holds (NaN when diverged, ±Infinity on overflow)."""
    x = idx / plan.total
    noise = rng.standard_normal((len(_FIXED) + plan.extra, idx.size))
    spikes = rng.random((2, idx.size))
    curve = plan.loss0 * np.exp(-plan.decay * x) + 0.05
    loss = curve * np.exp(0.05 * noise[0])
    loss[idx >= plan.diverge_at] = np.nan
    grad = np.abs(2.0 * np.exp(-x) + 0.3 * noise[4])
    logit = -5.0 - 3.0 * np.abs(noise[5])
    grad[spikes[0] < 0.004] = np.inf
    logit[spikes[1] < 0.004] = -np.inf
    if plan.overflow:
        grad[idx == plan.rows - 1] = np.inf
        logit[idx == plan.rows - 1] = -np.inf
    arrays = {
        "loss": loss,
        "acc": _accuracy(plan, x, noise[1]),
        "lr": _learning_rate(plan, x),
        "epoch": np.floor(x * plan.epochs),
        "grad_norm": grad,
        "min_logit": logit,
        "train/loss": curve * 0.9 * np.exp(0.05 * noise[6]),
        "train/acc": _accuracy(plan, x * 1.2, noise[7]),
        "température": 1.0 + 0.05 * noise[8],
        "损失": curve * np.exp(0.05 * noise[9]),
    }
    for j, level in enumerate(plan.levels):
        arrays[f"metrics/m{j:02d}"] = level + 0.1 * noise[len(_FIXED) + j]
    return arrays


def _accuracy(plan: _Plan, x: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Correct answers out of 1000, so 0 and 1 happen exactly (and are logged as ints)."""
    correct = np.round(1000 * plan.acc_max * (1 - np.exp(-plan.decay * x)) + 10 * noise)
    return np.clip(correct, 0, 1000) / 1000


def _learning_rate(plan: _Plan, x: np.ndarray) -> np.ndarray:
    if plan.schedule == "cosine":
        return plan.lr0 * 0.5 * (1 + np.cos(np.pi * x))
    if plan.schedule == "linear":
        return plan.lr0 * (1 - x)
    return np.full(x.size, plan.lr0)


def _eval_arrays(
    loss: np.ndarray, acc: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The sparse eval keys (computed for every row of the block, kept on every 10th)."""
    noise = rng.standard_normal((2, loss.size))
    eval_acc = np.clip(np.round(1000 * (acc - 0.02) + 5 * noise[1]), 0, 1000) / 1000
    return {
        "eval/loss": loss * 1.1 * np.exp(0.03 * noise[0]),
        "eval/acc": eval_acc,
        "eval/f1": np.round(eval_acc * 0.95, 4),
    }


def _media_rows(plan: _Plan, idx: np.ndarray, rng: np.random.Generator) -> dict[int, dict]:
    """Histograms and images at the rows that log them, by row index."""
    out: dict[int, dict[str, Any]] = {}
    for key, every, at, kind in _MEDIA:
        for i in idx[idx % every == at].tolist():
            step = int(plan.steps(np.asarray([i]))[0])
            media = _histogram(rng) if kind == "histogram" else _image(plan, key, step)
            out.setdefault(i, {})[key] = media
    return out


def _histogram(rng: np.random.Generator) -> dict[str, Any]:
    """A ``wandb.Histogram`` as logged: 64 integer counts and 65 bin edges."""
    counts, edges = np.histogram(rng.standard_normal(1000), bins=64)
    return {"_type": "histogram", "values": counts.tolist(), "bins": logged(edges)}


def _image(plan: _Plan, key: str, step: int) -> dict[str, Any]:
    """A ``wandb.Image`` as logged: a reference to a PNG file with its digest."""
    sha = hashlib.sha256(f"{plan.name}:{key}:{step}".encode()).hexdigest()
    return {
        "_type": "image-file",
        "format": "png",
        "height": 8,
        "width": 8,
        "path": f"media/images/{key}_{step}_{sha[:20]}.png",
        "sha256": sha,
        "size": 200 + int(sha[:2], 16),
    }


def _events_block(plan: _Plan, b: int) -> list[dict[str, Any]]:
    """System-metric rows (``run.events``): sampled by time, so no ``_step``."""
    idx = np.arange(b * BLOCK, min((b + 1) * BLOCK, plan.n_events()))
    if idx.size == 0:
        return []
    rng = np.random.default_rng([plan.seed, plan.index, b, 1])
    noise = rng.random((8, idx.size))
    runtime = idx * 20 * plan.step_seconds + noise[0] + 1
    columns = _logged_columns(
        {
            "system.cpu": np.round(100 * noise[0], 1),
            "system.memory": np.round(30 + 40 * noise[1], 2),
            "system.disk": np.round(55 + noise[2], 1),
            "system.gpu.0.gpu": np.round(80 + 20 * noise[3]),
            "system.gpu.0.memoryAllocated": 60 + 30 * noise[4],
            "system.gpu.0.temp": np.round(60 + 20 * noise[5]),
            "system.proc.memory.rssMB": 2048 + 512 * noise[6],
            "system.network.sent": idx * 40_000 + np.floor(noise[7] * 1000),
            "_runtime": runtime,
            "_timestamp": plan.created + runtime,
        }
    )
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _node(
    entity: str, project: str, plan: _Plan, state: str, rng: random.Random, events: RowStream
) -> dict[str, Any]:
    """The W&B GraphQL ``Run`` node: JSON text where W&B sends JSON text."""
    summary = _summary(plan, state)
    runtime = summary.get("_wandb", {}).get("runtime", 0)
    heartbeat = plan.created + runtime
    in_sweep = rng.random() < 0.3
    experiment = rng.choice(EXPERIMENTS)
    return {
        "id": storage_id(entity, project, plan.name),
        "name": plan.name,
        "displayName": f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}-{plan.index + 1}",
        "state": state,
        "tags": sorted(rng.sample(TAGS, rng.randint(0, 3))),
        "group": None if in_sweep or rng.random() < 0.5 else f"grp-{experiment}",
        "jobType": rng.choice(("train", "train", "eval", "finetune", None)),
        "notes": rng.choice((None, "", "retry with warmup", "see Slack thread · données v2")),
        "description": rng.choice((None, None, "ablation of the decoder")),
        "commit": hashlib.sha1(f"{plan.seed}:{plan.index}".encode()).hexdigest(),
        "host": f"gpu-node-{rng.randint(1, 16):02d}",
        "sweepName": _sweep_id(plan.seed, plan.index // 20) if in_sweep else None,
        "createdAt": iso(plan.created),
        "heartbeatAt": iso(heartbeat),
        "updatedAt": iso(heartbeat + rng.randint(0, 60)),
        "historyLineCount": plan.rows,
        "historyKeys": _history_keys(plan),
        "config": dumps(_config(plan, experiment, in_sweep, rng)),
        "summaryMetrics": dumps(summary),
        "systemMetrics": dumps(events.last()),
        "user": dict(rng.choice(USERS)),
    }


def _config(plan: _Plan, experiment: str, in_sweep: bool, rng: random.Random) -> dict[str, Any]:
    """The wrapped config, with nested dicts, lists, bools, nulls, NaN/Infinity and odd keys."""
    config = {
        "experiment_name": experiment,
        "optimizer": rng.choice(OPTIMIZERS),
        "lr": plan.lr0,
        "batch_size": rng.choice((32, 64, 128, 256)),
        "seed": rng.choice((None, 0, 1, 2, 42, 1337)),
        "epochs": plan.epochs,
        "use_amp": rng.random() < 0.5,
        "layers": [rng.choice((64, 128, 256, 512)) for _ in range(rng.randint(1, 4))],
        "model": {
            "depth": rng.randint(2, 48),
            "act": rng.choice(("gelu", "relu", "silu")),
            "norm": {"kind": rng.choice(("layer", "rms")), "eps": 1e-5},
        },
        "dataset": {"name": experiment.split("-")[1], "split": rng.choice(("train", "full"))},
        "scheduler": None if plan.schedule == "constant" else plan.schedule,
        "dropout": math.nan if rng.random() < 0.1 else _whole(rng.choice((0.0, 0.1, 0.2, 0.5))),
        "clip_grad": math.inf if rng.random() < 0.2 else _whole(rng.choice((0.5, 1.0, 5.0))),
        "name.with.dot": rng.randint(0, 9),
        "température": _whole(round(rng.uniform(0.1, 2.0), 2)),
    }
    if in_sweep:
        config["sweep_trial"] = plan.index % 20
    config["_wandb"] = {
        "python_version": "3.11.7",
        "cli_version": "0.16.2",
        "framework": "torch",
        "is_jupyter_run": False,
        "is_kaggle_kernel": False,
        "start_time": _whole(plan.created + round(rng.random(), 6)),
        "t": {"1": [1, 5, 41, 55], "3": [16, 23], "4": "3.11.7", "5": "0.16.2", "8": [5]},
    }
    return wrap_config(config)


def _last_index(n: int, every: int, at: int) -> int | None:
    """The last row index ``< n`` with ``index % every == at``."""
    return None if n <= at else at + (n - 1 - at) // every * every


def _key_spans(plan: _Plan) -> dict[str, tuple[int, int, int, str]]:
    """``key → (first row, last row, every, W&B type)`` for each key the history holds."""
    n = plan.rows
    spans: dict[str, tuple[int, int, int, str]] = {}
    for key in plan.keys() if n else ():
        every, at, kind = _SPARSE.get(key, (1, 0, "number"))
        last = _last_index(n, every, at)
        if last is not None:
            spans[key] = (at, last, every, kind)
    return spans


def _history_keys(plan: _Plan) -> dict[str, Any]:
    """``historyKeys`` exactly as ``history_keys_of`` computes it, without making the rows.

    Keys are listed in order of first appearance, as ``history_keys_of`` meets them.
    """
    order = {key: pos for pos, key in enumerate(plan.keys())}
    spans = _key_spans(plan)
    keys = sorted(spans, key=lambda k: (spans[k][0], order[k]))
    counts = {k: (spans[k][1] - spans[k][0]) // spans[k][2] + 1 for k in keys}
    return {
        "keys": {k: {"typeCounts": [{"type": spans[k][3], "count": counts[k]}]} for k in keys},
        "lastStep": int(plan.steps(np.asarray([plan.rows - 1]))[0]) if plan.rows else -1,
    }


def _summary(plan: _Plan, state: str) -> dict[str, Any]:
    """The last value of every history key, plus W&B's ``_wandb`` and what scripts add."""
    spans = _key_spans(plan)
    if not spans:
        return {}
    blocks: dict[int, list[dict[str, Any]]] = {}

    def row(i: int) -> dict[str, Any]:
        if i // BLOCK not in blocks:
            blocks[i // BLOCK] = _history_block(plan, i // BLOCK)
        return blocks[i // BLOCK][i % BLOCK]

    last_row = row(plan.rows - 1)
    summary: dict[str, Any] = {"_wandb": {"runtime": math.ceil(last_row["_runtime"])}}
    for key, (_first, last, _every, _kind) in spans.items():
        summary[key] = row(last)[key]
    summary["best_acc"] = round(plan.acc_max, 4)
    if state == "finished":
        summary["preds"] = _table(plan, last_row["_step"])
    return summary


def _table(plan: _Plan, step: int) -> dict[str, Any]:
    """A ``wandb.Table`` reference as the summary keeps it."""
    sha = hashlib.sha256(f"{plan.name}:preds".encode()).hexdigest()
    return {
        "_type": "table-file",
        "ncols": 2,
        "nrows": 100,
        "path": f"media/table/preds_{step}_{sha[:20]}.table.json",
        "sha256": sha,
        "size": 4096,
        "log_mode": "IMMUTABLE",
    }


def seed_project(
    engine: Engine,
    entity: str,
    project: str,
    runs: int,
    steps: int,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Write a synthetic project through the store's own upserts; returns the number of runs.

    Runs go in batches, one write transaction each (up to 1000 runs, fewer when their histories
    are long), so memory stays flat and a reader never waits long. Seeding again with the same
    arguments changes nothing: runs are upserted and rows already stored are skipped.
    ``progress`` is called after each batch with the number of runs written so far.
    """
    per_batch = max(1, min(1000, 200_000 // max(steps, 1)))
    done = 0
    batch: list[SynthRun] = []
    for run in generate_runs(entity, project, runs, steps, seed):
        batch.append(run)
        if len(batch) == per_batch:
            done += _write_batch(engine, entity, project, batch)
            batch = []
            if progress is not None:
                progress(done)
    if batch:
        done += _write_batch(engine, entity, project, batch)
        if progress is not None:
            progress(done)
    analyze_if_stale(engine)
    return done


def _write_batch(engine: Engine, entity: str, project: str, batch: list[SynthRun]) -> int:
    with write_transaction(engine) as conn:
        ids = upsert_runs(conn, entity, project, [run.node for run in batch])
        streams: list[Appended] = []
        for run in batch:
            run_row = ids[run.node["name"]]
            streams.append((run_row, "history", list(run.history), 0))
            streams.append((run_row, "events", list(run.events), 0))
        append_histories(conn, streams)
    return len(batch)
