"""Razorpay's webhooks, as Razorpay sends them.

Signature: `X-Razorpay-Signature` = hex HMAC-SHA256(secret, raw body), checked with the
official library (razorpay 2.x `Utility.verify_webhook_signature`). Event id: the
`X-Razorpay-Event-Id` header, Razorpay's own key for deduplication (the body's SHA-256 when
absent). Amounts are in paise; `notes` is an object, or `[]` when empty.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import razorpay
from razorpay.errors import SignatureVerificationError

from kc_tasks.providers import (
    REFUND,
    Action,
    Event,
    Ignored,
    Revocation,
    dig,
    load_object,
    purchase_from,
    text,
)

NAME = "razorpay"
SIGNATURE_HEADER = "X-Razorpay-Signature"
EVENT_ID_HEADER = "X-Razorpay-Event-Id"
PAID = ("payment.captured", "order.paid")
REFUNDED = "refund.processed"

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


def parse(body: bytes, event_id: str | None) -> Event:
    data = load_object(body)
    kind = text(data.get("event")) or "unknown"
    eid = text(event_id) or hashlib.sha256(body).hexdigest()
    payment = dig(data, "payload", "payment", "entity")
    if kind in PAID:
        notes = _notes(dig(payment, "notes"))
        if kind == "order.paid":
            notes = {**notes, **_notes(dig(data, "payload", "order", "entity", "notes"))}
        return Event(
            NAME, eid, kind, purchase_from(dig(payment, "id"), dig(payment, "amount"), dig(payment, "currency"), notes)
        )
    if kind == REFUNDED:
        refund = dig(data, "payload", "refund", "entity")
        payment_id = text(dig(refund, "payment_id")) or text(dig(payment, "id"))
        if payment_id is None:
            return Event(NAME, eid, kind, Ignored("refund names no payment"))
        if not _fully_refunded(payment, refund):
            return Event(NAME, eid, kind, Ignored("partial refund: the purchase stays", payment_id))
        return Event(NAME, eid, kind, Revocation(payment_id, REFUND, text(dig(refund, "id"))))
    return Event(NAME, eid, kind, Ignored(f"type {kind} is not acted on", text(dig(payment, "id"))))


def payment_action(payment: Any) -> Action:
    """What one payment entity of the API (GET /v1/payments) asks for: a purchase when it is
    captured, a revocation when it is fully refunded, else nothing (reconciliation)."""
    pid = text(dig(payment, "id"))
    if pid is not None and _fully_refunded(payment, None):
        return Revocation(pid, REFUND)
    status = dig(payment, "status")
    if status != "captured":
        return Ignored(f"payment status {status}, not captured", pid)
    return purchase_from(dig(payment, "id"), dig(payment, "amount"), dig(payment, "currency"), dig(payment, "notes"))


def _notes(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _fully_refunded(payment: Any, refund: Any) -> bool:
    if dig(payment, "refund_status") == "full":
        return True
    amount, refunded = dig(payment, "amount"), dig(payment, "amount_refunded")
    if isinstance(amount, int) and isinstance(refunded, int):
        return refunded >= amount
    return False
