"""Publishing purchase events on a real RabbitMQ and PostgreSQL: a batch is confirmed whole,
every event arrives once, a connection the broker closed costs no event, the relay publishes
what was left, and pruning never deletes an unpublished event."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from celery import Celery
from kombu import Connection, Queue
from sqlalchemy.engine import Engine

from kc_tasks.core.names import PURCHASE_CREATED
from kc_tasks.store.events import (
    EXCHANGE,
    PRUNE_AFTER_HOURS,
    RELAY_BATCH,
    RELAY_GRACE_SECONDS,
    Event,
    EventChannel,
    Publisher,
    prune,
    publish_pending,
)
from tests.services import AMQP, AMQP_VHOST, rabbitmqctl


@pytest.fixture
def app() -> Celery:
    """A Celery app configured as kc_tasks' is for RabbitMQ: publisher confirms on."""
    app = Celery(broker=AMQP)
    app.conf.broker_transport_options = {"confirm_publish": True}
    return app


@pytest.fixture
def consumer_queue() -> Iterator[str]:
    """A queue bound to every event, as a consumer of kc.events would have."""
    name = f"test-events-{uuid.uuid4().hex[:8]}"
    with Connection(AMQP) as conn:
        Queue(name, EXCHANGE, routing_key="#", durable=False)(conn.default_channel).declare()
    yield name
    with Connection(AMQP) as conn:
        conn.default_channel.queue_delete(name)


def received(queue: str, expected: int, timeout: float = 10) -> list[dict]:
    """The bodies in `queue`, once it holds `expected` messages (or the timeout passed)."""
    bodies: list[dict] = []
    deadline = time.monotonic() + timeout
    with Connection(AMQP) as conn:
        channel = conn.default_channel
        while len(bodies) < expected and time.monotonic() < deadline:
            message = channel.basic_get(queue, no_ack=True)
            if message is None:
                time.sleep(0.05)
                continue
            assert message.properties["delivery_mode"] == 2, "events are persistent"
            bodies.append(json.loads(message.body))
    return bodies


def made_up_events(n: int) -> list[Event]:
    return [
        Event(str(uuid.uuid4()), PURCHASE_CREATED, datetime.now(UTC), {"id": str(uuid.uuid4()), "n": i})
        for i in range(n)
    ]


def outbox_events(sql: Callable[..., list[tuple]], n: int) -> list[Event]:
    """n purchase.created events committed to the outbox, not yet published."""
    events = made_up_events(n)
    for e in events:
        sql(
            "INSERT INTO event_outbox (id, type, occurred_at, data) VALUES (%s, %s, %s, %s)",
            (e.id, e.type, e.occurred_at, json.dumps(e.data)),
        )
    return events


def wait_published(sql: Callable[..., list[tuple]], n: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (done := sql("SELECT count(*) FROM event_outbox WHERE published_at IS NOT NULL")[0][0]) < n:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return done


def close_broker_side(channel: EventChannel) -> None:
    """RabbitMQ closes this channel's connection, as when it restarts or drops a client."""
    port = channel.connection.connection.sock.getsockname()[1]
    listed = rabbitmqctl("list_connections", "-p", AMQP_VHOST, "pid", "peer_port")
    pids = [line.split()[0] for line in listed.splitlines() if line.split()[-1:] == [str(port)]]
    assert len(pids) == 1, f"RabbitMQ lists the event connection once: {listed!r}"
    rabbitmqctl("close_connection", pids[0], "kc_tasks test")


def test_a_batch_is_sent_whole_and_every_event_arrives_once(app: Celery, consumer_queue: str) -> None:
    events = made_up_events(300)
    channel = EventChannel(app)
    try:
        channel.publish(events[:100])
        channel.publish(events[100:])  # the second batch waits for its own confirms, not the first's
    finally:
        channel.close()
    bodies = received(consumer_queue, len(events))
    assert sorted(b["id"] for b in bodies) == sorted(e.id for e in events)
    first = next(b for b in bodies if b["id"] == events[0].id)
    assert first == {
        "id": events[0].id,
        "type": "purchase.created",
        "occurred_at": events[0].occurred_at.isoformat(),
        "data": events[0].data,
    }


def test_a_publisher_whose_connection_the_broker_closed_publishes_the_next_batch(
    app: Celery, consumer_queue: str, engine: Engine, sql: Callable[..., list[tuple]]
) -> None:
    publisher = Publisher(engine, app)
    first = outbox_events(sql, 20)
    publisher.submit(first)
    assert wait_published(sql, 20) == 20
    assert publisher._channel.current is not None
    close_broker_side(publisher._channel.current)

    second = outbox_events(sql, 20)
    publisher.submit(second)
    assert wait_published(sql, 40) == 40, "the batch after the close is published and marked"
    ids = [b["id"] for b in received(consumer_queue, 40)]
    assert sorted(ids) == sorted(e.id for e in first + second)


def test_events_the_broker_did_not_take_stay_unpublished_for_the_relay(
    engine: Engine, sql: Callable[..., list[tuple]], caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = Celery(broker="amqp://guest:guest@127.0.0.1:1/")  # nothing listens on port 1
    publisher = Publisher(engine, nowhere)
    publisher.submit(outbox_events(sql, 5))
    deadline = time.monotonic() + 20
    while "5 event(s) left for the relay" not in caplog.text:
        assert time.monotonic() < deadline, "the publisher did not give the batch up"
        time.sleep(0.1)
    assert sql("SELECT count(*) FROM event_outbox WHERE published_at IS NULL")[0][0] == 5


def aged_events(sql: Callable[..., list[tuple]], n: int, occurred: str, published: str | None = None) -> list[str]:
    """n events committed to the outbox `occurred` ago (an interval), published `published`
    ago or not at all; their ids."""
    ids = [e.id for e in outbox_events(sql, n)]
    sql(
        "UPDATE event_outbox SET occurred_at = now() - %s::interval, "
        "published_at = now() - %s::interval WHERE id = ANY(%s::uuid[])",
        (occurred, published, ids),
    )
    return ids


def test_the_relay_publishes_what_was_left_past_the_grace_period_once(
    engine: Engine, app: Celery, consumer_queue: str, sql: Callable[..., list[tuple]]
) -> None:
    """More events than one relay batch, left unpublished: all published and marked, in one call;
    an event still within the grace period (its own publisher may be at it) and one already
    published are left alone; a second call finds nothing."""
    left = aged_events(sql, RELAY_BATCH + 20, f"{RELAY_GRACE_SECONDS + 5} seconds")
    recent = aged_events(sql, 1, "0 seconds")
    done = aged_events(sql, 1, "1 hour", published="1 hour")
    assert publish_pending(engine, app) == len(left)
    assert sorted(b["id"] for b in received(consumer_queue, len(left))) == sorted(left)
    with Connection(AMQP) as conn:  # confirmed before publish_pending() returned: all there is, is there
        assert conn.default_channel.basic_get(consumer_queue, no_ack=True) is None, "nothing else, nothing twice"
    unpublished = sql("SELECT id::text FROM event_outbox WHERE published_at IS NULL")
    assert unpublished == [(recent[0],)]
    assert sql("SELECT published_at < now() - interval '59 minutes' FROM event_outbox WHERE id = %s", (done[0],)) == [
        (True,)
    ], "an event published before is not published again"
    assert publish_pending(engine, app) == 0


def test_prune_deletes_events_published_long_ago_and_never_an_unpublished_one(
    engine: Engine, sql: Callable[..., list[tuple]]
) -> None:
    old = f"{PRUNE_AFTER_HOURS + 1} hours"
    pruned = aged_events(sql, 3, old, published=old)
    kept = aged_events(sql, 2, old, published="1 hour") + aged_events(sql, 2, "30 days")  # the last: never published
    assert prune(engine) == len(pruned)
    assert sorted(r[0] for r in sql("SELECT id::text FROM event_outbox")) == sorted(kept)
    assert prune(engine) == 0
