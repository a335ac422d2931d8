"""The tests' builders: pure functions and constants that make what a test sends or stores (a
purchase's kwargs, a signed webhook body, a provider's event id, a purchase row's SQL), shared by
the unit, integration, end-to-end, fault and cluster tests. No services, no processes."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

from kc_tasks.core.payload import PurchaseKwargs, RevocationKwargs, parse_purchase
from tests import provider_samples as s

# The webhook secret of every web process the end-to-end tests start.
WEBHOOK_SECRET = "e2e-webhook-secret-of-at-least-32-bytes"
# The read API's HS256 key in every web process these tests start (unless a test sets its own).
JWT_SECRET = "e2e-jwt-secret-of-at-least-thirty-two-bytes"
# A web process's provider secrets: each being rotated, the samples' secret the current one.
SECRETS = {
    "KC_RAZORPAY_WEBHOOK_SECRET": f"old-razorpay-secret-being-rotated-out, {s.RAZORPAY_SECRET}",
    "KC_STRIPE_WEBHOOK_SECRET": f"whsec_old,{s.STRIPE_SECRET}",
}
# Every migration, in the order `kc-tasks migrate` applies them.
MIGRATIONS = [
    "001_create_purchases",
    "002_add_idempotency_constraints",
    "003_duplicate_payments",
    "004_event_outbox",
    "005_payment_events",
    "006_payments",
    "007_inbox_body_redaction",
    "008_event_body_digest",
    "009_restorations",
    "010_pending_refunds",
    "011_purged_dead_letters",
]
INSERT_ROW = (
    "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency) "
    "VALUES (%s, %s, %s, %s, 4999, 'INR')"
)


def purchase(student: str | None = None, course: str | None = None, payment: str | None = None) -> dict:
    """create_purchase's kwargs as a client sends them, of a new payment unless told."""
    return {
        "payment_id": payment or f"pay_{uuid.uuid4().hex}",
        "student_id": student or str(uuid.uuid4()),
        "course_id": course or str(uuid.uuid4()),
        "amount_cents": 4999,
        "currency": "INR",
    }


def kwargs(**changes: Any) -> dict[str, Any]:
    base = {
        "payment_id": f"pay_{uuid.uuid4().hex}",
        "student_id": str(uuid.uuid4()),
        "course_id": str(uuid.uuid4()),
        "amount_cents": 4999,
        "currency": "INR",
    }
    return {**base, **changes}


def order(
    student: str | None = None, course: str | None = None, payment: str | None = None, **extra: object
) -> PurchaseKwargs:
    return parse_purchase(
        {
            "payment_id": payment or f"pay_{uuid.uuid4().hex}",
            "student_id": student or str(uuid.uuid4()),
            "course_id": course or str(uuid.uuid4()),
            "amount_cents": 4999,
            "currency": "INR",
            **extra,
        }
    )


def sample_order(student: str | None = None, course: str | None = None, payment: str | None = None) -> PurchaseKwargs:
    """order(), of the providers' samples' amount (49900)."""
    return parse_purchase(
        {
            "payment_id": payment or f"pay_{uuid.uuid4().hex}",
            "student_id": student or str(uuid.uuid4()),
            "course_id": course or str(uuid.uuid4()),
            "amount_cents": 49900,
            "currency": "INR",
        }
    )


def refund(payment_id: str, refund_id: str | None = "rfnd_1") -> RevocationKwargs:
    return RevocationKwargs(payment_id=payment_id, reason="refund", refund_id=refund_id)


def purchase_row(sql, payment_id: str, active: bool = True) -> None:
    sql(
        "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency, "
        "is_active) VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), %s, 49900, 'INR', %s)",
        (payment_id, active),
    )


def signed(body: bytes, secret: str = WEBHOOK_SECRET, t: int | None = None) -> dict[str, str]:
    t = int(time.time()) if t is None else t
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-KC-Signature": f"t={t},v1={digest}"}


def event(data: dict, type_: str = "payment.succeeded") -> bytes:
    return json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": type_, "data": data}).encode()


def evt() -> str:
    return "evt_" + uuid.uuid4().hex[:14]


def reader_headers() -> dict[str, str]:
    """A bearer token of a service that reads any student's courses (scope purchases:read)."""
    from kc_tasks.web.auth import mint

    return {"Authorization": "Bearer " + mint(JWT_SECRET, "e2e-reader", 600, "kc_tasks", scope="purchases:read")}
