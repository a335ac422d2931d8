"""The provider modules, table-tested over each provider's documented sample events: pure,
no services. Each sample is signed with the provider's official library and verified before
it is read.

The trust boundary is what most of these rows are about: a grant comes only from what the
platform's server set (a Razorpay order's notes, a Stripe Checkout Session's or
PaymentIntent's metadata), never from a Razorpay payment's own notes, which the browser sets."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest

from kc_tasks.providers import (
    Ignored,
    Malformed,
    ProviderEvent,
    Purchase,
    Revocation,
    Unmapped,
    kc,
    purchase_from,
    razorpay,
    stripe,
)
from tests import provider_samples as s
from tests.provider_tables import (
    COURSE,
    KC_TABLE,
    NOT_A_COURSE_WHY,
    PAY,
    PI,
    RAZORPAY_TABLE,
    STRIPE_PURCHASE,
    STRIPE_TABLE,
    STUDENT,
    order_paid,
    sevent,
)


@pytest.mark.parametrize(("name", "sample", "action"), RAZORPAY_TABLE, ids=[row[0] for row in RAZORPAY_TABLE])
def test_razorpay_events_map_to_actions(name: str, sample: dict[str, Any], action: Any) -> None:
    body = s.encode(sample)
    assert razorpay.verify(body, s.razorpay_headers(body)["X-Razorpay-Signature"], [s.RAZORPAY_SECRET]) is None
    event = razorpay.parse(body, "evt_1")
    assert (event.provider, event.event_id, event.type) == ("razorpay", "evt_1", sample["event"])
    assert event.action == action


def test_razorpay_event_id_is_the_body_hash_without_the_header() -> None:
    body = s.encode(order_paid())
    assert razorpay.parse(body, None).event_id == hashlib.sha256(body).hexdigest()


def test_razorpay_signature_by_the_documented_hmac() -> None:
    body = s.encode(order_paid())
    signature = s.razorpay_headers(body)["X-Razorpay-Signature"]
    assert razorpay.verify(body, signature, [s.RAZORPAY_SECRET]) is None
    assert razorpay.verify(body, signature, ["old-secret", s.RAZORPAY_SECRET]) is None, "rotation"
    assert razorpay.verify(body, signature, ["another"]) == "signature does not match the body"
    assert razorpay.verify(body + b" ", signature, [s.RAZORPAY_SECRET]) is not None
    assert razorpay.verify(body, None, [s.RAZORPAY_SECRET]) == "missing X-Razorpay-Signature header"
    assert razorpay.verify(body, "caf\u00e9", [s.RAZORPAY_SECRET]) is not None
    assert razorpay.verify(b"\xff", signature, [s.RAZORPAY_SECRET]) is not None


@pytest.mark.parametrize(("name", "sample", "action"), STRIPE_TABLE, ids=[row[0] for row in STRIPE_TABLE])
def test_stripe_events_map_to_actions(name: str, sample: dict[str, Any], action: Any) -> None:
    body = s.encode(sample)
    assert stripe.verify(body, s.stripe_headers(body)["Stripe-Signature"], [s.STRIPE_SECRET]) is None
    event = stripe.parse(body)
    assert (event.provider, event.event_id, event.type) == ("stripe", "evt_1NG8Du2eZvKYlo2CUI79vXWy", sample["type"])
    assert event.action == action


@pytest.mark.parametrize(
    ("setting", "livemode", "acts"),
    [
        (None, False, True),
        (None, True, True),
        (False, False, True),
        (True, True, True),
        (True, False, False),
        (False, True, False),
    ],
)
def test_kc_stripe_livemode_ignores_the_other_modes_events(setting: bool | None, livemode: bool, acts: bool) -> None:
    for sample, action in (
        (sevent("payment_intent.succeeded", s.stripe_intent(PI, STUDENT, COURSE), livemode), STRIPE_PURCHASE),
        (sevent("charge.refunded", s.stripe_charge(PI), livemode), Revocation(PI, "refund", None)),
    ):
        event = stripe.parse(s.encode(sample), setting)
        if acts:
            assert event.action == action
        else:
            mode, wanted = ("a live", "test-mode") if livemode else ("a test-mode", "live")
            why = f"{stripe.OTHER_MODE}: {mode} event; this endpoint takes {wanted} events only"
            assert event.action == Ignored(why, PI)


def test_an_event_without_livemode_is_of_neither_mode() -> None:
    sample = sevent("payment_intent.succeeded", s.stripe_intent(PI, STUDENT, COURSE))
    del sample["livemode"]
    for setting in (True, False):
        action = stripe.parse(s.encode(sample), setting).action
        assert isinstance(action, Ignored) and action.why.startswith(stripe.OTHER_MODE)
    assert stripe.parse(s.encode(sample)).action == STRIPE_PURCHASE


def test_stripe_expanded_payment_intent_gives_its_id() -> None:
    session = s.stripe_session(PI, STUDENT, COURSE)
    session["payment_intent"] = s.stripe_intent(PI, None, None)
    action = stripe.parse(s.encode(sevent("checkout.session.completed", session))).action
    assert isinstance(action, Purchase) and action.payment_id == PI


def test_a_paid_session_without_a_payment_intent_grants_nothing() -> None:
    """A session in mode payment, paid, but no one-time PaymentIntent to be the payment."""
    session = s.stripe_session(None, STUDENT, COURSE)
    action = stripe.parse(s.encode(sevent("checkout.session.completed", session))).action
    assert action == Ignored("paid checkout session names no payment_intent (not a one-time payment)", session["id"])


def test_stripe_signature_made_by_stripes_library() -> None:
    body = s.encode(sevent("payment_intent.succeeded", s.stripe_intent(PI, STUDENT, COURSE)))
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


def test_stripe_signature_over_a_body_that_is_not_utf8_is_refused() -> None:
    body = b'{"id": "evt_1", "note": "\xff"}'
    header = f"t={int(time.time())},v1={'0' * 64}"
    assert stripe.verify(body, header, [s.STRIPE_SECRET]) == "body is not UTF-8"


def test_stripe_signature_over_non_ascii_text_verifies() -> None:
    """The body goes to the library as text: a customer named in Devanagari still verifies."""
    charge = {**s.stripe_charge(PI), "billing_details": {"name": "\u0905\u0928\u0941"}}
    body = json.dumps(sevent("charge.refunded", charge), ensure_ascii=False).encode()
    assert stripe.verify(body, s.stripe_headers(body)["Stripe-Signature"], [s.STRIPE_SECRET]) is None


PURCHASE_FROM_TABLE = [
    ("neither key", {"coupon": "X"}, Ignored(NOT_A_COURSE_WHY, "p1")),
    ("Razorpay's empty notes", [], Ignored(NOT_A_COURSE_WHY, "p1")),
    ("no notes at all", None, Ignored(NOT_A_COURSE_WHY, "p1")),
    ("empty strings", {"student_id": "", "course_id": ""}, Ignored(NOT_A_COURSE_WHY, "p1")),
    (
        "only a course",
        {"course_id": COURSE},
        Unmapped("p1", "its server-set notes/metadata name course_id but not student_id"),
    ),
    (
        "a student that is a number",
        {"student_id": 7, "course_id": COURSE},
        Unmapped("p1", "its server-set student_id is not a UUID"),
    ),
    (
        "both, the rest to metadata",
        {"student_id": STUDENT, "course_id": COURSE, "coupon": "X"},
        Purchase(
            {
                "payment_id": "p1",
                "student_id": STUDENT,
                "course_id": COURSE,
                "amount_cents": 100,
                "currency": "INR",
                "metadata": {"coupon": "X"},
            }
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "server_set", "action"), PURCHASE_FROM_TABLE, ids=[row[0] for row in PURCHASE_FROM_TABLE]
)
def test_purchase_from_tells_a_course_purchase_from_another_payment(name: str, server_set: Any, action: Any) -> None:
    assert purchase_from("p1", 100, "inr", server_set) == action


@pytest.mark.parametrize(("body", "action"), KC_TABLE)
def test_kc_events_map_to_actions(body: dict[str, Any], action: Any) -> None:
    assert kc.parse(json.dumps(body).encode()) == ProviderEvent("kc", body["id"], body["type"], action)


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


@pytest.mark.parametrize(
    "payload",
    [
        {"event": "payment.captured", "payload": []},
        {"event": 5},
        {"event": "order.paid", "payload": {}},
        {"event": "order.paid", "payload": {"payment": {"entity": {"id": PAY}}, "order": {"entity": []}}},
        {"event": "refund.processed", "payload": {}},
        {"event": "payment.dispute.lost", "payload": {"dispute": {"entity": {"status": "lost"}}}},
        {"event": "payment.dispute.lost", "payload": {"dispute": "lost"}},
    ],
)
def test_razorpay_odd_shapes_are_never_a_crash_nor_a_grant(payload: dict[str, Any]) -> None:
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
    assert stripe.parse(s.encode(sevent("payment_intent.succeeded", intent))).payment_id is None
