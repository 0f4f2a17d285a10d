"""What one request may cost the server, and the per-request budget that enforces it.

``serve`` is what users' unmodified ``wandb.Api`` scripts talk to while a sync writes, so no
single request may freeze it, fill its memory or hold its connection slots. Each limit is an
option of ``serve`` and an environment variable (``WANDB_MIRROR_SERVE_<NAME>``):

``--request-timeout S`` (30)
    a request still running after S seconds is answered with one error; its SQLite statement
    is interrupted by the connection's progress handler (PostgreSQL: ``statement_timeout``),
    and its Python work stops at the next resolver or history chunk.
``--max-body-mb MB`` (32)
    the largest request body, as sent and once inflated (gzip or deflate): 413 above.
``--max-response-mb MB`` (64)
    the largest answer: a request whose fields add up to more is stopped as soon as they do,
    and answered with one error asking for smaller pages.
``--max-cost N`` (200,000)
    the estimated number of values an operation may ask for: each field counts once per item
    of the listings around it (their ``first``), so nested and aliased listings multiply. One
    page of 1,000 runs with every field the SDK reads costs about 30,000.
``--idle-timeout S`` (30)
    a connection that sends nothing for S seconds (between requests, or half-way through one)
    is closed.
``--connection-limit N`` (256)
    open connections at most; connections that have not yet completed an authorized GraphQL
    request may hold half of them, the oldest idle one making room for a newcomer.

Fixed rules: a ``first`` above 1,000 (the SDK's largest page) is clamped to 1,000, and
``hasNextPage`` tells the client to go on; a field may be asked for under at most 10 names
(aliases) in one selection; a query document may be at most 1 MiB (large values belong in
variables).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from mirror.serve import options

log = logging.getLogger("mirror.serve")

ENV_PREFIX = "WANDB_MIRROR_SERVE_"
#: the largest page of a listing (``runs``, ``models``): larger ``first`` values are clamped to it
MAX_PAGE_SIZE = 1000
#: how many names (aliases) one field may be asked for under in one selection set
MAX_SAME_FIELD = 10
#: the largest query document; the SDK's are a few KB, large values go in variables
MAX_QUERY_BYTES = 1024 * 1024
#: SQLite virtual-machine steps between two looks at the clock (a fraction of a millisecond)
PROGRESS_STEPS = 10_000
_MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The limits of one server (see the module docstring for what each means)."""

    request_timeout: float = 30.0
    max_body_mb: float = 32.0
    max_response_mb: float = 64.0
    max_cost: int = 200_000
    idle_timeout: int = 30
    connection_limit: int = 256

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * _MB)

    @property
    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * _MB)


#: Limits field → the values it accepts, from a flag, a variable or the config's ``[serve]``
RANGES: dict[str, options.Range] = {
    "request_timeout": options.Range(whole=False, low=0, above=True),
    "max_body_mb": options.Range(whole=False, low=0, above=True),
    "max_response_mb": options.Range(whole=False, low=0, above=True),
    "max_cost": options.Range(whole=True, low=1),
    "idle_timeout": options.Range(whole=True, low=1),
    "connection_limit": options.Range(whole=True, low=1),
}

#: option name → (Limits field, parser)
OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    name.replace("_", "-"): (name, allowed.parse) for name, allowed in RANGES.items()
}


def env_name(option: str) -> str:
    """``"request-timeout"`` → ``"WANDB_MIRROR_SERVE_REQUEST_TIMEOUT"``."""
    return options.env_name(ENV_PREFIX, option)


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The limits given in the environment, parsed, by Limits field name."""
    return options.from_env(ENV_PREFIX, OPTIONS, environ)


class RequestAborted(BaseException):  # noqa: N818 - it ends a request, it is not an error type
    """Ends a request at once, from inside any resolver, with one error for the client.

    A BaseException because graphql-core turns every Exception raised by a resolver into a field
    error and goes on resolving the rest of the document: a request past its time limit or its
    response size must stop there, not produce one error per remaining field.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Budget:
    """One request's allowance: a deadline and a number of response bytes.

    Resolvers call :meth:`check` before work and :meth:`charge` with what they hand out; the
    database calls :meth:`progress` (an SQLite progress handler) while a statement runs. The
    server cancels every budget when it stops (:meth:`cancel`), so that running statements end
    at once: SQLite's at the handler's next call, PostgreSQL's through the cancel callbacks the
    request's connections registered (:meth:`on_cancel`), since the server, not the client,
    runs those statements and only a cancel request stops one before its timeout.
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self.deadline = clock() + limits.request_timeout
        self.used = 0
        self.cancelled = False
        self._cancels: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback`` (from another thread) should the request be cancelled; returns
        what removes it again, for when the connection goes back to the pool."""
        with self._lock:
            self._cancels.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._cancels:
                    self._cancels.remove(callback)

        return remove

    def cancel(self) -> None:
        """Stop the request: its next check fails, and its running statements are cancelled."""
        self.cancelled = True
        with self._lock:
            callbacks = list(self._cancels)
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:  # a connection already closed: nothing left to stop
                log.debug("cancelling a statement failed: %s", exc)

    def expired(self) -> bool:
        """Whether the request is out of time (or the server is stopping)."""
        return self.cancelled or self._clock() >= self.deadline

    def remaining(self) -> float:
        """Seconds left, never below zero."""
        return max(self.deadline - self._clock(), 0.0)

    def progress(self) -> int:
        """SQLite's progress handler: non-zero interrupts the running statement."""
        return 1 if self.expired() else 0

    def check(self) -> None:
        """Raise :class:`RequestAborted` when the request is out of time."""
        if self.cancelled:
            raise RequestAborted("the server is shutting down", "SHUTTING_DOWN")
        if self._clock() >= self.deadline:
            raise RequestAborted(
                f"the request took longer than the server's limit of "
                f"{self.limits.request_timeout:g} s and was stopped; ask for less at a time "
                "(smaller pages, fewer keys, narrower filters)",
                "REQUEST_TIMEOUT",
            )

    def charge(self, size: int) -> None:
        """Count ``size`` bytes of response; raise :class:`RequestAborted` past the limit."""
        self.used += size
        if self.used > self.limits.max_response_bytes:
            raise too_large(self.limits)


def too_large(limits: Limits) -> RequestAborted:
    """The answer to a response beyond ``--max-response-mb``."""
    return RequestAborted(
        f"the response would be larger than the server's limit of {limits.max_response_mb:g} MB; "
        "ask for fewer runs per page (first) or fewer fields and keys",
        "RESPONSE_TOO_LARGE",
    )


_current: ContextVar[Budget | None] = ContextVar("mirror_serve_budget", default=None)


@contextmanager
def current(budget: Budget) -> Iterator[Budget]:
    """Make ``budget`` the one :func:`checkpoint` sees in this thread while the block runs."""
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


def checkpoint() -> None:
    """Stop the current request if it is out of time; code shared with the offline side (the
    chunk cache) calls this between units of work, and outside a request it does nothing."""
    budget = _current.get()
    if budget is not None:
        budget.check()


class Budgets:
    """The budgets of the requests in flight, so that stopping the server can cancel them."""

    def __init__(self) -> None:
        self._active: set[Budget] = set()
        self._lock = threading.Lock()

    @contextmanager
    def track(self, budget: Budget) -> Iterator[Budget]:
        with self._lock:
            self._active.add(budget)
        try:
            yield budget
        finally:
            with self._lock:
                self._active.discard(budget)

    def cancel_all(self) -> int:
        """Cancel every request in flight; returns how many there were."""
        with self._lock:
            active = list(self._active)
        for budget in active:
            budget.cancel()
        return len(active)
