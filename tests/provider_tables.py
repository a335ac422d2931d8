"""Each provider's sample events, signed as the provider signs them, and the action each must
become: the tables that tests/unit/test_providers.py (the parsers) and tests/unit/test_redaction.py
(what each body keeps once redacted) both run."""

from __future__ import annotations

import uuid
from typing import Any

from kc_tasks.providers import (
    NOT_A_COURSE,
    Ignored,
    Purchase,
    RefundFailed,
    Revocation,
    Unmapped,
)
from tests import provider_samples as s

STUDENT, COURSE = str(uuid.uuid4()), str(uuid.uuid4())
# What a tampering browser writes into a Razorpay payment's own notes.
OTHER_STUDENT, EXPENSIVE_COURSE = str(uuid.uuid4()), str(uuid.uuid4())
TAMPERED = {"student_id": OTHER_STUDENT, "course_id": EXPENSIVE_COURSE}
PAY = "pay_29QQoUBi66xm2f"
REFUND_ID = "rfnd_FP8QHiV938haTz"
PI = "pi_3MtwBwLkdIwHu7ix28a3tqPa"
# Stripe's sample events carry a fixed `created`; only the signature's timestamp is taken at run time.
CREATED = 1680064028
NOT_A_COURSE_WHY = f"{NOT_A_COURSE}: its server-set notes/metadata name no student_id or course_id"


def payment(**fields: Any) -> dict[str, Any]:
    return s.razorpay_payment(PAY, **fields)


def order_paid(
    student: str | None = STUDENT,
    course: str | None = COURSE,
    payment_notes: dict[str, Any] | None = None,
    extra_notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return s.razorpay_paid(student, course, PAY, payment_notes=payment_notes, extra_notes=extra_notes)


def refund_processed(refunded: int, refund_amount: int) -> dict[str, Any]:
    paid = payment(refunded=refunded)
    return s.razorpay_event(
        "refund.processed", paid, refund={**s.razorpay_refund(paid, refund_amount), "id": REFUND_ID}
    )


def disputed(event: str, status: str) -> dict[str, Any]:
    paid = payment()
    return s.razorpay_event(event, paid, dispute=s.razorpay_dispute(paid, status))


def instalment(paid_after: int, amount: int = 50000, total: int = 150000, status: str | None = None) -> dict[str, Any]:
    """order.paid for one instalment of an order that takes partial payments (`partial_payment`:
    true): the payment of `amount`, and the order as Razorpay's order entity documents it after
    that payment: `amount_paid` so far, `amount_due` the rest, `status` `attempted` until it is
    paid in full (`status` overrides it)."""
    paid = payment(amount=amount)
    order = s.razorpay_order(paid, STUDENT, COURSE, amount=total, amount_paid=paid_after)
    if status is not None:
        order["status"] = status
    return s.razorpay_event("order.paid", paid, order)


def refund_failed() -> dict[str, Any]:
    """Razorpay's refund.failed: the refund entity (status failed) and its payment."""
    paid = payment(refunded=49900)
    return s.razorpay_event("refund.failed", paid, refund={**s.razorpay_refund(paid, status="failed"), "id": REFUND_ID})


def other_order() -> dict[str, Any]:
    """An order.paid whose order is not the payment's own order."""
    event = order_paid()
    event["payload"]["order"]["entity"]["id"] = "order_someoneelses"
    return event


RAZORPAY_PURCHASE = Purchase(
    {"payment_id": PAY, "student_id": STUDENT, "course_id": COURSE, "amount_cents": 49900, "currency": "INR"}
)
RAZORPAY_TABLE = [
    ("order.paid", order_paid(), RAZORPAY_PURCHASE),
    (
        "order.paid, other order notes go to metadata",
        order_paid(extra_notes={"coupon": "DIWALI"}),
        Purchase({**RAZORPAY_PURCHASE.kwargs, "metadata": {"coupon": "DIWALI"}}),
    ),
    (
        "order.paid, the payment's own notes name another student and course",
        order_paid(payment_notes=TAMPERED),
        RAZORPAY_PURCHASE,
    ),
    (
        "order.paid, the order names nothing, the payment's notes name a course",
        order_paid(None, None, payment_notes=TAMPERED),
        Ignored(NOT_A_COURSE_WHY, PAY),
    ),
    ("order.paid, order notes []", order_paid(None, None), Ignored(NOT_A_COURSE_WHY, PAY)),
    (
        "order.paid, order notes of another product",
        order_paid(None, None, extra_notes={"sku": "mug-42"}),
        Ignored(NOT_A_COURSE_WHY, PAY),
    ),
    (
        "order.paid, only a student",
        order_paid(course=None),
        Unmapped(PAY, "its server-set notes/metadata name student_id but not course_id"),
    ),
    (
        "order.paid, only a course, the payment's notes name the student",
        order_paid(None, COURSE, payment_notes={"student_id": STUDENT}),
        Unmapped(PAY, "its server-set notes/metadata name course_id but not student_id"),
    ),
    (
        "order.paid, course not a UUID",
        order_paid(course="python-101"),
        Unmapped(PAY, "its server-set course_id is not a UUID"),
    ),
    (
        "order.paid, neither a UUID",
        order_paid("42", "python-101"),
        Unmapped(PAY, "its server-set student_id and course_id are not a UUID"),
    ),
    (
        "order.paid, another order",
        other_order(),
        Unmapped(PAY, f"the payment's order_id 'order_{PAY[4:]}' is not the order 'order_someoneelses'"),
    ),
    (
        "payment.captured, the payment's notes name a course",
        s.razorpay_event("payment.captured", payment(notes={"student_id": STUDENT, "course_id": COURSE})),
        Ignored("payment.captured is not acted on: its notes are the browser's; order.paid makes the purchase", PAY),
    ),
    (
        "order.paid, the first of three instalments",
        instalment(50000),
        Ignored(
            f"order not paid in full: order order_{PAY[4:]} (status attempted) has 50000 of 150000 paid, 100000 due; "
            "its last payment makes the purchase",
            PAY,
        ),
    ),
    (
        "order.paid, the last instalment: the order's amount_paid",
        instalment(150000),
        Purchase({**RAZORPAY_PURCHASE.kwargs, "amount_cents": 150000}),
    ),
    (
        "order.paid, amount_paid reached, status not updated yet",
        instalment(150000, status="attempted"),
        Purchase({**RAZORPAY_PURCHASE.kwargs, "amount_cents": 150000}),
    ),
    ("refund.failed", refund_failed(), RefundFailed(PAY, REFUND_ID)),
    ("refund.processed, full", refund_processed(49900, 49900), Revocation(PAY, "refund", REFUND_ID)),
    (
        "refund.processed, the last of two partial refunds",
        refund_processed(49900, 9900),
        Revocation(PAY, "refund", REFUND_ID),
    ),
    (
        "refund.processed, partial",
        refund_processed(10000, 10000),
        Ignored("partial refund: the purchase stays", PAY),
    ),
    ("payment.dispute.lost", disputed("payment.dispute.lost", "lost"), Revocation(PAY, "dispute")),
    (
        "payment.dispute.won",
        disputed("payment.dispute.won", "won"),
        Ignored("dispute won, not lost: the purchase stays", PAY),
    ),
    (
        "payment.dispute.created",
        disputed("payment.dispute.created", "open"),
        Ignored("dispute open, not lost: the purchase stays", PAY),
    ),
    (
        "payment.dispute.under_review",
        disputed("payment.dispute.under_review", "under_review"),
        Ignored("dispute under_review, not lost: the purchase stays", PAY),
    ),
    (
        "payment.failed",
        s.razorpay_event("payment.failed", payment()),
        Ignored("type payment.failed is not acted on", PAY),
    ),
    (
        "payment.authorized",
        s.razorpay_event("payment.authorized", payment()),
        Ignored("type payment.authorized is not acted on", PAY),
    ),
]


def sevent(kind: str, obj: dict[str, Any], livemode: bool = False) -> dict[str, Any]:
    return s.stripe_event(kind, obj, event_id="evt_1NG8Du2eZvKYlo2CUI79vXWy", livemode=livemode, created=CREATED)


def only_student_intent() -> dict[str, Any]:
    return {**s.stripe_intent(PI, None, None), "metadata": {"student_id": STUDENT}}


def refunds_embedded(count: int) -> dict[str, Any]:
    """A charge as endpoints pinned to an API version before 2022-11-15 still get it."""
    refunds = [
        {"id": f"re_{n}{PI[3:]}", "object": "refund", "amount": 99900 // count, "status": "succeeded"}
        for n in range(count)
    ]
    return {**s.stripe_charge(PI), "refunds": {"object": "list", "data": refunds, "has_more": False}}


FREE = s.stripe_session(None, STUDENT, COURSE, payment_status="no_payment_required", amount_total=0)
# A subscription that starts with a free trial: completed with nothing to pay, no PaymentIntent.
TRIAL = s.stripe_session(
    None, STUDENT, COURSE, payment_status="no_payment_required", amount_total=0, mode="subscription"
)
PAID_SUBSCRIPTION = s.stripe_session(PI, STUDENT, COURSE, mode="subscription")
SUBSCRIPTION_WHY = "checkout session in mode subscription: only a one-time payment (mode payment) grants a course"
SETUP = s.stripe_session(None, STUDENT, COURSE, payment_status="no_payment_required", amount_total=0, mode="setup")
NOT_FREE = s.stripe_session(None, STUDENT, COURSE, payment_status="no_payment_required", amount_total=499900)
FAILED_REFUND = s.stripe_refund(PI)
CANCELED_REFUND = s.stripe_refund(PI, "canceled")
SUCCEEDED_REFUND = s.stripe_refund(PI, "succeeded")
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
        "checkout.session.completed, no_payment_required (a free course)",
        sevent("checkout.session.completed", FREE),
        Purchase(
            {"payment_id": FREE["id"], "student_id": STUDENT, "course_id": COURSE, "amount_cents": 0, "currency": "INR"}
        ),
    ),
    (
        "checkout.session.completed, a subscription's free trial",
        sevent("checkout.session.completed", TRIAL),
        Ignored(SUBSCRIPTION_WHY, TRIAL["id"]),
    ),
    (
        "checkout.session.completed, a paid subscription",
        sevent("checkout.session.completed", PAID_SUBSCRIPTION),
        Ignored(SUBSCRIPTION_WHY, PAID_SUBSCRIPTION["id"]),
    ),
    (
        "checkout.session.completed, a setup session",
        sevent("checkout.session.completed", SETUP),
        Ignored("checkout session in mode setup: only a one-time payment (mode payment) grants a course", SETUP["id"]),
    ),
    (
        "checkout.session.completed, no_payment_required with a non-zero total",
        sevent("checkout.session.completed", NOT_FREE),
        Ignored(
            "checkout session no_payment_required with amount_total 499900: only a free one (0) grants unpaid",
            NOT_FREE["id"],
        ),
    ),
    (
        "charge.refund.updated, failed",
        sevent("charge.refund.updated", FAILED_REFUND),
        RefundFailed(PI, FAILED_REFUND["id"], "failed", "expired_or_canceled_card"),
    ),
    (
        "charge.refund.updated, canceled",
        sevent("charge.refund.updated", CANCELED_REFUND),
        RefundFailed(PI, CANCELED_REFUND["id"], "canceled"),
    ),
    (
        "charge.refund.updated, succeeded",
        sevent("charge.refund.updated", SUCCEEDED_REFUND),
        Ignored(f"refund {SUCCEEDED_REFUND['id']} succeeded: nothing to do", PI),
    ),
    (
        "refund.failed",
        sevent("refund.failed", FAILED_REFUND),
        RefundFailed(PI, FAILED_REFUND["id"], "failed", "expired_or_canceled_card"),
    ),
    (
        "checkout.session.completed, unpaid",
        sevent("checkout.session.completed", s.stripe_session(PI, STUDENT, COURSE, paid=False)),
        Ignored("checkout session not paid yet (payment_status=unpaid)", PI),
    ),
    (
        "checkout.session.completed, paid, no metadata",
        sevent("checkout.session.completed", s.stripe_session(PI, None, None)),
        Ignored(NOT_A_COURSE_WHY, PI),
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
        Ignored(NOT_A_COURSE_WHY, PI),
    ),
    (
        "payment_intent.succeeded, only a student",
        sevent("payment_intent.succeeded", only_student_intent()),
        Unmapped(PI, "its server-set notes/metadata name student_id but not course_id"),
    ),
    (
        "payment_intent.succeeded, student not a UUID",
        sevent("payment_intent.succeeded", s.stripe_intent(PI, "student-7", COURSE)),
        Unmapped(PI, "its server-set student_id is not a UUID"),
    ),
    (
        "charge.refunded, full, as the current API version sends it",
        sevent("charge.refunded", s.stripe_charge(PI)),
        Revocation(PI, "refund", None),
    ),
    (
        "charge.refunded, full, one refund embedded (API version before 2022-11-15)",
        sevent("charge.refunded", refunds_embedded(1)),
        Revocation(PI, "refund", "re_0" + PI[3:]),
    ),
    (
        "charge.refunded, full, two refunds embedded",
        sevent("charge.refunded", refunds_embedded(2)),
        Revocation(PI, "refund", None),
    ),
    (
        "charge.refunded, partial",
        sevent("charge.refunded", s.stripe_charge(PI, refunded=False, amount_refunded=100)),
        Ignored("partial refund: the purchase stays", PI),
    ),
    (
        "charge.dispute.closed, lost",
        sevent("charge.dispute.closed", s.stripe_dispute(PI, "lost")),
        Revocation(PI, "dispute"),
    ),
    (
        "charge.dispute.closed, won",
        sevent("charge.dispute.closed", s.stripe_dispute(PI, "won")),
        Ignored("dispute closed won, not lost: the purchase stays", PI),
    ),
    (
        "charge.dispute.created",
        sevent("charge.dispute.created", s.stripe_dispute(PI, "needs_response")),
        Ignored("type charge.dispute.created is not acted on", PI),
    ),
    (
        "customer.created",
        sevent("customer.created", {"id": "cus_1", "object": "customer"}),
        Ignored("type customer.created is not acted on"),
    ),
]


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
