"""The inbox on real PostgreSQL and RabbitMQ, and the commands that show and replay it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks.core import names
from kc_tasks.payments import inbox
from kc_tasks.providers import razorpay, stripe
from tests import provider_samples as s
from tests.harness import kc
from tests.services import AMQP, PG, purge_amqp, run_sql
from tests.services import take_queued as queued


def paid(payment_id: str | None = None) -> bytes:
    """An order.paid webhook body whose order names a student and a course."""
    return s.encode(s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()), payment_id))


def test_an_event_is_stored_once_and_its_task_id_comes_from_the_payment(engine: Engine, broker: Celery, sql) -> None:
    body = paid(payment_id="pay_inbox_1")
    first = inbox.receive(engine, broker, razorpay.parse(body, "evt_1"), body)
    again = inbox.receive(engine, broker, razorpay.parse(body, "evt_1"), body)
    other = inbox.receive(engine, broker, razorpay.parse(body, "evt_2"), body)
    payment = json.loads(body)["payload"]["payment"]["entity"]
    sibling = s.encode(s.razorpay_event("payment.captured", payment))
    captured = inbox.receive(engine, broker, razorpay.parse(sibling, "evt_3"), sibling)
    assert (first.status, first.new, again.new) == ("enqueued", True, False)
    assert first.task_id == again.task_id == other.task_id == inbox.task_id_for("pay_inbox_1")
    assert (captured.status, captured.task_id) == ("ignored", None), "order.paid makes the purchase"
    assert sql("SELECT event_id, status FROM payment_events ORDER BY event_id") == [
        ("evt_1", "enqueued"),
        ("evt_2", "enqueued"),
        ("evt_3", "ignored"),
    ]
    assert [(name, task_id) for name, task_id, _ in queued()] == [("kc_tasks.create_purchase", first.task_id)] * 2


def test_a_refund_gets_a_task_id_of_its_own(engine: Engine, broker: Celery) -> None:
    intent = s.new_intent()
    body = s.encode(s.stripe_event("charge.refunded", s.stripe_charge(intent)))
    receipt = inbox.receive(engine, broker, stripe.parse(body), body)
    assert receipt.task_id == inbox.task_id_for(intent, names.REVOKE_PURCHASE) != inbox.task_id_for(intent)
    [(name, task_id, kwargs)] = queued()
    assert (name, task_id) == ("kc_tasks.revoke_purchase", receipt.task_id)
    assert kwargs == {"payment_id": intent, "reason": "refund"}, "the current API version embeds no refund"


def test_with_the_broker_down_the_event_waits_received_for_the_relay(engine: Engine, broker: Celery, sql) -> None:
    down = Celery(broker="amqp://guest:guest@127.0.0.1:1//")
    body = paid(payment_id="pay_inbox_down")
    assert inbox.receive(engine, down, razorpay.parse(body, "evt_down"), body).status == "received"
    assert inbox.enqueue_received(engine, down, older_than=0) == 0
    assert inbox.enqueue_received(engine, broker) == 0, "within the grace period, the web may still be enqueuing it"
    assert inbox.enqueue_received(engine, broker, older_than=0) == 1
    assert sql("SELECT status FROM payment_events") == [("enqueued",)]
    assert [task_id for _, task_id, _ in queued()] == [inbox.task_id_for("pay_inbox_down")]


def test_unmapped_payments_are_counted_until_a_purchase_exists(engine: Engine, broker: Celery, sql) -> None:
    intent = s.new_intent()
    half = {**s.stripe_intent(intent, None, None), "metadata": {"student_id": str(uuid.uuid4())}}
    body = s.encode(s.stripe_event("payment_intent.succeeded", half))
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
        paid(payment_id="pay_cli_mapped"),
        s.encode(s.razorpay_paid(str(uuid.uuid4()), None, "pay_cli_unmapped")),
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
    assert "evt_a: enqueued" in replayed.stdout
    assert "evt_b: unmapped: its server-set notes/metadata name student_id but not course_id" in replayed.stdout
    assert [task_id for _, task_id, _ in queued()] == [inbox.task_id_for("pay_cli_mapped")]
    missing = kc("inbox", "replay", "razorpay", "evt_none", **env)
    assert missing.returncode == 1 and "evt_none: not found" in missing.stdout


def test_inbox_replay_under_kc_stripe_livemode_leaves_the_other_modes_events_alone(
    database_url: str, engine: Engine, broker: Celery, sql
) -> None:
    """Stored while no mode was set; replayed by an operator whose endpoint now takes live
    events only: the test-mode payment grants nothing, the live one is enqueued."""
    test_mode, live = s.new_intent(), s.new_intent()
    for intent, livemode, event_id in ((test_mode, False, "evt_test_mode"), (live, True, "evt_live")):
        obj = s.stripe_intent(intent, str(uuid.uuid4()), str(uuid.uuid4()))
        body = s.encode(s.stripe_event("payment_intent.succeeded", obj, event_id=event_id, livemode=livemode))
        inbox.receive(engine, broker, stripe.parse(body), body)
    queued()

    env = {"DATABASE_URL": database_url, "CELERY_BROKER_URL": AMQP, "KC_STRIPE_LIVEMODE": "true"}
    replayed = kc("inbox", "replay", "stripe", "evt_test_mode", "evt_live", **env)

    assert replayed.returncode == 0, replayed.stderr
    assert (
        "evt_test_mode: ignored: an event of the other Stripe mode: a test-mode event; "
        "this endpoint takes live events only" in replayed.stdout
    )
    assert "evt_live: enqueued" in replayed.stdout
    assert sql("SELECT event_id, status FROM payment_events ORDER BY event_id") == [
        ("evt_live", "enqueued"),
        ("evt_test_mode", "ignored"),
    ]
    assert [task_id for _, task_id, _ in queued()] == [inbox.task_id_for(live)]


def paid_naming(student: str | None, course: str | None) -> tuple[Any, bytes]:
    body = s.encode(s.razorpay_paid(student, course, "pay_naming"))
    return razorpay.parse(body, "evt_naming"), body


def session_naming(metadata: dict[str, str]) -> tuple[Any, bytes]:
    session = {**s.stripe_session("pi_naming", None, None), "metadata": metadata}
    body = s.encode(s.stripe_event("checkout.session.completed", session, event_id="evt_naming"))
    return stripe.parse(body), body


STUDENT, COURSE = "9b2f7c1e-55aa-4c1d-8e0f-3a6b2d4c8e11", "0d5e8a3c-1f2b-4e6d-9a7c-5b3e1d2f4a60"


@pytest.mark.parametrize(
    ("arrival", "status", "why"),
    [
        (lambda: paid_naming(None, None), "ignored", "not a course purchase: its server-set notes/metadata name"),
        (lambda: session_naming({"plan": "pro"}), "ignored", "not a course purchase: its server-set notes/metadata"),
        (lambda: paid_naming(STUDENT, None), "unmapped", "its server-set notes/metadata name student_id but not"),
        (lambda: paid_naming(None, COURSE), "unmapped", "its server-set notes/metadata name course_id but not"),
        (lambda: paid_naming(STUDENT, "python-101"), "unmapped", "its server-set course_id is not a UUID"),
        (lambda: session_naming({"student_id": STUDENT}), "unmapped", "its server-set notes/metadata name student_id"),
    ],
    ids=["razorpay-neither", "stripe-neither", "only-student", "only-course", "not-a-uuid", "stripe-only-student"],
)
def test_a_payment_naming_no_course_is_ignored_quietly_and_a_half_named_one_is_unmapped_with_a_warning(
    arrival: Any, status: str, why: str, engine: Engine, broker: Celery, sql, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="kc_tasks")
    event, body = arrival()
    receipt = inbox.receive(engine, broker, event, body)

    assert (receipt.status, receipt.task_id) == (status, None)
    assert receipt.why is not None and receipt.why.startswith(why)
    assert sql("SELECT event_id, status FROM payment_events") == [("evt_naming", status)]
    assert inbox.unmapped_count(engine) == (1 if status == "unmapped" else 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if status == "ignored":
        assert warnings == [], "another product's payment is nothing to warn about"
        assert f"ignored: {receipt.why}" in caplog.text
    else:
        [warning] = warnings
        assert f"was paid but {receipt.why}, so it grants nothing" in warning
    assert queued() == []


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
    seen: Any,
    app_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="kc_tasks")
    body = s.encode(s.razorpay_paid(None, str(uuid.uuid4()), "pay_beat_unmapped"))
    run_sql(
        app_database,
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body) "
        "VALUES ('razorpay', 'evt_beat', 'order.paid', 'pay_beat_unmapped', 'unmapped', %s)",
        (body.decode(),),
    )
    task_id = celery_app.send_task("kc_tasks.verify_purchase_index", queue="purchases").id
    seen.wait(task_id)
    assert seen.results[task_id]["unmapped"] == 1
    assert "1 paid payment(s) grant nothing" in caplog.text
    assert "kc-tasks inbox list --status unmapped" in caplog.text
