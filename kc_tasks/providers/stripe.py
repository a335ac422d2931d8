"""Stripe's webhooks, as Stripe sends them.

Signature: `Stripe-Signature: t=...,v1=...` (several v1 possible) over "<t>.<raw body>",
tolerance 300 s, checked with the official library (`stripe.WebhookSignature.verify_header`).
The payment id is the PaymentIntent id whichever event carries it, so a Checkout Session's
events and its PaymentIntent's make one purchase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import stripe

from kc_tasks.providers import (
    REFUND,
    Action,
    Event,
    Ignored,
    Malformed,
    Revocation,
    dig,
    load_object,
    purchase_from,
    text,
)

NAME = "stripe"
SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300
SESSION_COMPLETED = "checkout.session.completed"
SESSION_ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
INTENT_SUCCEEDED = "payment_intent.succeeded"
CHARGE_REFUNDED = "charge.refunded"


def verify(body: bytes, header: str | None, secrets: Sequence[str]) -> str | None:
    """None when any of the secrets signed the body within the tolerance; else why not."""
    if not header:
        return f"missing {SIGNATURE_HEADER} header"
    problem = "signature does not match the body"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, TOLERANCE_SECONDS)
            return None
        except stripe.SignatureVerificationError as exc:
            problem = _why(str(exc))
        except (TypeError, ValueError, UnicodeDecodeError):  # a non-ASCII header, a non-UTF-8 body
            problem = "malformed signature header or body"
    return problem


def parse(body: bytes) -> Event:
    data = load_object(body)
    eid, kind = text(data.get("id")), text(data.get("type"))
    if eid is None or kind is None:
        raise Malformed("id and type: are required strings")
    obj = dig(data, "data", "object")
    if kind in (SESSION_COMPLETED, SESSION_ASYNC_SUCCEEDED):
        intent = _id(dig(obj, "payment_intent"))
        if dig(obj, "payment_status") != "paid":
            why = f"checkout session not paid yet (payment_status={dig(obj, 'payment_status')})"
            return Event(NAME, eid, kind, Ignored(why, intent))
        return Event(
            NAME, eid, kind, purchase_from(intent, dig(obj, "amount_total"), dig(obj, "currency"), dig(obj, "metadata"))
        )
    if kind == INTENT_SUCCEEDED:
        amount = dig(obj, "amount_received")
        amount = dig(obj, "amount") if amount is None else amount
        return Event(NAME, eid, kind, purchase_from(dig(obj, "id"), amount, dig(obj, "currency"), dig(obj, "metadata")))
    if kind == CHARGE_REFUNDED:
        intent = _id(dig(obj, "payment_intent"))
        if intent is None:
            return Event(NAME, eid, kind, Ignored("charge names no payment_intent"))
        if dig(obj, "refunded") is not True:
            return Event(NAME, eid, kind, Ignored("partial refund: the purchase stays", intent))
        refunds = dig(obj, "refunds", "data")
        refund_id = _id(refunds[0]) if isinstance(refunds, list) and refunds else None
        return Event(NAME, eid, kind, Revocation(intent, REFUND, refund_id))
    return Event(NAME, eid, kind, Ignored(f"type {kind} is not acted on", _id(dig(obj, "payment_intent"))))


def intent_action(intent: Any) -> Action:
    """What one PaymentIntent of the API (GET /v1/payment_intents) asks for: a purchase when it
    succeeded, else nothing (reconciliation)."""
    if dig(intent, "status") != "succeeded":
        return Ignored(f"payment intent status {dig(intent, 'status')}, not succeeded", _id(dig(intent, "id")))
    amount = dig(intent, "amount_received")
    amount = dig(intent, "amount") if amount is None else amount
    return purchase_from(dig(intent, "id"), amount, dig(intent, "currency"), dig(intent, "metadata"))


def charge_action(charge: Any) -> Action:
    """What one charge of the API (GET /v1/charges) asks for: a revocation of its PaymentIntent's
    purchase when it is fully refunded, else nothing (reconciliation)."""
    intent = _id(dig(charge, "payment_intent"))
    if intent is None:
        return Ignored("charge names no payment_intent")
    if dig(charge, "refunded") is not True:
        return Ignored("not fully refunded", intent)
    refunds = dig(charge, "refunds", "data")
    refund_id = _id(refunds[0]) if isinstance(refunds, list) and refunds else None
    return Revocation(intent, REFUND, refund_id)


def _id(value: Any) -> str | None:
    """An id, or the id of an expanded object."""
    return text(value) or text(dig(value, "id"))


def _why(message: str) -> str:
    if "tolerance" in message:
        return f"signature timestamp outside the tolerance of {TOLERANCE_SECONDS} s"
    if "extract" in message or "scheme" in message:
        return f"malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,v1=<hex>"
    return "signature does not match the body"
