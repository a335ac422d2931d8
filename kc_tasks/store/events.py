"""Purchase events: written to the outbox in the transaction of the row they describe,
published to the `kc.events` topic exchange within moments of the commit by a publisher
thread of the worker process, and relayed later when that failed. At least once: consumers
dedupe by the event id."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from celery import Celery
from kombu import Exchange, Producer
from sqlalchemy.engine import Connection, Engine

from kc_tasks.core import names
from kc_tasks.core.confirms import ConfirmedChannel, Kept
from kc_tasks.store import db

logger = logging.getLogger(__name__)

EXCHANGE = Exchange(names.EVENTS_EXCHANGE, type="topic", durable=True)
# The publish_pending leaves younger events to the task that wrote them, which publishes at once.
RELAY_GRACE_SECONDS = 10
RELAY_BATCH = 500
# How long a process's publisher gathers events into one batch, seconds.
PUBLISH_DELAY = 0.05
# How long published events wait to be marked published together, seconds: one UPDATE for
# many batches. Well under RELAY_GRACE_SECONDS, so the relay never sends them again.
MARK_DELAY = 1.0
# Published events are kept this long, for inspection, then pruned. Unpublished: never.
PRUNE_AFTER_HOURS = 24
# Connecting to the broker for events: a few quick tries, then the outbox keeps them.
_CONNECT_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}

_outbox = db.event_outbox


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    occurred_at: datetime
    data: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "occurred_at": self.occurred_at.isoformat(), "data": self.data}


def from_rows(rows: Iterable[Any]) -> tuple[Event, ...]:
    return tuple(Event(str(r.id), r.type, r.occurred_at, r.data) for r in rows)


class EventChannel(ConfirmedChannel):
    """A confirmed channel (kc_tasks.core.confirms) publishing to kc.events."""

    connect_retry = _CONNECT_RETRY

    def producer_for(self, channel: Any) -> Producer:
        EXCHANGE(channel).declare()
        return Producer(channel, exchange=EXCHANGE, auto_declare=False)

    def publish(self, events: Sequence[Event]) -> None:
        """Returns once the broker holds every event; raises if it refused or did not answer."""
        for event in events:
            self.producer.publish(
                event.body(),
                routing_key=event.type,
                serializer="json",
                delivery_mode=2,
                message_id=event.id,
            )
        self.confirm(len(events))


def mark_published(conn: Connection, ids: Sequence[str]) -> None:
    conn.execute(sa.update(_outbox).where(_outbox.c.id.in_(ids)).values(published_at=sa.func.now()))


class Publisher:
    """One per process: publishes committed events soon after commit (within PUBLISH_DELAY),
    in batches, from a thread of its own, and marks what it published in one statement per
    MARK_DELAY. The task that committed them does not wait for the broker. Whatever this does
    not get to publish (broker down, process killed) stays in the outbox for the relay.

    Given a `sweep`, the thread also calls it every `sweep_interval` seconds: the worker's
    main process sweeps what was left behind (kc_tasks.worker.process.sweep_leftovers), so the
    relay needs no frequent beat task."""

    def __init__(
        self,
        engine: Engine,
        app: Celery,
        sweep: Callable[[], object] | None = None,
        sweep_interval: float = 10.0,
    ) -> None:
        self.engine, self.app = engine, app
        self.sweep, self.sweep_interval = sweep, sweep_interval
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        # Published, not yet marked published (the publisher's thread alone touches these).
        self._unmarked: list[str] = []
        self._mark_due: float | None = None
        self._channel = Kept(lambda: EventChannel(app))
        self._thread = threading.Thread(target=self._run, name="kc-events", daemon=True)
        self._thread.start()

    def submit(self, events: Sequence[Event]) -> None:
        for event in events:
            self._queue.put(event)

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.sweep_interval if self.sweep is not None else None
        while True:
            if next_sweep is not None and time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + self.sweep_interval
            due = [t for t in (next_sweep, self._mark_due) if t is not None]
            try:
                batch = [self._queue.get(timeout=max(0.0, min(due) - time.monotonic()) if due else None)]
            except queue.Empty:
                self._mark(force=False)
                continue
            deadline = time.monotonic() + PUBLISH_DELAY
            while len(batch) < RELAY_BATCH and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            self._publish(batch)
            self._mark(force=len(self._unmarked) >= RELAY_BATCH)

    def _publish(self, batch: list[Event]) -> None:
        try:
            self._channel.send(lambda channel: channel.publish(batch))
        except Exception as exc:  # noqa: BLE001  (any failure: the outbox keeps them for the relay)
            logger.warning("%d event(s) left for the relay: %s: %s", len(batch), type(exc).__name__, exc)
            return
        self._unmarked.extend(e.id for e in batch)
        if self._mark_due is None:
            self._mark_due = time.monotonic() + MARK_DELAY

    def _mark(self, force: bool) -> None:
        """Mark what was published since the last mark, in one autocommit statement (no BEGIN
        or COMMIT round trips), once MARK_DELAY has passed. If it fails, the events stay
        unmarked: the relay sends them again (at least once; consumers dedupe by id)."""
        if not self._unmarked or not (force or time.monotonic() >= (self._mark_due or 0)):
            return
        ids, self._unmarked, self._mark_due = self._unmarked, [], None
        try:
            with db.autocommit(self.engine) as conn:
                mark_published(conn, ids)
        except Exception as exc:  # noqa: BLE001
            logger.warning("%d published event(s) not marked, the relay may send them again: %s", len(ids), exc)

    def _sweep(self) -> None:
        try:
            self.sweep()  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001  (broker or database away: the next sweep tries again)
            logger.warning(
                "sweeping leftovers failed, next try in %.0f s: %s: %s", self.sweep_interval, type(exc).__name__, exc
            )


_publishers: dict[int, Publisher] = {}
_publishers_lock = threading.Lock()


def publisher(
    engine: Engine, app: Celery, sweep: Callable[[], object] | None = None, sweep_interval: float = 10.0
) -> Publisher:
    """This process's publisher, started on first use (after the fork, never inherited); the
    sweep, if any, is the first caller's."""
    pid = os.getpid()
    if pid in _publishers:
        return _publishers[pid]
    with _publishers_lock:  # one per process, also when a threads pool's tasks ask at once
        if pid not in _publishers:
            _publishers.clear()
            _publishers[pid] = Publisher(engine, app, sweep, sweep_interval)
        return _publishers[pid]


def publish_pending(engine: Engine, app: Celery) -> int:
    """Publish every event left unpublished past the grace period; the number published."""
    published = 0
    channel: EventChannel | None = None
    try:
        while True:
            with db.translate_errors(engine.url), engine.begin() as conn:
                rows = conn.execute(
                    sa.select(_outbox.c.id, _outbox.c.type, _outbox.c.occurred_at, _outbox.c.data)
                    .where(
                        _outbox.c.published_at.is_(None),
                        _outbox.c.occurred_at < sa.func.now() - sa.text(f"interval '{RELAY_GRACE_SECONDS} seconds'"),
                    )
                    .order_by(_outbox.c.occurred_at)
                    .limit(RELAY_BATCH)
                    .with_for_update(skip_locked=True)
                ).all()
                if not rows:
                    return published
                events = from_rows(rows)
                channel = channel or EventChannel(app)
                channel.publish(events)
                mark_published(conn, [e.id for e in events])
            published += len(events)
            logger.info("relayed %d events left unpublished", len(events))
    finally:
        if channel is not None:
            channel.close()


def prune(engine: Engine) -> int:
    """Delete events published more than PRUNE_AFTER_HOURS ago; never an unpublished one."""
    with db.translate_errors(engine.url), engine.begin() as conn:
        return conn.execute(
            sa.delete(_outbox).where(
                _outbox.c.published_at.is_not(None),
                _outbox.c.published_at < sa.func.now() - sa.text(f"interval '{PRUNE_AFTER_HOURS} hours'"),
            )
        ).rowcount
