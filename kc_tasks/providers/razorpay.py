"""Razorpay's webhooks and API objects, as Razorpay sends them.

Signature: `X-Razorpay-Signature` = hex HMAC-SHA256(secret, raw body), checked with the
official library (razorpay 2.x `Utility.verify_webhook_signature`). ProviderEvent id: the
`X-Razorpay-Event-Id` header, Razorpay's own key for deduplication (the body's SHA-256 when
absent). Amounts are in paise; `notes` is an object, or `[]` when empty.

The trust boundary: the student and course come from the **order's** notes only, which the
platform's server set when it created the order (`order_purchase`). A payment's own notes
are never read for them: Razorpay Checkout lets the browser set those. So `order.paid`
makes purchases, and `payment.captured` is stored ignored.

An order is granted only once it is paid in full (its `status` `paid`, or `amount_paid` >=
`amount`): an order that accepts partial payments (`partial_payment: true`) is paid in
instalments, each its own payment, and only the one that completes it makes the purchase,
for the order's `amount_paid`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import razorpay
from razorpay.errors import SignatureVerificationError

from kc_tasks.providers import (
    DISPUTE,
    REFUND,
    Action,
    Confirmation,
    Ignored,
    NotPaid,
    ProviderEvent,
    RefundFailed,
    Revocation,
    Unmapped,
    amount,
    canonical,
    confirm_event_id,
    dig,
    load_object,
    purchase_from,
    text,
)
from kc_tasks.providers.kept import SERVER_SET, Table, leaves

NAME = "razorpay"
SIGNATURE_HEADER = "X-Razorpay-Signature"
EVENT_ID_HEADER = "X-Razorpay-Event-Id"
ORDER_PAID = "order.paid"
PAYMENT_CAPTURED = "payment.captured"
REFUND_PROCESSED = "refund.processed"
REFUND_FAILED = "refund.failed"
DISPUTE_LOST = "payment.dispute.lost"
# The events a Razorpay webhook should be subscribed to (docs/webhooks.md).
SUBSCRIBE = (ORDER_PAID, REFUND_PROCESSED, REFUND_FAILED, DISPUTE_LOST)
# How the why of an order not paid in full begins (reconciliation counts these as not paid).
PART_PAID = "order not paid in full"

# What redaction keeps of a body (kc_tasks.providers.kept): the fields `parse` reads.
KEPT_PAYMENT = leaves("id", "entity", "amount", "currency", "status", "order_id", "amount_refunded", "refund_status")
KEPT_ORDER = {
    **leaves("id", "entity", "amount", "amount_paid", "amount_due", "partial_payment", "currency", "status"),
    "notes": SERVER_SET,
}
KEPT_REFUND = leaves("id", "entity", "payment_id", "amount", "currency", "status")
KEPT_DISPUTE = leaves("id", "entity", "payment_id", "amount", "currency", "status")
# A webhook body: {"event": ..., "payload": {"payment": {"entity": ...}, "order": ..., ...}}.
KEPT: Table = {
    **leaves("entity", "event"),
    "payload": {
        "payment": {"entity": KEPT_PAYMENT},
        "order": {"entity": KEPT_ORDER},
        "refund": {"entity": KEPT_REFUND},
        "dispute": {"entity": KEPT_DISPUTE},
    },
}

_utility = razorpay.Utility()


def verify(body: bytes, header: str | None, secrets: Sequence[str]) -> str | None:
    """None when any of the secrets signed the body; else why not."""
    if not header:
        return f"missing {SIGNATURE_HEADER} header"
    try:
        text_body = body.decode("utf-8")  # the library signs a str
    except UnicodeDecodeError:
        return "body is not UTF-8"
    for secret in secrets:
        try:
            _utility.verify_webhook_signature(text_body, header, secret)
            return None
        except (SignatureVerificationError, TypeError):  # TypeError: a non-ASCII header
            continue
    return "signature does not match the body"


def parse(body: bytes, event_id: str | None) -> ProviderEvent:
    data = load_object(body)
    kind = text(data.get("event")) or "unknown"
    eid = text(event_id) or hashlib.sha256(body).hexdigest()
    payment = dig(data, "payload", "payment", "entity")
    if kind == ORDER_PAID:
        return ProviderEvent(NAME, eid, kind, order_purchase(payment, dig(data, "payload", "order", "entity")))
    if kind == PAYMENT_CAPTURED:
        why = f"{PAYMENT_CAPTURED} is not acted on: its notes are the browser's; {ORDER_PAID} makes the purchase"
        return ProviderEvent(NAME, eid, kind, Ignored(why, text(dig(payment, "id"))))
    if kind == REFUND_PROCESSED:
        return ProviderEvent(NAME, eid, kind, refund_action(dig(data, "payload", "refund", "entity"), payment))
    if kind == REFUND_FAILED:
        return ProviderEvent(NAME, eid, kind, refund_failed(dig(data, "payload", "refund", "entity"), payment))
    if kind.startswith("payment.dispute."):
        return ProviderEvent(NAME, eid, kind, dispute_action(dig(data, "payload", "dispute", "entity")))
    return ProviderEvent(NAME, eid, kind, Ignored(f"type {kind} is not acted on", text(dig(payment, "id"))))


def verify_checkout(order_id: str, payment_id: str, signature: str, client: razorpay.Client) -> bool:
    """Whether Checkout's `razorpay_signature` is HMAC-SHA256("<order_id>|<payment_id>") with the
    key secret of `client`, checked by the official library (`utility.verify_payment_signature`)."""
    params = {"razorpay_order_id": order_id, "razorpay_payment_id": payment_id, "razorpay_signature": signature}
    try:
        return bool(client.utility.verify_payment_signature(params))
    except (SignatureVerificationError, TypeError):  # TypeError: a non-ASCII signature
        return False


def confirmation(order: Any, payments: Any, payment_id: str) -> Confirmation | NotPaid:
    """What Checkout's return of `payment_id` (its signature checked) confirms, from the order
    (GET /v1/orders/{id}) and the order's payments (GET /v1/orders/{id}/payments): by order.paid's
    rules (`order_purchase`), under the payment an order.paid carries, the order's latest captured
    payment: an earlier instalment of an order paid in parts confirms the order, never a
    payment of its own. Not paid yet: the signed payment is not captured (authorized, failed,
    refunded, not listed), or the order is not paid in full. Reads, besides what order_purchase
    reads, the payments' `created_at`, and the order's notes' `student_id` (for the token check)."""
    notes = dig(order, "notes")
    student = text(notes.get("student_id")) if isinstance(notes, dict) else None
    listed = [p for p in payments if isinstance(p, dict)] if isinstance(payments, list) else []
    signed = next((p for p in listed if p.get("id") == payment_id), None)
    if signed is None or signed.get("status") != "captured":
        status = "not listed" if signed is None else f"{signed.get('status')}"
        return NotPaid(f"payment {payment_id} of order {dig(order, 'id')} is {status}, not captured", student)
    if not paid_in_full(order):
        return NotPaid(
            f"{PART_PAID}: order {dig(order, 'id')} (status {dig(order, 'status')}) has {dig(order, 'amount_paid')} "
            f"of {dig(order, 'amount')} paid",
            student,
        )
    captured = [p for p in listed if p.get("status") == "captured" and text(p.get("id"))]
    latest = max(captured, key=lambda p: (p["created_at"] if amount(p.get("created_at")) else 0, p["id"]))
    body = canonical(
        {
            "entity": "event",
            "event": ORDER_PAID,
            "contains": ["payment", "order"],
            "payload": {"payment": {"entity": latest}, "order": {"entity": order}},
        }
    )
    return Confirmation(parse(body, confirm_event_id(latest["id"])), body, student)


def order_purchase(payment: Any, order: Any) -> Action:
    """The purchase a captured payment of an order makes, once the order is paid in full.
    Reads the payment's `id`, `status`, `currency` and `order_id` (and its `amount`, only for an
    order that does not say `amount_paid`), and the order's `id`, `status`, `amount`,
    `amount_paid` and `notes` (`student_id`, `course_id`, the rest to metadata; `amount_due`
    only to say why); never the payment's own `notes`. The purchase's amount is the order's
    `amount_paid`: every instalment of an order paid in parts."""
    pid = text(dig(payment, "id"))
    if dig(payment, "status") not in ("captured", None):
        return Ignored(f"payment status {dig(payment, 'status')}, not captured", pid)
    if not isinstance(order, dict):
        return Ignored("a payment without an order: nothing server-set names a course", pid)
    if text(dig(payment, "order_id")) != text(order.get("id")):
        return Unmapped(
            pid, f"the payment's order_id {dig(payment, 'order_id')!r} is not the order {order.get('id')!r}"
        )
    if not paid_in_full(order):
        due = amount(order.get("amount_due"))
        owing = f", {due} due" if due is not None else ""
        return Ignored(
            f"{PART_PAID}: order {order.get('id')} (status {order.get('status')}) has {order.get('amount_paid')} of "
            f"{order.get('amount')} paid{owing}; its last payment makes the purchase",
            pid,
        )
    paid = amount(order.get("amount_paid"))
    total = dig(payment, "amount") if paid is None else paid  # an order stored before amount_paid was kept
    return purchase_from(dig(payment, "id"), total, dig(payment, "currency"), order.get("notes"))


def paid_in_full(order: Any) -> bool:
    """The order's `status` is `paid`, or its `amount_paid` has reached its `amount`."""
    if dig(order, "status") == "paid":
        return True
    paid, total = amount(dig(order, "amount_paid")), amount(dig(order, "amount"))
    return paid is not None and total is not None and paid >= total


def refund_action(refund: Any, payment: Any) -> Action:
    """A processed refund revokes its payment's purchase when the payment is fully refunded
    (`refund_status` full, or `amount_refunded` >= `amount`); a partial one leaves it."""
    payment_id = text(dig(refund, "payment_id")) or text(dig(payment, "id"))
    if payment_id is None:
        return Ignored("refund names no payment")
    if dig(refund, "status") not in ("processed", None):
        return Ignored(f"refund status {dig(refund, 'status')}, not processed", payment_id)
    if not fully_refunded(payment):
        return Ignored("partial refund: the purchase stays", payment_id)
    return Revocation(payment_id, REFUND, text(dig(refund, "id")))


def refund_failed(refund: Any, payment: Any) -> Action:
    """A refund that failed: its payment's buyer was not paid back (`refund.failed`). Reads the
    refund's `id`, `payment_id` and `status`."""
    payment_id = text(dig(refund, "payment_id")) or text(dig(payment, "id"))
    if payment_id is None:
        return Ignored("refund names no payment")
    if dig(refund, "status") not in ("failed", None):
        return Ignored(f"refund status {dig(refund, 'status')}, not failed", payment_id)
    return RefundFailed(payment_id, text(dig(refund, "id")))


def dispute_action(dispute: Any) -> Action:
    """A lost dispute (chargeback) revokes its payment's purchase; any other is left alone."""
    payment_id = text(dig(dispute, "payment_id"))
    if payment_id is None:
        return Ignored("dispute names no payment")
    if dig(dispute, "status") != "lost":
        return Ignored(f"dispute {dig(dispute, 'status')}, not lost: the purchase stays", payment_id)
    return Revocation(payment_id, DISPUTE)


def paid(payment: Any) -> bool:
    """A payment the API lists as captured, of an order (reconciliation fetches its order)."""
    return dig(payment, "status") == "captured" and text(dig(payment, "order_id")) is not None


def fully_refunded(payment: Any) -> bool:
    if dig(payment, "refund_status") == "full":
        return True
    amount, refunded = dig(payment, "amount"), dig(payment, "amount_refunded")
    if isinstance(amount, int) and isinstance(refunded, int):
        return refunded >= amount > 0
    return False
