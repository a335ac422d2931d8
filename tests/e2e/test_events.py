"""A consumer bound to kc.events receives exactly the events of committed purchases."""

from __future__ import annotations

import random
import re
import threading
import uuid
from pathlib import Path

from kombu import Connection, Exchange, Queue

from tests.conftest import AMQP, run_sql
from tests.e2e.conftest import Client, Workers, count, hold_pairs, purchase, wait_until
from tests.e2e.proxy import Proxy

EVENTS = Exchange("kc.events", type="topic", durable=True)
# A test's own message through kc.events, never counted as an event (Consumer.caught_up).
MARKER = "test.marker"


class Consumer:
    """A downstream service: its own queue bound to kc.events, deduplicating by event id."""

    def __init__(self, broker_url: str) -> None:
        self.queue = Queue(
            f"test-events-{uuid.uuid4().hex[:8]}", EVENTS, routing_key="purchase.#", durable=False, auto_delete=False
        )
        self.received: list[dict] = []
        self.markers: set[str] = set()
        self._conn = Connection(broker_url)
        self._conn.connect()
        self.queue(self._conn.default_channel).declare()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with Connection(self._conn.as_uri(include_password=True)) as conn:
            with conn.Consumer(self.queue, callbacks=[self._on_message], accept=["json"]):
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=0.5)
                    except TimeoutError:
                        pass

    def _on_message(self, body: dict, message) -> None:  # type: ignore[no-untyped-def]
        if body.get("type") == MARKER:
            self.markers.add(body["id"])
        else:
            self.received.append(body)
        message.ack()

    def caught_up(self) -> bool:
        """Publish a marker into kc.events and wait until it arrives: the queue delivers in
        order, so every event the broker had taken before it has arrived too."""
        marker = str(uuid.uuid4())
        with Connection(self._conn.as_uri(include_password=True)) as conn:
            conn.Producer().publish(
                {"id": marker, "type": MARKER}, exchange=EVENTS, routing_key="purchase.test-marker", declare=[EVENTS]
            )
        return wait_until(lambda: marker in self.markers, timeout=10)

    def unique(self) -> dict[str, dict]:
        return {e["id"]: e for e in self.received}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.queue(self._conn.default_channel).delete()
        self._conn.release()


def _batch(pairs: int, rivals: int) -> list[dict]:
    messages: list[dict] = []
    for i in range(pairs):
        main = purchase()
        messages += [main, main]
        if i < rivals:
            messages.append(purchase(main["student_id"], main["course_id"]))
    random.Random(3).shuffle(messages)
    return messages


def _assert_events_match_the_database(consumer: Consumer, database_url: str) -> None:
    events = consumer.unique()
    created = {e["data"]["id"]: e for e in events.values() if e["type"] == "purchase.created"}
    duplicates = {e["data"]["payment_id"]: e for e in events.values() if e["type"] == "purchase.duplicate_payment"}
    purchases = {r[0] for r in run_sql(database_url, "SELECT id::text FROM student_course_purchases")}
    refunds = run_sql(database_url, "SELECT payment_id, held_payment_id FROM duplicate_payments")
    assert set(created) == purchases, "one purchase.created per committed purchase, no other"
    assert {(p, e["data"]["held_payment_id"]) for p, e in duplicates.items()} == set(refunds)
    outbox = {r[0] for r in run_sql(database_url, "SELECT id::text FROM event_outbox")}
    assert set(events) == outbox
    assert run_sql(database_url, "SELECT count(*) FROM event_outbox WHERE published_at IS NULL") == [(0,)]
    sample = next(iter(created.values()))
    assert set(sample) == {"id", "type", "occurred_at", "data"}
    assert {"id", "student_id", "course_id", "payment_id", "amount_cents", "currency", "is_active"} <= set(
        sample["data"]
    )


def test_each_committed_purchase_and_duplicate_payment_is_published(
    database_url: str, workers: Workers, broker_url: str, client: Client
) -> None:
    consumer = Consumer(broker_url)
    try:
        workers.start(database_url, broker_url, concurrency=4)
        client.send(_batch(pairs=30, rivals=8))
        assert wait_until(lambda: len(consumer.unique()) == 38, timeout=40), len(consumer.unique())
        # Nothing more is coming: the outbox has nothing left to publish, and all it
        # published has reached the consumer.
        assert wait_until(
            lambda: run_sql(database_url, "SELECT count(*) FROM event_outbox WHERE published_at IS NULL") == [(0,)]
        )
        assert consumer.caught_up()
        _assert_events_match_the_database(consumer, database_url)
        assert len(consumer.unique()) == 38
    finally:
        consumer.close()


def test_events_survive_a_broker_outage_between_commit_and_publish(
    database_url: str, workers: Workers, rabbitmq_url: str, tmp_path: Path
) -> None:
    """The worker reaches RabbitMQ through a proxy that is cut while a purchase is held mid-task
    (an uncommitted row of its pair blocks it): released with the broker unreachable, it
    commits and cannot publish, and its events are left in the outbox for the relay (the worker's own sweep,
    every second here), which publishes them once the broker is back. The consumer sees each
    exactly once after deduplication by id."""
    consumer = Consumer(AMQP)
    proxy = Proxy("127.0.0.1", 5672)
    proxy.restore()
    try:
        vhost = AMQP.rsplit("/", 1)[1]
        worker = workers.start(
            database_url,
            f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
            concurrency=4,
            args=("--beat", "--schedule", str(tmp_path / "beat-schedule")),
            KC_EVENT_RELAY_INTERVAL="1",
        )
        messages = _batch(pairs=200, rivals=20)
        holder = hold_pairs(database_url, [messages[0]])
        Client(AMQP).send(messages)
        pid = holder.info.backend_pid
        assert wait_until(
            lambda: (
                run_sql(
                    database_url, "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,)
                )[0][0]
                > 0
            )
        ), "a worker is held on the first purchase"
        proxy.cut()
        holder.rollback()
        holder.close()
        assert wait_until(lambda: "left for the relay" in worker.text(), timeout=60), (
            "the held purchase could not publish"
        )
        proxy.restore()
        assert wait_until(lambda: count(database_url) == 200, timeout=90), count(database_url)
        assert wait_until(
            lambda: run_sql(database_url, "SELECT count(*) FROM event_outbox WHERE published_at IS NULL") == [(0,)],
            timeout=60,
        )
        assert wait_until(lambda: len(consumer.unique()) == 220, timeout=30), len(consumer.unique())
        _assert_events_match_the_database(consumer, database_url)
        left = sum(int(n) for n in re.findall(r"(\d+) event\(s\) left for the relay", worker.text()))
        relayed = sum(int(n) for n in re.findall(r"relayed (\d+) events left unpublished", worker.text()))
        assert left >= 1 and relayed >= left, f"the relay published what the tasks left: {left} left, {relayed} relayed"
    finally:
        proxy.cut()
        consumer.close()
