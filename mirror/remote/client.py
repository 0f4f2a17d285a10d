"""Talking to W&B's GraphQL API: one POST per document, with retries, pacing and a budget.

W&B rate-limits per user and per project, answers 429/5xx in bursts, drops connections and
sometimes hangs (PROTOCOL.md). The client retries exactly what is worth retrying (429, 408, 5xx,
network errors, a body that is not JSON) with exponential backoff and jitter, waits at least as
long as ``Retry-After`` / ``RateLimit-Reset`` ask, spaces its requests out as
``RateLimit-Remaining`` runs low, and gives up after a bounded number of attempts per request
and of retries per sync, so that one broken run can never be retried a million times (wandb
issue 8381). The retry loop itself is tenacity's.

The API key goes only into the ``Authorization`` header of GraphQL requests: never into a URL,
a log line, an exception text or a repr. Pre-signed file URLs are fetched with no credentials.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from mirror import __version__
from mirror.errors import CommError
from mirror.remote.auth import Credentials
from mirror.remote.jsontext import loads

log = logging.getLogger("mirror.remote")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: the longest a ``Retry-After`` or ``RateLimit-Reset`` hint is honoured for, in seconds
MAX_HINT_S = 600.0


class AuthError(CommError):
    """W&B refused the key (401/403): nothing else will work until the user logs in again."""


class Interrupted(Exception):
    """The sync was asked to stop (the daemon got TERM): no request is sent or retried after.

    Not a ``CommError``: nothing failed, so nothing is recorded as a failure, and every layer
    lets it through to the one that asked.
    """


class RetryableError(CommError):
    """A failure that may pass: a 429, 408, 5xx, a network error or a garbled answer."""

    def __init__(
        self,
        message: str,
        exc: BaseException | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, exc)
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True)
class RemoteSettings:
    """How hard and how fast the client may push W&B (``[remote]`` in the config file)."""

    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_attempts: int = 8  # per request, the first one included
    retry_budget: int = 200  # retries per sync, across all requests
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    min_interval_s: float = 0.0  # at least this long between two requests
    slow_below: float = 0.2  # pace out when RateLimit-Remaining falls below this share of the limit


@dataclass
class RequestStats:
    """Counters for the closing summary line; thread-safe."""

    requests: int = 0
    retries: int = 0
    downloads: int = 0
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class RetryBudget:
    """Retries one sync may spend in total; once spent, failures are final at once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.spent = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.spent >= self.total:
                return False
            self.spent += 1
            return True

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.total


def _number(headers: Mapping[str, str], name: str) -> float | None:
    try:
        value = float(headers[name])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


class Pacer:
    """Spaces requests from all threads: a floor interval, wider as the rate limit runs low.

    When W&B says ``RateLimit-Remaining: r`` of ``RateLimit-Limit: l`` with ``RateLimit-Reset: s``
    and ``r`` is below ``slow_below * l``, the remaining ``r`` requests are spread over the ``s``
    seconds left, instead of being spent at once and then met by 429s. A 429 holds every
    thread until its ``Retry-After`` has passed.
    """

    def __init__(self, min_interval_s: float, slow_below: float, sleep: Any = time.sleep) -> None:
        self.min_interval_s = min_interval_s
        self._sleep = sleep
        self.slow_below = slow_below
        self.interval_s = min_interval_s
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval_s
        if slot > now:
            self._sleep(slot - now)

    def observe(self, headers: Mapping[str, str]) -> None:
        limit = _number(headers, "RateLimit-Limit")
        remaining = _number(headers, "RateLimit-Remaining")
        reset = _number(headers, "RateLimit-Reset")
        interval = self.min_interval_s
        low = limit and remaining is not None and remaining < self.slow_below * limit
        if low and reset is not None:
            interval = max(interval, min(reset, MAX_HINT_S) / max(remaining, 1.0))
        with self._lock:
            self.interval_s = interval

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


def _http_date_delay(headers: Mapping[str, str], name: str) -> float | None:
    """Seconds from now until the HTTP date in header ``name`` (``Retry-After`` may be one)."""
    try:
        when = parsedate_to_datetime(headers[name])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def retry_hint(headers: Mapping[str, str], status: int = 429) -> float | None:
    """How long the server asked us to wait before trying again.

    ``Retry-After`` (seconds or an HTTP date) on any answer; failing that, ``RateLimit-Reset``
    on a 429 or once ``RateLimit-Remaining`` is 0. W&B sends ``RateLimit-*`` with every answer,
    so on a 5xx while the limit still has room the reset is only when the window ends: waiting
    for it would stall every request of the sync for nothing.
    """
    hint = _number(headers, "Retry-After")
    if hint is None:
        hint = _http_date_delay(headers, "Retry-After")
    if hint is None and (status == 429 or _number(headers, "RateLimit-Remaining") == 0):
        hint = _number(headers, "RateLimit-Reset")
    return None if hint is None else min(hint, MAX_HINT_S)


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret blanked out (a server or proxy may echo what it was sent)."""
    for secret in secrets:
        text = text.replace(secret, "[API key]")
    return text


def _error_text(response: requests.Response, secrets: tuple[str, ...] = ()) -> str:
    """The server's own words for a failed request, kept short; never request headers, and
    never the key, even when the server echoes it."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            message = errors[0].get("message")
        message = message or body.get("error")
    if not message:
        message = response.text.strip().splitlines()[0] if response.text.strip() else ""
    text = _redact(str(message), secrets)[:200]
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


class RemoteClient:
    """W&B's GraphQL endpoint for one host and key. Safe to share between threads."""

    def __init__(
        self,
        credentials: Credentials,
        settings: RemoteSettings | None = None,
        budget: RetryBudget | None = None,
        stats: RequestStats | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.credentials = credentials
        self.settings = settings or RemoteSettings()
        self.budget = budget or RetryBudget(self.settings.retry_budget)
        self.stats = stats or RequestStats()
        self.cancel = cancel or threading.Event()
        self.pacer = Pacer(self.settings.min_interval_s, self.settings.slow_below, self._sleep)
        self._local = threading.local()
        self.graphql_url = credentials.base_url + "/graphql"
        key = credentials.api_key
        basic = base64.b64encode(f"api:{key}".encode()).decode()
        self._secrets = tuple(s for s in (basic, key) if s)

    def __repr__(self) -> str:
        return f"RemoteClient({self.credentials.base_url!r})"

    def _session(self, authenticated: bool) -> requests.Session:
        name = "auth" if authenticated else "plain"
        session = getattr(self._local, name, None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = f"wandb-mirror/{__version__}"
            if authenticated:
                session.auth = ("api", self.credentials.api_key)
                session.headers["Content-Type"] = "application/json"
            setattr(self._local, name, session)
        return session

    def close(self) -> None:
        """Close this thread's connections (others close when their threads end)."""
        for name in ("auth", "plain"):
            session = getattr(self._local, name, None)
            if session is not None:
                session.close()
                setattr(self._local, name, None)

    # --- the retry machinery -------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        """A backoff or pacing wait that ends early, with ``Interrupted``, when asked to stop."""
        if self.cancel.wait(seconds):
            raise Interrupted

    def _wait(self, state: RetryCallState) -> float:
        s = self.settings
        backoff = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (state.attempt_number - 1))
        wait = random.uniform(backoff / 2, backoff)
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after", None)
        if hint is not None:
            wait = max(wait, hint + random.uniform(0, 0.25))
            self.pacer.hold(wait)
        return wait

    def _stop(self, state: RetryCallState) -> bool:
        """At most ``max_attempts`` per request; every retry but a rate limit's draws on the
        sync's budget: waiting as W&B asks is not a failure, and a long sync under a tight
        limit should slow down, not skip runs."""
        if state.attempt_number >= self.settings.max_attempts:
            return True
        exc = state.outcome.exception() if state.outcome else None
        return getattr(exc, "status", None) != 429 and not self.budget.take()

    def _before_sleep(self, state: RetryCallState) -> None:
        self.stats.add(retries=1)
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "retrying in %.1fs after attempt %d: %s",
            state.next_action.sleep if state.next_action else 0,
            state.attempt_number,
            exc,
        )

    def _with_retries(self, what: str, attempt: Any) -> Any:
        retrying = Retrying(
            retry=retry_if_exception_type(RetryableError),
            wait=self._wait,
            stop=self._stop,
            before_sleep=self._before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except RetryableError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            spent = "; the retry budget of this sync is spent" if self.budget.exhausted else ""
            raise CommError(
                f"{what}: {exc.message} (gave up after {attempts} attempts{spent})", exc.exc or exc
            ) from None

    # --- requests --------------------------------------------------------------------------

    def _timeout(self) -> tuple[float, float]:
        return (self.settings.connect_timeout_s, self.settings.timeout_s)

    def _send(self, method: str, url: str, authenticated: bool, **kwargs: Any) -> requests.Response:
        """One HTTP exchange, its failure classified; counts it and feeds the pacer."""
        if self.cancel.is_set():
            raise Interrupted
        self.pacer.wait()
        self.stats.add(**({"requests": 1} if authenticated else {"downloads": 1}))
        where = self.credentials.host if authenticated else "the file host"
        try:
            response = self._session(authenticated).request(
                method, url, timeout=self._timeout(), **kwargs
            )
        except requests.Timeout as exc:
            raise RetryableError(f"{where} did not answer in time", exc) from None
        except requests.RequestException as exc:
            raise RetryableError(f"cannot reach {where}: {type(exc).__name__}", exc) from None
        self.stats.add(bytes_received=len(response.content))
        self.pacer.observe(response.headers)
        status = response.status_code
        if status in RETRY_STATUSES:
            raise RetryableError(
                _error_text(response, self._secrets),
                retry_after=retry_hint(response.headers, status),
                status=status,
            )
        if authenticated and status in (401, 403):
            raise AuthError(
                f"{self.credentials.host} refused the API key from {self.credentials.source} "
                f"(HTTP {status}); {self.credentials.login_hint()}"
            )
        if status >= 400:
            raise CommError(f"{where} answered {_error_text(response, self._secrets)}")
        return response

    def execute(self, document: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one GraphQL document; its ``data``, or a CommError saying what went wrong."""
        body = json.dumps({"query": document, "variables": dict(variables or {})})
        operation = document.split("(", 1)[0].split("{", 1)[0].split()[-1]

        def attempt() -> dict[str, Any]:
            response = self._send("POST", self.graphql_url, True, data=body)
            try:
                payload = loads(response.content)
            except ValueError as exc:
                raise RetryableError("W&B answered with something that is not JSON", exc) from None
            if not isinstance(payload, dict):
                raise RetryableError("W&B answered with JSON that is not an object")
            errors = payload.get("errors")
            if errors:
                first = errors[0] if isinstance(errors, list) and errors else errors
                message = first.get("message") if isinstance(first, dict) else first
                text = _redact(str(message), self._secrets)[:300]
                raise CommError(f"W&B refused {operation}: {text}")
            data = payload.get("data")
            if not isinstance(data, dict):
                raise RetryableError("W&B answered without data")
            return data

        return self._with_retries(operation, attempt)

    def download(self, url: str) -> bytes:
        """A pre-signed file (a parquet export), fetched with no credentials at all."""

        def attempt() -> bytes:
            return self._send("GET", url, False).content

        return self._with_retries("download of an exported history file", attempt)
