"""What each worker process owns: its database engine and index guard, made after the fork,
and the start-up hooks that prepare them (Celery's worker_init / worker_process_init /
worker_ready signals)."""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
from typing import Any

from celery.concurrency import get_implementation
from celery.signals import task_received, worker_init, worker_process_init, worker_ready
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from kc_tasks.celery import app, settings
from kc_tasks.core import metrics, names
from kc_tasks.core.errors import DatabaseUnavailable, KcTasksError
from kc_tasks.payments import inbox
from kc_tasks.providers import registry
from kc_tasks.store import db, events
from kc_tasks.store.index_guard import FIX_COMMAND, IndexGuard
from kc_tasks.worker import seam
from kc_tasks.worker.outage import gate

logger = logging.getLogger(__name__)

_process: dict[int, tuple[Engine, IndexGuard]] = {}
_process_lock = threading.Lock()
# Tasks that run at the same time in one process: one in a prefork or solo pool, the
# concurrency in a threads pool.
_tasks_per_process = 1


@worker_init.connect
def _count_tasks_per_process(sender: Any = None, **_: Any) -> None:
    global _tasks_per_process
    if get_implementation(sender.pool_cls).__module__ == "celery.concurrency.thread":  # -P threads
        concurrency = sender.concurrency
        _tasks_per_process = concurrency if isinstance(concurrency, int) and concurrency > 0 else os.cpu_count() or 1


def resources() -> tuple[Engine, IndexGuard]:
    """This process's engine and index guard, made after the fork, never inherited."""
    pid = os.getpid()
    if pid in _process:
        return _process[pid]
    with _process_lock:  # a threads pool's first tasks arrive together
        if pid not in _process:
            for engine, _ in _process.values():
                engine.dispose(close=False)  # the parent's connections are not ours to use or close
            _process.clear()
            # A connection per task running at once and one for the event publisher, kept; one
            # more per task for the index check it makes, holding its own, if the index broke.
            tasks = _tasks_per_process
            engine = db.make_engine(settings.database_url, pool_size=tasks + 1, max_overflow=tasks)
            _process[pid] = (engine, IndexGuard(settings.index_check_ttl))
        return _process[pid]


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """With KC_WORKER_METRICS_PORT set, the worker's metrics (kc_tasks/core/metrics.py): kept by every
    pool process, served by this one. Before the pool forks."""
    if settings.worker_metrics_port:
        periods = {
            entry["task"]: float(entry["schedule"])
            for entry in app.conf.beat_schedule.values()
            if entry["task"] != names.QUEUE_HEARTBEAT  # never run: kc_queue_heartbeat_timestamp_seconds
        }
        metrics.start_worker(
            settings.worker_metrics_port,
            settings.metrics_address,
            lambda: db.writable(db.probe_engine(settings.database_url)),
            _index_usable,
            gate.consuming,
            periods,
            registry.METRIC_LABELS,
        )
        # When a task sent directly was first seen, for kc_payment_to_access_seconds.
        task_received.connect(seam.stamp_arrival, weak=False, dispatch_uid="kc_stamp_arrival")


@functools.cache
def _index_engine() -> Engine:
    """The main process's engine for the index check: NullPool keeps no connection open across
    the pool's forks."""
    return db.make_engine(settings.database_url, poolclass=NullPool)


def _index_usable() -> float:
    """kc_index_usable, checked at each scrape by the main process."""
    return 1.0 if IndexGuard(0).refresh(_index_engine()).usable else 0.0


@worker_process_init.connect
def _seed_index_cache(**_: Any) -> None:
    engine, guard = resources()
    try:
        status = guard.refresh(engine)
    except KcTasksError as exc:
        logger.debug("worker process %d: index check failed: %s", os.getpid(), exc)
        return
    logger.debug("worker process %d: %s", os.getpid(), status.describe())


@worker_init.connect
@worker_process_init.connect
@worker_ready.connect
def _freeze_start_up_objects(**_: Any) -> None:
    """Moves what start-up made (modules, Celery's and SQLAlchemy's objects) out of the
    garbage collector's sight: they live as long as the process. A full collection then
    looks at what tasks made only; over all of it, it stalled the consumer for 30-80 ms,
    every purchase received meanwhile waiting. Before the fork, it also keeps the pool
    processes from touching, hence copying, the pages they share with the main process."""
    gc.freeze()


@worker_ready.connect
def _report_index(**_: Any) -> None:
    """One start-up line for the operator: is unique_active_purchase usable?"""
    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        status = IndexGuard(0).refresh(engine)
    except KcTasksError as exc:
        logger.warning(
            "cannot check the unique_active_purchase index: PostgreSQL at %s: %s",
            db.server_in_use(settings.database_url),
            exc,
        )
        if isinstance(exc, DatabaseUnavailable):
            gate.close(exc)  # nothing is taken from the queue until PostgreSQL takes writes
        return
    finally:
        engine.dispose()
    if status.usable:
        logger.info("%s", status.describe())
    else:
        logger.warning("%s - will use fallback method; fix: %s", status.describe(), FIX_COMMAND)


def sweep_leftovers(engine: Engine) -> None:
    """Publish the purchase events left unpublished, and enqueue the provider events left
    received (broker down, process killed): what kc_tasks.relay_events and relay_inbox do.
    Skipped while the worker waits out a database outage; one met here starts the wait."""
    if gate.closed:
        return
    try:
        events.publish_pending(engine, app)
        inbox.enqueue_received(engine, app)
    except DatabaseUnavailable as exc:
        gate.close(exc)
        raise


@worker_ready.connect
def _start_sweeping(**_: Any) -> None:
    """The worker's main process sweeps leftovers every KC_EVENT_RELAY_INTERVAL seconds from its
    event publisher's thread: a relay that shows in no task list. Beat's relay tasks, at a long
    interval, remain the safety net (celeryconfig.py)."""
    engine = resources()[0]
    events.publisher(engine, app, lambda: sweep_leftovers(engine), float(settings.event_relay_interval))
