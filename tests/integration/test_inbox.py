"""The inbox on real PostgreSQL and RabbitMQ, and the commands that show and replay it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from sqlalchemy.engine import Engine

from kc_tasks import inbox
from kc_tasks.providers import razorpay, stripe
from tests import provider_samples as s
from tests.conftest import AMQP, PG, purge_amqp, run_sql
from tests.integration.test_cli import kc
from tests.integration.test_tasks import seen  # noqa: F401  (the fixture)


def queued() -> list[tuple[str, str, dict]]:
    """(task name, task id, kwargs) of each message waiting in purchases, taken off it."""
    found = []
    with Connection(AMQP) as conn:
        q = conn.SimpleQueue("purchases")
        while True:
            try:
                message = q.get(timeout=1)
            except q.Empty:
                return found
            found.append((message.headers["task"], message.headers["id"], json.loads(message.body)[1]))
            message.ack()


def captured(student: str | None = None, course: str | None = None, payment_id: str | None = None) -> bytes:
    payment = s.razorpay_payment(payment_id, student or str(uuid.uuid4()), course or str(uuid.uuid4()))
    return s.encode(s.razorpay_event("payment.captured", payment))


def test_an_event_is_stored_once_and_its_task_id_comes_from_the_payment(engine: Engine, broker: Celery, sql) -> None:
    body = captured(payment_id="pay_inbox_1")
    first = inbox.receive(engine, broker, razorpay.parse(body, "evt_1"), body)
    again = inbox.receive(engine, broker, razorpay.parse(body, "evt_1"), body)
    sibling = s.encode(s.razorpay_event("order.paid", json.loads(body)["payload"]["payment"]["entity"]))
    other = inbox.receive(engine, broker, razorpay.parse(sibling, "evt_2"), sibling)
    assert (first.status, first.new, again.new) == ("enqueued", True, False)
    assert first.task_id == again.task_id == other.task_id == inbox.task_id_for("pay_inbox_1")
    assert sql("SELECT event_id, status FROM payment_events ORDER BY event_id") == [
        ("evt_1", "enqueued"),
        ("evt_2", "enqueued"),
    ]
    assert [(name, task_id) for name, task_id, _ in queued()] == [("kc_tasks.create_purchase", first.task_id)] * 2


def test_a_refund_gets_a_task_id_of_its_own(engine: Engine, broker: Celery) -> None:
    intent = s.new_intent()
    body = s.encode(s.stripe_event("charge.refunded", s.stripe_charge(intent)))
    receipt = inbox.receive(engine, broker, stripe.parse(body), body)
    assert receipt.task_id == inbox.task_id_for(intent, inbox.REVOKE_PURCHASE) != inbox.task_id_for(intent)
    [(name, task_id, kwargs)] = queued()
    assert (name, task_id) == ("kc_tasks.revoke_purchase", receipt.task_id)
    assert kwargs == {"payment_id": intent, "reason": "refund", "refund_id": "re_" + intent[3:]}


def test_with_the_broker_down_the_event_waits_received_for_the_relay(engine: Engine, broker: Celery, sql) -> None:
    down = Celery(broker="amqp://guest:guest@127.0.0.1:1//")
    body = captured(payment_id="pay_inbox_down")
    assert inbox.receive(engine, down, razorpay.parse(body, "evt_down"), body).status == "received"
    assert inbox.relay(engine, down, older_than=0) == 0
    assert inbox.relay(engine, broker) == 0, "within the grace period, the web may still be enqueuing it"
    assert inbox.relay(engine, broker, older_than=0) == 1
    assert sql("SELECT status FROM payment_events") == [("enqueued",)]
    assert [task_id for _, task_id, _ in queued()] == [inbox.task_id_for("pay_inbox_down")]


def test_unmapped_payments_are_counted_until_a_purchase_exists(engine: Engine, broker: Celery, sql) -> None:
    intent = s.new_intent()
    body = s.encode(s.stripe_event("payment_intent.succeeded", s.stripe_intent(intent, None, None)))
    assert inbox.receive(engine, broker, stripe.parse(body), body).status == "unmapped"
    assert inbox.unmapped_count(engine) == 1
    sql(
        "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), %s, 99900, 'INR')",
        (intent,),
    )
    assert inbox.unmapped_count(engine) == 0, "its Checkout Session made the purchase"


def test_inbox_list_and_replay_commands(database_url: str, engine: Engine, broker: Celery) -> None:
    mapped, unmapped = (
        captured(payment_id="pay_cli_mapped"),
        s.encode(s.razorpay_event("payment.captured", s.razorpay_payment("pay_cli_unmapped"))),
    )
    inbox.receive(engine, broker, razorpay.parse(mapped, "evt_a"), mapped)
    inbox.receive(engine, broker, razorpay.parse(unmapped, "evt_b"), unmapped)
    queued()
    env = {"DATABASE_URL": database_url, "CELERY_BROKER_URL": AMQP}
    listed = kc("inbox", "list", "--json", **env)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["event_id"] for r in rows] == ["evt_b", "evt_a"], "newest first"
    assert set(rows[0]) == {"provider", "event_id", "type", "payment_id", "status", "received_at"}
    only = kc("inbox", "list", "--status", "unmapped", "--provider", "razorpay", **env)
    assert "pay_cli_unmapped" in only.stdout and "pay_cli_mapped" not in only.stdout
    replayed = kc("inbox", "replay", "razorpay", "evt_a", "evt_b", **env)
    assert replayed.returncode == 0, replayed.stderr
    assert "evt_a: enqueued" in replayed.stdout and "evt_b: unmapped" in replayed.stdout
    assert [task_id for _, task_id, _ in queued()] == [inbox.task_id_for("pay_cli_mapped")]
    missing = kc("inbox", "replay", "razorpay", "evt_none", **env)
    assert missing.returncode == 1 and "evt_none: not found" in missing.stdout


def test_revoke_command_sends_one_revoke_purchase() -> None:
    purge_amqp()
    result = kc(
        "revoke",
        "--payment",
        "pay_cli_r",
        "--reason",
        "manual",
        CELERY_BROKER_URL=AMQP,
        DATABASE_URL=f"{PG}/unused",
    )
    assert result.returncode == 0, result.stderr
    assert queued() == [
        ("kc_tasks.revoke_purchase", result.stdout.strip(), {"payment_id": "pay_cli_r", "reason": "manual"})
    ]
    refused = kc("revoke", "--payment", "p", "--reason", "x" * 65, CELERY_BROKER_URL=AMQP)
    assert refused.returncode == 1 and "reason" in refused.stderr


def test_the_beat_check_counts_unmapped_payments_beside_dead_letters(
    celery_app: Celery,
    seen: Any,  # noqa: F811
    app_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="kc_tasks")
    body = s.encode(s.razorpay_event("payment.captured", s.razorpay_payment("pay_beat_unmapped")))
    run_sql(
        app_database,
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body) "
        "VALUES ('razorpay', 'evt_beat', 'payment.captured', 'pay_beat_unmapped', 'unmapped', %s)",
        (body.decode(),),
    )
    task_id = celery_app.send_task("kc_tasks.verify_purchase_index", queue="purchases").id
    seen.wait(task_id)
    assert seen.results[task_id]["unmapped"] == 1
    assert "1 paid payment(s) grant nothing" in caplog.text
    assert "kc-tasks inbox list --status unmapped" in caplog.text
