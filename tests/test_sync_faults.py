"""The sync against an upstream that fails the way W&B does: 429 bursts, 5xx bursts, dropped
connections, answers too slow to wait for, one run that always fails. Every time the outcome is
exact: a mirror equal to the upstream, or a sync that says which runs it skipped and why, with
nothing half-written, and a later sync that completes it. Retries stay within their caps.

``python -m mirror.serve`` plays W&B with its fault options; where a fault must hit only some
requests (one run's history, answers after the first page), a proxy in this process
(``sync_proxy.FaultProxy``) fails exactly those, with W&B's error shapes.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
from mirror_compare import differences, snapshot
from mirror_db import Database
from requests.structures import CaseInsensitiveDict
from sync_checks import (
    graphql_log,
    integrity,
    run_sync_rows,
    skipped_lines,
    step_problems,
    summary_count,
)
from sync_env import ENTITY, KEY, PATH, PROJECT, Upstream, run_cli, seed_upstream, summary_line
from sync_env import sync_env as make_env
from sync_proxy import FaultProxy, Seen, graphql_error, json_reply, server_error, slow

from mirror.remote import queries
from mirror.remote.client import MAX_HINT_S, Pacer, retry_hint
from mirror.serve.faults import FaultConfig, FaultInjector
from mirror.store import migrate
from mirror.store.engine import make_engine, write_transaction
from mirror.store.history import history_keys_of
from mirror.store.upsert import append_history, upsert_runs

RUNS, STEPS = 10, 60
CONCURRENCY = 4  # the [sync] default
#: the client's own backoff made negligible: what is left of a wait is what the server asked
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05, "max_attempts": 10, "retry_budget": 100}


def config(remote: dict[str, float] | None = None, **sync: int) -> str:
    """A config file: FAST ``[remote]`` settings with ``remote`` on top, and ``[sync]`` ones."""
    text = "[remote]\n" + "".join(f"{k} = {v}\n" for k, v in {**FAST, **(remote or {})}.items())
    return text + "[sync]\n" + "".join(f"{k} = {v}\n" for k, v in sync.items())


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small upstream for the module (no test changes it)."""
    return seed_upstream(tmp_path_factory.mktemp("upstream") / "upstream.db", RUNS, STEPS)


def sync(url: str, mirror: Database, home: Path, text: str, *args: str, timeout: float = 180):
    """``wandb-mirror sync PATH`` against ``url`` with config file ``text``; (result, seconds)."""
    path = home / "c.toml"
    path.write_text(text)
    env = make_env(url, home)
    started = time.monotonic()
    result = run_cli(
        ["--db", str(mirror), "--config", str(path), "sync", PATH, *args], env, timeout
    )
    return result, time.monotonic() - started


def exact(upstream: Path, mirror: Database) -> list[str]:
    return differences(upstream, mirror, ENTITY, PROJECT)


def runs_with_history(db: Path, count: int, least: int = 1) -> list[str]:
    """``count`` run names holding at least ``least`` history rows."""
    names = [
        n for n, r in sorted(snapshot(db, ENTITY, PROJECT).items()) if len(r["history"]) >= least
    ]
    assert len(names) >= count
    return names[:count]


def run_level(seen: list[Seen], run: str | None = None) -> list[Seen]:
    """The run-level requests (history, events) among ``seen``, of one run if given."""
    return [s for s in seen if s.run is not None and (run is None or s.run == run)]


# --- rate limits ---------------------------------------------------------------------------


def test_429_bursts_are_waited_out_as_retry_after_asks(seeded, tmp_path):
    mirror = tmp_path / "mirror.db"
    with Upstream(seeded, tmp_path / "serve.log", ("--fault-rate-limit", "5/1")) as up:
        # no pacing and no backoff of its own: only Retry-After keeps the client from hammering
        result, took = sync(up.url, mirror, tmp_path, config({"slow_below": 0, "max_attempts": 30}))
        log = graphql_log(up.server.log())
    assert result.returncode == 0, result.stderr
    assert exact(seeded, mirror) == []
    limited = [e for e in log if e.status == "429"]
    admitted = [e for e in log if e.status == "200"]
    assert len(limited) + len(admitted) == len(log)
    # every 429 was retried, and nothing else was
    assert summary_count(summary_line(result), "retries") == len(limited) > 0
    # a worker that meets a 429 waits for the window to end: at most one 429 per worker per
    # 1 s window (a client that ignored Retry-After would meet dozens)
    windows = math.floor(limited[-1].at - limited[0].at) + 2
    assert len(limited) <= CONCURRENCY * windows, (len(limited), windows)
    # at 5 a second the admitted requests need this long; waiting out Retry-After adds little
    least = math.ceil(len(admitted) / 5) - 1
    assert least <= took < least + 10, (took, len(admitted))


def test_pacer_spreads_what_remains_of_the_limit_over_the_reset():
    headers = CaseInsensitiveDict
    pacer = Pacer(min_interval_s=0.0, slow_below=0.5)
    pacer.observe(
        headers({"RateLimit-Limit": "20", "RateLimit-Remaining": "15", "RateLimit-Reset": "2"})
    )
    assert pacer.interval_s == 0.0
    pacer.observe(
        headers({"ratelimit-limit": "20", "ratelimit-remaining": "4", "ratelimit-reset": "2"})
    )
    assert pacer.interval_s == pytest.approx(0.5)
    pacer.observe(
        headers({"RateLimit-Limit": "20", "RateLimit-Remaining": "0", "RateLimit-Reset": "3"})
    )
    assert pacer.interval_s == pytest.approx(3.0)
    pacer.observe(
        headers({"RateLimit-Limit": "20", "RateLimit-Remaining": "19", "RateLimit-Reset": "2"})
    )
    assert pacer.interval_s == 0.0  # a new window: full speed again
    pacer.observe(headers({"RateLimit-Limit": "x", "RateLimit-Remaining": "1"}))
    assert pacer.interval_s == 0.0
    floor = Pacer(min_interval_s=0.1, slow_below=0.0)
    floor.observe(
        headers({"RateLimit-Limit": "20", "RateLimit-Remaining": "0", "RateLimit-Reset": "3"})
    )
    assert floor.interval_s == 0.1  # slow_below = 0: never paced by the headers

    spaced = Pacer(min_interval_s=0.0, slow_below=0.5)
    spaced.observe(
        headers({"RateLimit-Limit": "10", "RateLimit-Remaining": "2", "RateLimit-Reset": "0.3"})
    )
    started = time.monotonic()
    for _ in range(3):
        spaced.wait()
    assert time.monotonic() - started >= 2 * 0.15 - 0.01
    held = Pacer(0.0, 0.2)
    held.hold(0.3)
    started = time.monotonic()
    held.wait()
    assert time.monotonic() - started >= 0.29


def test_retry_hint_reads_retry_after_as_seconds_or_a_date_else_ratelimit_reset():
    h = CaseInsensitiveDict
    assert retry_hint(h({"Retry-After": "3"})) == 3.0
    assert retry_hint(h({"retry-after": "2", "RateLimit-Reset": "9"})) == 2.0
    assert retry_hint(h({"RateLimit-Reset": "4"})) == 4.0
    assert retry_hint(h({"Retry-After": "100000"})) == MAX_HINT_S
    assert retry_hint(h({"Retry-After": "-1"})) is None
    assert retry_hint(h({"Retry-After": "nan"})) is None
    assert retry_hint(h({})) is None
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=5), usegmt=True)
    assert 3.5 <= retry_hint(h({"Retry-After": soon})) <= 5.0
    past = format_datetime(datetime.now(timezone.utc) - timedelta(seconds=50), usegmt=True)
    assert retry_hint(h({"Retry-After": past})) == 0.0
    assert retry_hint(h({"Retry-After": "soon", "RateLimit-Reset": "7"})) == 7.0
    # on other answers than a 429, RateLimit-Reset counts only once the limit is spent
    window = {"RateLimit-Limit": "1000", "RateLimit-Reset": "60"}
    assert retry_hint(h({**window, "RateLimit-Remaining": "900"}), 500) is None
    assert retry_hint(h({**window, "RateLimit-Remaining": "0"}), 503) == 60.0
    assert retry_hint(h({**window, "RateLimit-Remaining": "900", "Retry-After": "2"}), 503) == 2.0
    assert retry_hint(h({**window, "RateLimit-Remaining": "900"}), 429) == 60.0


def test_the_pacer_and_retry_hint_read_the_headers_the_server_really_sends(seeded, tmp_path):
    with Upstream(seeded, tmp_path / "serve.log", ("--fault-rate-limit", "3/30")) as up:
        answers = [
            requests.post(
                up.server.graphql_url, json={"query": queries.VIEWER}, auth=("api", KEY), timeout=10
            )
            for _ in range(4)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    pacer = Pacer(min_interval_s=0.0, slow_below=0.5)
    pacer.observe(answers[0].headers)  # 2 of 3 left: not yet low
    assert pacer.interval_s == 0.0
    pacer.observe(answers[1].headers)  # 1 of 3 left: the rest of the window for it
    assert 20 <= pacer.interval_s <= 30
    assert 20 <= retry_hint(answers[3].headers) <= 30


def test_ratelimit_remaining_pacing_avoids_429s(seeded, tmp_path):
    """At 10 requests per 2 s window, a sync that paces itself once fewer than half remain
    meets fewer 429s (none, with two workers) than one that runs until it is refused."""
    counts = {}
    for slow_below in (0, 0.5):
        home = tmp_path / f"slow{slow_below}"
        home.mkdir()
        mirror = home / "mirror.db"
        text = config({"slow_below": slow_below}, history_page=30, concurrency=2)
        with Upstream(seeded, home / "serve.log", ("--fault-rate-limit", "10/2")) as up:
            result, _took = sync(up.url, mirror, home, text)
            log = graphql_log(up.server.log())
        assert result.returncode == 0, result.stderr
        assert exact(seeded, mirror) == []
        assert len(log) > 20  # more than two windows' worth: an unpaced sync must meet 429s
        counts[slow_below] = sum(1 for e in log if e.status == "429")
        assert summary_count(summary_line(result), "retries") == counts[slow_below]
    assert counts[0] > 0
    assert counts[0.5] < counts[0], counts


# --- 5xx, dropped connections, everything at once --------------------------------------------


def first_draws(seed: int, count: int, **rates: float) -> list[str]:
    """What serve's fault layer does to its first ``count`` requests with this seed (the rate
    limit draws nothing, so it changes none of them)."""
    injector = FaultInjector(FaultConfig(seed=seed, **rates))
    found = []
    for _ in range(count):
        decision = injector.decide()
        found.append(
            str(decision.status) if decision.status else "dropped" if decision.drop else "ok"
        )
    return found


MIXED = (
    {"error_rate": 0.15, "drop_rate": 0.1, "seed": 7},
    ("--fault-rate-limit", "8/1", "--fault-latency-ms", "20"),
)


# every fault on SQLite; on PostgreSQL the mix of them all, which holds each kind
@pytest.mark.parametrize(
    "rates, extra, database",
    [
        ({"error_rate": 0.3, "seed": 6}, (), "sqlite"),
        ({"drop_rate": 0.2, "seed": 2}, (), "sqlite"),
        (*MIXED, "sqlite"),
        pytest.param(*MIXED, "postgresql", marks=pytest.mark.postgresql),
    ],
    ids=["5xx-sqlite", "drops-sqlite", "mixed-sqlite", "mixed-postgresql"],
    indirect=["database"],
)
def test_error_bursts_and_drops_end_in_an_exact_mirror_within_the_budget(
    seeded, tmp_path, rates, extra, database
):
    # the seeds are chosen so that the key check passes and, among the next 9 requests (every
    # sync of this upstream sends more), each kind of failure the rates ask for happens
    kinds = {"error_rate": {"500", "502"}, "drop_rate": {"dropped"}}
    expected = set().union(*(kinds[k] for k in rates if k in kinds))
    draws = first_draws(rates["seed"], 10, **{k: v for k, v in rates.items() if k != "seed"})
    assert draws[0] == "ok" and expected <= set(draws[1:])
    faults = [f"--fault-{k.replace('_', '-')}={v}" for k, v in rates.items()]
    faults += list(extra)
    mirror = database
    with Upstream(seeded, tmp_path / "serve.log", faults) as up:
        # no pacing, so that the rate limit answers 429 too
        result, _took = sync(up.url, mirror, tmp_path, config({"slow_below": 0}, history_page=20))
        log = graphql_log(up.server.log())
    assert result.returncode == 0, result.stderr
    line = summary_line(result)
    assert f"{RUNS} runs new" in line and "0 skipped" in line
    assert exact(seeded, mirror) == []
    assert step_problems(mirror) == []
    # each failure was retried once: the key check's before the first answer, the project's
    # in its summary line
    first_answer = next(i for i, e in enumerate(log) if e.label == "MirrorViewer")
    failures = [e for e in log[first_answer:] if e.fault]
    assert 0 < summary_count(line, "retries") == len(failures) <= 100
    statuses = {e.status for e in failures}
    assert statuses == expected | ({"429"} if extra else set()), statuses


def test_a_5xx_with_ratelimit_headers_does_not_stall_the_sync_until_the_reset(seeded, tmp_path):
    """W&B sends ``RateLimit-*`` on every answer, a 5xx included: with room left in the limit,
    its ``RateLimit-Reset`` (here 60 s) is when the window ends, not a time to wait."""
    failing = set(runs_with_history(seeded, 3))
    window = (
        ("RateLimit-Limit", "1000"),
        ("RateLimit-Remaining", "900"),
        ("RateLimit-Reset", "60"),
    )
    mirror = tmp_path / "mirror.db"

    def first_attempt_fails(seen: Seen):
        if seen.run in failing and len(run_level(proxy.graphql(), seen.run)) == 1:
            return json_reply(500, {"errors": [{"message": "internal server error"}]}, *window)
        return None

    with Upstream(seeded, tmp_path / "serve.log") as up, FaultProxy(up.url) as proxy:
        proxy.rule = first_attempt_fails
        result, took = sync(proxy.url, mirror, tmp_path, config())
    assert result.returncode == 0, result.stderr
    assert summary_count(summary_line(result), "retries") == 3
    assert exact(seeded, mirror) == []
    assert took < 30, took


# --- answers too slow to wait for ----------------------------------------------------------------


def test_answers_slower_than_the_timeout_spend_the_budget_skip_runs_and_write_nothing_half(
    seeded, tmp_path, database
):
    """Three runs' history answers come after 3 s, the timeout is 1 s and the sync may retry 3
    times in all: those runs are skipped and say why, the others are mirrored exactly."""
    slow_runs = set(runs_with_history(seeded, 3))
    budget = 3
    settings = config({"timeout": 1, "connect_timeout": 1, "retry_budget": budget})
    mirror = database
    with Upstream(seeded, tmp_path / "serve.log") as up, FaultProxy(up.url) as proxy:
        proxy.rule = lambda seen: slow(3.0) if seen.run in slow_runs else None
        started = time.monotonic()
        result, _took = sync(proxy.url, mirror, tmp_path, settings)
        took = time.monotonic() - started
        attempts = run_level(proxy.graphql())
        assert result.returncode == 1, result.stderr
        skipped = skipped_lines(result.stderr)
        assert set(skipped) == slow_runs, result.stderr
        host = f"127.0.0.1:{proxy.port}"
        for reason in skipped.values():
            assert re.fullmatch(
                rf"Mirror(HistoryPage|ParquetHistory)(WithEvents)?: {host} did not answer in time "
                r"\(gave up after \d+ attempts; the retry budget of this sync is spent\)",
                reason,
            ), reason
        line = summary_line(result)
        assert "3 skipped" in line and f"{budget} retries" in line
        slow_attempts = [s for s in attempts if s.run in slow_runs]
        assert len(slow_attempts) == len(slow_runs) + budget
        assert took < 30  # six timeouts of 1 s on four workers, not endless waiting
        assert integrity(mirror) == "ok"
        assert step_problems(mirror) == []
        state = run_sync_rows(mirror)
        for name in slow_runs:
            assert state[name]["fingerprint"] is None
            assert state[name]["failures"] == 1
            assert state[name]["last_error"] == skipped[name]
        left = differences(seeded, mirror, ENTITY, PROJECT, limit=1000)
        assert left and {d.split(".")[0] for d in left} == slow_runs, left
        # the same sync, with answers in time again, completes the mirror
        proxy.rule = None
        again, _took = sync(proxy.url, mirror, tmp_path, settings)
    assert again.returncode == 0, again.stderr
    assert "0 runs new, 3 changed" in summary_line(again)
    assert exact(seeded, mirror) == []
    assert all(
        row["failures"] == 0 and row["last_error"] is None for row in run_sync_rows(mirror).values()
    )


def test_a_server_slower_than_the_timeout_is_one_line_and_a_later_sync_is_exact(seeded, tmp_path):
    mirror = tmp_path / "mirror.db"
    settings = config({"timeout": 0.5, "max_attempts": 2})
    with Upstream(seeded, tmp_path / "slow.log", ("--fault-latency-ms", "1500")) as up:
        result, took = sync(up.url, mirror, tmp_path, settings)
        port = up.server.port
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"wandb-mirror: error: MirrorViewer: 127.0.0.1:{port} did not answer in time "
        "(gave up after 2 attempts)"
    ]
    assert took < 15
    assert not mirror.exists()
    with Upstream(seeded, tmp_path / "serve.log") as up:
        again, _took = sync(up.url, mirror, tmp_path, settings)
    assert again.returncode == 0, again.stderr
    assert exact(seeded, mirror) == []


# --- one run that always fails --------------------------------------------------------------


def _unavailable() -> object:
    return server_error("history backend unavailable")


@pytest.mark.parametrize(
    "failure, attempts, database",
    [
        (_unavailable, 3, "sqlite"),
        pytest.param(_unavailable, 3, "postgresql", marks=pytest.mark.postgresql),
        (lambda: graphql_error("run is corrupt"), 1, "sqlite"),
    ],
    ids=["500-retried-sqlite", "500-retried-postgresql", "graphql-error-not-retried-sqlite"],
    indirect=["database"],
)
def test_a_run_whose_history_always_fails_is_skipped_recorded_and_retried_next_cycle(
    seeded, tmp_path, failure, attempts, database
):
    (broken,) = runs_with_history(seeded, 1)
    settings = config({"max_attempts": 3})
    mirror = database
    with Upstream(seeded, tmp_path / "serve.log") as up, FaultProxy(up.url) as proxy:
        proxy.rule = lambda seen: failure() if seen.run == broken else None
        for cycle in (1, 2):
            before = len(proxy.graphql())
            result, _took = sync(proxy.url, mirror, tmp_path, settings)
            seen = proxy.graphql()[before:]
            assert result.returncode == 1, result.stderr
            skipped = skipped_lines(result.stderr)
            assert list(skipped) == [broken], result.stderr
            if attempts > 1:
                assert skipped[broken].endswith(
                    f"HTTP 500: history backend unavailable (gave up after {attempts} attempts)"
                )
            else:
                assert skipped[broken].endswith(": run is corrupt")
            assert len(run_level(seen, broken)) == attempts  # bounded, every cycle
            if cycle == 2:  # the rest is mirrored: only the broken run is asked for again
                assert run_level(seen) == run_level(seen, broken)
                assert "0 runs new, 1 changed" in summary_line(result)
            row = run_sync_rows(mirror)[broken]
            assert row["fingerprint"] is None
            assert row["failures"] == cycle
            assert row["last_error"] == skipped[broken]
            assert integrity(mirror) == "ok"
            left = differences(seeded, mirror, ENTITY, PROJECT, limit=1000)
            assert left and {d.split(".")[0] for d in left} == {broken}
        status = run_cli(["--db", str(mirror), "status"], make_env(proxy.url, tmp_path))
        assert "1 runs failed to sync and are retried next cycle" in status.stdout
        assert f"1 runs skipped, e.g. {broken}: " in status.stdout
        proxy.rule = None
        fixed, _took = sync(proxy.url, mirror, tmp_path, settings)
    assert fixed.returncode == 0, fixed.stderr
    assert exact(seeded, mirror) == []
    row = run_sync_rows(mirror)[broken]
    assert row["failures"] == 0 and row["last_error"] is None and row["fingerprint"] is not None


def test_a_run_failing_after_its_first_page_keeps_that_page_and_continues_after_it(
    seeded, tmp_path, database
):
    page = 10
    (broken,) = runs_with_history(seeded, 1, least=3 * page)
    want = snapshot(seeded, ENTITY, PROJECT)[broken]["history"]
    settings = config({"max_attempts": 2}, history_page=page)
    mirror = database
    answered: list[Seen] = []

    def after_first_page(seen: Seen):
        if seen.run != broken or not seen.operation.startswith("MirrorHistoryPage"):
            return None
        if answered:
            return server_error()
        answered.append(seen)
        return None

    with Upstream(seeded, tmp_path / "serve.log") as up, FaultProxy(up.url) as proxy:
        proxy.rule = after_first_page
        result, _took = sync(proxy.url, mirror, tmp_path, settings)
        assert result.returncode == 1
        assert list(skipped_lines(result.stderr)) == [broken]
        got = snapshot(mirror, ENTITY, PROJECT)[broken]["history"]
        first = answered[0].variables
        assert first["maxStep"] - first["minStep"] == page
        assert 0 < len(got) <= page and got == want[: len(got)]
        assert run_sync_rows(mirror)[broken]["fingerprint"] is None
        proxy.rule = None
        before = len(proxy.graphql())
        again, _took = sync(proxy.url, mirror, tmp_path, settings)
        resumed = [
            s
            for s in run_level(proxy.graphql()[before:], broken)
            if s.operation.startswith("MirrorHistoryPage")
        ]
    assert again.returncode == 0, again.stderr
    assert resumed[0].variables["minStep"] == got[-1]["_step"] + 1
    assert exact(seeded, mirror) == []
    assert step_problems(mirror) == []


# --- requests the data does not need ------------------------------------------------------------


def test_a_run_with_sparse_steps_costs_about_a_request_per_page_of_rows(tmp_path):
    """``wandb.log(step=global_step)`` leaves steps 100 apart: under W&B's rate limits every
    request counts, and windows of 1000 steps would hold 10 rows each."""
    db = tmp_path / "upstream.db"
    rows = [{"_step": 100 * i, "loss": 1.0 / (i + 1)} for i in range(3000)]
    engine = make_engine(db, create=True)
    try:
        migrate.upgrade(engine)
        node = {
            "name": "sparse01",
            "state": "finished",
            "createdAt": "2026-01-01T00:00:00",
            "user": {"name": "Sparse User", "username": "sparse"},
            "historyLineCount": len(rows),
            "historyKeys": history_keys_of(rows),
        }
        with write_transaction(engine) as conn:
            ids = upsert_runs(conn, ENTITY, PROJECT, [node])
            append_history(conn, ids["sparse01"], rows)
    finally:
        engine.dispose()
    mirror = tmp_path / "mirror.db"
    with Upstream(db, tmp_path / "serve.log") as up:
        result, _took = sync(up.url, mirror, tmp_path, config())
    assert result.returncode == 0, result.stderr
    assert exact(db, mirror) == []
    # the listing, one record batch, and history in about 3000 / 1000 pages plus a few probes
    assert summary_count(summary_line(result), "requests") <= 10
