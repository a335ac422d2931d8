"""What every `kc-tasks` command shares: its context (the settings, the database engines, the
Celery app), the exit codes and the duration argument."""

from __future__ import annotations

import argparse
import sys
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from kc_tasks.core.settings import Settings
from kc_tasks.store import db

if TYPE_CHECKING:
    from celery import Celery

EXIT_FAILED = 1
EXIT_UNREACHABLE = 2


class Context:
    """Set up once by `main` for the command it runs. Each engine is made the first time a
    command asks for it (NullPool: a command holds no connection it is not using) and disposed
    when the command ends; the Celery app is imported only by a command that uses it, so that
    `kc-tasks token` or `kc-tasks dev` never loads the worker's configuration."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engines: dict[URL, Engine] = {}

    @property
    def engine(self) -> Engine:
        """The engine of DATABASE_URL: the tables' reads and writes."""
        return self._engine(self.settings.database_url)

    @property
    def session_engine(self) -> Engine:
        """The engine of KC_DIRECT_DATABASE_URL, if DATABASE_URL is a pooler's: session-level work
        (advisory locks, CREATE INDEX CONCURRENTLY)."""
        return self._engine(self.settings.session_database_url)

    @cached_property
    def app(self) -> Celery:
        from kc_tasks.celery import app

        return app

    def _engine(self, url: URL) -> Engine:
        if url not in self._engines:
            self._engines[url] = db.make_engine(url, poolclass=NullPool)
        return self._engines[url]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    def __enter__(self) -> Context:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def complain(message: str, exit_code: int = EXIT_FAILED) -> int:
    """`kc-tasks: message` on stderr; the exit code to return."""
    print(f"kc-tasks: {message}", file=sys.stderr)
    return exit_code


def duration(text: str) -> float:
    """An argument such as 90s, 30m, 12h or 7d, in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m, 12h or 7d")
    return float(number) * units[unit]
