"""The `kc-tasks` command: migrate, ensure-index, enqueue, revoke, inbox, reconcile, payment, dev,
token, dlq.

One module per group of commands, each adding its own parsers (`add_parsers`) and holding their
functions, which take the shared `Context` (common.py) and the parsed arguments and return the
exit code. `main` sets the context up once, and turns the errors every command may meet
(configuration, an unreachable database or broker) into one line and an exit code.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from kombu.exceptions import OperationalError as BrokerError

from kc_tasks.core import logs
from kc_tasks.core.errors import ConfigError, DatabaseUnavailable, KcTasksError
from kc_tasks.core.settings import Settings, redact_url
from kc_tasks.ops.cli import database, development, dlq, enqueue, payment, payment_events, reconciliation
from kc_tasks.ops.cli.common import EXIT_FAILED, EXIT_UNREACHABLE, Context, complain
from kc_tasks.store import db

# In the order `kc-tasks --help` lists them.
GROUPS = (database, enqueue, payment_events, reconciliation, payment, development, dlq)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        with Context(settings) as ctx:
            return int(args.run(ctx, args))
    except ConfigError as exc:
        return complain(f"configuration error: {exc}")
    except DatabaseUnavailable as exc:
        return complain(
            f"cannot reach PostgreSQL at {db.server_in_use(settings.database_url)}: {exc}. Check that the server "
            "is running and that DATABASE_URL (or POSTGRES_URL / POSTGRES_HOST...) points at it.",
            EXIT_UNREACHABLE,
        )
    except BrokerError as exc:
        return complain(
            f"cannot reach the broker at {redact_url(settings.broker_url)}: {exc}. "
            "Check that RabbitMQ (or Redis) is running and that CELERY_BROKER_URL points at it.",
            EXIT_UNREACHABLE,
        )
    except KcTasksError as exc:
        return complain(str(exc))


def parser() -> argparse.ArgumentParser:
    """The command line of every command: docs/reference.md lists them (tests/unit/test_reference.py)."""
    found = argparse.ArgumentParser(prog="kc-tasks", description="kc_tasks operations")
    sub = found.add_subparsers(required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return found


__all__ = ["EXIT_FAILED", "EXIT_UNREACHABLE", "main", "parser"]
