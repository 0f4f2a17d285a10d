"""The server's computed historyKeys: right, reused while the history is unchanged, fresh after."""

from __future__ import annotations

from mirror.serve.chunk_cache import ChunkCache
from mirror.store.engine import read_transaction, write_transaction
from mirror.store.history import history_keys_of
from mirror.store.upsert import append_history, upsert_runs

pytest_plugins = ["serve_databases"]


def test_history_keys_are_computed_once_per_state_of_the_history(database_engine, monkeypatch):
    engine = database_engine
    rows = [
        {"_step": i, "loss": 1 / (i + 1), **({"eval": "x"} if i % 5 == 0 else {})}
        for i in range(30)
    ]
    with write_transaction(engine) as conn:
        run_id = upsert_runs(conn, "e", "p", [{"name": "r1", "createdAt": "2024-01-01T00:00:00"}])[
            "r1"
        ]
        append_history(conn, run_id, rows)
    cache = ChunkCache()
    decodes = []
    real = cache._decoded
    monkeypatch.setattr(
        cache, "_decoded", lambda conn, span: decodes.append(span) or real(conn, span)
    )
    with read_transaction(engine) as conn:
        assert cache.history_keys(conn, run_id) == history_keys_of(rows)
        assert cache.history_keys(conn, run_id) == history_keys_of(rows)
    assert len(decodes) == 1  # the second answer came from the cache
    more = [{"_step": 30, "loss": 0.0, "acc": 1}]
    with write_transaction(engine) as conn:
        append_history(conn, run_id, more)
    with read_transaction(engine) as conn:
        assert cache.history_keys(conn, run_id) == history_keys_of(rows + more)
