"""A payment's story, read from real PostgreSQL rows and a real dead-letter queue."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks.core import names
from kc_tasks.core.payload import parse_purchase, parse_revocation
from kc_tasks.payments import inbox, story
from kc_tasks.store import dead_letters
from kc_tasks.store.index_guard import IndexGuard
from kc_tasks.worker.purchases import create_purchase
from kc_tasks.worker.revocations import revoke
from tests import provider_samples as s
from tests.harness import kc
from tests.services import AMQP
from tests.services import take_queued as queued


def test_a_duplicate_payment_tells_which_payment_holds_the_course(engine: Engine, broker: Celery, sql) -> None:
    student, course, held = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body, received_at) "
        "VALUES ('stripe', 'evt_1', 'payment_intent.succeeded', 'pi_second', 'enqueued', '{}', "
        "now() - interval '1 min')"
    )
    sql(
        "INSERT INTO duplicate_payments (payment_id, purchase_id, held_payment_id, student_id, course_id, "
        "amount_cents, currency) VALUES ('pi_second', %s, 'pi_first', %s, %s, 99900, 'INR')",
        (held, student, course),
    )
    told = story.tell(engine, broker, "pi_second")
    assert [e.source for e in told.entries] == ["inbox", "duplicate"], "oldest first"
    assert told.verdict == ("not granted: duplicate payment; the student already holds the course by payment pi_first")
    assert told.text().splitlines()[-1] == told.verdict


def test_a_dead_letter_carrying_the_payment_id_is_in_the_story(engine: Engine, broker: Celery, sql) -> None:
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body) "
        "VALUES ('kc', 'evt_dl', 'payment.succeeded', 'pay_dead', 'enqueued', '{}')"
    )
    letter = dead_letters.DeadLetter(
        task="kc_tasks.create_purchase",
        task_id=str(uuid.uuid4()),
        kwargs={"payment_id": "pay_dead", "currency": "rupees"},
        error_type="InvalidPurchase",
        error_message="currency: must be three upper-case letters",
        reason=names.PERMANENT,
    )
    dead_letters.publish(broker, letter)
    dead_letters.publish(broker, dead_letters.DeadLetter(None, None, {"payment_id": "other"}, "E", "m", "r"))

    told = story.tell(engine, broker, "pay_dead")
    assert [e.source for e in told.entries] == ["inbox", "dead letter"]
    assert letter.id in told.entries[1].text
    assert told.verdict.startswith("not granted: dead-lettered (InvalidPurchase: currency")
    assert dead_letters.depth(broker) == 2, "reading the story leaves the dead letters where they were"


def test_the_story_without_a_broker_still_answers(engine: Engine, sql) -> None:
    sql(
        "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'pay_ok', 100, 'INR')"
    )
    told = story.tell(engine, Celery(broker="amqp://guest:guest@127.0.0.1:1//"), "pay_ok")
    assert told.verdict == "granted"
    assert told.unread == ["dead letters: the broker is unreachable"]
    assert story.tell(engine, None, "pay_never_seen").verdict == "unknown"


def receive(engine: Engine, broker: Celery, provider: str, body: bytes, event_id: str | None = None, **mode: Any):
    """The event stored as the webhook stores it (`mode`: stripe_livemode, as KC_STRIPE_LIVEMODE)."""
    return inbox.receive(engine, broker, inbox.parse(provider, body, event_id, **mode), body)


def entries(told: story.Story) -> list[tuple[str, str]]:
    return [(e.source, e.text) for e in told.entries]


def test_a_payment_that_is_not_a_course_purchase_says_so(engine: Engine, broker: Celery) -> None:
    body = s.encode(s.razorpay_paid(None, None, "pay_mug", extra_notes={"sku": "mug-42"}))
    assert receive(engine, broker, "razorpay", body, "evt_mug").status == "ignored"

    told = story.tell(engine, broker, "pay_mug")

    assert entries(told) == [
        (
            "inbox",
            "razorpay event order.paid: ignored: not a course purchase: its server-set notes/metadata name no "
            "student_id or course_id (id evt_mug)",
        )
    ]
    assert (
        told.verdict == "not granted: not a course purchase (its server-set notes/metadata name no student or course)"
    )


def test_an_event_of_the_other_stripe_mode_says_so_in_the_payment_command(
    database_url: str, engine: Engine, broker: Celery
) -> None:
    """Stored ignored by a web process with KC_STRIPE_LIVEMODE=true; the operator's command
    tells why, as the stored body reads."""
    intent = s.new_intent()
    obj = s.stripe_intent(intent, str(uuid.uuid4()), str(uuid.uuid4()))
    body = s.encode(s.stripe_event("payment_intent.succeeded", obj, event_id="evt_test_mode", livemode=False))
    assert receive(engine, broker, "stripe", body, stripe_livemode=True).status == "ignored"

    told = story.tell(engine, broker, intent)
    shown = kc("payment", intent, DATABASE_URL=database_url, CELERY_BROKER_URL=AMQP, KC_STRIPE_LIVEMODE="true")

    assert entries(told) == [
        (
            "inbox",
            "stripe event payment_intent.succeeded: ignored: an event of the other Stripe mode: a test-mode event; "
            "this endpoint takes live events only (id evt_test_mode)",
        )
    ]
    assert told.verdict == "not granted: an event of the other Stripe mode (KC_STRIPE_LIVEMODE)"
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1] == told.verdict


def test_a_lost_dispute_tells_the_revocation_and_its_reason(engine: Engine, broker: Celery) -> None:
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    order_paid = s.razorpay_paid(student, course, "pay_disputed")
    payment = order_paid["payload"]["payment"]["entity"]
    lost = s.razorpay_event("payment.dispute.lost", payment, dispute=s.razorpay_dispute(payment, "lost"))
    receipt = receive(engine, broker, "razorpay", s.encode(order_paid), "evt_paid")
    [(_, _, kwargs)] = queued()
    create_purchase(engine, IndexGuard(300), parse_purchase(kwargs))
    assert receive(engine, broker, "razorpay", s.encode(lost), "evt_lost").status == "enqueued"
    [(_, _, kwargs)] = queued()
    revoke(engine, parse_revocation(kwargs))

    told = story.tell(engine, broker, "pay_disputed")

    assert receipt.status == "enqueued"
    assert ("inbox", "razorpay event payment.dispute.lost: enqueued (id evt_lost)") in entries(told)
    assert ("revocation", "revocation recorded: dispute") in entries(told)
    assert [e.text for e in told.entries if e.source == "event"] == [
        "purchase.created written (not published yet)",
        "purchase.revoked written (not published yet)",
    ]
    assert told.verdict == "not granted: revoked (dispute)"


def test_ignored_and_unmapped_events_carry_their_why(engine: Engine, broker: Celery) -> None:
    tampered = {"student_id": str(uuid.uuid4()), "course_id": str(uuid.uuid4())}
    payment = s.razorpay_payment("pay_why", notes=tampered, refunded=100)
    captured = s.razorpay_event("payment.captured", payment)
    partial = s.razorpay_event("refund.processed", payment, refund=s.razorpay_refund(payment, 100))
    won = s.razorpay_event("payment.dispute.won", payment, dispute=s.razorpay_dispute(payment, "won"))
    for body, event_id in ((captured, "evt_c"), (partial, "evt_r"), (won, "evt_w")):
        assert receive(engine, broker, "razorpay", s.encode(body), event_id).status == "ignored"
    half = s.razorpay_paid(str(uuid.uuid4()), None, "pay_half")

    told = story.tell(engine, broker, "pay_why")
    assert receive(engine, broker, "razorpay", s.encode(half), "evt_h").status == "unmapped"
    unmapped = story.tell(engine, broker, "pay_half")

    assert sorted(text for _, text in entries(told)) == [
        "razorpay event payment.captured: ignored: payment.captured is not acted on: its notes are the browser's; "
        "order.paid makes the purchase (id evt_c)",
        "razorpay event payment.dispute.won: ignored: dispute won, not lost: the purchase stays (id evt_w)",
        "razorpay event refund.processed: ignored: partial refund: the purchase stays (id evt_r)",
    ]
    assert told.verdict == "not granted: its events were ignored (not paid, or a type kc_tasks does not act on)"
    assert entries(unmapped) == [
        (
            "inbox",
            "razorpay event order.paid: unmapped: its server-set notes/metadata name student_id but not course_id "
            "(id evt_h)",
        )
    ]
    assert unmapped.verdict == (
        "not granted: paid, but its server-set notes/metadata do not name both student_id and course_id (unmapped)"
    )


def test_a_stripe_event_found_by_reconciliation_is_told_apart_from_the_webhooks(engine: Engine, broker: Celery) -> None:
    intent = s.new_intent()
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    webhook = s.stripe_event("checkout.session.completed", s.stripe_session(intent, student, course, paid=False))
    missed = s.stripe_event("payment_intent.succeeded", s.stripe_intent(intent, student, course), "evt_missed")
    partial = s.stripe_event("charge.refunded", s.stripe_charge(intent, refunded=False, amount_refunded=100), "evt_p")
    receive(engine, broker, "stripe", s.encode(webhook))
    for found in (missed, partial):  # as kc_tasks.payments.reconciler stores what the Events API gave back
        receive(engine, broker, "stripe", s.encode({**found, "kc_tasks_found_by_reconciliation": True}))

    told = story.tell(engine, broker, intent)

    assert sorted(entries(told)) == [
        (
            "inbox",
            "stripe event checkout.session.completed: ignored: checkout session not paid yet (payment_status=unpaid) "
            f"(id {webhook['id']})",
        ),
        (
            "reconcile",
            "reconciliation found stripe event charge.refunded (no webhook brought it): ignored: partial refund: "
            "the purchase stays (id evt_p)",
        ),
        (
            "reconcile",
            "reconciliation found stripe event payment_intent.succeeded (no webhook brought it): enqueued "
            "(id evt_missed)",
        ),
    ]
    assert told.verdict == "not granted: enqueued, no outcome yet (if this lasts, run kc-tasks reconcile)"
