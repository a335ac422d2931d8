"""The web process's way into the inbox: the events of concurrent requests are stored and
enqueued together, a batch at a time, by a few writer threads of the process
(`inbox.store_and_enqueue`: one INSERT, then one wait for the broker's confirms, whatever
the batch's size), and marked `enqueued` later, many batches in one UPDATE.

A request hands its verified event over and awaits its receipt: the event loop never
blocks on PostgreSQL or the broker, and no request takes a thread-pool thread of its own.
Nothing waits to fill a batch: a writer takes what arrived while it wrote the previous
one, so a lone request is written at once, and under load the batches grow. The answer
comes once the event is stored and its task confirmed; the mark is bookkeeping for the
relay, which enqueues again (the same task id) what a lost mark leaves `received`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks.core.confirms import Kept
from kc_tasks.core.errors import RetryableError
from kc_tasks.payments import inbox
from kc_tasks.providers import ProviderEvent
from kc_tasks.store import db
from kc_tasks.web.handoff import hand_over

logger = logging.getLogger(__name__)

# The most events one INSERT stores.
MAX_BATCH = 100
# Writer threads per process: while one waits for PostgreSQL or the broker, another writes
# the next batch.
WRITERS = 2
# How often the enqueued events are marked so, seconds: far inside the relay's grace period.
MARK_INTERVAL = 0.1
# How long closing waits for the batch being written, seconds.
CLOSE_TIMEOUT = 15


@dataclass(frozen=True)
class _Arrival:
    event: ProviderEvent
    body: bytes
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[inbox.Receipt]
    # The request's body byte for byte (a webhook), or a provider's API object (a confirm).
    raw: bool = True
    # When the request arrived (time.monotonic()), if it waited before it was handed over.
    arrived: float | None = None


class Intake:
    """One per web process. `receive` is `inbox.receive`, awaited: the receipt, or the
    KcTasksError that says PostgreSQL failed (nothing was stored)."""

    def __init__(self, engine: Engine, app: Celery) -> None:
        self.engine, self.app = engine, app
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.SimpleQueue[_Arrival | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._marker: _Marker | None = None

    async def receive(
        self, event: ProviderEvent, body: bytes, raw: bool = True, arrived: float | None = None
    ) -> inbox.Receipt:
        """`raw` and `arrived` as inbox.store_and_enqueue's: false for a provider's API object;
        the request's arrival (time.monotonic()), from which its payment counts as seen."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[inbox.Receipt] = loop.create_future()
        self._started().put(_Arrival(event, body, loop, future, raw, arrived))
        return await future

    def close(self) -> None:
        """Write what was handed over, mark it, then stop the threads (each writer closes
        its broker channel)."""
        with self._lock:
            threads, self._threads = self._threads, []
            marker, self._marker = self._marker, None
            if self._pid != os.getpid():
                return
            for _ in threads:
                self._queue.put(None)
        for thread in threads:
            thread.join(CLOSE_TIMEOUT)
        if marker is not None:
            marker.close()

    def _started(self) -> queue.SimpleQueue[_Arrival | None]:
        """The queue of this process's writer threads, started on first use (after the fork:
        a thread is never inherited)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                    self._marker = _Marker(self.engine)
                    self._threads = [
                        threading.Thread(
                            target=self._run, args=(self._queue, self._marker), name=f"kc-intake-{n}", daemon=True
                        )
                        for n in range(WRITERS)
                    ]
                    for thread in self._threads:
                        thread.start()
                    self._pid = os.getpid()
        return self._queue

    def _run(self, arrivals: queue.SimpleQueue[_Arrival | None], marker: _Marker) -> None:
        channel = Kept(lambda: inbox.TaskChannel(self.app))
        while True:
            first = arrivals.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < MAX_BATCH:
                try:
                    more = arrivals.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._write(batch, channel, marker)
            if stop:
                channel.drop()
                return

    def _write(self, batch: Sequence[_Arrival], channel: Kept[inbox.TaskChannel], marker: _Marker) -> None:
        """Store and enqueue the batch, answer its requests, then hand what was enqueued to
        the marker."""
        arrivals = [(a.event, a.body) for a in batch]
        try:
            with db.autocommit(self.engine) as conn:
                receipts = inbox.store_and_enqueue(
                    conn, self.app, arrivals, channel, [a.raw for a in batch], [a.arrived for a in batch]
                )
        except Exception as exc:  # noqa: BLE001  (each request gets it: a 503, or its own error)
            _answer(batch, self._failed(batch, exc, channel))
            return
        _answer(batch, receipts)
        marker.add(inbox.enqueued(arrivals, receipts))

    def _failed(
        self, batch: Sequence[_Arrival], exc: Exception, channel: Kept[inbox.TaskChannel]
    ) -> Sequence[inbox.Receipt | BaseException]:
        """What each request of a failed batch is told: PostgreSQL away fails them all;
        anything else may be one event's fault, so each is written again on its own."""
        if len(batch) == 1 or isinstance(exc, RetryableError):
            return [exc] * len(batch)
        logger.warning("a batch of %d events failed (%s: %s); writing each alone", len(batch), type(exc).__name__, exc)
        outcomes: list[inbox.Receipt | BaseException] = []
        for arrival in batch:
            try:
                outcomes += inbox.receive_many(
                    self.engine, self.app, [(arrival.event, arrival.body)], channel, arrival.raw, [arrival.arrived]
                )
            except Exception as alone:  # noqa: BLE001  (its request gets it)
                outcomes.append(alone)
        return outcomes


class _Marker:
    """Marks the events the writers enqueued, all those of the last MARK_INTERVAL in one
    UPDATE, from a thread of its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._keys: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="kc-intake-marks", daemon=True)
        self._thread.start()

    def add(self, keys: Sequence[tuple[str, str]]) -> None:
        if keys:
            with self._lock:
                self._keys += keys
            self._wake.set()

    def close(self) -> None:
        """Mark what is left, then stop."""
        self._closing = True
        self._wake.set()
        self._thread.join(CLOSE_TIMEOUT)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._closing:
                time.sleep(MARK_INTERVAL)  # what the writers enqueue meanwhile joins this UPDATE
            with self._lock:
                keys, self._keys = self._keys, []
                self._wake.clear()
            if keys:
                self._mark(keys)
            if self._closing:
                return

    def _mark(self, keys: Sequence[tuple[str, str]]) -> None:
        try:
            with db.autocommit(self.engine) as conn:
                inbox.mark_enqueued(conn, keys)
        except Exception as exc:  # noqa: BLE001  (the relay enqueues them again, harmlessly)
            logger.warning(
                "%d event(s) enqueued but left marked received, for the relay: %s: %s",
                len(keys),
                type(exc).__name__,
                exc,
            )


def _answer(batch: Sequence[_Arrival], outcomes: Sequence[inbox.Receipt | BaseException]) -> None:
    """Hand each request its receipt or error, in its own event loop (one wake-up per loop)."""
    settled = ((arrival.loop, arrival.future, outcome) for arrival, outcome in zip(batch, outcomes, strict=True))
    hand_over(settled, "intake")
