"""An event id names one event, in the inbox itself (real PostgreSQL and RabbitMQ): what counts
as the same body once the stored one is redacted, when it predates its digest, and when one side
is reconciliation's rendering of the event rather than the webhook's bytes."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks.core import names
from kc_tasks.payments import inbox
from kc_tasks.payments.redaction import redact_final
from kc_tasks.providers import kc, razorpay, recovered, stripe
from tests import provider_samples as s
from tests.services import take_queued as queued


def receive(engine: Engine, broker: Celery, body: bytes, event_id: str = "evt_1", raw: bool = True) -> inbox.Receipt:
    return inbox.receive(engine, broker, razorpay.parse(body, event_id), body, raw=raw)


def test_a_redacted_event_is_still_compared_byte_for_byte_by_its_digest(engine: Engine, broker: Celery, sql) -> None:
    captured = s.encode(s.razorpay_event("payment.captured", s.razorpay_payment()))
    assert receive(engine, broker, captured).status == "ignored"
    sql("UPDATE payment_events SET received_at = now() - interval '40 days'")
    assert redact_final(engine, 30 * 86400) == 1
    [(body, digest)] = sql("SELECT body, body_sha256 FROM payment_events")
    assert s.EMAIL not in body and len(digest) == 32

    same = receive(engine, broker, captured)
    reworded = receive(engine, broker, captured.replace(b'"fee": 1180', b'"fee": 1181'))

    assert (same.status, same.new) == ("ignored", False), "the same bytes: a repeat"
    assert (reworded.status, reworded.new) == (names.CONFLICT, False), "another body, whatever it asks for"
    assert sql("SELECT count(*) FROM payment_events") == [(1,)]


def test_an_event_stored_before_its_digest_is_compared_by_what_it_asks_for(
    engine: Engine, broker: Celery, sql, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored by a release before migration 008 (no digest), and possibly redacted since: the
    same type and action is a repeat; another action is a conflict."""
    data = {"payment_id": "pay_old", "student_id": str(uuid.uuid4()), "course_id": str(uuid.uuid4())}
    data |= {"amount_cents": 4999, "currency": "INR"}
    old = json.dumps({"id": "evt_old", "type": "payment.succeeded", "data": data})
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body) "
        "VALUES ('kc', 'evt_old', 'payment.succeeded', 'pay_old', 'enqueued', %s)",
        (old,),
    )
    respaced = json.dumps({"id": "evt_old", "type": "payment.succeeded", "data": data}, indent=2).encode()
    refund = json.dumps({"id": "evt_old", "type": "payment.refunded", "data": {"payment_id": "pay_old"}}).encode()

    with caplog.at_level(logging.ERROR, "kc_tasks.payments.inbox"):
        repeat = inbox.receive(engine, broker, kc.parse(respaced), respaced)
        conflict = inbox.receive(engine, broker, kc.parse(refund), refund)

    assert (repeat.new, repeat.status, repeat.task_id) == (False, "received", inbox.task_id_for("pay_old"))
    assert (conflict.status, conflict.task_id) == (names.CONFLICT, None)
    assert queued() == [], "nothing enqueued for either"
    [record] = caplog.records
    assert (
        record.levelname == "ERROR" and "kc event evt_old (payment.refunded, payment pay_old) refused" in record.message
    )


def test_a_webhook_after_reconciliation_stored_its_event_is_compared_by_what_it_asks_for(
    engine: Engine, broker: Celery
) -> None:
    """Reconciliation stores Stripe's Events API rendering of an event (no digest: not the
    webhook's bytes); the webhook that comes late is a repeat when it asks for the same."""
    intent = s.new_intent()
    session = s.stripe_session(intent, str(uuid.uuid4()), str(uuid.uuid4()))
    webhook = s.stripe_event("checkout.session.completed", session)
    rendering = json.dumps({**webhook, "pending_webhooks": 0, recovered.FOUND_BY: True}).encode()
    found = inbox.receive(engine, broker, stripe.parse(rendering), rendering, raw=False)
    late = s.encode(webhook)
    forged = s.encode(dict(webhook, type="charge.refunded", data={"object": s.stripe_charge(intent)}))

    repeat = inbox.receive(engine, broker, stripe.parse(late), late)
    conflict = inbox.receive(engine, broker, stripe.parse(forged), forged)

    assert (found.status, found.new) == ("enqueued", True)
    assert (repeat.status, repeat.new, repeat.task_id) == ("received", False, found.task_id)
    assert conflict.status == names.CONFLICT
    assert [task_id for _, task_id, _ in queued()] == [found.task_id]


def test_one_batch_with_two_bodies_under_one_id_stores_the_first_and_refuses_the_second(
    engine: Engine, broker: Celery, sql
) -> None:
    paid = s.encode(s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()), "pay_batch"))
    payment = json.loads(paid)["payload"]["payment"]["entity"]
    refunded = dict(payment, amount_refunded=payment["amount"], refund_status="full")
    refund = s.encode(s.razorpay_event("refund.processed", refunded))
    arrivals = [(razorpay.parse(body, "evt_batch"), body) for body in (paid, refund, paid)]

    receipts = inbox.receive_many(engine, broker, arrivals)

    assert [(r.status, r.new) for r in receipts] == [("enqueued", True), (names.CONFLICT, False), ("received", False)]
    assert sql("SELECT type FROM payment_events") == [("order.paid",)]
