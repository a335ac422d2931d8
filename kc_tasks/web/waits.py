"""Waiting for purchases: what a confirmed checkout's request waits for before it answers.

A request awaits `Waits.purchase(payment_id, timeout)`. One thread per web process asks
PostgreSQL, in one statement, for every payment some request waits for (`access`), at once when
a request comes and then every POLL_INTERVAL while any waits, and hands each request its answer
in its own event loop. Nothing is asked while no request waits. No broker, no notification
channel: it works alike through a transaction pooler, and a purchase made by any worker (or
already made by a webhook) is seen the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from kc_tasks.store import db
from kc_tasks.web.handoff import hand_over

logger = logging.getLogger(__name__)

# How often the payments still waited for are asked again, seconds.
POLL_INTERVAL = 0.005
# How long closing waits for the thread, seconds.
CLOSE_TIMEOUT = 5


@dataclass(frozen=True)
class Access:
    """What a payment gave its student: the purchase it made, or for a duplicate payment the
    purchase that already held the course; `active` false once revoked (refund, dispute)."""

    purchase_id: str
    course_id: str
    active: bool


def _access_query() -> sa.CompoundSelect[Any]:
    t, dup = db.purchases, db.duplicate_payments
    ids = sa.bindparam("payment_ids", type_=postgresql.ARRAY(sa.Text))
    made = sa.select(t.c.payment_id, t.c.id, t.c.course_id, t.c.is_active).where(t.c.payment_id == sa.any_(ids))
    held = (
        sa.select(dup.c.payment_id, t.c.id, t.c.course_id, t.c.is_active)
        .join(t, t.c.id == dup.c.purchase_id)
        .where(dup.c.payment_id == sa.any_(ids))
    )
    return sa.union_all(made, held)


_ACCESS = _access_query()


def access(conn: sa.Connection, payment_ids: Sequence[str]) -> dict[str, Access]:
    """The access each of these payments gave, for those that have one (one statement)."""
    found: dict[str, Access] = {}
    for payment_id, purchase_id, course_id, active in conn.execute(_ACCESS, {"payment_ids": list(payment_ids)}):
        found[payment_id] = Access(str(purchase_id), str(course_id), bool(active))
    return found


@dataclass(frozen=True)
class _Waiting:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Access]


class Waits:
    """One per web process; its thread starts on first use (after the fork)."""

    def __init__(self, engine: Engine, interval: float = POLL_INTERVAL) -> None:
        self.engine, self.interval = engine, interval
        self._waiting: dict[str, list[_Waiting]] = defaultdict(list)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    async def purchase(self, payment_id: str, timeout: float) -> Access | None:
        """The payment's access once PostgreSQL holds it, or None after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(loop, loop.create_future())
        with self._lock:
            self._start()
            self._waiting[payment_id].append(waiting)
        self._wake.set()
        try:
            return await asyncio.wait_for(waiting.future, timeout)
        except TimeoutError:
            return None
        finally:
            with self._lock:
                others = self._waiting.get(payment_id, [])
                if waiting in others:
                    others.remove(waiting)
                if not others:
                    self._waiting.pop(payment_id, None)

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(CLOSE_TIMEOUT)

    def _start(self) -> None:
        """The thread of this process (a thread is never inherited by a fork); under the lock."""
        if self._pid != os.getpid():
            self._waiting = defaultdict(list)
            self._thread = threading.Thread(target=self._run, name="kc-confirm-waits", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait()
            with self._lock:
                payment_ids = sorted(self._waiting)
                if not payment_ids:
                    self._wake.clear()  # a request that comes after this sets it again
                    continue
            try:
                with db.translate_errors(self.engine.url), self.engine.connect() as conn:
                    found = access(conn, payment_ids)
            except Exception as exc:  # noqa: BLE001  (the requests wait on, and answer pending at worst)
                logger.warning("confirm: purchases not read (%s: %s); asking again", type(exc).__name__, exc)
                found = {}
            if found:
                self._settle(found)
            time.sleep(self.interval)

    def _settle(self, found: dict[str, Access]) -> None:
        with self._lock:
            settled = [(w.loop, w.future, found[pid]) for pid in found for w in self._waiting.get(pid, [])]
        hand_over(settled, "confirm")
