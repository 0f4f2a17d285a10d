"""The ``wandb-mirror`` command. Every failure a user can cause ends in one line and exit 1."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from mirror import __version__
from mirror.arguments import Parser
from mirror.config import Settings, load_settings
from mirror.errors import MirrorError, database_reason, quiet_driver_warnings
from mirror.store import migrate
from mirror.store.engine import database_url, make_engine, shown
from mirror.store.fields import NONFINITE_CHOICES
from mirror.store.lock import WriterLock

EXIT_ERROR = 1


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _database(args: argparse.Namespace) -> str | None:
    return args.db or _settings(args).database


def _shown_database(args: argparse.Namespace) -> str:
    """The database a failed command was using, as messages name it."""
    try:
        return shown(database_url(_database(args)))
    except MirrorError:
        return "the mirror"


def _open(args: argparse.Namespace, create: bool = False, check: bool = True) -> Engine:
    """The mirror's engine; readers insist on a database at the version this code expects."""
    engine = make_engine(_database(args), create=create)
    if check and not create:
        migrate.require_current(engine)
    return engine


def _open_for_writing(args: argparse.Namespace) -> Engine:
    """The mirror, created or upgraded to this version's schema; says where a snapshot went."""
    engine = _open(args, create=True)
    snapshot = migrate.upgrade(engine)
    if snapshot:
        print(f"snapshot taken before the upgrade: {snapshot}", file=sys.stderr)
    return engine


def _count(text: str) -> int:
    """An argparse type: a whole number, zero or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def _progress(total: int, label: str) -> Any:
    """A tqdm bar on a terminal, nothing when piped; returns a callable taking the count done."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="run", leave=False)

    def update(done: int) -> None:
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _writer_lock(args: argparse.Namespace) -> WriterLock:
    """The one-writer lock of the commands that sync or replace the mirror: refused while the
    daemon (or another of them) runs, with one line naming it. ``seed``, ``import`` and ``edit``
    write in short transactions that take turns with any writer, so they do not need it."""
    return WriterLock(_database(args), f"wandb-mirror {args.command}")


def cmd_init(args: argparse.Namespace) -> int:
    engine = _open_for_writing(args)  # the migration lock lets concurrent upgrades queue
    print(f"mirror ready at {engine.url} (schema {migrate.current_revision(engine)})")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    if args.db_command == "upgrade":
        return cmd_init(args)
    engine = _open(args, check=False)
    found = migrate.diagnose(engine)
    if found.kind not in ("current", "behind", "ahead"):
        raise MirrorError(found.line())
    if args.db_command == "current":
        state = {
            "current": "up to date",
            "behind": f"behind: latest is {found.head}",
            "ahead": f"ahead: this wandb-mirror knows up to {found.head}",
        }
        print(f"{found.revision} ({state[found.kind]})")
        return 0
    if found.kind != "current":
        raise MirrorError(found.line())
    differences = migrate.schema_differences(engine)
    if differences:
        raise MirrorError(
            f"the mirror at {found.where} is at schema {found.revision} but its tables differ "
            f"from it ({migrate.describe_differences(differences)}); it was changed outside "
            "wandb-mirror: restore a snapshot or a backup"
        )
    print(f"schema {found.revision} matches this wandb-mirror")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from mirror.query.paths import project_path
    from mirror.synth import seed_project

    entity, project = project_path(args.path, _settings(args).entity)
    count = seed_project(
        _open_for_writing(args),
        entity,
        project,
        args.runs,
        args.steps,
        seed=args.seed,
        progress=_progress(args.runs, f"seeding {entity}/{project}"),
    )
    print(f"seeded {count} runs with {args.steps} steps each into {entity}/{project}")
    return 0


def _parse_filter_arg(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MirrorError(f"--filter is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MirrorError('--filter must be a JSON object, e.g. \'{"state": "finished"}\'')
    return value


def cmd_runs(args: argparse.Namespace) -> int:
    from mirror.output import DEFAULT_RUN_COLUMNS, run_value, write_csv, write_jsonl, write_table
    from mirror.query.api import Api

    engine = _open(args)
    api = Api(database=engine, overrides={"entity": _settings(args).entity})
    runs = api.runs(args.path, _parse_filter_arg(args.filter), order=args.order, per_page=500)
    selected = runs[: args.limit] if args.limit is not None else list(runs)
    if args.format == "json":
        write_jsonl((_run_record(run) for run in selected), sys.stdout, args.nonfinite)
        return 0
    columns = list(DEFAULT_RUN_COLUMNS) + (args.columns.split(",") if args.columns else [])
    rows = [[run_value(run, c) for c in columns] for run in selected]
    if args.format == "csv":
        write_csv(rows, columns, sys.stdout)
    else:
        write_table(rows, columns, sys.stdout)
        print(f"{len(selected)} of {len(runs)} runs", file=sys.stderr)
    return 0


def _run_record(run: Any) -> dict[str, Any]:
    return {
        "id": run.id,
        "name": run.name,
        "state": run.state,
        "tags": run.tags,
        "group": run.group,
        "job_type": run.job_type,
        "created_at": run.created_at,
        "heartbeat_at": run.heartbeat_at,
        "config": run.config,
        "summary": dict(run.summary),
    }


def cmd_history(args: argparse.Namespace) -> int:
    from mirror.output import write_csv, write_jsonl, write_parquet
    from mirror.query.api import Api
    from mirror.query.history_args import check_window

    keys = None if args.keys is None else [k.strip() for k in args.keys.split(",") if k.strip()]
    if keys == []:
        raise MirrorError("--keys needs at least one key name, e.g. --keys loss,eval/acc")
    check_window(args.samples, args.min_step, args.max_step, names=_HISTORY_FLAGS)
    engine = _open(args)
    api = Api(database=engine, overrides={"entity": _settings(args).entity})
    run = api.run(args.path)
    rows = run.history(
        samples=args.samples,
        keys=keys,
        pandas=False,
        stream=args.stream,
        min_step=args.min_step,
        max_step=args.max_step,
    )
    if not rows:  # a legitimate answer, but one that usually means a typo: say why
        print(f"wandb-mirror: note: {_no_rows(run, keys, args)}", file=sys.stderr)
    if args.format == "parquet":
        if args.out is None and sys.stdout.isatty():
            raise MirrorError("parquet is binary: give --out FILE or redirect the output")
        with _output(args, binary=True) as out:
            write_parquet(rows, out)
        return 0
    with _output(args, binary=False) as out:
        if args.format == "json":
            write_jsonl(rows, out, args.nonfinite)
        else:
            header = list(dict.fromkeys(k for row in rows for k in row))
            write_csv(([row.get(k) for k in header] for row in rows), header, out)
    return 0


#: the history flags, as argument errors name them
_HISTORY_FLAGS = {
    "keys": "--keys",
    "samples": "--samples",
    "min_step": "--min-step",
    "max_step": "--max-step",
}


def _no_rows(run: Any, keys: list[str] | None, args: argparse.Namespace) -> str:
    """Why a history read found no row, from what the run says it logged."""
    where = "/".join(run.path)
    if args.stream == "system":
        return f"no system-metric rows of {where} in the steps asked for"
    last = run.lastHistoryStep
    if last < 0:
        return f"{where} has no history"
    logged = list((run.history_keys or {}).get("keys") or {})
    if keys and logged and not set(keys) & set(logged):
        more = f" and {len(logged) - 10} more" if len(logged) > 10 else ""
        return f"{where} never logged {', '.join(keys)}; it logged {', '.join(logged[:10])}{more}"
    if args.min_step is not None and args.min_step > last:
        return (
            f"{where} has no step at --min-step {args.min_step} or later: its last step is {last}"
        )
    return f"no rows of {where} match --keys, --min-step and --max-step together"


def _output(args: argparse.Namespace, binary: bool) -> Any:
    """The file named by --out (see ``out_path`` for what it may replace), else standard output."""
    from mirror.output import out_path, replacing

    if args.out is None:
        return nullcontext(sys.stdout.buffer if binary else sys.stdout)
    return replacing(out_path(args.out, args.force, directory=False), binary)


def cmd_export(args: argparse.Namespace) -> int:
    from mirror.exchange import export_project
    from mirror.output import out_path
    from mirror.query.paths import project_path

    entity, project = project_path(args.path, _settings(args).entity)
    out = out_path(args.out, args.force, directory=True)
    summary = export_project(_open(args), entity, project, args.format, out)
    print(summary)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from mirror.exchange import check_source, import_dir

    source = check_source(args.directory)  # before the database: a bad export creates nothing
    print(import_dir(_open_for_writing(args), source))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mirror.serve.server import run_from_args

    settings = _settings(args)
    args.db = _database(args)
    args.host = args.host or settings.serve.host
    args.port = settings.serve.port if args.port is None else args.port
    args.threads = settings.serve.threads if args.threads is None else args.threads
    args.configured_limits = settings.serve.limits
    args.api_key = list(args.api_key or []) + list(settings.serve.api_keys)
    args.backup_dest = settings.backup.dest  # the dashboard's status page shows the backups
    return run_from_args(args) or 0


def cmd_sync(args: argparse.Namespace) -> int:
    """``sync``, ``pull`` and ``push``: one cycle per project; exit 1 unless all of it went."""
    from mirror.progress import BarProgress
    from mirror.sync.cycle import make_client, run_cycle, targets

    settings = _settings(args)
    wanted = targets(settings, args.paths, no_history=getattr(args, "no_history", False))
    client = make_client(settings)
    progress = BarProgress() if sys.stderr.isatty() else None
    lock = _writer_lock(args)

    def open_locked() -> Engine:
        """The daemon, or another sync, may be writing: one writer per mirror."""
        lock.acquire()
        return _open_for_writing(args)

    try:
        outcomes = run_cycle(
            open_locked,
            client,
            settings,
            wanted,
            push=args.command in ("sync", "push"),
            pull=args.command in ("sync", "pull"),
            full=getattr(args, "full", False),
            force_deletions=getattr(args, "force_deletions", False),
            policy=getattr(args, "policy", None),
            progress=progress,
        )
    finally:
        client.close()
        lock.release()
    for outcome in outcomes:
        if outcome.push is not None:
            for problem in outcome.push.problems[:10]:
                print(f"{outcome.target.path}: edit not pushed: {problem}", file=sys.stderr)
            push = outcome.push
            if args.command == "push" or push.error or push.pushed or push.waiting or not push.ok:
                print(push.line())
        report = outcome.pull
        if report is None:
            continue
        for note in report.notes:
            print(f"{report.path}: note: {note}", file=sys.stderr)
        if report.held_back:
            print(f"{report.path}: deletions held back: {report.held_back}", file=sys.stderr)
        for name, reason in list(report.skipped.items())[:10]:
            print(f"{report.path}/{name}: skipped: {reason}", file=sys.stderr)
        print(report.line())
    return 0 if all(outcome.ok for outcome in outcomes) else EXIT_ERROR


def _value(text: str) -> Any:
    """A command-line value: JSON where it parses (numbers, true, null, objects), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    found = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MirrorError(f"{flag} takes KEY=VALUE, not {item!r}")
        found[key] = _value(value)
    return found


def cmd_edit(args: argparse.Namespace) -> int:
    from mirror.query.paths import run_path
    from mirror.store.engine import write_transaction
    from mirror.store.outbox import DELETE, Edit, record_edit
    from mirror.store.read import find_project, find_run

    entity, project, name = run_path(args.path, _settings(args).entity)
    config = _pairs(args.set_config, "--config")
    config.update(dict.fromkeys(args.delete_config or [], DELETE))
    summary = _pairs(args.summary, "--summary")
    summary.update(dict.fromkeys(args.delete_summary or [], DELETE))
    edit = Edit(
        summary=summary,
        config=config,
        add_tags=args.add_tag or [],
        remove_tags=args.remove_tag or [],
        notes=args.notes,
        set_notes=args.notes is not None,
    )
    engine = _open(args)
    with write_transaction(engine) as conn:
        found = find_project(conn, entity, project)
        run = None if found is None else find_run(conn, found["id"], name)
        if run is None:
            raise MirrorError(f"no run {entity}/{project}/{name} in the mirror; sync it first")
        ids = record_edit(conn, run, edit)
    print(
        f"queued edit {', '.join(map(str, ids))} of {entity}/{project}/{name}; "
        "`wandb-mirror push` sends it to W&B"
    )
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    if args.outbox_command == "push":
        args.command = "push"
        return cmd_sync(args)
    from mirror.store.engine import write_transaction
    from mirror.store.outbox import describe, resolve

    engine = _open(args)
    if args.outbox_command == "list":
        with engine.connect() as conn:
            views = describe(conn)
        if not views:
            print("no queued edits")
        for view in views:
            print(
                f"{view.id:>5}  {view.status:<8} {view.path}  {view.target}: {', '.join(view.keys)}"
            )
            if view.status == "conflict":
                for key, value in view.local.items():
                    print(
                        f"         {key}: local {value!r}, W&B {view.remote.get(key, '(absent)')!r}"
                    )
            if view.reason:
                print(f"         {view.reason}")
        return 0
    with write_transaction(engine) as conn:
        print(resolve(conn, args.id, args.take))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from mirror.status import write_status

    write_status(_open(args), _settings(args), sys.stdout)
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from mirror.daemon import run_daemon

    return run_daemon(_database(args), args.config)


def _describe_counts(counts: dict[str, int]) -> str:
    """A snapshot's row counts in words, for ``backup``, ``verify`` and ``restore``."""

    def many(n: int, what: str) -> str:
        return f"{n:,} {what}{'' if n == 1 else 's'}"

    parts = [
        many(counts.get("projects", 0), "project"),
        many(counts.get("runs", 0), "run")
        + (f" (+{counts['runs_deleted']:,} deleted)" if counts.get("runs_deleted") else ""),
        many(counts.get("history_rows", 0), "history row"),
    ]
    edits = sum(n for key, n in counts.items() if key.startswith("outbox_"))
    if edits:
        parts.append(many(edits, "queued edit"))
    return ", ".join(parts)


def _maybe_engine(args: argparse.Namespace) -> Engine | None:
    """The mirror's engine when there is a mirror (a reader: nothing is created)."""
    try:
        return make_engine(_database(args), create=False)
    except MirrorError:
        return None


def cmd_backup(args: argparse.Namespace) -> int:
    """A reader, so no writer lock: it runs while the daemon writes."""
    from mirror.store.backup import backup_dir, prune, take_backup

    settings = _settings(args).backup
    engine = _open(args, check=False)
    dest = backup_dir(engine, args.dest if args.dest is not None else settings.dest)
    if migrate.current_revision(engine) is None:
        raise MirrorError(f"no mirror at {engine.url.database}; nothing to back up")
    taken = take_backup(engine, dest)
    print(
        f"backup {taken.path}: {taken.bytes / 1e6:.1f} MB, {taken.counts.get('runs', 0)} runs, "
        f"{taken.counts.get('history_rows', 0):,} history rows, {taken.seconds:.1f}s"
    )
    keep = [
        settings.keep_last if args.keep_last is None else args.keep_last,
        settings.keep_daily if args.keep_daily is None else args.keep_daily,
        settings.keep_weekly if args.keep_weekly is None else args.keep_weekly,
    ]
    removed = prune(dest, *keep)
    print(
        f"retention (last {keep[0]}, daily {keep[1]}, weekly {keep[2]}): removed "
        f"{len(removed)} old snapshot{'' if len(removed) == 1 else 's'}"
    )
    return 0


def _snapshot_arg(text: str, engine: Engine | None, dest: str) -> Path:
    """A snapshot path, or the bare name of one in the backup directory."""
    from mirror.store.backup import backup_dir

    path = Path(text).expanduser()
    if not path.exists() and path.name == text and engine is not None:
        beside = backup_dir(engine, dest) / text
        if beside.exists():
            return beside
    return path


def cmd_verify(args: argparse.Namespace) -> int:
    from mirror.store.backup import backup_dir, list_snapshots, verify_snapshot

    engine = _maybe_engine(args)
    dest = args.dest if args.dest is not None else _settings(args).backup.dest
    if args.snapshot:
        path = _snapshot_arg(args.snapshot, engine, dest)
    else:
        if engine is None and not dest:
            raise MirrorError(
                f"no mirror at {_database(args) or 'the default path'}; give a SNAPSHOT or --dest"
            )
        where = Path(dest).expanduser() if engine is None else backup_dir(engine, dest)
        found = list_snapshots(where)
        if not found:
            raise MirrorError(f"no snapshots in {where}; take one with `wandb-mirror backup`")
        path = found[0].path
    result = verify_snapshot(path, live_engine=engine)
    if not result.ok:
        for problem in result.problems:
            print(f"{path}: {problem}")
        return EXIT_ERROR
    print(f"{path}: ok, schema {result.revision}, {_describe_counts(result.counts)}")
    for note in result.notes:
        print(f"  {note}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """The old database is kept aside, so a restore asks only on a terminal without --yes."""
    from mirror.store.backup import restore, row_counts

    database = _database(args)
    lock = WriterLock(database, "wandb-mirror restore").acquire()
    try:
        engine = make_engine(database, create=True)
        path = _snapshot_arg(args.snapshot, engine, _settings(args).backup.dest)
        if not args.yes and sys.stdin.isatty() and sys.stdout.isatty():
            answer = input(
                f"replace the mirror at {engine.url.database} with {path}? "
                "(the current database is kept beside it) [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing restored")
                return EXIT_ERROR
        aside = restore(engine, path)
        counts = row_counts(engine)
        engine.dispose()
    finally:
        lock.release()
    print(
        f"restored {path} onto {engine.url.database}: schema {migrate.head_revision()}, "
        f"{_describe_counts(counts)}"
    )
    if aside is not None:
        print(f"the previous database is kept as {aside}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mirror.demo import run_demo

    return run_demo(_database(args), sys.stdout, args.runs, args.steps)


def _add_paths(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "paths", nargs="*", metavar="ENTITY/PROJECT", help="default: the config's [[project]]s"
    )


def _add_policy(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--policy",
        choices=["abort", "local-wins", "remote-wins"],
        help="when a key changed on both sides (default: [push] policy, abort)",
    )


def _add_nonfinite(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--nonfinite",
        choices=[*NONFINITE_CHOICES, "raw"],
        default="string",
        help='NaN and ±Infinity in --format json: "NaN"/"Infinity" strings (default, standard '
        "JSON, as W&B writes them in JSON fields), null, or raw tokens (Python reads them, jq "
        "does not)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand names the function that runs it."""
    parser = Parser(
        prog="wandb-mirror",
        description="A complete, queryable local mirror of Weights & Biases projects.",
    )
    parser.add_argument("--version", action="version", version=f"wandb-mirror {__version__}")
    parser.add_argument("--db", help="database path or SQLAlchemy URL (env WANDB_MIRROR_DB)")
    parser.add_argument("--config", help="TOML config file (env WANDB_MIRROR_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("init", help="create or upgrade the mirror database").set_defaults(fn=cmd_init)

    db = sub.add_parser("db", help="database schema: upgrade, current, check")
    db.add_argument("db_command", choices=["upgrade", "current", "check"])
    db.set_defaults(fn=cmd_db)

    seed = sub.add_parser("seed", help="write a synthetic project (the stand-in for W&B)")
    seed.add_argument("path", metavar="ENTITY/PROJECT")
    seed.add_argument("--runs", type=_count, default=100, help="runs to write (100)")
    seed.add_argument("--steps", type=_count, default=100, help="history steps per run (100)")
    seed.add_argument("--seed", type=_count, default=0, help="the same seed, the same data (0)")
    seed.set_defaults(fn=cmd_seed)

    runs = sub.add_parser("runs", help="list runs matching a MongoDB filter, offline")
    runs.add_argument("path", metavar="ENTITY/PROJECT")
    runs.add_argument("--filter", help='MongoDB filter as JSON, e.g. \'{"state": "finished"}\'')
    runs.add_argument(
        "--order", default="-created_at", help="e.g. --order=-summary_metrics.val_acc"
    )
    runs.add_argument("--limit", type=_count)
    runs.add_argument("--columns", help="extra columns, e.g. config.lr,summary.loss")
    runs.add_argument("--format", choices=["table", "json", "csv"], default="table")
    _add_nonfinite(runs)
    runs.set_defaults(fn=cmd_runs)

    history = sub.add_parser("history", help="a run's history rows, offline")
    history.add_argument("path", metavar="ENTITY/PROJECT/RUN")
    history.add_argument("--keys", help="comma-separated keys; rows holding any of them")
    history.add_argument("--min-step", type=_count)
    history.add_argument("--max-step", type=_count, help="exclusive")
    history.add_argument("--samples", type=_count, help="an even sample keeping first and last")
    history.add_argument("--stream", choices=["default", "system"], default="default")
    history.add_argument("--format", choices=["csv", "json", "parquet"], default="csv")
    _add_nonfinite(history)
    history.add_argument("--out", help="file to write instead of standard output")
    history.add_argument("--force", action="store_true", help="write over an existing --out file")
    history.set_defaults(fn=cmd_history)

    export = sub.add_parser("export", help="write a project to files")
    export.add_argument("path", metavar="ENTITY/PROJECT")
    export.add_argument("--format", choices=["jsonl", "parquet", "csv"], default="jsonl")
    export.add_argument("--out", required=True, metavar="DIR")
    export.add_argument(
        "--force", action="store_true", help="export into a directory that is not empty"
    )
    export.set_defaults(fn=cmd_export)

    imp = sub.add_parser("import", help="read a project exported as jsonl")
    imp.add_argument("directory", metavar="DIR")
    imp.set_defaults(fn=cmd_import)

    serve = sub.add_parser("serve", help="serve the mirror as a W&B-compatible GraphQL endpoint")
    from mirror.serve.arguments import add_arguments

    add_arguments(serve)
    for action in serve._actions:
        if action.dest == "db":  # the top-level --db must survive the subcommand's own
            action.default = argparse.SUPPRESS
        if action.dest in ("host", "port", "threads"):  # unset: the config's [serve] decides
            action.default = None
    serve.set_defaults(fn=cmd_serve)

    helps = {
        "sync": "push queued edits, then pull runs and history from W&B",
        "pull": "pull runs and history from W&B into the mirror",
        "push": "push queued edits to W&B",
    }
    for name, what in helps.items():
        cmd = sub.add_parser(name, help=what)
        _add_paths(cmd)
        if name != "pull":
            _add_policy(cmd)
        if name == "push":
            cmd.set_defaults(fn=cmd_sync)
            continue
        cmd.add_argument(
            "--full", action="store_true", help="reconcile every run, not just moved ones"
        )
        cmd.add_argument("--no-history", action="store_true", help="runs only, no history rows")
        cmd.add_argument(
            "--force-deletions",
            action="store_true",
            help="tombstone missing runs even when the mass-deletion guard would refuse",
        )
        cmd.set_defaults(fn=cmd_sync)

    edit = sub.add_parser("edit", help="queue an edit of a run's summary, config, tags or notes")
    edit.add_argument("path", metavar="ENTITY/PROJECT/RUN")
    edit.add_argument("--summary", action="append", metavar="KEY=VALUE", help="JSON or text")
    edit.add_argument("--delete-summary", action="append", metavar="KEY")
    edit.add_argument(
        "--config", action="append", dest="set_config", metavar="KEY=VALUE", help="JSON or text"
    )
    edit.add_argument("--delete-config", action="append", metavar="KEY", help=argparse.SUPPRESS)
    edit.add_argument("--add-tag", action="append", metavar="TAG")
    edit.add_argument("--remove-tag", action="append", metavar="TAG")
    edit.add_argument("--notes", metavar="TEXT")
    edit.set_defaults(fn=cmd_edit)

    box = sub.add_parser("outbox", help="queued edits: list, push, resolve a conflict")
    box_sub = box.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    box_sub.add_parser("list", help="open edits: pending, waiting, conflict, failed")
    box_push = box_sub.add_parser("push", help="push queued edits to W&B")
    _add_paths(box_push)
    _add_policy(box_push)
    resolve = box_sub.add_parser("resolve", help="settle an open edit")
    resolve.add_argument("id", type=int, metavar="ID")
    resolve.add_argument("--take", choices=["local", "remote", "discard"], required=True)
    box.set_defaults(fn=cmd_outbox)

    status = sub.add_parser(
        "status", help="the daemon, last sync and failure per project, edits, backups"
    )
    status.set_defaults(fn=cmd_status)

    daemon = sub.add_parser(
        "daemon", help="keep the mirror current: scheduled pulls, pushes and backups"
    )
    daemon.set_defaults(fn=cmd_daemon)

    backup = sub.add_parser(
        "backup", help="take a consistent snapshot (safe while the daemon writes), then prune"
    )
    backup.add_argument("--dest", metavar="DIR", help="default: [backup] dest, else backups/")
    backup.add_argument("--keep-last", type=_count, metavar="N", help="default: [backup]")
    backup.add_argument("--keep-daily", type=_count, metavar="N", help="default: [backup]")
    backup.add_argument("--keep-weekly", type=_count, metavar="N", help="default: [backup]")
    backup.set_defaults(fn=cmd_backup)

    verify = sub.add_parser("verify", help="check a snapshot (default: the newest) and its counts")
    verify.add_argument("snapshot", nargs="?", metavar="SNAPSHOT")
    verify.add_argument("--dest", metavar="DIR", help="the backup directory to take the newest of")
    verify.set_defaults(fn=cmd_verify)

    restore = sub.add_parser(
        "restore", help="replace the mirror with a snapshot, keeping the current one aside"
    )
    restore.add_argument("snapshot", metavar="SNAPSHOT", help="a path, or a name in the backups")
    restore.add_argument("--yes", action="store_true", help="do not ask, even on a terminal")
    restore.set_defaults(fn=cmd_restore)

    demo = sub.add_parser("demo", help="seed a synthetic project and query it offline")
    demo.add_argument("--runs", type=_count, default=300, help="runs in the upstream (300)")
    demo.add_argument("--steps", type=_count, default=500, help="history steps per run (500)")
    demo.set_defaults(fn=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_driver_warnings()
    try:
        return int(args.fn(args) or 0)
    except MirrorError as exc:
        print(f"wandb-mirror: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except SQLAlchemyError as exc:
        reason = database_reason(exc)
        print(f"wandb-mirror: database error in {_shown_database(args)}: {reason}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return 0
    except OSError as exc:
        print(
            f"wandb-mirror: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("wandb-mirror: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
