"""Razorpay's and Stripe's webhooks, signed by their official libraries, through a real web
process (uvicorn) and real workers: one purchase per payment, repeats and sibling events
included; a full refund or a lost dispute revokes it, whichever arrives first. Only what the
platform's server set grants: a Razorpay order's notes (never the payment's own, which the
browser sets), a Stripe session's or PaymentIntent's metadata, of the configured Stripe mode."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from celery import Celery

from kc_tasks.payments.inbox import task_id_for
from tests import provider_samples as s
from tests.builders import SECRETS, evt
from tests.e2e.proxy import Proxy
from tests.harness import Web, Workers, courses_of, kc_tasks_command, post_razorpay, post_stripe, wait_until
from tests.services import AMQP, broker_idle, purchases_of, queued, run_sql

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))


def inbox(database_url: str, where: str = "true", params: tuple | None = None) -> list[tuple]:
    return run_sql(
        database_url,
        f"SELECT provider, event_id, type, payment_id, status FROM payment_events WHERE {where} ORDER BY received_at",
        params,
    )


def test_razorpay_and_stripe_payments_become_one_purchase_each_and_refunds_revoke_them(
    database_url: str, workers: Workers, broker_url: str, webs: Callable[..., Web], db_route: Callable[[str], str]
) -> None:
    workers.start(db_route(database_url), broker_url)
    web = webs(db_route(database_url), broker_url, **SECRETS)
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    order_paid = s.razorpay_paid(student, course, extra_notes={"coupon": "DIWALI"})
    payment = order_paid["payload"]["payment"]["entity"]
    paid_event, captured_event = evt(), evt()
    first = post_razorpay(web, order_paid, paid_event)
    assert first.status_code == 200 and first.json()["status"] == "enqueued"
    assert post_razorpay(web, order_paid, paid_event).json()["task_id"] == first.json()["task_id"], "a retry"
    captured = post_razorpay(web, s.razorpay_event("payment.captured", payment), captured_event)
    assert captured.status_code == 200 and captured.json() == {"event_id": captured_event, "status": "ignored"}

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
    refund = s.razorpay_refund(refunded)
    refund_event = s.razorpay_event("refund.processed", refunded, refund=refund)
    assert post_razorpay(web, refund_event, evt()).json()["status"] == "enqueued"
    assert post_stripe(web, s.stripe_event("charge.refunded", s.stripe_charge(intent))).status_code == 200
    assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(False, 49900, "INR")], timeout=30)
    assert wait_until(lambda: purchases_of(database_url, intent) == [(False, 99900, "INR")], timeout=30)
    assert wait_until(
        lambda: run_sql(database_url, "SELECT count(*) FROM event_outbox WHERE type = 'purchase.revoked'") == [(2,)]
    )
    assert sorted(run_sql(database_url, "SELECT payment_id, reason, refund_id FROM revocations")) == sorted(
        [(payment["id"], "refund", refund["id"]), (intent, "refund", None)]
    ), "Stripe's current API version embeds no refund in the charge"
    assert wait_until(
        lambda: (
            [row[2:] for row in inbox(database_url, "provider = 'razorpay'")]
            == [
                ("order.paid", payment["id"], "enqueued"),
                ("payment.captured", payment["id"], "ignored"),
                ("refund.processed", payment["id"], "enqueued"),
            ]
        )
    ), "the web marks what it enqueued once the broker took it; the worker may be quicker"
    assert wait_until(lambda: [row[4] for row in inbox(database_url, "provider = 'stripe'")] == ["enqueued"] * 3)

    again = s.razorpay_paid(student, course)
    assert post_razorpay(web, again, evt()).status_code == 200
    again_id = again["payload"]["payment"]["entity"]["id"]
    assert wait_until(lambda: purchases_of(database_url, again_id) == [(True, 49900, "INR")], timeout=30), (
        "after a refund, a new payment buys the course again"
    )
    log = web.text()
    assert s.RAZORPAY_SECRET not in log and s.STRIPE_SECRET not in log


def holdings(database_url: str) -> list[tuple]:
    return run_sql(
        database_url,
        "SELECT student_id::text, course_id::text, payment_id, is_active FROM student_course_purchases "
        "ORDER BY created_at",
    )


def test_a_browser_that_rewrites_the_payments_notes_gets_only_the_course_of_the_order(
    database_url: str, workers: Workers, broker_url: str, webs: Callable[..., Web]
) -> None:
    """Razorpay Checkout lets the browser set a payment's own notes: a buyer of the cheap
    course names the expensive one (and a friend) there. Razorpay sends payment.captured and
    order.paid for the payment; only the order's notes, which the platform's server set, decide."""
    workers.start(database_url, broker_url)
    web = webs(database_url, broker_url, **SECRETS)
    student, cheap = str(uuid.uuid4()), str(uuid.uuid4())
    friend, expensive = str(uuid.uuid4()), str(uuid.uuid4())
    order_paid = s.razorpay_paid(student, cheap, payment_notes={"student_id": friend, "course_id": expensive})
    payment = order_paid["payload"]["payment"]["entity"]
    alone = s.razorpay_payment(notes={"student_id": student, "course_id": expensive})

    answers = [
        post_razorpay(web, s.razorpay_event("payment.captured", payment), evt()),
        post_razorpay(web, order_paid, evt()),
        post_razorpay(web, s.razorpay_event("payment.captured", alone), evt()),
    ]

    assert wait_until(lambda: holdings(database_url) == [(student, cheap, payment["id"], True)], timeout=30), (
        f"the order's course only, never the browser's: {holdings(database_url)}"
    )
    assert wait_until(lambda: broker_idle(broker_url))
    assert holdings(database_url) == [(student, cheap, payment["id"], True)]
    assert [(a.status_code, a.json()["status"]) for a in answers] == [
        (200, "ignored"),
        (200, "enqueued"),
        (200, "ignored"),
    ]
    assert wait_until(
        lambda: (
            [row[2:] for row in inbox(database_url)]
            == [
                ("payment.captured", payment["id"], "ignored"),
                ("order.paid", payment["id"], "enqueued"),
                ("payment.captured", alone["id"], "ignored"),
            ]
        )
    )
    assert courses_of(web, student) == [cheap]
    assert courses_of(web, friend) == []


def test_with_kc_stripe_livemode_true_only_live_events_act(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """A leaked test-mode endpoint secret must not grant real courses, nor revoke them."""
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, KC_STRIPE_LIVEMODE="true", **SECRETS)
    test_mode, live = s.new_intent(), s.new_intent()
    student = str(uuid.uuid4())
    test_event = s.stripe_event(
        "checkout.session.completed", s.stripe_session(test_mode, student, str(uuid.uuid4())), livemode=False
    )
    live_event = s.stripe_event(
        "checkout.session.completed", s.stripe_session(live, student, str(uuid.uuid4())), livemode=True
    )

    test_answer, live_answer = post_stripe(web, test_event), post_stripe(web, live_event)
    assert wait_until(lambda: purchases_of(database_url, live) == [(True, 99900, "INR")], timeout=30)
    refund = s.stripe_event("charge.refunded", s.stripe_charge(live), livemode=False)
    refund_answer = post_stripe(web, refund)
    assert wait_until(lambda: broker_idle(rabbitmq_url))

    assert test_answer.status_code == 200 and test_answer.json() == {"event_id": test_event["id"], "status": "ignored"}
    assert live_answer.status_code == 200 and live_answer.json()["status"] == "enqueued"
    assert refund_answer.status_code == 200 and refund_answer.json()["status"] == "ignored"
    assert purchases_of(database_url, test_mode) == []
    assert purchases_of(database_url, live) == [(True, 99900, "INR")], "a test-mode refund revokes nothing"
    assert wait_until(
        lambda: (
            [row[1:] for row in inbox(database_url)]
            == [
                (test_event["id"], "checkout.session.completed", test_mode, "ignored"),
                (live_event["id"], "checkout.session.completed", live, "enqueued"),
                (refund["id"], "charge.refunded", live, "ignored"),
            ]
        )
    )


def test_a_free_stripe_checkout_is_a_purchase_under_its_session_id(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """A fully discounted course: no PaymentIntent, the Checkout Session is the payment."""
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **SECRETS)
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    session = s.stripe_session(None, student, course, payment_status="no_payment_required", amount_total=0)

    answer = post_stripe(web, s.stripe_event("checkout.session.completed", session))

    assert answer.status_code == 200 and answer.json()["status"] == "enqueued"
    assert session["id"].startswith("cs_")
    assert wait_until(lambda: purchases_of(database_url, session["id"]) == [(True, 0, "INR")], timeout=30)
    assert holdings(database_url) == [(student, course, session["id"], True)]
    assert courses_of(web, student) == [course]


def test_a_lost_dispute_revokes_the_purchase_and_a_won_one_leaves_it(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **SECRETS)
    razorpay_lost, razorpay_won = (s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(2))
    stripe_lost, stripe_won = s.new_intent(), s.new_intent()
    for order_paid in (razorpay_lost, razorpay_won):
        assert post_razorpay(web, order_paid, evt()).json()["status"] == "enqueued"
    for intent in (stripe_lost, stripe_won):
        session = s.stripe_session(intent, str(uuid.uuid4()), str(uuid.uuid4()))
        assert post_stripe(web, s.stripe_event("checkout.session.completed", session)).json()["status"] == "enqueued"
    lost, won = (p["payload"]["payment"]["entity"] for p in (razorpay_lost, razorpay_won))
    every = [lost["id"], won["id"], stripe_lost, stripe_won]
    assert wait_until(lambda: all([row[0] for row in purchases_of(database_url, p)] == [True] for p in every))

    answers = [
        post_razorpay(web, s.razorpay_event("payment.dispute.won", won, dispute=s.razorpay_dispute(won, "won")), evt()),
        post_stripe(web, s.stripe_event("charge.dispute.closed", s.stripe_dispute(stripe_won, "won"))),
        post_razorpay(web, s.razorpay_event("payment.dispute.lost", lost, dispute=s.razorpay_dispute(lost)), evt()),
        post_stripe(web, s.stripe_event("charge.dispute.closed", s.stripe_dispute(stripe_lost, "lost"))),
    ]

    assert [a.json()["status"] for a in answers] == ["ignored", "ignored", "enqueued", "enqueued"]
    assert wait_until(lambda: purchases_of(database_url, lost["id"]) == [(False, 49900, "INR")], timeout=30)
    assert wait_until(lambda: purchases_of(database_url, stripe_lost) == [(False, 99900, "INR")], timeout=30)
    assert wait_until(lambda: broker_idle(rabbitmq_url))
    assert purchases_of(database_url, won["id"]) == [(True, 49900, "INR")], "a won dispute leaves the course"
    assert purchases_of(database_url, stripe_won) == [(True, 99900, "INR")]
    assert sorted(run_sql(database_url, "SELECT payment_id, reason, refund_id FROM revocations")) == sorted(
        [(lost["id"], "dispute", None), (stripe_lost, "dispute", None)]
    )
    revoked = run_sql(
        database_url, "SELECT data->>'payment_id', data->>'reason' FROM event_outbox WHERE type = 'purchase.revoked'"
    )
    assert sorted(revoked) == sorted([(lost["id"], "dispute"), (stripe_lost, "dispute")])


def test_a_burst_of_webhooks_with_repeats_makes_one_purchase_and_one_stored_event_each(
    database_url: str, workers: Workers, broker_url: str, webs: Callable[..., Web]
) -> None:
    """A flash sale: many signed events at once, each sent twice at the same moment (Razorpay
    delivers at least once), stored and enqueued by the web in shared batches."""
    workers.start(database_url, broker_url)
    web = webs(database_url, broker_url, **SECRETS)
    events = [s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(25)]
    payments = [event["payload"]["payment"]["entity"] for event in events]
    requests = []
    for event, payment in zip(events, payments, strict=True):
        body = s.encode(event)
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
    order_paid = s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()))
    payment = order_paid["payload"]["payment"]["entity"]
    refunded = dict(payment, amount_refunded=payment["amount"], refund_status="full")
    assert post_razorpay(web, s.razorpay_event("refund.processed", refunded), evt()).status_code == 200
    intent = s.new_intent()
    assert post_stripe(web, s.stripe_event("charge.refunded", s.stripe_charge(intent))).status_code == 200
    assert wait_until(lambda: run_sql(database_url, "SELECT count(*) FROM revocations") == [(2,)], timeout=30)
    assert post_razorpay(web, order_paid, evt()).status_code == 200
    session = s.stripe_session(intent, str(uuid.uuid4()), str(uuid.uuid4()))
    assert post_stripe(web, s.stripe_event("checkout.session.completed", session)).status_code == 200
    assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(False, 49900, "INR")], timeout=30)
    assert wait_until(lambda: purchases_of(database_url, intent) == [(False, 99900, "INR")], timeout=30)


def test_the_provider_routes_refuse_forgeries_and_store_what_is_verified(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    web = webs(database_url, rabbitmq_url, **SECRETS)
    event = s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()))
    payment = event["payload"]["payment"]["entity"]
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

    half = s.razorpay_paid(str(uuid.uuid4()), None)
    unmapped = half["payload"]["payment"]["entity"]["id"]
    answer = post_razorpay(web, half, "evt_unmapped")
    assert answer.status_code == 200 and answer.json()["status"] == "unmapped"
    mug = s.razorpay_paid(None, None, extra_notes={"sku": "mug-42"})
    not_a_course = mug["payload"]["payment"]["entity"]["id"]
    assert post_razorpay(web, mug, "evt_mug").json() == {"event_id": "evt_mug", "status": "ignored"}
    partial = dict(payment, amount_refunded=100, refund_status="partial")
    partial_refund = s.razorpay_event("refund.processed", partial, refund=s.razorpay_refund(partial, 100))
    assert post_razorpay(web, partial_refund, "evt_partial").json()["status"] == "ignored"
    unpaid = s.stripe_session(s.new_intent(), str(uuid.uuid4()), str(uuid.uuid4()), paid=False)
    assert post_stripe(web, s.stripe_event("checkout.session.completed", unpaid)).json()["status"] == "ignored"
    bad_currency = dict(s.stripe_intent(s.new_intent(), str(uuid.uuid4()), str(uuid.uuid4())), currency="rupee")
    assert post_stripe(web, s.stripe_event("payment_intent.succeeded", bad_currency)).json()["status"] == "invalid"
    [(stored_body,)] = run_sql(database_url, "SELECT body FROM payment_events WHERE event_id = 'evt_unmapped'")
    assert stored_body.encode() == s.encode(half), "byte for byte"
    no_header = s.encode(s.razorpay_event("payment.failed", payment))
    assert (
        httpx.post(
            web.base + "/webhooks/razorpay", content=no_header, headers=s.razorpay_headers(no_header)
        ).status_code
        == 200
    )
    assert inbox(database_url, "type = 'payment.failed'")[0][1] == hashlib.sha256(no_header).hexdigest()
    log = web.text().splitlines()
    [warned] = [line for line in log if unmapped in line]
    assert "WARNING" in warned
    assert f"payment {unmapped} was paid but its server-set notes/metadata name student_id but not course_id" in warned
    assert not [line for line in log if not_a_course in line and "WARNING" in line], "another product: no warning"


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
    events = [s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(3)]
    payments = [event["payload"]["payment"]["entity"] for event in events]
    for event in events:
        answer = post_razorpay(web, event, evt())
        assert answer.status_code == 200 and answer.json()["status"] == "received"
    assert [row[4] for row in inbox(database_url)] == ["received"] * 3
    proxy.restore()
    workers.start(database_url, rabbitmq_url)
    Celery(broker=rabbitmq_url).send_task("kc_tasks.relay_inbox", kwargs={"older_than": 0}, queue="purchases")
    assert wait_until(
        lambda: all(purchases_of(database_url, p["id"]) == [(True, 49900, "INR")] for p in payments), timeout=30
    )
    # The relay marks what it enqueued once the broker confirmed it: moments after.
    assert wait_until(lambda: [row[4] for row in inbox(database_url)] == ["enqueued"] * 3)
    assert wait_until(lambda: broker_idle(rabbitmq_url))
    assert run_sql(database_url, "SELECT count(*) FROM student_course_purchases") == [(3,)]
    proxy.cut()


def test_postgresql_down_is_a_503_and_the_providers_retry_is_stored_and_enqueued_once(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """While PostgreSQL is unreachable an event is answered 503, so the provider keeps it and
    retries; nothing is enqueued that is not stored. Its retry, once PostgreSQL is back, is
    stored and enqueued: nothing is lost. No worker runs: the queue shows what was sent."""
    proxy = Proxy("127.0.0.1", 5432)
    proxy.restore()
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    web = webs(proxied, rabbitmq_url, **SECRETS)
    try:
        proxy.cut()
        order_paid, event_id = s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4())), evt()
        payment = order_paid["payload"]["payment"]["entity"]["id"]
        intent = s.new_intent()
        refund = s.stripe_event("charge.refunded", s.stripe_charge(intent))
        assert post_razorpay(web, order_paid, event_id).status_code == 503
        assert post_stripe(web, refund).status_code == 503
        assert httpx.get(web.base + "/readyz").json() == {"ready": False, "database": "unreachable", "broker": "ok"}
        assert queued(rabbitmq_url) == 0, "a task was enqueued for an event that was not stored"
        proxy.restore()
        # The providers' retries of the same events, until one is answered (the first after
        # the outage may meet a connection the outage left broken).
        assert wait_until(lambda: post_razorpay(web, order_paid, event_id).status_code == 200, timeout=30)
        assert wait_until(lambda: post_stripe(web, refund).status_code == 200, timeout=30)
        assert wait_until(
            lambda: (
                inbox(database_url)
                == [
                    ("razorpay", event_id, "order.paid", payment, "enqueued"),
                    ("stripe", refund["id"], "charge.refunded", intent, "enqueued"),
                ]
            )
        ), inbox(database_url)
        assert queued(rabbitmq_url) == 2, "one task for each event, whatever the retries"
    finally:
        proxy.cut()


def test_a_subscription_its_trial_and_a_non_free_session_marked_unpaid_grant_nothing(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """Stripe's checkout.session.completed sample, in `mode` subscription: a free trial completes
    with `payment_status` no_payment_required, `amount_total` 0, no PaymentIntent, and nothing
    revokes it when the trial lapses unpaid; a paid subscription has a `subscription` and an
    `invoice`, no PaymentIntent; a setup session saves a card. And a session in `mode` payment
    marked no_payment_required whose `amount_total` is not 0. None is a course bought once:
    each is stored `ignored`, and the payment's story says why."""
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **SECRETS)
    student = str(uuid.uuid4())
    trial = s.stripe_session(
        None, student, str(uuid.uuid4()), payment_status="no_payment_required", amount_total=0, mode="subscription"
    )
    subscription = s.stripe_session(s.new_intent(), student, str(uuid.uuid4()), mode="subscription")
    setup = s.stripe_session(None, student, str(uuid.uuid4()), payment_status="no_payment_required", mode="setup")
    not_free = s.stripe_session(
        None, student, str(uuid.uuid4()), payment_status="no_payment_required", amount_total=499900
    )
    sessions = [trial, subscription, setup, not_free]

    answers = [post_stripe(web, s.stripe_event("checkout.session.completed", session)) for session in sessions]

    assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "ignored")] * 4
    assert wait_until(lambda: broker_idle(rabbitmq_url))
    assert holdings(database_url) == []
    assert courses_of(web, student) == []
    assert [row[3:] for row in inbox(database_url)] == [(session["id"], "ignored") for session in sessions]
    told = kc_tasks_command(database_url, rabbitmq_url, "payment", trial["id"]).stdout.strip().splitlines()
    assert "ignored: checkout session in mode subscription: only a one-time payment (mode payment) grants" in told[1]
    assert told[-1].startswith("not granted: its events were ignored")
    told = kc_tasks_command(database_url, rabbitmq_url, "payment", not_free["id"]).stdout
    assert "ignored: checkout session no_payment_required with amount_total 499900" in told


def test_a_razorpay_order_paid_in_three_instalments_grants_once_for_the_whole_amount(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """An order created with `partial_payment: true` for three instalments: each is its own
    payment (Razorpay's payment.captured sample), and the order after it (the order entity's
    documented `amount_paid`, `amount_due`, and `status` `attempted` until the order is paid in
    full, `paid` then) comes with order.paid. Only the order paid in full grants, for its
    `amount_paid`, under the payment that completed it; the earlier instalments grant nothing,
    and the last one is no duplicate payment of the first."""
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **SECRETS)
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    order_id = "order_" + uuid.uuid4().hex[:14]
    payments = [s.razorpay_payment(order_id=order_id, created_at=1732520000 + 60 * n) for n in range(3)]
    answers = []
    for n, payment in enumerate(payments, start=1):
        order = s.razorpay_order(payment, student, course, amount=3 * 49900, amount_paid=n * 49900)
        answers.append(post_razorpay(web, s.razorpay_event("payment.captured", payment), evt()))
        answers.append(post_razorpay(web, s.razorpay_event("order.paid", payment, order), evt()))
        if n < 3:
            assert wait_until(lambda: broker_idle(rabbitmq_url))
            assert holdings(database_url) == [], f"nothing after instalment {n}"

    assert [a.json()["status"] for a in answers] == ["ignored"] * 5 + ["enqueued"]
    assert wait_until(lambda: purchases_of(database_url, payments[2]["id"]) == [(True, 149700, "INR")])
    assert wait_until(lambda: broker_idle(rabbitmq_url))
    assert holdings(database_url) == [(student, course, payments[2]["id"], True)]
    assert run_sql(database_url, "SELECT count(*) FROM duplicate_payments") == [(0,)]
    assert courses_of(web, student) == [course]
    told = kc_tasks_command(database_url, rabbitmq_url, "payment", payments[0]["id"]).stdout
    assert f"order not paid in full: order {order_id} (status attempted) has 49900 of 149700 paid" in told
