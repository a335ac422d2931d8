"""The `kc-tasks` command: migrate, ensure-index, enqueue."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.pool import NullPool

from kc_tasks import db, logs
from kc_tasks.errors import ConfigError, DatabaseUnavailable, InvalidPurchase, KcTasksError
from kc_tasks.settings import Settings, describe_database, redact_url

logger = logging.getLogger("kc_tasks.cli")

EXIT_FAILED = 1
EXIT_UNREACHABLE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        return int(args.run(settings, args))
    except ConfigError as exc:
        print(f"kc-tasks: configuration error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DatabaseUnavailable as exc:
        where = describe_database(Settings.from_env().database_url)
        print(
            f"kc-tasks: cannot reach PostgreSQL at {where}: {exc}. Check that the server is running and that "
            "DATABASE_URL (or POSTGRES_URL / POSTGRES_HOST...) points at it.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except BrokerError as exc:
        print(
            f"kc-tasks: cannot reach the broker at {redact_url(Settings.from_env().broker_url)}: {exc}. "
            "Check that RabbitMQ (or Redis) is running and that CELERY_BROKER_URL points at it.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except KcTasksError as exc:
        print(f"kc-tasks: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kc-tasks", description="kc_tasks operations")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="create the database if absent and apply pending migrations")
    p.set_defaults(run=_migrate)

    p = sub.add_parser("ensure-index", help="report whether unique_active_purchase is usable, and make it so")
    p.add_argument("--check", action="store_true", help="only report; change nothing")
    p.set_defaults(run=_ensure_index)

    p = sub.add_parser("enqueue", help="send one create_purchase, as the payment service does")
    p.add_argument("--student", required=True, help="student UUID")
    p.add_argument("--course", required=True, help="course UUID")
    p.add_argument("--payment", required=True, help="the payment provider's id")
    p.add_argument("--amount", required=True, type=int, help="amount in cents")
    p.add_argument("--currency", required=True, help="ISO 4217 code, e.g. INR")
    p.set_defaults(run=_enqueue)
    return parser


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.migrate import migrate

    applied = migrate(settings.database_url)
    where = describe_database(settings.database_url)
    if applied:
        print(f"applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        print(f"{where} is up to date")
    return 0


def _ensure_index(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.index_guard import FIX_COMMAND, diagnose, ensure_index

    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        with db.translate_errors(settings.database_url), engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if args.check:
                status = diagnose(conn)
            else:
                before = diagnose(conn)
                if not before.usable:
                    print(f"{before.describe()} - repairing")
                status, deactivated = ensure_index(conn)
                if deactivated:
                    print(f"deactivated {deactivated} duplicate active purchase(s); the oldest of each stays active")
                if status.usable and not before.usable:
                    print("index created successfully")
    finally:
        engine.dispose()
    if status.usable:
        print(status.describe())
        return 0
    hint = f"; fix: {FIX_COMMAND}" if args.check else ""
    print(f"{status.describe()}{hint}")
    return EXIT_FAILED


def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.payload import parse_purchase

    kwargs = {
        "payment_id": args.payment,
        "student_id": args.student,
        "course_id": args.course,
        "amount_cents": args.amount,
        "currency": args.currency,
    }
    try:
        parse_purchase(kwargs)
    except InvalidPurchase as exc:
        print(f"kc-tasks: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from kc_tasks.celery import app

    result = app.send_task(
        "kc_tasks.create_purchase",
        kwargs=kwargs,
        queue="purchases",
        retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 1},
    )
    print(result.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
