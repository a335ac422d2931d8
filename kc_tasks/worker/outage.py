"""Waiting out a database outage: while PostgreSQL cannot take writes, a worker takes no purchase
or refund from the queue.

- A task whose work meets DatabaseUnavailable twice in a row (kc_tasks.worker.tasks) raises
  DatabaseOutage: a Reject that gives its message back to the broker.
- In the worker's main process, that closes the `gate` (kc_tasks.worker.consumer.KcRequest; the worker's
  own sweep and its start-up check close it too, kc_tasks.worker.process): the worker stops consuming
  `purchases` (Consumer.cancel_task_queue, what `celery control cancel_consumer` does), gives
  back every message it holds and has not started, and probes PostgreSQL from a thread every
  PROBE_INTERVAL seconds. The first probe whose write succeeds opens the gate again
  (Consumer.add_task_queue).

Meanwhile the messages wait in the broker, durable, and none in the worker: an outage, however
long, spends no retry and makes no dead letter. A failover is such an outage: the standby
answers read-only (SQLSTATE 25006) until it is promoted, and a multi-host DATABASE_URL with
`target_session_attrs=read-write` finds the new primary at the next connection.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.exceptions import Reject
from celery.worker import state

from kc_tasks.celery import settings
from kc_tasks.core.names import PURCHASES
from kc_tasks.store import db

logger = logging.getLogger(__name__)

# How often a closed gate asks PostgreSQL whether it takes writes again, seconds.
PROBE_INTERVAL = 1.0


class DatabaseOutage(Reject):
    """Raised by a task when PostgreSQL cannot take its write: its message goes back to the
    broker, and the worker stops taking more until PostgreSQL can (Gate)."""

    def __init__(self, reason: Any = None, requeue: bool = True) -> None:
        super().__init__(reason, requeue=True)


class _OneLine(logging.Filter):
    """Celery's tracer logs a rejected task at WARNING with its traceback: during an outage, one
    per message held. A message given back to the broker is not a failure: one INFO line each,
    the gate's own WARNING saying why."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DatabaseOutage):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


logging.getLogger("celery.app.trace").addFilter(_OneLine())


class Gate:
    """One per worker: open while the worker consumes `purchases`, closed during an outage.
    `close` may be called from any thread; the consumer is only touched from its own loop."""

    def __init__(self, probe_interval: float = PROBE_INTERVAL) -> None:
        self.probe_interval = probe_interval
        self.consumer: Any = None
        self._closed_since: float | None = None
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed_since is not None

    def consuming(self) -> bool:
        """Whether this worker takes tasks from `purchases` now: its gate open, and its broker
        connection up and consuming the queue."""
        consumer = self.consumer
        if consumer is None or self.closed or consumer.task_consumer is None:
            return False
        return bool(consumer.task_consumer.consuming_from(PURCHASES))

    def attach(self, consumer: Any) -> None:
        """The worker's consumer (kc_tasks.worker.consumer.Consumer): only its process has a gate to close."""
        self.consumer = consumer

    def close(self, why: object) -> None:
        """Stop taking tasks until PostgreSQL takes writes again. Nothing happens in a process
        that consumes nothing (a pool process, beat, the web), or when already closed."""
        consumer = self.consumer
        if consumer is None:
            return
        with self._lock:
            if self._closed_since is not None:
                return
            self._closed_since = time.monotonic()
        logger.warning(
            "PostgreSQL at %s cannot take writes (%s): this worker takes no task from %s until it can; "
            "they wait in the broker",
            db.server_in_use(settings.database_url),
            why,
            PURCHASES,
        )
        # From the consumer's own thread (a failed task's report), at once, so that the message
        # given back next is not delivered here again; from another, at its next turn.
        if threading.current_thread() is threading.main_thread():
            self._pause()
        else:
            consumer.call_soon(self._pause)
        threading.Thread(target=self._wait_for_writes, name="kc-outage", daemon=True).start()

    def _pause(self) -> None:
        if not self.closed:
            return
        queues = self.consumer.app.amqp.queues
        if self.consumer.task_consumer is None:  # between connections: the next one leaves it out
            queues.deselect(PURCHASES)
        else:
            self.consumer.cancel_task_queue(PURCHASES)
        given = give_back_waiting()
        if given:
            logger.info("gave %d waiting message(s) back to %s", given, PURCHASES)

    def _wait_for_writes(self) -> None:
        while True:
            time.sleep(self.probe_interval)
            why = db.writable(db.probe_engine(settings.database_url))
            if why is None:
                self.consumer.call_soon(self._resume)
                return
            logger.debug("PostgreSQL still cannot take writes: %s", why)

    def _resume(self) -> None:
        with self._lock:
            if self._closed_since is None:
                return
            lasted, self._closed_since = time.monotonic() - self._closed_since, None
        queues = self.consumer.app.amqp.queues
        if self.consumer.task_consumer is None:
            queues.select_add(queues[PURCHASES])
        else:
            self.consumer.add_task_queue(PURCHASES)
        logger.warning(
            "PostgreSQL at %s takes writes again after %.0f s: consuming %s again",
            db.server_in_use(settings.database_url),
            lasted,
            PURCHASES,
        )


def give_back_waiting() -> int:
    """Give every request this worker holds and has not started (waiting for a pool process, or
    for its retry's countdown) back to the broker; how many. kc_tasks.worker.consumer.KcRequest gives
    itself back and never runs here afterwards."""
    waiting = [r for r in (*state.reserved_requests, *state.scheduled_requests) if r not in state.active_requests]
    given = 0
    for request in waiting:
        give_back = getattr(request, "give_back", None)
        if give_back is not None and not request.acknowledged:
            give_back()
            given += 1
    return given


# The worker's gate (its main process attaches the consumer).
gate = Gate()
