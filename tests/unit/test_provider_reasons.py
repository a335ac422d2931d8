"""The provider modules' answers in full: each refusal's reason, each ignored event's why and
payment id, and the rules behind a revocation (a full refund, a lost dispute) at their edges.
An operator reads these reasons in the log and in `kc-tasks payment`; a payment id on an
ignored event is what ties it into that payment's story."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from kc_tasks.providers import (
    DISPUTE,
    REFUND,
    Ignored,
    Malformed,
    ProviderEvent,
    Purchase,
    Revocation,
    kc,
    load_object,
    purchase_from,
    razorpay,
    recovered,
    signature,
    stripe,
)
from tests import provider_samples as s

STUDENT, COURSE = "6f1c2d3e-0000-4000-8000-000000000001", "6f1c2d3e-0000-4000-8000-000000000002"
NOTES = {"student_id": STUDENT, "course_id": COURSE}
KC_SECRET = "kc-webhook-secret-of-at-least-32-bytes!"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[1]", "body must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "body is not valid JSON: nested too deeply"),
        (b"\xff", "body is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        (b"{", "body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ],
    ids=["array", "deep", "not-utf-8", "cut-short"],
)
def test_a_body_that_is_no_json_object_is_malformed_for_its_reason(body: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as caught:
        load_object(body)
    assert str(caught.value) == reason


def test_a_currency_that_is_not_text_is_left_for_validation_to_refuse() -> None:
    assert purchase_from("pay_1", 100, None, NOTES) == Purchase(
        {"payment_id": "pay_1", "student_id": STUDENT, "course_id": COURSE, "amount_cents": 100, "currency": None}
    )


# --- kc ---------------------------------------------------------------------------------------


def test_kc_verify_accepts_any_of_the_secrets_in_rotation() -> None:
    body = b'{"id":"evt_1","type":"payment.created","data":{}}'
    header = signature.sign(KC_SECRET.encode(), body, int(time.time()))
    assert kc.verify(body, header, ["an-old-secret-of-at-least-32-bytes!!", KC_SECRET]) is None
    assert kc.verify(body, header, ["an-old-secret-of-at-least-32-bytes!!"]) == "signature does not match the body"
    assert kc.verify(body + b" ", header, [KC_SECRET]) == "signature does not match the body"
    assert kc.verify(body, None, [KC_SECRET]) == "missing X-KC-Signature header"
    assert kc.verify(body, header, []) == "missing X-KC-Signature header", "no secret: nothing verifies"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"type": "payment.succeeded", "data": {}}, "id: is required and must be a string"),
        ({"id": "evt_1", "data": {}}, "type: is required and must be a string"),
        ({"id": "evt_1", "type": "payment.succeeded", "data": []}, "data: is required and must be a object"),
        (
            {"id": "", "type": "payment.succeeded", "data": {}},
            "id and type: must be non-empty text (no NUL, valid Unicode)",
        ),
        ({"id": "evt_1", "type": "payment.refunded", "data": {}}, "data.payment_id: is required and must be a string"),
        (
            {"id": "evt_1", "type": "payment.refunded", "data": {"payment_id": "pay_1", "refund_id": 7}},
            "data.refund_id: must be a string",
        ),
    ],
    ids=["no-id", "no-type", "data-not-object", "empty-id", "refund-no-payment", "refund-id-not-text"],
)
def test_a_kc_event_without_its_fields_is_malformed_for_its_reason(event: dict[str, Any], reason: str) -> None:
    with pytest.raises(Malformed) as caught:
        kc.parse(json.dumps(event).encode())
    assert str(caught.value) == reason


def test_a_kc_event_of_another_type_is_ignored_under_its_payment() -> None:
    body = json.dumps({"id": "evt_1", "type": "payment.created", "data": {"payment_id": "pay_1"}}).encode()
    assert kc.parse(body) == ProviderEvent(
        "kc", "evt_1", "payment.created", Ignored("type payment.created is not acted on", "pay_1")
    )


# --- Razorpay ---------------------------------------------------------------------------------


def test_a_razorpay_body_that_is_not_utf8_is_refused_before_its_signature() -> None:
    assert razorpay.verify(b"\xff", "0" * 64, [s.RAZORPAY_SECRET]) == "body is not UTF-8"


def test_a_razorpay_event_without_a_type_is_stored_as_unknown_and_ignored() -> None:
    body = b'{"payload": {}}'
    assert razorpay.parse(body, "evt_1") == ProviderEvent(
        "razorpay", "evt_1", "unknown", Ignored("type unknown is not acted on", None)
    )


@pytest.mark.parametrize(
    ("payment", "order", "action"),
    [
        (
            {"id": "pay_1", "status": "failed", "order_id": "order_1"},
            {"id": "order_1", "notes": NOTES},
            Ignored("payment status failed, not captured", "pay_1"),
        ),
        (
            {"id": "pay_1", "status": "captured"},
            None,
            Ignored("a payment without an order: nothing server-set names a course", "pay_1"),
        ),
    ],
    ids=["failed", "no-order"],
)
def test_an_order_payment_that_grants_nothing_says_why(payment: Any, order: Any, action: Any) -> None:
    assert razorpay.order_purchase(payment, order) == action


@pytest.mark.parametrize(
    ("refund", "payment", "action"),
    [
        ({"id": "rfnd_1", "status": "processed"}, {}, Ignored("refund names no payment")),
        (
            {"id": "rfnd_1", "status": "processed"},
            {"id": "pay_1", "refund_status": "full"},
            Revocation("pay_1", REFUND, "rfnd_1"),
        ),
        (
            {"id": "rfnd_1", "payment_id": "pay_1", "status": "processed"},
            {"id": "pay_other", "refund_status": "full"},
            Revocation("pay_1", REFUND, "rfnd_1"),
        ),
        (
            {"id": "rfnd_1", "payment_id": "pay_1", "status": "pending"},
            {"id": "pay_1", "refund_status": "full"},
            Ignored("refund status pending, not processed", "pay_1"),
        ),
        (
            {"id": "rfnd_1", "payment_id": "pay_1", "status": "processed"},
            {"id": "pay_1", "amount": 100, "amount_refunded": 50},
            Ignored("partial refund: the purchase stays", "pay_1"),
        ),
    ],
    ids=["no-payment", "payment-id-from-the-payment", "the-refunds-payment-first", "pending", "partial"],
)
def test_a_razorpay_refund_revokes_only_a_processed_full_refund(refund: Any, payment: Any, action: Any) -> None:
    assert razorpay.refund_action(refund, payment) == action


def test_a_razorpay_dispute_without_a_payment_is_ignored() -> None:
    assert razorpay.dispute_action({"id": "disp_1", "status": "lost"}) == Ignored("dispute names no payment")
    assert razorpay.dispute_action({"payment_id": "pay_1", "status": "lost"}) == Revocation("pay_1", DISPUTE)


@pytest.mark.parametrize(
    ("payment", "full"),
    [
        ({"refund_status": "full"}, True),
        ({"refund_status": "partial", "amount": 100, "amount_refunded": 50}, False),
        ({"amount": 100, "amount_refunded": 100}, True),
        ({"amount": 100, "amount_refunded": 150}, True),
        ({"amount": 100, "amount_refunded": 99}, False),
        ({"amount": 1, "amount_refunded": 1}, True),
        ({"amount": 0, "amount_refunded": 0}, False),  # a free payment: nothing was refunded
        ({"amount": 0, "amount_refunded": 5}, False),
        ({"amount": 100}, False),
        ({"amount_refunded": 100}, False),
        ({"amount": "100", "amount_refunded": "100"}, False),
        ({}, False),
    ],
)
def test_a_razorpay_payment_is_fully_refunded_by_its_status_or_its_amounts(payment: dict[str, Any], full: bool) -> None:
    assert razorpay.fully_refunded(payment) is full


@pytest.mark.parametrize(
    ("payment", "is_paid"),
    [
        ({"status": "captured", "order_id": "order_1"}, True),
        ({"status": "captured"}, False),
        ({"status": "captured", "order_id": ""}, False),
        ({"status": "authorized", "order_id": "order_1"}, False),
        ({"order_id": "order_1"}, False),
        (None, False),
    ],
)
def test_reconciliation_counts_a_payment_paid_when_captured_for_an_order(payment: Any, is_paid: bool) -> None:
    assert razorpay.paid(payment) is is_paid


# --- Stripe -----------------------------------------------------------------------------------


def _stripe_header(body: bytes, timestamp: int | None = None) -> str:
    return s.stripe_headers(body, timestamp=timestamp)["Stripe-Signature"]


@pytest.mark.parametrize(
    ("header", "secrets", "reason"),
    [
        (lambda body: _stripe_header(body), [], "signature does not match the body"),
        (lambda body: _stripe_header(body), ["whsec_another"], "signature does not match the body"),
        (
            lambda body: _stripe_header(body, int(time.time()) - 1000),
            [s.STRIPE_SECRET],
            "signature timestamp outside the tolerance of 300 s",
        ),
        (
            lambda body: "garbage",
            [s.STRIPE_SECRET],
            "malformed Stripe-Signature header: expected t=<unix seconds>,v1=<hex>",
        ),
        (
            lambda body: f"t={int(time.time())}",
            [s.STRIPE_SECRET],
            "malformed Stripe-Signature header: expected t=<unix seconds>,v1=<hex>",
        ),
        (lambda body: f"t={int(time.time())},v1=\u20ac", [s.STRIPE_SECRET], "malformed signature header"),
    ],
    ids=["no-secret", "other-secret", "stale", "unparsable", "no-v1", "non-ascii"],
)
def test_a_stripe_signature_is_refused_for_its_reason(header: Any, secrets: list[str], reason: str) -> None:
    body = s.encode(s.stripe_event("payment_intent.succeeded", {}))
    assert stripe.verify(body, header(body), secrets) == reason


def test_a_stripe_body_that_is_not_utf8_is_refused() -> None:
    assert stripe.verify(b"\xff", f"t={int(time.time())},v1={'0' * 64}", [s.STRIPE_SECRET]) == "body is not UTF-8"


def test_a_stripe_event_without_id_or_type_is_malformed() -> None:
    with pytest.raises(Malformed) as caught:
        stripe.parse(b'{"type": "charge.refunded"}')
    assert str(caught.value) == "id and type: are required strings"


def test_a_stripe_event_of_the_other_mode_is_ignored_under_its_own_id_type_and_payment() -> None:
    event = s.stripe_event("payment_intent.succeeded", s.stripe_intent("pi_1", STUDENT, COURSE), "evt_live_1", True)
    why = "an event of the other Stripe mode: a live event; this endpoint takes test-mode events only"
    assert stripe.parse(s.encode(event), livemode=False) == ProviderEvent(
        "stripe", "evt_live_1", "payment_intent.succeeded", Ignored(why, "pi_1")
    )


@pytest.mark.parametrize(
    ("intent", "amount"),
    [
        ({"amount_received": 500, "amount": 999}, 500),
        ({"amount": 999}, 999),
        ({"amount_received": 0, "amount": 999}, 0),
    ],
)
def test_a_payment_intent_grants_what_was_received_or_else_its_amount(intent: dict[str, Any], amount: int) -> None:
    obj = {"id": "pi_1", "currency": "inr", "metadata": NOTES, **intent}
    action = stripe.event_action(stripe.INTENT_SUCCEEDED, obj)
    assert isinstance(action, Purchase)
    assert action.kwargs["amount_cents"] == amount


def test_a_refund_or_dispute_that_names_no_payment_intent_is_ignored() -> None:
    assert stripe.event_action(stripe.CHARGE_REFUNDED, {"refunded": True}) == Ignored("charge names no payment_intent")
    assert stripe.event_action(stripe.DISPUTE_CLOSED, {"status": "lost"}) == Ignored("dispute names no payment_intent")


# --- reconciliation's own events ----------------------------------------------------------


def test_what_reconciliation_read_is_stored_as_sorted_json_with_its_text_as_is() -> None:
    assert recovered.body({"b": 1, "a": {"name": "Zoë", "note": "₹499"}}) == (
        '{"a": {"name": "Zoë", "note": "₹499"}, "b": 1}'.encode()
    )


def test_an_id_or_a_source_that_is_not_reconciliations_is_malformed() -> None:
    with pytest.raises(Malformed) as caught:
        recovered.split_event_id("paypal:pay_1:paid")
    assert str(caught.value) == "'paypal:pay_1:paid' is not a reconciliation event id"
    with pytest.raises(Malformed) as caught:
        recovered.action("stripe", "disputed", {})
    assert str(caught.value) == "unknown reconciliation source stripe disputed"
