"""An event id names one event, on every route that stores events, through a real web process
and a real worker: a second arrival of a stored id with the same body is a repeat, answered as
the first was; with another body it is refused with 409, logged as an error and counted
(kc_webhook_events_total{outcome="conflict"}), and nothing of it is stored or enqueued.

The finding: a `payment.refunded` sent under the id of the payment's own `payment.succeeded`
was answered 202 with a task id while nothing was stored or enqueued, and the purchase stayed
active; on the Razorpay route the id comes from the unsigned X-Razorpay-Event-Id header."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests import provider_samples as s
from tests.builders import SECRETS, purchase, signed
from tests.harness import Web, Workers, free_port, post_razorpay, post_stripe, wait_until
from tests.services import broker_idle, purchases_of, run_sql


def kc_event(event_id: str, kind: str, data: dict) -> bytes:
    return json.dumps({"id": event_id, "type": kind, "data": data}).encode()


def post_kc(web: Web, body: bytes) -> httpx.Response:
    return httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body), timeout=30)


def stored(database_url: str, event_id: str) -> list[tuple]:
    return run_sql(
        database_url, "SELECT provider, type, status, body FROM payment_events WHERE event_id = %s", (event_id,)
    )


def conflicts(metrics_port: int) -> dict[str, float]:
    """kc_webhook_events_total{outcome="conflict"} by provider, as the web process serves it."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return {
        sample.labels["provider"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "kc_webhook_events_total" and sample.labels.get("outcome") == "conflict"
    }


def error_lines(web: Web, event_id: str) -> list[str]:
    return [line for line in web.text().splitlines() if event_id in line and "ERROR" in line]


def test_a_refund_under_the_id_of_its_payment_is_refused_and_the_right_one_still_revokes(
    database_url: str, workers: Workers, broker_url: str, webs: Callable[..., Web]
) -> None:
    workers.start(database_url, broker_url)
    port = free_port()
    web = webs(database_url, broker_url, KC_WEB_METRICS_PORT=str(port))
    data = purchase()
    paid = kc_event("evt_shared_id", "payment.succeeded", data)
    first = post_kc(web, paid)
    assert first.status_code == 202
    assert wait_until(lambda: purchases_of(database_url, data["payment_id"]) == [(True, 4999, "INR")])

    refund = kc_event("evt_shared_id", "payment.refunded", {"payment_id": data["payment_id"], "refund_id": "rf_1"})
    refused = post_kc(web, refund)
    repeat = post_kc(web, paid)

    assert refused.status_code == 409, refused.text
    assert "evt_shared_id is stored with another body" in refused.json()["detail"]
    assert (repeat.status_code, repeat.json()) == (202, first.json()), "the same body again is a repeat"
    assert wait_until(
        lambda: [row[:3] for row in stored(database_url, "evt_shared_id")] == [("kc", "payment.succeeded", "enqueued")]
    ), "one row, marked enqueued by the web moments after its answer"
    assert stored(database_url, "evt_shared_id")[0][3].encode() == paid, "the first body, byte for byte"
    assert wait_until(lambda: broker_idle(broker_url))
    assert purchases_of(database_url, data["payment_id"]) == [(True, 4999, "INR")], "nothing was enqueued"
    [line] = error_lines(web, "evt_shared_id")
    assert "kc event evt_shared_id (payment.refunded" in line and "nothing stored or enqueued" in line
    assert conflicts(port)["kc"] == 1.0

    # The refund under an id of its own is stored and revokes, as ever.
    revoked = post_kc(web, kc_event("evt_refund_own_id", "payment.refunded", {"payment_id": data["payment_id"]}))
    assert revoked.status_code == 202
    assert wait_until(lambda: purchases_of(database_url, data["payment_id"]) == [(False, 4999, "INR")])


def test_the_provider_routes_refuse_a_reused_event_id_with_another_body(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """Razorpay's event id is the unsigned X-Razorpay-Event-Id header: a full refund sent under
    the id of its payment's order.paid (the samples' shapes: `refund.processed` carries the refund
    entity and the payment with `refund_status` full). Stripe's is the body's `id`."""
    workers.start(database_url, rabbitmq_url)
    port = free_port()
    web = webs(database_url, rabbitmq_url, KC_WEB_METRICS_PORT=str(port), **SECRETS)
    order_paid = s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()))
    payment = order_paid["payload"]["payment"]["entity"]
    intent = s.new_intent()
    session = s.stripe_event(
        "checkout.session.completed", s.stripe_session(intent, str(uuid.uuid4()), str(uuid.uuid4()))
    )
    assert post_razorpay(web, order_paid, "evt_rzp_1").json()["status"] == "enqueued"
    assert post_stripe(web, session).json()["status"] == "enqueued"
    assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(True, 49900, "INR")])
    assert wait_until(lambda: purchases_of(database_url, intent) == [(True, 99900, "INR")])

    refunded = dict(payment, amount_refunded=payment["amount"], refund_status="full", status="refunded")
    rzp_refund = s.razorpay_event("refund.processed", refunded, refund=s.razorpay_refund(refunded))
    stripe_refund = s.stripe_event("charge.refunded", s.stripe_charge(intent), event_id=session["id"])
    answers = [post_razorpay(web, rzp_refund, "evt_rzp_1"), post_stripe(web, stripe_refund)]
    repeats = [post_razorpay(web, order_paid, "evt_rzp_1"), post_stripe(web, session)]

    assert [a.status_code for a in answers] == [409, 409], [a.text for a in answers]
    assert [r.status_code for r in repeats] == [200, 200], "the same body again is a repeat"
    assert wait_until(
        lambda: [row[:3] for row in stored(database_url, "evt_rzp_1")] == [("razorpay", "order.paid", "enqueued")]
    )
    assert wait_until(
        lambda: (
            [row[:3] for row in stored(database_url, session["id"])]
            == [("stripe", "checkout.session.completed", "enqueued")]
        )
    )
    assert wait_until(lambda: broker_idle(rabbitmq_url))
    assert purchases_of(database_url, payment["id"]) == [(True, 49900, "INR")]
    assert purchases_of(database_url, intent) == [(True, 99900, "INR")]
    assert conflicts(port) == {"kc": 0.0, "razorpay": 1.0, "stripe": 1.0}
    assert error_lines(web, "evt_rzp_1") and error_lines(web, session["id"])

    # Under ids of their own, both refunds revoke.
    assert post_razorpay(web, rzp_refund, "evt_rzp_2").json()["status"] == "enqueued"
    assert post_stripe(web, dict(stripe_refund, id="evt_" + uuid.uuid4().hex[:24])).json()["status"] == "enqueued"
    assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(False, 49900, "INR")])
    assert wait_until(lambda: purchases_of(database_url, intent) == [(False, 99900, "INR")])


def test_concurrent_arrivals_of_one_id_in_one_batch_store_one_body_and_refuse_the_other(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """The web's writer threads store concurrent requests in shared batches: two bodies under one
    id in flight at once, each sent several times. One body is stored and every request of it is
    answered 2xx; every request of the other body is refused, whichever came first."""
    web = webs(database_url, rabbitmq_url)
    data = purchase()
    paid = kc_event("evt_raced", "payment.succeeded", data)
    refund = kc_event("evt_raced", "payment.refunded", {"payment_id": data["payment_id"]})
    bodies = [paid, refund] * 6

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=web.base, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/webhooks/payments", content=body, headers=signed(body)) for body in bodies)
            )

    answers = asyncio.run(send_all())
    [(_, _, _, body)] = stored(database_url, "evt_raced")
    kept = body.encode()
    assert kept in (paid, refund)
    assert [a.status_code for b, a in zip(bodies, answers, strict=True) if b == kept] == [202] * 6
    assert [a.status_code for b, a in zip(bodies, answers, strict=True) if b != kept] == [409] * 6
    assert len({a.json()["task_id"] for b, a in zip(bodies, answers, strict=True) if b == kept}) == 1
