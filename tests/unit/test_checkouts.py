"""The pure pieces of POST /checkouts/confirm: what a checkout read back from the provider's API
confirms (by the webhook's rules), Checkout's signature, the body's shape, the rate limit."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
import razorpay as razorpay_sdk
from pydantic import ValidationError

from kc_tasks.core.settings import Settings
from kc_tasks.payments import inbox
from kc_tasks.providers import Confirmation, NotPaid, Purchase, apis, razorpay, readback, stripe
from kc_tasks.web import checkouts
from tests import provider_samples as s

STUDENT, COURSE = "0b6c5a4e-8d1e-4a49-9d1e-1b2c3d4e5f60", "9f1c2b3a-4d5e-4f60-8a7b-1c2d3e4f5a6b"
KEY_SECRET = "razorpay-key-secret-for-unit-tests"
NOWHERE = "http://127.0.0.1:9"


def paid_order(amount: int = 49900, parts: int = 1, captured: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    first = s.razorpay_payment(amount=amount)
    payments = [first] + [
        s.razorpay_payment(amount=amount, order_id=first["order_id"], created_at=first["created_at"] + 60 * n)
        for n in range(1, captured)
    ]
    order = s.razorpay_order(payments[-1], STUDENT, COURSE, amount=parts * amount, amount_paid=captured * amount)
    return order, payments


def test_a_paid_order_confirms_the_purchase_its_order_paid_would_make() -> None:
    order, payments = paid_order()
    found = razorpay.confirmation(order, payments, payments[0]["id"])
    assert isinstance(found, Confirmation) and found.student_id == STUDENT
    assert found.event.event_id == f"confirm:{payments[0]['id']}" and found.event.type == razorpay.ORDER_PAID
    webhook = razorpay.parse(s.encode(s.razorpay_event("order.paid", payments[0], order)), "evt_1")
    assert found.event.action == webhook.action
    # Read back from the inbox (relay, replay), it is the same event.
    assert inbox.parse(razorpay.NAME, found.body, found.event.event_id) == found.event


@pytest.mark.parametrize(
    ("status", "says"),
    [("authorized", "authorized, not captured"), ("failed", "failed, not captured"), ("refunded", "refunded")],
)
def test_a_payment_not_captured_is_not_paid(status: str, says: str) -> None:
    order, payments = paid_order()
    payments[0]["status"] = status
    found = razorpay.confirmation(order, payments, payments[0]["id"])
    assert isinstance(found, NotPaid) and says in found.why and found.student_id == STUDENT


def test_a_payment_the_order_does_not_list_is_not_paid() -> None:
    order, payments = paid_order()
    found = razorpay.confirmation(order, payments, "pay_someone_elses")
    assert isinstance(found, NotPaid) and "not listed" in found.why


def test_an_order_paid_in_parts_is_not_paid_before_its_last_and_then_confirms_under_the_last() -> None:
    order, payments = paid_order(parts=3, captured=2)
    found = razorpay.confirmation(order, payments, payments[0]["id"])
    assert isinstance(found, NotPaid) and found.why.startswith(razorpay.PART_PAID)
    order, payments = paid_order(parts=3, captured=3)
    for signed in payments:
        found = razorpay.confirmation(order, payments, signed["id"])
        assert isinstance(found, Confirmation)
        assert isinstance(found.event.action, Purchase)
        assert found.event.action.kwargs["payment_id"] == payments[-1]["id"]
        assert found.event.action.kwargs["amount_cents"] == 3 * 49900


def test_an_order_whose_notes_name_no_student_confirms_nothing_that_grants() -> None:
    payment = s.razorpay_payment()
    order = s.razorpay_order(payment)  # notes []
    found = razorpay.confirmation(order, [payment], payment["id"])
    assert isinstance(found, Confirmation) and found.student_id is None
    assert inbox.plan(found.event)[1] is None


def test_a_paid_session_confirms_the_purchase_its_webhook_would_make() -> None:
    intent = s.new_intent()
    session = s.stripe_session(intent, STUDENT, COURSE)
    found = stripe.confirmation(session)
    assert isinstance(found, Confirmation) and found.event.event_id == f"confirm:{intent}"
    webhook = stripe.parse(s.encode(s.stripe_event("checkout.session.completed", session)))
    assert found.event.action == webhook.action and found.event.type == webhook.type
    assert inbox.parse(stripe.NAME, found.body, found.event.event_id) == found.event


def test_a_free_session_is_its_own_payment() -> None:
    session = s.stripe_session(None, STUDENT, COURSE, payment_status="no_payment_required", amount_total=0)
    found = stripe.confirmation(session)
    assert isinstance(found, Confirmation) and found.event.event_id == f"confirm:{session['id']}"
    assert isinstance(found.event.action, Purchase) and found.event.action.kwargs["amount_cents"] == 0


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"status": "open", "payment_status": "unpaid"}, "is open, not complete"),
        ({"status": "expired", "payment_status": "unpaid"}, "is expired, not complete"),
        ({"payment_status": "unpaid"}, "payment not received yet"),
    ],
)
def test_a_session_not_complete_or_unpaid_is_not_paid(changes: dict[str, Any], says: str) -> None:
    found = stripe.confirmation({**s.stripe_session(s.new_intent(), STUDENT, COURSE), **changes})
    assert isinstance(found, NotPaid) and says in found.why and found.student_id == STUDENT


def test_a_subscription_or_a_session_of_the_other_mode_grants_nothing() -> None:
    subscription = stripe.confirmation(s.stripe_session(None, STUDENT, COURSE, mode="subscription"))
    assert isinstance(subscription, Confirmation) and inbox.plan(subscription.event)[1] is None
    live = stripe.confirmation(s.stripe_session(s.new_intent(), STUDENT, COURSE), livemode=True)
    assert isinstance(live, Confirmation) and inbox.plan(live.event)[1] is None


def test_checkouts_signature_is_checked_by_the_official_library() -> None:
    client = razorpay_sdk.Client(auth=("rzp_test_key", KEY_SECRET))
    good = hmac.new(KEY_SECRET.encode(), b"order_1|pay_1", hashlib.sha256).hexdigest()
    assert razorpay.verify_checkout("order_1", "pay_1", good, client)
    assert not razorpay.verify_checkout("order_1", "pay_2", good, client)
    assert not razorpay.verify_checkout("order_2", "pay_1", good, client)
    assert not razorpay.verify_checkout("order_1", "pay_1", "é" * 64, client)


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"provider": "razorpay"}',
        b'{"provider": "stripe", "session_id": "pi_123"}',
        b'{"provider": "stripe", "session_id": "cs_../../v1/charges"}',
        b'{"provider": "razorpay", "razorpay_order_id": "order_1", "razorpay_payment_id": "pay_1", '
        b'"razorpay_signature": "ZZ"}',
        b'{"provider": "paypal", "session_id": "cs_1"}',
        b"[]",
        b"not json",
    ],
)
def test_a_malformed_body_is_refused(body: bytes) -> None:
    with pytest.raises(ValidationError):
        checkouts._checkout.validate_json(body)


@pytest.mark.parametrize(
    ("tokens", "elapsed", "rate", "burst", "after"),
    [(0.0, 1.0, 0.5, 10, 0.5), (9.5, 10.0, 0.5, 10, 10.0), (3.0, -5.0, 1.0, 10, 3.0), (0.0, 0.0, 200.0, 500, 0.0)],
)
def test_a_bucket_refills_at_its_rate_up_to_its_burst(
    tokens: float, elapsed: float, rate: float, burst: int, after: float
) -> None:
    assert checkouts.refill(tokens, elapsed, rate, burst) == after


def test_a_token_confirms_its_burst_then_waits_and_the_platforms_gets_more() -> None:
    limits = checkouts.RateLimit()
    taken = [limits.take("student", False, 100.0) for _ in range(checkouts.BURST + 1)]
    assert taken[:-1] == [None] * checkouts.BURST
    assert taken[-1] == pytest.approx(1 / checkouts.RATE)
    assert limits.take("student", False, 100.0 + 1 / checkouts.RATE) is None
    assert limits.take("another", False, 100.0) is None
    assert all(limits.take("platform", True, 100.0) is None for _ in range(checkouts.BURST * 10))


def test_a_bad_checkout_signature_is_refused_before_the_api_is_read() -> None:
    # Nothing listens on the API's address: a reader that read before checking would fail there.
    settings = Settings.from_env(
        {
            "KC_DATABASE_URL": "postgresql+psycopg://127.0.0.1/unused",
            "KC_RAZORPAY_KEY_ID": "rzp_test_key",
            "KC_RAZORPAY_KEY_SECRET": KEY_SECRET,
            "KC_RAZORPAY_API_URL": NOWHERE,
        }
    )
    api = apis.razorpay_api(settings, retry=apis.no_retry)
    try:
        read = readback.razorpay_reader(settings, api)
        forged = hmac.new(b"another secret", b"order_1|pay_1", hashlib.sha256).hexdigest()
        checkout = readback.RazorpayCheckout(
            provider="razorpay", razorpay_order_id="order_1", razorpay_payment_id="pay_1", razorpay_signature=forged
        )
        with pytest.raises(readback.CheckoutRefused) as refused:
            read(checkout)
    finally:
        api.close()
    assert str(refused.value) == "order order_1, payment pay_1: bad signature"
    assert refused.value.detail == "razorpay_signature does not match the order and payment"
