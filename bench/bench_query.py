"""Query benchmark: ``mirror.Api`` filters against mongomock over the same run documents.

A synthetic project of 100,000 runs is seeded once into ``bench/out/`` (reused while the
parameters stay the same: seeding takes minutes). Every query of the suite runs twice, warm:

* through ``mirror.Api``, as a user would write it, materialising what a user would look at (the
  first page of 50 ids, every id of a small result, or ``len()`` for a count), with the Api's
  result cache flushed before each repetition so that the database does the work every time;
* through mongomock, over ``mirror.store.fields.run_document(row)`` of every run, inserted
  before timing: the same filter, the same sort and limit, ``count_documents`` for a count.

Both sides must return the same ids (checked), so the ratio compares equal work. Targets: every
query at least 10x faster than mongomock, a geometric mean of at least 30x, and the selective
query (under 1% of runs) under 20 ms.

With ``--postgresql URL`` the same project is also seeded into that (empty) PostgreSQL database
and every query is timed on both, side by side, against the same mongomock figures; the targets
then hold for each database.

Usage: ``.venv/bin/python bench/bench_query.py [--runs 100000] [--repeat 7]
[--postgresql postgresql+psycopg://USER@HOST/DB]`` (``--db URL`` says the same). Exits non-zero
when a target fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    discard_fixture,
    fixture_ready,
    fresh_database,
    geomean,
    machine,
    mark_fixture,
    out_path,
    report_targets,
    table,
    time_ms,
)

ENTITY, PROJECT = "bench", "runs"
STEPS = 10  # history rows per run: enough for realistic summaries (the last value of each key)
PAGE = 50


@dataclass(frozen=True)
class Query:
    """One query of the suite, written once for both sides.

    ``order`` is the Api's order string, ``sort`` mongomock's equivalent (the Api's default
    order is newest first with the run id as tie-break). ``mode`` says what is materialised:
    ``page`` the first ``PAGE`` ids, ``all`` every id, ``count`` ``len()``.
    """

    name: str
    filters: dict[str, Any]
    order: str = "-created_at"
    sort: list[tuple[str, int]] = field(default_factory=lambda: [("createdAt", -1), ("name", 1)])
    mode: str = "page"
    selective: bool = False


SUITE = [
    Query("default listing, first page", {}),
    Query("config equality", {"config.experiment_name": "wide-imagenet"}),
    Query(
        "summary range, order, limit 50",
        {"summary_metrics.train/loss": {"$gte": 0.2, "$lt": 0.6}},
        order="-summary_metrics.train/loss",
        sort=[("summary_metrics.train/loss", -1), ("name", 1)],
    ),
    Query("$or tags / state", {"$or": [{"tags": "prod"}, {"state": "crashed"}]}),
    Query("$regex displayName", {"displayName": {"$regex": "-comet-"}}),
    # names numbered 1, 10-19, 100-199, ...: of 100,000 runs the newest 80,000 do not match
    Query("$regex displayName, anchored class", {"displayName": {"$regex": "^[a-m].*-1"}}),
    Query(
        "$exists + $ne",
        {"config.sweep_trial": {"$exists": True}, "state": {"$ne": "finished"}},
    ),
    Query(
        "$in + nested config, ascending order",
        {"config.optimizer": {"$in": ["adam", "adamw"]}, "config.model.act": "gelu"},
        order="+summary_metrics.best_acc",
        sort=[("summary_metrics.best_acc", 1), ("name", 1)],
    ),
    Query(
        "count (len)",
        {"config.optimizer": "adamw", "summary_metrics.best_acc": {"$gt": 0.9}},
        mode="count",
    ),
    Query(
        "selective (<1%), all ids",
        {"config.model.depth": 33, "host": "gpu-node-07"},
        mode="all",
        selective=True,
    ),
]


def seed(path: Path, runs: int, seed_value: int, reseed: bool) -> None:
    """Seed the synthetic project with the project's own seeder, unless already there."""
    from mirror.store import migrate

    params = {
        "runs": runs,
        "steps": STEPS,
        "seed": seed_value,
        "schema": migrate.head_revision(),
    }
    if not reseed and fixture_ready(path, params):
        print(f"reusing {path} ({runs:,} runs, seed {seed_value})")
        return
    from mirror.synth import seed_project

    discard_fixture(path)
    engine = fresh_database(path)
    started = time.perf_counter()
    last = [0.0]

    def progress(done: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 15 or done == runs:
            last[0] = now
            print(f"  seeded {done:,}/{runs:,} runs ({now - started:.0f} s)", flush=True)

    print(f"seeding {runs:,} runs x {STEPS} steps into {path} ...", flush=True)
    seed_project(engine, ENTITY, PROJECT, runs, STEPS, seed=seed_value, progress=progress)
    engine.dispose()
    mark_fixture(path, params)
    print(f"seeded in {time.perf_counter() - started:.0f} s", flush=True)


def seed_postgresql(url: str, runs: int, seed_value: int, reseed: bool) -> None:
    """The same synthetic project in PostgreSQL (the seeder is deterministic for a seed; the
    "same result" column proves the two hold the same runs)."""
    from sqlalchemy import func, select

    from mirror.store import migrate
    from mirror.store.engine import make_engine
    from mirror.store.models import projects
    from mirror.store.models import runs as runs_table
    from mirror.synth import seed_project

    engine = make_engine(url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        held = conn.execute(
            select(func.count())
            .select_from(runs_table.join(projects, projects.c.id == runs_table.c.project_id))
            .where(projects.c.entity == ENTITY, projects.c.name == PROJECT)
        ).scalar_one()
    if held == runs and not reseed:
        print(f"reusing the PostgreSQL mirror ({runs:,} runs)")
        engine.dispose()
        return
    if held:
        raise SystemExit(
            f"{url} already holds {held:,} runs of {ENTITY}/{PROJECT}; give an empty one"
        )
    started = time.perf_counter()
    print(f"seeding {runs:,} runs x {STEPS} steps into PostgreSQL ...", flush=True)
    seed_project(engine, ENTITY, PROJECT, runs, STEPS, seed=seed_value)
    engine.dispose()
    print(f"seeded PostgreSQL in {time.perf_counter() - started:.0f} s", flush=True)


def load_collection(path: Path) -> Any:
    """Every run as the document the filter engine sees, in a mongomock collection."""
    import mongomock
    from sqlalchemy import select

    from mirror.store.engine import make_engine, read_transaction
    from mirror.store.fields import run_document
    from mirror.store.models import projects, runs

    engine = make_engine(path)
    with read_transaction(engine) as conn:
        rows = conn.execute(
            select(runs)
            .join(projects, projects.c.id == runs.c.project_id)
            .where(
                projects.c.entity == ENTITY,
                projects.c.name == PROJECT,
                runs.c.deleted_at.is_(None),
            )
        ).mappings()
        docs = [run_document(row) for row in rows]
    engine.dispose()
    collection = mongomock.MongoClient().db.runs
    collection.insert_many(docs)
    return collection


def run_mirror(api: Any, query: Query) -> Any:
    """The query through the Api, materialised as a user would, with no result cache."""
    api.flush()
    per_page = 1000 if query.mode == "all" else PAGE
    runs = api.runs(f"{ENTITY}/{PROJECT}", query.filters, order=query.order, per_page=per_page)
    if query.mode == "count":
        return len(runs)
    if query.mode == "all":
        return [r.id for r in runs]
    return [r.id for r in itertools.islice(runs, PAGE)]


def run_mongomock(collection: Any, query: Query) -> Any:
    """The same query through mongomock: same filter, sort and limit, whole documents back.

    Whole documents, as the Api builds whole ``Run`` objects (config and summary parsed).
    """
    if query.mode == "count":
        return collection.count_documents(query.filters)
    cursor = collection.find(query.filters).sort(query.sort)
    if query.mode == "page":
        cursor = cursor.limit(PAGE)
    return [d["name"] for d in cursor]


def _key(query: Query) -> str:
    """What identifies a query's baseline figures: any change to it means timing it again."""
    return json.dumps([query.filters, query.sort, query.mode], sort_keys=True)


def agree(mine: Any, theirs: Any, query: Query) -> str:
    """``yes`` when both sides returned the same result (same order where one is asked for)."""
    if mine == theirs:
        return "yes"
    if query.mode != "count" and set(mine) == set(theirs):
        return "same set, order differs"
    return "NO"


def main(argv: list[str] | None = None) -> int:
    """Seed or reuse the project, time the suite on both sides, print, check the targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the project")
    parser.add_argument("--seed", type=int, default=0, help="synthetic project seed")
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions (median)")
    parser.add_argument("--reseed", action="store_true", help="seed again even if present")
    parser.add_argument("--seed-only", action="store_true", help="seed, then stop")
    parser.add_argument("--only", help="run only queries whose name contains this text")
    parser.add_argument(
        "--reuse-baseline",
        action="store_true",
        help="take mongomock's figures from the last full run instead of timing them again",
    )
    parser.add_argument(
        "--db",
        help="time the mirror on this copy of the seeded file (e.g. with a trial index); a "
        "PostgreSQL URL here means --postgresql URL",
    )
    parser.add_argument(
        "--postgresql", metavar="URL", help="also time the same project in this PostgreSQL database"
    )
    args = parser.parse_args(argv)
    if args.db and args.db.startswith(("postgresql", "postgres:")):
        args.postgresql, args.db = args.postgresql or args.db, None

    print(f"machine: {machine()}")
    path = out_path(f"query_{args.runs}_{args.seed}.db")
    seed(path, args.runs, args.seed, args.reseed)
    if args.postgresql:
        seed_postgresql(args.postgresql, args.runs, args.seed, args.reseed)
    if args.seed_only:
        return 0

    from mirror import Api

    cache_path = path.with_name(path.name + ".mongomock.json")
    cached = json.loads(cache_path.read_text()) if args.reuse_baseline else {}
    collection = None
    if not cached:
        started = time.perf_counter()
        collection = load_collection(path)
        print(f"mongomock: documents loaded in {time.perf_counter() - started:.1f} s")
    total = args.runs
    apis = {"sqlite": Api(database=str(args.db or path))}
    if args.postgresql:
        apis["postgresql"] = Api(database=args.postgresql)

    suite = [q for q in SUITE if not args.only or args.only in q.name]
    results = []
    baseline: dict[str, Any] = {}
    for query in suite:
        timed = {
            name: time_ms(lambda q=query, a=api: run_mirror(a, q), args.repeat)
            for name, api in apis.items()
        }
        if collection is None:
            mongo_ms, theirs, matches = cached[_key(query)]
        else:
            # mongomock takes seconds a query on 100,000 documents: fewer repetitions suffice
            mongo_ms, theirs = time_ms(
                lambda q=query: run_mongomock(collection, q), max(3, args.repeat // 2)
            )
            matches = theirs if query.mode == "count" else collection.count_documents(query.filters)
            baseline[_key(query)] = [mongo_ms, theirs, matches]
        row: list[Any] = [query.name, matches]
        for name, (ms, mine) in timed.items():
            row += [ms, mongo_ms / ms, agree(mine, theirs, query)]
            print(
                f"  {query.name}: {matches:,} matches, {name} {ms:.2f} ms, "
                f"mongomock {mongo_ms:.1f} ms, {mongo_ms / ms:.1f}x",
                flush=True,
            )
        row.append(mongo_ms)
        results.append((query, row))

    if baseline and not args.only:
        cache_path.write_text(json.dumps(baseline))

    print(f"\n## {total:,} runs, median of {args.repeat} warm runs\n")
    headers = ["query", "matches"]
    for name in apis:
        headers += [f"{name} ms", f"{name} ratio", f"{name} same result"]
    print(table([*headers, "mongomock ms"], [row for _, row in results]))
    targets = []
    for i, name in enumerate(apis):
        at = 2 + 3 * i
        ratios = [row[at + 1] for _, row in results]
        mean = geomean(ratios)
        print(f"{name}: geometric mean of ratios {mean:.1f}x")
        for query, row in results:
            ms, ratio, same = row[at : at + 3]
            targets.append(
                (f"{name} {query.name}: >= 10x faster than mongomock ({ratio:.1f}x)", ratio >= 10)
            )
            targets.append(
                (f"{name} {query.name}: same result as mongomock ({same})", same != "NO")
            )
            if query.selective:
                share = row[1] / total if total else 0
                targets.append((f"{query.name}: under 1% of runs ({share:.2%})", share < 0.01))
                targets.append((f"{name} {query.name}: under 20 ms ({ms:.2f} ms)", ms < 20))
        if len(results) == len(SUITE):
            targets.append((f"{name}: geometric mean >= 30x ({mean:.1f}x)", mean >= 30))
    return report_targets(targets)


if __name__ == "__main__":
    sys.exit(main())
