"""A consumer bound to kc.events receives exactly the events of committed purchases."""

from __future__ import annotations

import random
import re
from pathlib import Path

from tests.builders import purchase
from tests.e2e.proxy import Proxy
from tests.harness import Client, Consumer, Workers, wait_until
from tests.services import AMQP, count, hold_pairs, run_sql


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
