"""Stripe's webhooks, and the same events read back from its Events API, as Stripe sends them.

Signature: `Stripe-Signature: t=...,v1=...` (several v1 possible) over "<t>.<raw body>",
tolerance 300 s, checked with the official library (`stripe.WebhookSignature.verify_header`,
given the body as text, as its documentation says: stripe releases before 16 sign text only).
The payment id is the PaymentIntent id whichever event carries it, so a Checkout Session's
events and its PaymentIntent's make one purchase; a free Checkout Session (no PaymentIntent)
is its own payment, under the session id. Only a one-time payment grants: a session in `mode`
`payment`; a subscription (its free trial included) or a setup session grants nothing, and a
session marked `no_payment_required` grants only when its `amount_total` is 0.

The trust boundary: the student and course come from the `metadata` of the Checkout Session
or of the PaymentIntent, which only the platform's server can set (`event_action`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import stripe

from kc_tasks.providers import (
    DISPUTE,
    REFUND,
    Action,
    Confirmation,
    Ignored,
    Malformed,
    NotPaid,
    ProviderEvent,
    RefundFailed,
    Revocation,
    amount,
    canonical,
    confirm_event_id,
    dig,
    load_object,
    purchase_from,
    text,
)
from kc_tasks.providers.kept import ID, SERVER_SET, Table, leaves

NAME = "stripe"
SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300
SESSION_COMPLETED = "checkout.session.completed"
SESSION_ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
INTENT_SUCCEEDED = "payment_intent.succeeded"
CHARGE_REFUNDED = "charge.refunded"
# A refund's later fate: both carry the Refund object.
REFUND_UPDATED = "charge.refund.updated"
REFUND_FAILED = "refund.failed"
DISPUTE_CLOSED = "charge.dispute.closed"
# The events kc_tasks acts on: what a Stripe endpoint should be subscribed to (docs/webhooks.md),
# and what reconciliation asks the Events API for.
SUBSCRIBE = (
    SESSION_COMPLETED,
    SESSION_ASYNC_SUCCEEDED,
    INTENT_SUCCEEDED,
    CHARGE_REFUNDED,
    REFUND_UPDATED,
    REFUND_FAILED,
    DISPUTE_CLOSED,
)
# The Checkout Session mode of a one-time payment: the only one that grants.
ONE_TIME = "payment"
# A refund in one of these statuses will never pay the buyer back.
REFUND_NOT_MADE = ("failed", "canceled")
# Why an event of the other mode is left alone (KC_STRIPE_LIVEMODE).
OTHER_MODE = "an event of the other Stripe mode"
# The key reconciliation adds to a Stripe event it stores (kc_tasks.payments.reconciler): the payment's
# story tells it from one its webhook brought.
FOUND_BY = "kc_tasks_found_by_reconciliation"

# What redaction keeps (kc_tasks.providers.kept): the object of an event, a Checkout Session, a
# PaymentIntent, a charge or a dispute...
KEPT_OBJECT: Table = {
    **leaves(
        "id",
        "object",
        "livemode",
        "mode",
        "status",
        "payment_status",
        "failure_reason",
        "amount",
        "amount_total",
        "amount_received",
        "amount_refunded",
        "currency",
        "refunded",
    ),
    "payment_intent": ID,
    "charge": ID,
    "metadata": SERVER_SET,
    # A charge as endpoints pinned to an API version before 2022-11-15 get it.
    "refunds": {"data": [leaves("id", "object", "amount", "currency", "status")]},
}
# ... and a webhook body, or an event of the Events API as reconciliation stores it.
KEPT: Table = {**leaves("id", "object", "type", "livemode", FOUND_BY), "data": {"object": KEPT_OBJECT}}


def verify(body: bytes, header: str | None, secrets: Sequence[str]) -> str | None:
    """None when any of the secrets signed the body within the tolerance; else why not."""
    if not header:
        return f"missing {SIGNATURE_HEADER} header"
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    problem = "signature does not match the body"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, TOLERANCE_SECONDS)
            return None
        except stripe.SignatureVerificationError as exc:
            problem = _why(str(exc))
        except (TypeError, ValueError, UnicodeError):  # a non-ASCII header
            problem = "malformed signature header"
    return problem


def parse(body: bytes, livemode: bool | None = None) -> ProviderEvent:
    """The event of a webhook body (or of one event of the Events API). With `livemode` set
    (KC_STRIPE_LIVEMODE), an event of the other mode is Ignored and acts on nothing."""
    data = load_object(body)
    eid, kind = text(data.get("id")), text(data.get("type"))
    if eid is None or kind is None:
        raise Malformed("id and type: are required strings")
    obj = dig(data, "data", "object")
    found = event_action(kind, obj)
    if livemode is not None and data.get("livemode") is not livemode:
        mode = "a live" if data.get("livemode") is True else "a test-mode"
        why = f"{OTHER_MODE}: {mode} event; this endpoint takes {'live' if livemode else 'test-mode'} events only"
        return ProviderEvent(NAME, eid, kind, Ignored(why, found.payment_id))
    return ProviderEvent(NAME, eid, kind, found)


def confirmation(session: Any, livemode: bool | None = None) -> Confirmation | NotPaid:
    """What a buyer's return from a Checkout Session (GET /v1/checkout/sessions/{id}) confirms:
    the session read as its checkout.session.completed would be (`event_action`, KC_STRIPE_LIVEMODE
    as `livemode`), under its payment id. Not paid yet: the session is not `complete` (open,
    expired), or completed while an asynchronous payment is still `unpaid` (its
    async_payment_succeeded comes later). Reads, besides what event_action reads, the session's
    `status`, `livemode` and its metadata's `student_id` (for the token check)."""
    metadata = dig(session, "metadata")
    student = text(metadata.get("student_id")) if isinstance(metadata, dict) else None
    status, paid = dig(session, "status"), dig(session, "payment_status")
    if status != "complete":
        return NotPaid(f"checkout session {dig(session, 'id')} is {status}, not complete", student)
    if paid == "unpaid":
        return NotPaid(f"checkout session {dig(session, 'id')} is complete, its payment not received yet", student)
    payment_id = event_action(SESSION_COMPLETED, session).payment_id or text(dig(session, "id")) or ""
    body = canonical(
        {
            "id": confirm_event_id(payment_id),
            "object": "event",
            "type": SESSION_COMPLETED,
            "livemode": dig(session, "livemode"),
            "data": {"object": session},
        }
    )
    return Confirmation(parse(body, livemode), body, student)


def event_action(kind: str, obj: Any) -> Action:
    """What one event asks for. Reads a Checkout Session's `id`, `mode`, `payment_status`,
    `payment_intent`, `amount_total`, `currency` and `metadata`; a PaymentIntent's `id`,
    `amount_received`, `currency` and `metadata`; a charge's `payment_intent` and `refunded`;
    a Refund's `id`, `payment_intent`, `status` and `failure_reason`; a dispute's
    `payment_intent` and `status`. Nothing else decides a grant."""
    if kind in (SESSION_COMPLETED, SESSION_ASYNC_SUCCEEDED):
        return _session(kind, obj)
    if kind == INTENT_SUCCEEDED:
        received = dig(obj, "amount_received")
        received = dig(obj, "amount") if received is None else received
        return purchase_from(dig(obj, "id"), received, dig(obj, "currency"), dig(obj, "metadata"))
    if kind == CHARGE_REFUNDED:
        intent = _id(dig(obj, "payment_intent"))
        if intent is None:
            return Ignored("charge names no payment_intent")
        if dig(obj, "refunded") is not True:
            return Ignored("partial refund: the purchase stays", intent)
        # Since API version 2022-11-15 a charge no longer embeds its refunds: the id is kept
        # only where an older endpoint version still sends it.
        refunds = dig(obj, "refunds", "data")
        refund_id = _id(refunds[0]) if isinstance(refunds, list) and len(refunds) == 1 else None
        return Revocation(intent, REFUND, refund_id)
    if kind in (REFUND_UPDATED, REFUND_FAILED):
        return _refund(obj)
    if kind == DISPUTE_CLOSED:
        intent = _id(dig(obj, "payment_intent"))
        if intent is None:
            return Ignored("dispute names no payment_intent")
        if dig(obj, "status") != "lost":
            return Ignored(f"dispute closed {dig(obj, 'status')}, not lost: the purchase stays", intent)
        return Revocation(intent, DISPUTE)
    return Ignored(f"type {kind} is not acted on", _id(dig(obj, "payment_intent")))


def _session(kind: str, session: Any) -> Action:
    status = dig(session, "payment_status")
    intent = _id(dig(session, "payment_intent"))
    mode = dig(session, "mode")
    if mode != ONE_TIME:
        # A subscription (a trial too: no_payment_required, and nothing revokes it when it
        # lapses unpaid) or a setup session: not a course bought once.
        why = f"checkout session in mode {mode}: only a one-time payment (mode {ONE_TIME}) grants a course"
        return Ignored(why, intent or text(dig(session, "id")))
    if status == "no_payment_required" and kind == SESSION_COMPLETED:
        total = dig(session, "amount_total")
        if amount(total) != 0:
            why = f"checkout session no_payment_required with amount_total {total}: only a free one (0) grants unpaid"
            return Ignored(why, intent or text(dig(session, "id")))
        # A free or fully discounted course: no PaymentIntent, the session is the payment.
        return purchase_from(dig(session, "id"), 0, dig(session, "currency"), dig(session, "metadata"))
    if status != "paid":
        return Ignored(f"checkout session not paid yet (payment_status={status})", intent)
    if intent is None:
        return Ignored(
            "paid checkout session names no payment_intent (not a one-time payment)", text(dig(session, "id"))
        )
    return purchase_from(intent, dig(session, "amount_total"), dig(session, "currency"), dig(session, "metadata"))


def _refund(refund: Any) -> Action:
    """A Refund that failed or was canceled after it was processed: the buyer was not paid back."""
    intent = _id(dig(refund, "payment_intent"))
    refund_id = text(dig(refund, "id"))
    if intent is None:
        return Ignored("refund names no payment_intent")
    status = dig(refund, "status")
    if status not in REFUND_NOT_MADE:
        return Ignored(f"refund {refund_id} {status}: nothing to do", intent)
    return RefundFailed(intent, refund_id, status, text(dig(refund, "failure_reason")))


def _id(value: Any) -> str | None:
    """An id, or the id of an expanded object."""
    return text(value) or text(dig(value, "id"))


def _why(message: str) -> str:
    if "tolerance" in message:
        return f"signature timestamp outside the tolerance of {TOLERANCE_SECONDS} s"
    if "extract" in message or "scheme" in message:
        return f"malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,v1=<hex>"
    return "signature does not match the body"
