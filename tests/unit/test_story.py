"""The payment story's verdict, from the facts alone (pure): the one line an operator reads."""

from __future__ import annotations

import pytest

from kc_tasks.payments.story import Facts, verdict

NOT_A_COURSE = "not a course purchase: its server-set notes/metadata name no student_id or course_id"
OTHER_MODE = "an event of the other Stripe mode: a test-mode event; this endpoint takes live events only"
CAPTURED = "payment.captured is not acted on: its notes are the browser's; order.paid makes the purchase"
UNMAPPED = "its server-set notes/metadata name student_id but not course_id"
REFUND_FAILED = "refund failed: refund re_1 of this payment failed after it was processed (expired_or_canceled_card)"

TABLE = [
    ("active", Facts(active=True, whys=(CAPTURED,)), "granted"),
    ("lost dispute", Facts(active=False, revoked_reason="dispute"), "not granted: revoked (dispute)"),
    (
        "dispute lost before the purchase",
        Facts(revoked_reason="dispute", inbox_statuses=("enqueued",)),
        "not granted: revoked (dispute) before any purchase was made",
    ),
    (
        "not a course purchase",
        Facts(inbox_statuses=("ignored",), whys=(NOT_A_COURSE,)),
        "not granted: not a course purchase (its server-set notes/metadata name no student or course)",
    ),
    (
        "not a course purchase, its payment.captured ignored too",
        Facts(inbox_statuses=("ignored", "ignored"), whys=(CAPTURED, NOT_A_COURSE)),
        "not granted: not a course purchase (its server-set notes/metadata name no student or course)",
    ),
    (
        "the other Stripe mode",
        Facts(inbox_statuses=("ignored",), whys=(OTHER_MODE,)),
        "not granted: an event of the other Stripe mode (KC_STRIPE_LIVEMODE)",
    ),
    (
        "only a payment.captured",
        Facts(inbox_statuses=("ignored",), whys=(CAPTURED,)),
        "not granted: its events were ignored (not paid, or a type kc_tasks does not act on)",
    ),
    (
        "unmapped beats its ignored payment.captured",
        Facts(inbox_statuses=("ignored", "unmapped"), whys=(CAPTURED, UNMAPPED)),
        "not granted: paid, but its server-set notes/metadata do not name both student_id and course_id (unmapped)",
    ),
    (
        "an enqueued event is still on its way",
        Facts(inbox_statuses=("ignored", "enqueued"), whys=(OTHER_MODE,)),
        "not granted: enqueued, no outcome yet (if this lasts, run kc-tasks reconcile)",
    ),
    (
        "a refund revoked it, then failed",
        Facts(active=False, revoked_reason="refund", inbox_statuses=("enqueued", "ignored"), whys=(REFUND_FAILED,)),
        "not granted: refund failed: paid, no course (revoked (refund), then the refund failed); refund again, or "
        "give the course back with kc-tasks payment restore <payment> --reason TEXT",
    ),
    (
        "a partial refund failed: the course stays",
        Facts(active=True, inbox_statuses=("enqueued", "ignored"), whys=(REFUND_FAILED,)),
        "granted",
    ),
    ("nothing seen", Facts(), "unknown"),
]


@pytest.mark.parametrize(("name", "facts", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_the_verdict_says_why_a_payment_grants_nothing(name: str, facts: Facts, expected: str) -> None:
    assert verdict(facts) == expected
