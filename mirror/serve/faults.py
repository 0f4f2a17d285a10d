"""Fault injection for tests and benchmarks: W&B's failure modes, on demand and reproducible.

A mirror's sync must survive what W&B does to clients (errors, retries, rate limits, and the
paging bug of issues 6614/7666). The server can play each of those back, off by
default, so that tests in another process can switch them on with a command-line option or an
environment variable:

``--fault-latency-ms MS`` / ``WANDB_MIRROR_SERVE_FAULT_LATENCY_MS``
    every GraphQL request waits MS milliseconds before it is answered.
``--fault-rate-limit N/WINDOW_S`` / ``WANDB_MIRROR_SERVE_FAULT_RATE_LIMIT``
    at most N GraphQL requests are admitted per fixed window of WINDOW_S seconds; the others get
    429 with ``RateLimit-Limit``, ``RateLimit-Remaining: 0``, ``RateLimit-Reset`` and
    ``Retry-After`` (whole seconds until the window ends). Admitted answers carry the three
    ``RateLimit-*`` headers too, as W&B's do.
``--fault-error-rate P`` / ``WANDB_MIRROR_SERVE_FAULT_ERROR_RATE``
    that fraction of GraphQL requests gets 500 (JSON errors body) or 502 (plain text, as from a
    proxy), half and half.
``--fault-drop-rate P`` / ``WANDB_MIRROR_SERVE_FAULT_DROP_RATE``
    that fraction of GraphQL requests has its connection closed without any response.
``--fault-page-repeat N`` / ``WANDB_MIRROR_SERVE_FAULT_PAGE_REPEAT``
    every ``runs`` page after the first opens with the last N runs of the previous page in place
    of its own first N, while its cursors count as if it had not: N runs repeat and N are never
    listed per page, as in W&B issues 6614/7666. ``runCount`` stays right.
``--fault-seed S`` / ``WANDB_MIRROR_SERVE_FAULT_SEED``
    seeds the draws of the error and drop rates: the same seed gives the same sequence of
    outcomes for the same sequence of requests.

Order per request: rate limit (a rejected request consumes nothing else), then the error draw,
then the drop draw, then the latency.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mirror.serve import options

ENV_PREFIX = "WANDB_MIRROR_SERVE_FAULT_"


@dataclass(frozen=True)
class FaultConfig:
    """Which faults are on; the defaults switch every one off."""

    latency_ms: float = 0.0
    rate_limit: tuple[int, float] | None = None  # (requests, window seconds)
    error_rate: float = 0.0
    drop_rate: float = 0.0
    page_repeat: int = 0
    seed: int = 0

    @property
    def active(self) -> bool:
        """Whether any fault is on (the server logs it at start-up)."""
        return bool(
            self.latency_ms
            or self.rate_limit
            or self.error_rate
            or self.drop_rate
            or self.page_repeat
        )

    def describe(self) -> str:
        """One line naming the faults that are on."""
        parts = []
        if self.latency_ms:
            parts.append(f"latency {self.latency_ms:g} ms")
        if self.rate_limit:
            parts.append(f"rate limit {self.rate_limit[0]}/{self.rate_limit[1]:g}s")
        if self.error_rate:
            parts.append(f"error rate {self.error_rate:g}")
        if self.drop_rate:
            parts.append(f"drop rate {self.drop_rate:g}")
        if self.page_repeat:
            parts.append(f"page repeat {self.page_repeat}")
        return ", ".join(parts) + f" (seed {self.seed})"


def parse_rate_limit(text: str) -> tuple[int, float]:
    """``"N/WINDOW_S"`` → ``(N, window)``; raises ValueError with a readable message."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*", text)
    if not match or int(match.group(1)) < 1 or float(match.group(2)) <= 0:
        raise ValueError(f"rate limit must look like N/WINDOW_S, e.g. 10/1, not {text!r}")
    return int(match.group(1)), float(match.group(2))


_FRACTION = options.Range(whole=False, low=0, high=1)
_AT_LEAST_ZERO = options.Range(whole=True, low=0)

#: option name → (FaultConfig field, parser)
OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "latency-ms": ("latency_ms", options.Range(whole=False, low=0).parse),
    "rate-limit": ("rate_limit", parse_rate_limit),
    "error-rate": ("error_rate", _FRACTION.parse),
    "drop-rate": ("drop_rate", _FRACTION.parse),
    "page-repeat": ("page_repeat", _AT_LEAST_ZERO.parse),
    "seed": ("seed", _AT_LEAST_ZERO.parse),
}


def env_name(option: str) -> str:
    """``"latency-ms"`` → ``"WANDB_MIRROR_SERVE_FAULT_LATENCY_MS"``."""
    return options.env_name(ENV_PREFIX, option)


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The fault settings given in the environment, parsed, by FaultConfig field name."""
    return options.from_env(ENV_PREFIX, OPTIONS, environ)


@dataclass(frozen=True)
class Decision:
    """What the fault layer does to one request."""

    status: int | None = None  # answer with this status instead of executing
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    delay_s: float = 0.0


@dataclass
class FaultInjector:
    """Draws each request's fate; thread-safe, one per server."""

    config: FaultConfig
    clock: Callable[[], float] = time.monotonic
    _rng: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _window_start: float = field(default=0.0, init=False)
    _window_used: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)
        self._window_start = self.clock()

    def decide(self) -> Decision:
        """The fate of the next GraphQL request."""
        cfg = self.config
        with self._lock:
            headers: tuple[tuple[str, str], ...] = ()
            if cfg.rate_limit is not None:
                admitted, headers = self._take_rate_token(*cfg.rate_limit)
                if not admitted:
                    retry = headers[-1][1]
                    return Decision(status=429, headers=(*headers, ("Retry-After", retry)))
            status = None
            if cfg.error_rate and self._rng.random() < cfg.error_rate:
                status = 500 if self._rng.random() < 0.5 else 502
            drop = bool(cfg.drop_rate) and status is None and self._rng.random() < cfg.drop_rate
        return Decision(status=status, headers=headers, drop=drop, delay_s=cfg.latency_ms / 1000)

    def _take_rate_token(
        self, limit: int, window: float
    ) -> tuple[bool, tuple[tuple[str, str], ...]]:
        now = self.clock()
        if now - self._window_start >= window:
            elapsed_windows = math.floor((now - self._window_start) / window)
            self._window_start += elapsed_windows * window
            self._window_used = 0
        admitted = self._window_used < limit
        if admitted:
            self._window_used += 1
        reset = max(1, math.ceil(self._window_start + window - now))
        headers = (
            ("RateLimit-Limit", str(limit)),
            ("RateLimit-Remaining", str(limit - self._window_used)),
            ("RateLimit-Reset", str(reset)),
        )
        return admitted, headers
