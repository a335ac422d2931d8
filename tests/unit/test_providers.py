"""The provider modules, table-tested over each provider's documented sample events: pure,
no services. Signatures are made with the providers' official libraries."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import pytest

from kc_tasks.providers import Event, Ignored, Malformed, Purchase, Revocation, Unmapped, kc, razorpay, stripe
from tests import provider_samples as s

STUDENT, COURSE = str(uuid.uuid4()), str(uuid.uuid4())
PAY = "pay_29QQoUBi66xm2f"
PI = "pi_3MtwBwLkdIwHu7ix28a3tqPa"


def rzp(event: str, **payment: Any) -> bytes:
    refund_amount = payment.pop("refund_amount", None)
    return s.encode(s.razorpay_event(event, s.razorpay_payment(PAY, **payment), refund_amount))


RAZORPAY_TABLE = [
    (
        "payment.captured",
        rzp("payment.captured", student=STUDENT, course=COURSE, extra_notes={"coupon": "DIWALI"}),
        Purchase(
            {
                "payment_id": PAY,
                "student_id": STUDENT,
                "course_id": COURSE,
                "amount_cents": 49900,
                "currency": "INR",
                "metadata": {"coupon": "DIWALI"},
            }
        ),
    ),
    (
        "order.paid",
        rzp("order.paid", student=STUDENT, course=COURSE),
        Purchase(
            {"payment_id": PAY, "student_id": STUDENT, "course_id": COURSE, "amount_cents": 49900, "currency": "INR"}
        ),
    ),
    ("notes []", rzp("payment.captured"), Unmapped(PAY, ("student_id", "course_id"))),
    ("only a student", rzp("payment.captured", student=STUDENT), Unmapped(PAY, ("course_id",))),
    (
        "refund.processed, full",
        rzp("refund.processed", student=STUDENT, course=COURSE, refunded=49900),
        Revocation(PAY, "refund"),
    ),
    (
        "refund.processed, partial",
        rzp("refund.processed", student=STUDENT, course=COURSE, refunded=10000, refund_amount=10000),
        Ignored("partial refund: the purchase stays", PAY),
    ),
    ("payment.failed", rzp("payment.failed"), Ignored("type payment.failed is not acted on", PAY)),
    ("payment.authorized", rzp("payment.authorized"), Ignored("type payment.authorized is not acted on", PAY)),
]


@pytest.mark.parametrize(("name", "body", "action"), RAZORPAY_TABLE, ids=[row[0] for row in RAZORPAY_TABLE])
def test_razorpay_events_map_to_actions(name: str, body: bytes, action: Any) -> None:
    event = razorpay.parse(body, "evt_1")
    assert event.provider == "razorpay" and event.event_id == "evt_1"
    if isinstance(action, Revocation):  # the refund id is the sample's own
        assert isinstance(event.action, Revocation) and event.action.refund_id.startswith("rfnd_")  # type: ignore[union-attr]
        assert (event.action.payment_id, event.action.reason) == (action.payment_id, action.reason)
    else:
        assert event.action == action


def test_razorpay_order_notes_name_the_course_when_the_payment_has_none() -> None:
    sample = s.razorpay_event("order.paid", s.razorpay_payment(PAY))
    sample["payload"]["order"]["entity"]["notes"] = {"student_id": STUDENT, "course_id": COURSE}
    action = razorpay.parse(s.encode(sample), None).action
    assert isinstance(action, Purchase) and action.kwargs["course_id"] == COURSE


def test_razorpay_event_id_is_the_body_hash_without_the_header() -> None:
    body = rzp("payment.captured", student=STUDENT, course=COURSE)
    assert razorpay.parse(body, None).event_id == hashlib.sha256(body).hexdigest()


def test_razorpay_signature_by_the_documented_hmac() -> None:
    body = rzp("payment.captured", student=STUDENT, course=COURSE)
    signature = s.razorpay_headers(body)["X-Razorpay-Signature"]
    assert razorpay.verify(body, signature, [s.RAZORPAY_SECRET]) is None
    assert razorpay.verify(body, signature, ["old-secret", s.RAZORPAY_SECRET]) is None, "rotation"
    assert razorpay.verify(body, signature, ["another"]) == "signature does not match the body"
    assert razorpay.verify(body + b" ", signature, [s.RAZORPAY_SECRET]) is not None
    assert razorpay.verify(body, None, [s.RAZORPAY_SECRET]) == "missing X-Razorpay-Signature header"
    assert razorpay.verify(body, "caf\u00e9", [s.RAZORPAY_SECRET]) is not None
    assert razorpay.verify(b"\xff", signature, [s.RAZORPAY_SECRET]) is not None


def sevent(kind: str, obj: dict[str, Any]) -> bytes:
    return s.encode(s.stripe_event(kind, obj, event_id="evt_1NG8Du2eZvKYlo2CUI79vXWy"))


STRIPE_PURCHASE = Purchase(
    {"payment_id": PI, "student_id": STUDENT, "course_id": COURSE, "amount_cents": 99900, "currency": "INR"}
)
STRIPE_TABLE = [
    (
        "checkout.session.completed, paid",
        sevent("checkout.session.completed", s.stripe_session(PI, STUDENT, COURSE)),
        STRIPE_PURCHASE,
    ),
    (
        "checkout.session.completed, unpaid",
        sevent("checkout.session.completed", s.stripe_session(PI, STUDENT, COURSE, paid=False)),
        Ignored("checkout session not paid yet (payment_status=unpaid)", PI),
    ),
    (
        "checkout.session.async_payment_succeeded",
        sevent("checkout.session.async_payment_succeeded", s.stripe_session(PI, STUDENT, COURSE)),
        STRIPE_PURCHASE,
    ),
    (
        "payment_intent.succeeded",
        sevent("payment_intent.succeeded", s.stripe_intent(PI, STUDENT, COURSE)),
        STRIPE_PURCHASE,
    ),
    (
        "payment_intent.succeeded, no metadata",
        sevent("payment_intent.succeeded", s.stripe_intent(PI, None, None)),
        Unmapped(PI, ("student_id", "course_id")),
    ),
    ("charge.refunded, full", sevent("charge.refunded", s.stripe_charge(PI)), Revocation(PI, "refund", "re_" + PI[3:])),
    (
        "charge.refunded, partial",
        sevent("charge.refunded", s.stripe_charge(PI, refunded=False, amount_refunded=100)),
        Ignored("partial refund: the purchase stays", PI),
    ),
    (
        "customer.created",
        sevent("customer.created", {"id": "cus_1", "object": "customer"}),
        Ignored("type customer.created is not acted on"),
    ),
]


@pytest.mark.parametrize(("name", "body", "action"), STRIPE_TABLE, ids=[row[0] for row in STRIPE_TABLE])
def test_stripe_events_map_to_actions(name: str, body: bytes, action: Any) -> None:
    event = stripe.parse(body)
    assert (event.provider, event.event_id) == ("stripe", "evt_1NG8Du2eZvKYlo2CUI79vXWy")
    assert event.action == action


def test_stripe_expanded_payment_intent_gives_its_id() -> None:
    session = s.stripe_session(PI, STUDENT, COURSE)
    session["payment_intent"] = s.stripe_intent(PI, None, None)
    action = stripe.parse(sevent("checkout.session.completed", session)).action
    assert isinstance(action, Purchase) and action.payment_id == PI


def test_stripe_signature_made_by_stripes_library() -> None:
    body = sevent("payment_intent.succeeded", s.stripe_intent(PI, STUDENT, COURSE))
    header = s.stripe_headers(body)["Stripe-Signature"]
    assert stripe.verify(body, header, [s.STRIPE_SECRET]) is None
    assert stripe.verify(body, header, ["whsec_old", s.STRIPE_SECRET]) is None, "rotation"
    assert stripe.verify(body, header, ["whsec_other"]) == "signature does not match the body"
    stale = s.stripe_headers(body, timestamp=int(time.time()) - 301)["Stripe-Signature"]
    assert "tolerance" in (stripe.verify(body, stale, [s.STRIPE_SECRET]) or "")
    assert stripe.verify(body, "t=abc", [s.STRIPE_SECRET]) is not None
    assert stripe.verify(body, "caf\u00e9", [s.STRIPE_SECRET]) is not None
    assert stripe.verify(body, None, [s.STRIPE_SECRET]) == "missing Stripe-Signature header"
    several = f"{header},v1={'0' * 64}"
    assert stripe.verify(body, several, [s.STRIPE_SECRET]) is None, "several v1 signatures"


KC_TABLE = [
    (
        {"id": "e1", "type": "payment.succeeded", "data": {"payment_id": "p1", "amount_cents": 1}},
        Purchase({"payment_id": "p1", "amount_cents": 1}),
    ),
    (
        {"id": "e2", "type": "payment.refunded", "data": {"payment_id": "p1", "refund_id": "r1"}},
        Revocation("p1", "refund", "r1"),
    ),
    ({"id": "e3", "type": "payment.refunded", "data": {"payment_id": "p1"}}, Revocation("p1", "refund", None)),
    ({"id": "e4", "type": "payment.created", "data": {}}, Ignored("type payment.created is not acted on")),
]


@pytest.mark.parametrize(("body", "action"), KC_TABLE)
def test_kc_events_map_to_actions(body: dict[str, Any], action: Any) -> None:
    assert kc.parse(json.dumps(body).encode()) == Event("kc", body["id"], body["type"], action)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"id": "e", "type": "payment.succeeded"}',
        b'{"id": "", "type": "payment.succeeded", "data": {}}',
        b'{"id": "e", "type": "payment.refunded", "data": {}}',
        b'{"id": "e", "type": "payment.refunded", "data": {"payment_id": "p", "refund_id": 5}}',
    ],
)
def test_kc_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(Malformed):
        kc.parse(body)


@pytest.mark.parametrize("body", [b"", b"[1]", b'"x"', b'{"type": "payment_intent.succeeded"}'])
def test_stripe_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(Malformed):
        stripe.parse(body)


def test_razorpay_odd_shapes_are_never_a_crash() -> None:
    for payload in (
        {"event": "payment.captured", "payload": []},
        {"event": 5},
        {"event": "refund.processed", "payload": {}},
    ):
        event = razorpay.parse(json.dumps(payload).encode(), "e")
        assert isinstance(event.action, (Ignored, Unmapped))


@pytest.mark.parametrize("bad", ["a\u0000b", "\ud800"])
def test_ids_postgresql_cannot_store_are_never_taken_as_ids(bad: str) -> None:
    with pytest.raises(Malformed):
        stripe.parse(json.dumps({"id": bad, "type": "payment_intent.succeeded"}).encode())
    with pytest.raises(Malformed):
        kc.parse(json.dumps({"id": bad, "type": "payment.succeeded", "data": {}}).encode())
    intent = s.stripe_intent(PI, STUDENT, COURSE)
    intent["id"] = bad
    assert stripe.parse(sevent("payment_intent.succeeded", intent)).payment_id is None
