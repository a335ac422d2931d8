"""GET /readyz: are PostgreSQL and the broker reachable? `ok` or `unreachable`, nothing more.

The caller may be anyone: the answer names no host, port, user or error; the log does. It is
computed at most once every CACHE_SECONDS, by one thread at a time, on a connection of the
broker pool the webhook already uses: a flood of probes opens no connection of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks.core.errors import KcTasksError
from kc_tasks.store import db

logger = logging.getLogger(__name__)

CACHE_SECONDS = 3.0
OK = "ok"
UNREACHABLE = "unreachable"


class Readiness:
    def __init__(self, engine: Engine, app: Celery, cache_seconds: float = CACHE_SECONDS) -> None:
        self._engine = engine
        self._app = app
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._answer: dict[str, Any] | None = None
        self._checked_at = 0.0

    def answer(self) -> dict[str, Any]:
        """{"ready": bool, "database": "ok"|"unreachable", "broker": "ok"|"unreachable"}."""
        with self._lock:
            if self._answer is None or time.monotonic() - self._checked_at >= self._cache_seconds:
                checks = {"database": self._database(), "broker": self._broker()}
                self._answer = {"ready": all(v == OK for v in checks.values()), **checks}
                self._checked_at = time.monotonic()
            return dict(self._answer)

    def _database(self) -> str:
        try:
            with db.translate_errors(self._engine.url), self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except KcTasksError as exc:
            logger.warning("readiness: PostgreSQL unreachable: %s", exc)
            return UNREACHABLE
        return OK

    def _broker(self) -> str:
        """A round trip on a pooled connection; a connection that failed is closed, not reused."""
        try:
            with self._app.pool.acquire(block=True, timeout=3) as conn:
                try:
                    conn.ensure_connection(max_retries=1, timeout=3)
                    _round_trip(conn)
                except Exception:
                    conn.close()  # the pool connects it afresh when next acquired
                    raise
        except Exception as exc:  # noqa: BLE001  (any transport failure means "not ready")
            logger.warning("readiness: broker unreachable: %s: %s", type(exc).__name__, exc)
            return UNREACHABLE
        return OK


def _round_trip(conn: Any) -> None:
    """Ask the broker something, so that a connection it dropped is noticed."""
    kind = conn.transport.driver_type
    channel = conn.default_channel
    if kind == "amqp":
        channel.exchange_declare(exchange="amq.direct", type="direct", passive=True)
    elif kind == "redis":
        channel.client.ping()
