"""The web's intake on real PostgreSQL and RabbitMQ: concurrent requests' events are stored
in a few INSERTs, each request still gets its own receipt or error, and nothing is lost or
done twice.

Batches are made certain by construction, not by timing: an uncommitted row of the first
event holds every writer thread in its INSERT (PostgreSQL shows them blocked on it), the
rest of the burst queues up meanwhile, and the row is then rolled back.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks.core.errors import DatabaseError, DatabaseUnavailable
from kc_tasks.core.settings import normalize_database_url
from kc_tasks.payments import inbox
from kc_tasks.providers import ProviderEvent, razorpay
from kc_tasks.store import db
from kc_tasks.web import intake
from kc_tasks.web.intake import Intake
from tests import provider_samples as s
from tests.services import take_queued as queued

Arrival = tuple[ProviderEvent, bytes]


def paid(payment_id: str | None = None) -> Arrival:
    """An order.paid event whose order names a student and a course."""
    body = s.encode(s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()), payment_id))
    return razorpay.parse(body, "evt_" + uuid.uuid4().hex[:14]), body


def again(arrival: Arrival) -> Arrival:
    """The same event delivered once more (Razorpay: the same X-Razorpay-Event-Id)."""
    return razorpay.parse(arrival[1], arrival[0].event_id), arrival[1]


@contextmanager
def writers_held(database_url: str, first: Arrival) -> Iterator[Callable[[int], None]]:
    """An uncommitted row of `first`'s (provider, event_id): every INSERT of that event waits
    for it. Yields `wait(n)`, which returns once n backends are blocked on it; the row is
    rolled back on leaving, and the writers go on."""
    holder = psycopg.connect(database_url)
    watcher = psycopg.connect(database_url, autocommit=True)  # a fresh view of pg_stat_activity each time
    try:
        holder.execute(
            "INSERT INTO payment_events (provider, event_id, type, status, body) "
            "VALUES (%s, %s, 'held', 'received', '')",
            (first[0].provider, first[0].event_id),
        )
        pid = holder.info.backend_pid

        def wait(n: int) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                blocked = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,)
                ).fetchone()
                if blocked and blocked[0] >= n:
                    return
                time.sleep(0.02)
            raise AssertionError(f"{n} writer(s) never blocked on the held row")

        yield wait
    finally:
        holder.rollback()
        holder.close()
        watcher.close()


def burst(target: Intake, first: Arrival, rest: Sequence[Arrival], database_url: str) -> tuple[list[Any], list[Any]]:
    """`first` handed over once per writer (each writer blocks on it), then `rest` while they
    are blocked, then the writers let go: the outcomes (receipt or error) of each, in order."""

    async def scenario() -> tuple[list[Any], list[Any]]:
        with writers_held(database_url, first) as wait:
            held = []
            for n in range(1, intake.WRITERS + 1):  # one at a time: each blocks a writer of its own
                held.append(asyncio.ensure_future(target.receive(*first)))
                await asyncio.to_thread(wait, n)
            queued_up = [asyncio.ensure_future(target.receive(*arrival)) for arrival in rest]
            await asyncio.sleep(0)  # each has run up to its await: handed over, in the queue
        return (
            await asyncio.gather(*held, return_exceptions=True),
            await asyncio.gather(*queued_up, return_exceptions=True),
        )

    try:
        return asyncio.run(scenario())
    finally:
        target.close()


def inserts(sql: Callable[..., list[tuple]], event_ids: Sequence[str]) -> int:
    """How many INSERTs stored these events: one statement's rows share its received_at."""
    return sql("SELECT count(DISTINCT received_at) FROM payment_events WHERE event_id = ANY(%s)", (list(event_ids),))[
        0
    ][0]


def test_a_burst_is_stored_in_a_few_inserts_and_each_request_gets_its_own_receipt(
    database_url: str, engine: Engine, broker: Celery, sql: Callable[..., list[tuple]]
) -> None:
    first = paid()
    rest = [paid() for _ in range(30)]
    repeated = [again(rest[0]), again(rest[1])]
    held, outcomes = burst(Intake(engine, broker), first, rest + repeated, database_url)

    # A repeat is answered as what it asks (received: its task was enqueued the first time).
    assert sorted((r.status, r.new) for r in held) == [("enqueued", True)] + [("received", False)] * (
        intake.WRITERS - 1
    )
    assert [(r.status, r.new) for r in outcomes] == [("enqueued", True)] * 30 + [("received", False)] * 2
    assert [r.task_id for r in outcomes] == [inbox.task_id_for(e.payment_id or "") for e, _ in rest + repeated]
    assert inserts(sql, [e.event_id for e, _ in rest]) <= intake.WRITERS, "the 30 queued events: a batch per writer"
    assert sql("SELECT status, count(*) FROM payment_events GROUP BY status") == [("enqueued", 31)]
    tasks = sorted(task_id for _, task_id, _ in queued())
    assert tasks == sorted(inbox.task_id_for(e.payment_id or "") for e, _ in [first, *rest]), "one task per event"


def test_an_event_that_cannot_be_stored_fails_alone(
    database_url: str, engine: Engine, broker: Celery, sql: Callable[..., list[tuple]]
) -> None:
    good, bad, other = paid(), paid(), paid()
    # Not something a provider's body can make (parsing refuses it), but PostgreSQL refuses it.
    broken = (ProviderEvent(bad[0].provider, "evt_\x00", bad[0].type, bad[0].action), bad[1])
    _, outcomes = burst(Intake(engine, broker), paid(), [good, broken, other], database_url)

    assert isinstance(outcomes[1], DatabaseError) and not isinstance(outcomes[1], DatabaseUnavailable)
    assert [(r.status, r.new) for r in (outcomes[0], outcomes[2])] == [("enqueued", True)] * 2
    stored = {row[0] for row in sql("SELECT event_id FROM payment_events")}
    assert {good[0].event_id, other[0].event_id} <= stored and "evt_\x00" not in stored


def test_postgresql_down_fails_every_request_of_the_batch_as_unavailable(broker: Celery) -> None:
    down = db.make_engine(normalize_database_url("postgresql://postgres@127.0.0.1:1/kc_tasks"))
    target = Intake(down, broker)

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(target.receive(*paid()) for _ in range(5)), return_exceptions=True)

    try:
        outcomes = asyncio.run(scenario())
    finally:
        target.close()
        down.dispose()
    assert all(isinstance(o, DatabaseUnavailable) for o in outcomes), outcomes
    assert queued() == []


def test_with_the_broker_down_events_are_stored_and_left_received_for_the_relay(
    engine: Engine, sql: Callable[..., list[tuple]]
) -> None:
    target = Intake(engine, Celery(broker="amqp://guest:guest@127.0.0.1:1//"))
    arrivals = [paid() for _ in range(4)]

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(target.receive(*a) for a in arrivals))

    try:
        receipts = asyncio.run(scenario())
    finally:
        target.close()
    assert [(r.status, r.new) for r in receipts] == [("received", True)] * 4
    assert sql("SELECT status, count(*) FROM payment_events GROUP BY status") == [("received", 4)]


def test_batches_meeting_the_same_events_in_opposite_orders_never_deadlock(engine: Engine) -> None:
    """A provider's retry racing the original, in two batches (two web processes) at once:
    each INSERT takes its rows in key order, so neither waits for the other in a circle."""
    nowhere = Celery(broker="memory://")
    failures: list[BaseException] = []
    for _ in range(15):
        arrivals = [paid() for _ in range(60)]

        def store(batch: list[Arrival], start: threading.Barrier) -> None:
            start.wait(10)
            try:
                with (
                    db.translate_errors(),
                    engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
                ):
                    inbox.store_and_enqueue(conn, nowhere, batch, None)
            except BaseException as exc:  # reported below
                failures.append(exc)

        start = threading.Barrier(2)
        threads = [
            threading.Thread(target=store, args=(arrivals, start)),
            threading.Thread(target=store, args=(arrivals[::-1], start)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert failures == []


@pytest.mark.parametrize("kind", ["purchase", "repeat"])
def test_store_and_enqueue_publishes_one_task_per_new_event(
    kind: str, engine: Engine, broker: Celery, sql: Callable[..., list[tuple]]
) -> None:
    """On a kept confirmed channel: a task per event stored, none for what was stored before."""
    arrival = paid()
    channel = intake.Kept(lambda: inbox.TaskChannel(broker))
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if kind == "repeat":
                inbox.store_and_enqueue(conn, broker, [arrival], None)
                queued()
            [receipt] = inbox.store_and_enqueue(conn, broker, [again(arrival)], channel)
    finally:
        channel.drop()
    task = inbox.plan(arrival[0])[1]
    assert task is not None and receipt.task_id == task.task_id
    expected = [] if kind == "repeat" else [("kc_tasks.create_purchase", task.task_id, task.kwargs)]
    assert queued() == expected
