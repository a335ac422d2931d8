"""`kc-tasks migrate` and `kc-tasks ensure-index`: the schema and the index that keeps one active
purchase per student and course. Both do session-level work, on KC_DIRECT_DATABASE_URL if
DATABASE_URL is a pooler's."""

from __future__ import annotations

import argparse

from kc_tasks.ops.cli.common import EXIT_FAILED, Context
from kc_tasks.store import db


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("migrate", help="create the database if absent and apply pending migrations")
    p.set_defaults(run=migrate)

    p = sub.add_parser("ensure-index", help="report whether unique_active_purchase is usable, and make it so")
    p.add_argument("--check", action="store_true", help="only report; change nothing")
    p.set_defaults(run=ensure_index)


def migrate(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.store.migrate import migrate as apply_migrations

    url = ctx.settings.session_database_url  # it creates the database if absent: its own connections
    applied = apply_migrations(url)
    where = db.server_in_use(url)
    if applied:
        print(f"applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        print(f"{where} is up to date")
    return 0


def ensure_index(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.store.index_guard import FIX_COMMAND, diagnose
    from kc_tasks.store.index_guard import ensure_index as repair

    with db.autocommit(ctx.session_engine) as conn:
        if args.check:
            status = diagnose(conn)
        else:
            before = diagnose(conn)
            if not before.usable:
                print(f"{before.describe()} - repairing")
            status, deactivated = repair(conn)
            if deactivated:
                print(f"deactivated {deactivated} duplicate active purchase(s); the oldest of each stays active")
            if status.usable and not before.usable:
                print("index created successfully")
    if status.usable:
        print(status.describe())
        return 0
    hint = f"; fix: {FIX_COMMAND}" if args.check else ""
    print(f"{status.describe()}{hint}")
    return EXIT_FAILED
