"""Provider events shaped as in Razorpay's and Stripe's documented sample payloads, and
requests signed with the providers' official libraries (never with kc_tasks' own code)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import razorpay
import stripe

RAZORPAY_SECRET = "razorpay-webhook-secret-for-tests"
STRIPE_SECRET = "whsec_tests0123456789abcdefghijklmnop"


def razorpay_payment(
    payment_id: str | None = None,
    student: str | None = None,
    course: str | None = None,
    amount: int = 49900,
    refunded: int = 0,
    extra_notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A payment entity as in Razorpay's payment.captured sample; notes `[]` when empty."""
    notes: Any = {**({"student_id": student} if student else {}), **({"course_id": course} if course else {})}
    notes.update(extra_notes or {})
    pid = payment_id or "pay_" + uuid.uuid4().hex[:14]
    return {
        "id": pid,
        "entity": "payment",
        "amount": amount,
        "currency": "INR",
        "status": "refunded" if refunded >= amount else "captured",
        "order_id": "order_" + pid[4:],
        "invoice_id": None,
        "international": False,
        "method": "upi",
        "amount_refunded": refunded,
        "refund_status": None if not refunded else ("full" if refunded >= amount else "partial"),
        "captured": True,
        "description": "Course purchase",
        "card_id": None,
        "bank": None,
        "wallet": None,
        "vpa": "student@okhdfcbank",
        "email": "student@example.com",
        "contact": "+919876543210",
        "notes": notes or [],
        "fee": 1180,
        "tax": 180,
        "error_code": None,
        "error_description": None,
        "acquirer_data": {"rrn": "123456789012"},
        "created_at": 1732520000,
    }


def razorpay_event(event: str, payment: dict[str, Any], refund_amount: int | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"payment": {"entity": payment}}
    contains = ["payment"]
    if event == "order.paid":
        payload["order"] = {
            "entity": {
                "id": payment["order_id"],
                "entity": "order",
                "amount": payment["amount"],
                "amount_paid": payment["amount"],
                "amount_due": 0,
                "currency": "INR",
                "receipt": "rcpt_1",
                "offer_id": None,
                "status": "paid",
                "attempts": 1,
                "notes": payment["notes"],
                "created_at": 1732519990,
            }
        }
        contains = ["payment", "order"]
    if event.startswith("refund."):
        payload = {
            "refund": {
                "entity": {
                    "id": "rfnd_" + uuid.uuid4().hex[:14],
                    "entity": "refund",
                    "amount": refund_amount if refund_amount is not None else payment["amount"],
                    "currency": "INR",
                    "payment_id": payment["id"],
                    "notes": [],
                    "receipt": None,
                    "acquirer_data": {"arn": None},
                    "created_at": 1732520100,
                    "batch_id": None,
                    "status": "processed",
                    "speed_processed": "normal",
                    "speed_requested": "normal",
                }
            },
            **payload,
        }
        contains = ["refund", "payment"]
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": event,
        "contains": contains,
        "payload": payload,
        "created_at": 1732520000,
    }


def stripe_session(intent: str, student: str | None, course: str | None, paid: bool = True) -> dict[str, Any]:
    """A Checkout Session as in Stripe's checkout.session.completed sample."""
    metadata = {"student_id": student, "course_id": course} if student and course else {}
    return {
        "id": "cs_test_" + uuid.uuid4().hex[:24],
        "object": "checkout.session",
        "amount_subtotal": 99900,
        "amount_total": 99900,
        "currency": "inr",
        "customer": None,
        "customer_details": {"email": "student@example.com", "name": "A Student"},
        "livemode": False,
        "metadata": metadata,
        "mode": "payment",
        "payment_intent": intent,
        "payment_method_types": ["card"],
        "payment_status": "paid" if paid else "unpaid",
        "status": "complete",
        "success_url": "https://example.com/success",
    }


def stripe_intent(intent: str, student: str | None, course: str | None) -> dict[str, Any]:
    metadata = {"student_id": student, "course_id": course} if student and course else {}
    return {
        "id": intent,
        "object": "payment_intent",
        "amount": 99900,
        "amount_capturable": 0,
        "amount_received": 99900,
        "capture_method": "automatic",
        "currency": "inr",
        "latest_charge": "ch_" + intent[3:],
        "livemode": False,
        "metadata": metadata,
        "payment_method_types": ["card"],
        "status": "succeeded",
    }


def stripe_charge(intent: str, refunded: bool = True, amount_refunded: int = 99900) -> dict[str, Any]:
    return {
        "id": "ch_" + intent[3:],
        "object": "charge",
        "amount": 99900,
        "amount_captured": 99900,
        "amount_refunded": amount_refunded,
        "captured": True,
        "currency": "inr",
        "metadata": {},
        "paid": True,
        "payment_intent": intent,
        "refunded": refunded,
        "refunds": {
            "object": "list",
            "data": [{"id": "re_" + intent[3:], "object": "refund", "amount": amount_refunded, "status": "succeeded"}],
            "has_more": False,
        },
        "status": "succeeded",
    }


def stripe_event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or "evt_" + uuid.uuid4().hex[:24],
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }


def new_intent() -> str:
    return "pi_" + uuid.uuid4().hex[:24]


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def razorpay_headers(body: bytes, secret: str = RAZORPAY_SECRET, event_id: str | None = None) -> dict[str, str]:
    """Signed the way Razorpay documents it (the razorpay library only verifies), and the
    signature checked with the razorpay library before it is used."""
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    razorpay.Utility().verify_webhook_signature(body.decode(), signature, secret)
    headers = {"Content-Type": "application/json", "X-Razorpay-Signature": signature}
    if event_id is not None:
        headers["X-Razorpay-Event-Id"] = event_id
    return headers


def stripe_headers(body: bytes, secret: str = STRIPE_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Signed with Stripe's library, as Stripe's own test helpers do."""
    t = int(time.time()) if timestamp is None else timestamp
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, t)
    return {"Content-Type": "application/json", "Stripe-Signature": header}
