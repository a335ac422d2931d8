"""Razorpay's and Stripe's webhooks, signed by their official libraries, through a real web
process (uvicorn) and real workers: one purchase per payment, repeats and sibling events
included; a full refund revokes it, whichever arrives first."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from celery import Celery

from kc_tasks.inbox import task_id_for
from tests import provider_samples as s
from tests.conftest import AMQP, broker_idle, run_sql
from tests.e2e.conftest import Web, Workers, wait_until
from tests.e2e.proxy import Proxy

SECRETS = {
    "KC_RAZORPAY_WEBHOOK_SECRET": f"old-razorpay-secret, {s.RAZORPAY_SECRET}",
    "KC_STRIPE_WEBHOOK_SECRET": f"whsec_old,{s.STRIPE_SECRET}",
}


def post_razorpay(
    web: Web, event: dict[str, Any], event_id: str | None = None, secret: str = s.RAZORPAY_SECRET
) -> httpx.Response:
    body = s.encode(event)
    return httpx.post(
        web.base + "/webhooks/razorpay", content=body, headers=s.razorpay_headers(body, secret, event_id), timeout=30
    )


def post_stripe(web: Web, event: dict[str, Any], secret: str = s.STRIPE_SECRET) -> httpx.Response:
    body = s.encode(event)
    return httpx.post(web.base + "/webhooks/stripe", content=body, headers=s.stripe_headers(body, secret), timeout=30)


def purchases_of(database_url: str, payment_id: str) -> list[tuple]:
    return run_sql(
        database_url,
        "SELECT is_active, amount_cents, currency FROM student_course_purchases WHERE payment_id = %s",
        (payment_id,),
    )


def inbox(database_url: str, where: str = "true", params: tuple | None = None) -> list[tuple]:
    return run_sql(
        database_url,
        f"SELECT provider, event_id, type, payment_id, status FROM payment_events WHERE {where} ORDER BY received_at",
        params,
    )


def evt() -> str:
    return "evt_" + uuid.uuid4().hex[:14]


def test_razorpay_and_stripe_payments_become_one_purchase_each_and_refunds_revoke_them(
    database_url: str, workers: Workers, broker_url: str, webs: Callable[..., Web]
) -> None:
    workers.start(database_url, broker_url)
    web = webs(database_url, broker_url, **SECRETS)
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    payment = s.razorpay_payment(student=student, course=course, extra_notes={"coupon": "DIWALI"})
    captured, order_paid = evt(), evt()
    first = post_razorpay(web, s.razorpay_event("payment.captured", payment), captured)
    assert first.status_code == 200 and first.json()["status"] == "enqueued"
    assert post_razorpay(web, s.razorpay_event("payment.captured", payment), captured).status_code == 200
    assert (
        post_razorpay(web, s.razorpay_event("order.paid", payment), order_paid).json()["task_id"]
        == first.json()["task_id"]
    )

    intent = s.new_intent()
    stripe_student, stripe_course = str(uuid.uuid4()), str(uuid.uuid4())
    session_event = s.stripe_event(
        "checkout.session.completed", s.stripe_session(intent, stripe_student, stripe_course)
    )
    assert post_stripe(web, session_event).status_code == 200
    assert post_stripe(web, session_event).status_code == 200, "Stripe's retry of the same event"
    sibling = s.stripe_event("payment_intent.succeeded", s.stripe_intent(intent, stripe_student, stripe_course))
    assert post_stripe(web, sibling).status_code == 200

    assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(True, 49900, "INR")], timeout=30)
    assert wait_until(lambda: purchases_of(database_url, intent) == [(True, 99900, "INR")], timeout=30)
    metadata = run_sql(
        database_url, "SELECT metadata FROM student_course_purchases WHERE payment_id = %s", (payment["id"],)
    )
    assert metadata == [({"coupon": "DIWALI"},)]

    refunded = dict(payment, amount_refunded=payment["amount"], refund_status="full", status="refunded")
    assert post_razorpay(web, s.razorpay_event("refund.processed", refunded), evt()).json()["status"] == "enqueued"
    assert post_stripe(web, s.stripe_event("charge.refunded", s.stripe_charge(intent))).status_code == 200
    assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(False, 49900, "INR")], timeout=30)
    assert wait_until(lambda: purchases_of(database_url, intent) == [(False, 99900, "INR")], timeout=30)
    assert wait_until(
        lambda: run_sql(database_url, "SELECT count(*) FROM event_outbox WHERE type = 'purchase.revoked'") == [(2,)]
    )
    assert len(inbox(database_url, "provider = 'razorpay' AND event_id = %s", (captured,))) == 1
    assert wait_until(lambda: [row[4] for row in inbox(database_url, "provider = 'stripe'")] == ["enqueued"] * 3)

    again = s.razorpay_payment(student=student, course=course)
    assert post_razorpay(web, s.razorpay_event("payment.captured", again), evt()).status_code == 200
    assert wait_until(lambda: purchases_of(database_url, again["id"]) == [(True, 49900, "INR")], timeout=30), (
        "after a refund, a new payment buys the course again"
    )
    log = web.text()
    assert s.RAZORPAY_SECRET not in log and s.STRIPE_SECRET not in log


def test_a_burst_of_webhooks_with_repeats_makes_one_purchase_and_one_stored_event_each(
    database_url: str, workers: Workers, broker_url: str, webs: Callable[..., Web]
) -> None:
    """A flash sale: many signed events at once, each sent twice at the same moment (Razorpay
    delivers at least once), stored and enqueued by the web in shared batches."""
    workers.start(database_url, broker_url)
    web = webs(database_url, broker_url, **SECRETS)
    payments = [s.razorpay_payment(student=str(uuid.uuid4()), course=str(uuid.uuid4())) for _ in range(25)]
    requests = []
    for payment in payments:
        body = s.encode(s.razorpay_event("payment.captured", payment))
        requests += [(body, s.razorpay_headers(body, event_id=f"evt_burst_{payment['id']}"))] * 2

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=web.base, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/webhooks/razorpay", content=body, headers=headers) for body, headers in requests)
            )

    answers = asyncio.run(send_all())
    assert [a.status_code for a in answers] == [200] * 50
    assert [a.json()["task_id"] for a in answers] == [task_id_for(p["id"]) for p in payments for _ in range(2)]
    assert sorted(a.json()["status"] for a in answers) == ["enqueued"] * 25 + ["received"] * 25, "one of each pair new"
    assert wait_until(lambda: all(purchases_of(database_url, p["id"]) == [(True, 49900, "INR")] for p in payments))
    assert wait_until(lambda: [row[4] for row in inbox(database_url)] == ["enqueued"] * 25)
    assert wait_until(lambda: broker_idle(broker_url))
    assert run_sql(database_url, "SELECT count(*) FROM student_course_purchases") == [(25,)]


def test_refunds_that_arrive_before_the_payment_leave_no_active_purchase(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **SECRETS)
    payment = s.razorpay_payment(student=str(uuid.uuid4()), course=str(uuid.uuid4()))
    refunded = dict(payment, amount_refunded=payment["amount"], refund_status="full")
    assert post_razorpay(web, s.razorpay_event("refund.processed", refunded), evt()).status_code == 200
    intent = s.new_intent()
    assert post_stripe(web, s.stripe_event("charge.refunded", s.stripe_charge(intent))).status_code == 200
    assert wait_until(lambda: run_sql(database_url, "SELECT count(*) FROM revocations") == [(2,)], timeout=30)
    assert post_razorpay(web, s.razorpay_event("payment.captured", payment), evt()).status_code == 200
    session = s.stripe_session(intent, str(uuid.uuid4()), str(uuid.uuid4()))
    assert post_stripe(web, s.stripe_event("checkout.session.completed", session)).status_code == 200
    assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(False, 49900, "INR")], timeout=30)
    assert wait_until(lambda: purchases_of(database_url, intent) == [(False, 99900, "INR")], timeout=30)


def test_the_provider_routes_refuse_forgeries_and_store_what_is_verified(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    web = webs(database_url, rabbitmq_url, **SECRETS)
    payment = s.razorpay_payment(student=str(uuid.uuid4()), course=str(uuid.uuid4()))
    event = s.razorpay_event("payment.captured", payment)
    body = s.encode(event)
    assert post_razorpay(web, event, evt(), secret="wrong").status_code == 401
    unsigned = httpx.post(web.base + "/webhooks/razorpay", content=body, headers={"X-Razorpay-Event-Id": "e"})
    assert unsigned.status_code == 401
    assert post_stripe(web, s.stripe_event("payment_intent.succeeded", {}), secret="whsec_wrong").status_code == 401
    stale = s.stripe_headers(body, timestamp=int(time.time()) - 301)
    assert httpx.post(web.base + "/webhooks/stripe", content=body, headers=stale).status_code == 401
    odd = {"Stripe-Signature": "t=x,v1=\u00e9".encode(), "Content-Type": "application/json"}
    assert httpx.post(web.base + "/webhooks/stripe", content=body, headers=odd).status_code == 401
    assert inbox(database_url) == [], "nothing stored without a good signature"

    big = s.encode(dict(event, padding="x" * (256 * 1024)))
    assert httpx.post(web.base + "/webhooks/razorpay", content=big, headers=s.razorpay_headers(big)).status_code == 413
    not_json = b"\xff\xfe not json"
    assert httpx.post(web.base + "/webhooks/stripe", content=b"[]", headers=s.stripe_headers(b"[]")).status_code == 400
    assert (
        httpx.post(
            web.base + "/webhooks/razorpay", content=not_json, headers={"X-Razorpay-Signature": "00"}
        ).status_code
        == 401
    )

    unmapped = s.razorpay_payment()
    answer = post_razorpay(web, s.razorpay_event("payment.captured", unmapped), "evt_unmapped")
    assert answer.status_code == 200 and answer.json()["status"] == "unmapped"
    partial = dict(payment, amount_refunded=100, refund_status="partial")
    assert (
        post_razorpay(web, s.razorpay_event("refund.processed", partial, 100), "evt_partial").json()["status"]
        == "ignored"
    )
    unpaid = s.stripe_session(s.new_intent(), str(uuid.uuid4()), str(uuid.uuid4()), paid=False)
    assert post_stripe(web, s.stripe_event("checkout.session.completed", unpaid)).json()["status"] == "ignored"
    bad_currency = s.stripe_intent(s.new_intent(), "not-a-uuid", str(uuid.uuid4()))
    assert post_stripe(web, s.stripe_event("payment_intent.succeeded", bad_currency)).json()["status"] == "invalid"
    [(stored_body,)] = run_sql(database_url, "SELECT body FROM payment_events WHERE event_id = 'evt_unmapped'")
    assert stored_body.encode() == s.encode(s.razorpay_event("payment.captured", unmapped)), "byte for byte"
    no_header = s.encode(s.razorpay_event("payment.failed", payment))
    assert (
        httpx.post(
            web.base + "/webhooks/razorpay", content=no_header, headers=s.razorpay_headers(no_header)
        ).status_code
        == 200
    )
    assert inbox(database_url, "type = 'payment.failed'")[0][1] == __import__("hashlib").sha256(no_header).hexdigest()
    log = web.text()
    assert f"payment {unmapped['id']} was paid but its notes/metadata lack student_id, course_id" in log
    assert "WARNING" in log.split(unmapped["id"])[0].rsplit("\n", 1)[-1]


def test_provider_routes_are_off_without_their_secret(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    web = webs(database_url, rabbitmq_url)
    body = s.encode(s.stripe_event("payment_intent.succeeded", {}))
    assert httpx.post(web.base + "/webhooks/stripe", content=body, headers=s.stripe_headers(body)).status_code == 404
    assert (
        httpx.post(web.base + "/webhooks/razorpay", content=body, headers=s.razorpay_headers(body)).status_code == 404
    )


def test_a_broker_outage_keeps_events_received_until_the_relay_enqueues_them(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    proxy = Proxy("127.0.0.1", 5672)
    proxy.restore()
    vhost = AMQP.rsplit("/", 1)[1]
    web = webs(database_url, f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}", **SECRETS)
    proxy.cut()
    payments = [s.razorpay_payment(student=str(uuid.uuid4()), course=str(uuid.uuid4())) for _ in range(3)]
    for payment in payments:
        answer = post_razorpay(web, s.razorpay_event("payment.captured", payment), evt())
        assert answer.status_code == 200 and answer.json()["status"] == "received"
    assert [row[4] for row in inbox(database_url)] == ["received"] * 3
    proxy.restore()
    workers.start(database_url, rabbitmq_url)
    relay = Celery(broker=rabbitmq_url).send_task("kc_tasks.relay_inbox", kwargs={"older_than": 0}, queue="purchases")
    assert relay.id
    assert wait_until(
        lambda: all(purchases_of(database_url, p["id"]) == [(True, 49900, "INR")] for p in payments), timeout=30
    )
    assert [row[4] for row in inbox(database_url)] == ["enqueued"] * 3
    proxy.cut()


def test_postgresql_down_is_a_503_and_nothing_is_lost(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    web = webs("postgresql://postgres@127.0.0.1:1/kc_tasks", rabbitmq_url, **SECRETS)
    payment = s.razorpay_payment(student=str(uuid.uuid4()), course=str(uuid.uuid4()))
    assert post_razorpay(web, s.razorpay_event("payment.captured", payment), evt()).status_code == 503
    body = s.encode(s.stripe_event("charge.refunded", s.stripe_charge(s.new_intent())))
    assert httpx.post(web.base + "/webhooks/stripe", content=body, headers=s.stripe_headers(body)).status_code == 503
    json.loads(httpx.get(web.base + "/healthz").text)
