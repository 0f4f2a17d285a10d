"""A reader in its own process, reading a mirror while a sync writes it (tests/test_sync_crash.py,
tests/test_sync_concurrency.py).

``python tests/sync_reader.py DATABASE ENTITY/PROJECT STOP_FILE`` loops, each time with a fresh
``mirror.Api``: ``len(api.runs(PATH))``, every run of the listing (config, summary), and the
history of a few of them, as a DataFrame and as rows. One JSON line per loop on stdout; it stops
after the loop that finds STOP_FILE. Any exception ends it with a traceback and exit status 1,
except that the project may not exist yet before the first loop that finds it.

Given ``http://HOST:PORT`` (a ``serve`` of the mirror) instead of a database, it reads the same
through GraphQL as W&B's clients do, with the sync's own client: the listing in one page, and
the history of a few runs in windows of ``WINDOW`` steps (``"windows"``: the rows of each).

What it checks of what it reads: the run count never goes down (the sync only adds runs), and
each history it reads rises strictly in ``_step`` (no duplicated step, ever).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def read_once(database: str, path: str, turn: int) -> dict[str, object]:
    from mirror import Api

    api = Api(database=database)
    try:
        runs = api.runs(path, per_page=7)
        count = len(runs)
        listed = [run for run in runs]
        names = [run.id for run in listed]
        if len(set(names)) != len(names):
            raise AssertionError(f"a run listed twice: {sorted(names)}")
        for run in listed:
            _ = (run.config, run.summary, run.state, run.tags)
        histories = {}
        for run in listed[turn % 5 :: 5]:
            frame = run.history()
            steps = [int(step) for step in frame["_step"]] if len(frame) else []
            plain = [row.get("_step") for row in run.history(pandas=False)]
            for found in (steps, plain):
                if any(b <= a for a, b in zip(found, found[1:], strict=False)):
                    raise AssertionError(f"{run.id}: history steps not strictly rising")
            # read a moment apart, the later read may hold more rows, never other ones
            short, long = sorted((steps, plain), key=len)
            if long[: len(short)] != short:
                raise AssertionError(f"{run.id}: the DataFrame and the rows disagree")
            histories[run.id] = len(frame)
        return {"count": count, "listed": len(listed), "histories": histories}
    finally:
        api.close()


#: the steps one GraphQL history request of the serve reader covers (fewer rows than a page of
#: serve holds, so it never samples them)
WINDOW = 200


def read_served(url: str, path: str, turn: int) -> dict[str, object]:
    from mirror.remote.auth import Credentials
    from mirror.remote.client import RemoteClient, RemoteSettings
    from mirror.remote.project import RemoteProject

    entity, project = path.split("/")
    client = RemoteClient(Credentials(url, "reader" + "0" * 34), RemoteSettings(max_attempts=3))
    try:
        remote = RemoteProject(client, entity, project)
        pages = list(remote.listing(1000))
        names = [node["name"] for page in pages for node in page.nodes]
        if len(set(names)) != len(names):
            raise AssertionError(f"a run listed twice: {sorted(names)}")
        histories: dict[str, int] = {}
        windows: dict[str, list[int]] = {}
        for name in sorted(names)[turn % 5 :: 5]:
            steps: list[int] = []
            counts = []
            for start in range(0, 2**40, WINDOW):
                found = remote.history(name, start, start + WINDOW, 1000)
                rows = found[0] if found is not None else []
                counts.append(len(rows))
                steps += [int(row["_step"]) for row in rows]
                if len(rows) < WINDOW:
                    break
            if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
                raise AssertionError(f"{name}: history steps not strictly rising")
            histories[name] = len(steps)
            windows[name] = counts
        return {
            "count": pages[0].run_count if pages else 0,
            "listed": len(names),
            "histories": histories,
            "windows": windows,
        }
    finally:
        client.close()


def main(database: str, path: str, stop_file: str) -> int:
    from mirror.query.api import NotFound
    from mirror.remote.project import ProjectNotFound

    read = read_served if database.startswith("http") else read_once

    seen_project = False
    last_count = 0
    turn = 0
    while True:
        stopping = Path(stop_file).exists()
        try:
            found = read(database, path, turn)
        except (NotFound, ProjectNotFound):
            if seen_project:
                traceback.print_exc()
                return 1
            found = {"count": 0, "listed": 0, "histories": {}, "missing": True}
        except BaseException:
            traceback.print_exc()
            return 1
        else:
            seen_project = True
            if found["count"] < last_count:  # type: ignore[operator]
                print(f"the run count went down: {last_count} -> {found['count']}", file=sys.stderr)
                return 1
            last_count = found["count"]
        print(json.dumps(found), flush=True)
        turn += 1
        if stopping:
            return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
