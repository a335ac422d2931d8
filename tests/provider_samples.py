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

# The buyer's personal data, where the providers' documented samples carry it: the payment's
# email, phone and UPI address, the card's holder; a Checkout Session's customer_details, a
# charge's billing_details, a dispute's evidence. kc_tasks reads none of it; after
# KC_INBOX_BODY_DAYS it is nowhere (tests/e2e/test_personal_data.py).
EMAIL = "gaurav.kumar@example.com"
PHONE = "+919876543210"
VPA = "gaurav.kumar@exampleupi"
NAME = "Gaurav Kumar"
STREET = "21 Residency Road"
CARD_FINGERPRINT = "Xt5EWLLDS7FJjGnL"
PERSONAL = (EMAIL, PHONE, VPA, NAME, STREET, CARD_FINGERPRINT)
ADDRESS = {
    "city": "Bengaluru",
    "country": "IN",
    "line1": STREET,
    "line2": "Shanthala Nagar",
    "postal_code": "560025",
    "state": "KA",
}


def razorpay_payment(
    payment_id: str | None = None,
    amount: int = 49900,
    refunded: int = 0,
    notes: dict[str, Any] | None = None,
    order_id: str | None = None,
    created_at: int = 1732520000,
    method: str = "upi",
) -> dict[str, Any]:
    """A payment entity as in Razorpay's payment.captured sample. `notes` are the payment's own,
    which Razorpay Checkout lets the browser set (`[]` when empty): never trusted for a grant.
    A card payment carries the card (`method` card)."""
    pid = payment_id or "pay_" + uuid.uuid4().hex[:14]
    card = {
        "id": "card_" + pid[4:],
        "entity": "card",
        "name": NAME,
        "last4": "1111",
        "network": "Visa",
        "type": "credit",
        "issuer": "HDFC",
        "international": False,
        "emi": False,
        "sub_type": "consumer",
        "token_iin": None,
    }
    return {
        "id": pid,
        "entity": "payment",
        "amount": amount,
        "currency": "INR",
        "status": "refunded" if refunded >= amount else "captured",
        "order_id": order_id or "order_" + pid[4:],
        "invoice_id": None,
        "international": False,
        "method": method,
        "amount_refunded": refunded,
        "refund_status": None if not refunded else ("full" if refunded >= amount else "partial"),
        "captured": True,
        "description": "Course purchase",
        "card_id": card["id"] if method == "card" else None,
        **({"card": card} if method == "card" else {}),
        "bank": None,
        "wallet": None,
        "vpa": VPA if method == "upi" else None,
        "email": EMAIL,
        "contact": PHONE,
        "notes": notes or [],
        "fee": 1180,
        "tax": 180,
        "error_code": None,
        "error_description": None,
        "acquirer_data": {"rrn": "123456789012", "upi_transaction_id": "2A1B3C4D5E6F"},
        "upi": {"payer_account_type": "bank_account", "vpa": VPA} if method == "upi" else None,
        "created_at": created_at,
    }


def razorpay_order(
    payment: dict[str, Any],
    student: str | None = None,
    course: str | None = None,
    extra_notes: dict[str, Any] | None = None,
    amount: int | None = None,
    amount_paid: int | None = None,
) -> dict[str, Any]:
    """The order entity the platform's server created for `payment` (Orders API), with its
    notes: the only notes kc_tasks trusts. `[]` when empty, as Razorpay sends them.

    An order that takes partial payments (`amount` over the payment's; created with
    `partial_payment: true`, which the entity echoes here) as Razorpay's order entity documents it
    after a payment: `amount_paid` so far, `amount_due` the rest, `status` `attempted` until it is
    paid in full, then `paid`; `attempts` counts the payments."""
    notes: dict[str, Any] = {
        **({"student_id": student} if student else {}),
        **({"course_id": course} if course else {}),
        **(extra_notes or {}),
    }
    total = payment["amount"] if amount is None else amount
    paid = total if amount_paid is None else amount_paid
    order = {
        "id": payment["order_id"],
        "entity": "order",
        "amount": total,
        "amount_paid": paid,
        "amount_due": total - paid,
        "currency": "INR",
        "receipt": "rcpt_1",
        "offer_id": None,
        "status": "paid" if paid >= total else "attempted",
        "attempts": 1,
        "notes": notes or [],
        "created_at": payment["created_at"] - 10,
    }
    if total != payment["amount"]:
        order["partial_payment"] = True
    return order


def razorpay_refund(
    payment: dict[str, Any], amount: int | None = None, status: str = "processed", created_at: int | None = None
) -> dict[str, Any]:
    """A refund entity as in Razorpay's refund.processed sample."""
    return {
        "id": "rfnd_" + uuid.uuid4().hex[:14],
        "entity": "refund",
        "amount": payment["amount"] if amount is None else amount,
        "currency": "INR",
        "payment_id": payment["id"],
        "notes": [],
        "receipt": None,
        "acquirer_data": {"arn": None},
        "created_at": payment["created_at"] + 100 if created_at is None else created_at,
        "batch_id": None,
        "status": status,
        "speed_processed": "normal",
        "speed_requested": "normal",
    }


def razorpay_dispute(payment: dict[str, Any], status: str = "lost", created_at: int | None = None) -> dict[str, Any]:
    """A dispute entity as in Razorpay's payment.dispute.lost sample."""
    return {
        "id": "disp_" + uuid.uuid4().hex[:14],
        "entity": "dispute",
        "payment_id": payment["id"],
        "amount": payment["amount"],
        "currency": "INR",
        "amount_deducted": payment["amount"] if status == "lost" else 0,
        "reason_code": "chargeback",
        "respond_by": payment["created_at"] + 7 * 86400,
        "status": status,
        "phase": "chargeback",
        "created_at": payment["created_at"] + 86400 if created_at is None else created_at,
    }


def razorpay_event(
    event: str,
    payment: dict[str, Any],
    order: dict[str, Any] | None = None,
    refund: dict[str, Any] | None = None,
    dispute: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A webhook body as Razorpay sends it: `order.paid` carries the payment and its order,
    `refund.*` the refund and its payment, `payment.dispute.*` the payment and the dispute."""
    payload: dict[str, Any] = {"payment": {"entity": payment}}
    if event == "order.paid":
        payload["order"] = {"entity": order if order is not None else razorpay_order(payment)}
    if event.startswith("refund."):
        payload = {"refund": {"entity": refund if refund is not None else razorpay_refund(payment)}, **payload}
    if event.startswith("payment.dispute."):
        payload["dispute"] = {"entity": dispute if dispute is not None else razorpay_dispute(payment)}
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": event,
        "contains": list(payload),
        "payload": payload,
        "created_at": payment["created_at"],
    }


def razorpay_paid(
    student: str | None,
    course: str | None,
    payment_id: str | None = None,
    amount: int = 49900,
    payment_notes: dict[str, Any] | None = None,
    extra_notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An `order.paid` webhook body whose order names the student and course."""
    payment = razorpay_payment(payment_id, amount=amount, notes=payment_notes)
    return razorpay_event("order.paid", payment, razorpay_order(payment, student, course, extra_notes))


def stripe_session(
    intent: str | None,
    student: str | None,
    course: str | None,
    paid: bool = True,
    payment_status: str | None = None,
    amount_total: int = 99900,
    mode: str = "payment",
) -> dict[str, Any]:
    """A Checkout Session as in Stripe's checkout.session.completed sample. A free one
    (`payment_status` no_payment_required) has no PaymentIntent. `mode` `subscription`: a
    subscription's session, with its `subscription` and `invoice` and no PaymentIntent (one that
    starts with a free trial is completed `no_payment_required`, its `amount_total` the first
    invoice's, 0 for a trial); `setup`: a session that only saves a card."""
    metadata = {"student_id": student, "course_id": course} if student and course else {}
    status = payment_status or ("paid" if paid else "unpaid")
    return {
        "id": "cs_test_" + uuid.uuid4().hex[:24],
        "object": "checkout.session",
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "currency": "inr",
        "customer": None,
        "customer_details": {
            "address": ADDRESS,
            "email": EMAIL,
            "name": NAME,
            "phone": PHONE,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        "customer_email": EMAIL,
        "livemode": False,
        "metadata": metadata,
        "mode": mode,
        "payment_intent": None if status == "no_payment_required" or mode != "payment" else intent,
        **(
            {"subscription": "sub_" + uuid.uuid4().hex[:24], "invoice": "in_" + uuid.uuid4().hex[:24]}
            if mode == "subscription"
            else {}
        ),
        "payment_method_types": ["card"],
        "payment_status": status,
        "shipping_details": {"address": ADDRESS, "name": NAME},
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
        "receipt_email": EMAIL,
        "shipping": {"address": ADDRESS, "name": NAME, "phone": PHONE},
        "status": "succeeded",
    }


def stripe_charge(intent: str, refunded: bool = True, amount_refunded: int = 99900) -> dict[str, Any]:
    """A charge as charge.refunded sends it since API version 2022-11-15: no embedded refunds."""
    return {
        "id": "ch_" + intent[3:],
        "object": "charge",
        "amount": 99900,
        "amount_captured": 99900,
        "amount_refunded": amount_refunded,
        "billing_details": {"address": ADDRESS, "email": EMAIL, "name": NAME, "phone": PHONE},
        "captured": True,
        "currency": "inr",
        "metadata": {},
        "paid": True,
        "payment_intent": intent,
        "payment_method_details": {
            "card": {
                "brand": "visa",
                "exp_month": 8,
                "exp_year": 2030,
                "fingerprint": CARD_FINGERPRINT,
                "last4": "4242",
            },
            "type": "card",
        },
        "receipt_email": EMAIL,
        "refunded": refunded,
        "status": "succeeded",
    }


def stripe_refund(
    intent: str, status: str = "failed", failure_reason: str | None = "expired_or_canceled_card"
) -> dict[str, Any]:
    """A Refund as Stripe's `charge.refund.updated` and `refund.failed` events carry it: a refund
    that succeeded (charge.refunded went out then) and later failed, the card closed say; its
    `failure_reason` and `failure_balance_transaction` set then (`status` `canceled`: a refund
    canceled before it was made)."""
    failed = status == "failed"
    return {
        "id": "re_" + uuid.uuid4().hex[:24],
        "object": "refund",
        "amount": 99900,
        "balance_transaction": "txn_" + uuid.uuid4().hex[:24],
        "charge": "ch_" + intent[3:],
        "created": int(time.time()) - 3600,
        "currency": "inr",
        "destination_details": {
            "card": {"reference_status": "available", "reference_type": "acquirer_reference_number", "type": "refund"},
            "type": "card",
        },
        "failure_balance_transaction": "txn_" + uuid.uuid4().hex[:24] if failed else None,
        "failure_reason": failure_reason if failed else None,
        "metadata": {},
        "payment_intent": intent,
        "reason": "requested_by_customer",
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }


def stripe_dispute(intent: str, status: str = "lost") -> dict[str, Any]:
    """A dispute as in Stripe's charge.dispute.closed sample (`status` won or lost)."""
    return {
        "id": "dp_" + uuid.uuid4().hex[:24],
        "object": "dispute",
        "amount": 99900,
        "charge": "ch_" + intent[3:],
        "currency": "inr",
        "evidence": {
            "billing_address": STREET,
            "customer_email_address": EMAIL,
            "customer_name": NAME,
            "shipping_address": STREET,
        },
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": intent,
        "reason": "fraudulent",
        "status": status,
    }


def stripe_event(
    kind: str, obj: dict[str, Any], event_id: str | None = None, livemode: bool = False, created: int | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or "evt_" + uuid.uuid4().hex[:24],
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()) if created is None else created,
        "data": {"object": {**obj, "livemode": livemode}},
        "livemode": livemode,
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
