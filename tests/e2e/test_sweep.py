"""Each worker sweeps what was left behind itself, with no beat running: an event committed but
never published (its worker killed before it could) is published, and a provider event stored
while the broker was down is enqueued and becomes a purchase. Beat's relay tasks are only the
safety net, at a long interval: Flower's task list shows purchases, not housekeeping."""

from __future__ import annotations

import json
import uuid

import httpx

import tests.provider_samples as s
from celeryconfig import RELAY_SAFETY_INTERVAL, beat_schedule
from tests.harness import Consumer, Workers, free_port, wait_until
from tests.services import count, run_sql


def test_a_worker_publishes_a_leftover_event_and_enqueues_a_received_one_without_beat(
    database_url: str, workers: Workers, rabbitmq_url: str
) -> None:
    consumer = Consumer(rabbitmq_url)
    try:
        event_id = str(uuid.uuid4())
        run_sql(
            database_url,
            "INSERT INTO event_outbox (id, type, occurred_at, data) "
            "VALUES (%s, 'purchase.created', now() - interval '1 min', %s)",
            (event_id, json.dumps({"payment_id": "pay_left_behind"})),
        )
        body = s.encode(s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()), "pay_swept_inbox")).decode()
        run_sql(
            database_url,
            "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body, received_at) "
            "VALUES ('razorpay', 'evt_swept', 'order.paid', 'pay_swept_inbox', 'received', %s, "
            "now() - interval '1 min')",
            (body,),
        )
        worker = workers.start(database_url, rabbitmq_url, concurrency=1, KC_EVENT_RELAY_INTERVAL="1")

        assert wait_until(lambda: event_id in consumer.unique(), timeout=30), "the leftover event is published"
        assert run_sql(
            database_url, "SELECT published_at IS NOT NULL FROM event_outbox WHERE id = %s", (event_id,)
        ) == [(True,)]
        assert wait_until(lambda: count(database_url, "payment_id = 'pay_swept_inbox'") == 1, timeout=30), (
            "the received provider event is enqueued and becomes a purchase"
        )
        assert run_sql(database_url, "SELECT status FROM payment_events WHERE event_id = 'evt_swept'") == [
            ("enqueued",)
        ]
        assert "relayed 1 events left unpublished" in worker.text()
        assert "Task kc_tasks.relay_" not in worker.text(), "no relay task ran: the worker swept"
    finally:
        consumer.close()


def test_beat_runs_the_relay_tasks_only_as_a_safety_net_minutes_apart() -> None:
    """The queue's heartbeat, every 30 s, is the one exception: it is no task in Flower's list (the
    worker's consumer takes it without running it, and it sends no task events)."""
    from kc_tasks.core.names import QUEUE_HEARTBEAT
    from kc_tasks.worker.tasks import queue_heartbeat

    for name in ("relay-events", "relay-inbox"):
        assert beat_schedule[name]["schedule"] == RELAY_SAFETY_INTERVAL >= 300, name
    housekeeping = [entry["schedule"] for entry in beat_schedule.values() if entry["task"] != QUEUE_HEARTBEAT]
    assert min(housekeeping) >= 300, "every beat task is minutes apart: a few hundred rows a day in Flower"
    assert queue_heartbeat.send_events is False


def test_a_stored_event_that_no_longer_reads_is_marked_invalid_and_the_relay_goes_on(
    database_url: str, workers: Workers, rabbitmq_url: str
) -> None:
    """Two events left `received` whose bodies no longer read as events (kc_tasks' own without
    its `type`; a reconciliation id no rule knows), stored before the good ones behind them. Each
    is marked `invalid` with why, logged and counted; the good ones become purchases."""
    poisoned = [
        ("kc", "evt_poisoned", json.dumps({"id": "evt_poisoned", "data": {}})),
        ("reconcile", "razorpay:pay_x:refunded-twice", "{}"),
    ]
    for provider, event_id, body in poisoned:
        run_sql(
            database_url,
            "INSERT INTO payment_events (provider, event_id, type, status, body, received_at) "
            "VALUES (%s, %s, 'payment.succeeded', 'received', %s, now() - interval '2 min')",
            (provider, event_id, body),
        )
    good = [f"pay_after_poison_{n}" for n in range(3)]
    for n, payment in enumerate(good):
        body = s.encode(s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()), payment)).decode()
        run_sql(
            database_url,
            "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body, received_at) "
            "VALUES ('razorpay', %s, 'order.paid', %s, 'received', %s, now() - interval '1 min')",
            (f"evt_good_{n}", payment, body),
        )
    metrics_port = free_port()
    worker = workers.start(
        database_url, rabbitmq_url, concurrency=1, KC_EVENT_RELAY_INTERVAL="1", KC_WORKER_METRICS_PORT=str(metrics_port)
    )

    assert wait_until(lambda: count(database_url, "payment_id LIKE 'pay_after_poison_%'") == 3, timeout=30), (
        worker.text()[-3000:]
    )
    assert run_sql(database_url, "SELECT event_id, status FROM payment_events ORDER BY received_at, event_id") == [
        ("evt_poisoned", "invalid"),
        ("razorpay:pay_x:refunded-twice", "invalid"),
        ("evt_good_0", "enqueued"),
        ("evt_good_1", "enqueued"),
        ("evt_good_2", "enqueued"),
    ]
    [line] = [line for line in worker.text().splitlines() if "evt_poisoned" in line]
    assert "ERROR" in line and "kc event evt_poisoned is invalid, nothing enqueued" in line
    assert "id and type: must be non-empty text" in line or "type: is required" in line
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert 'kc_webhook_events_total{outcome="invalid",provider="kc"} 1.0' in scraped
    assert 'kc_webhook_events_total{outcome="invalid",provider="razorpay"} 1.0' in scraped
