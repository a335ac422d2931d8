"""What reconciliation read from Razorpay's API, as inbox events (provider `reconcile`).

Stripe needs none of this: its Events API gives back the webhook's own events, stored under
their own ids (kc_tasks.payments.reconciler). Razorpay's API gives objects, not events: a captured
payment with its order, a refund with its payment, a dispute. Each becomes a ProviderEvent with id
`razorpay:<payment_id>:<paid|refunded|disputed>` whose body holds the objects it was read
from, so the inbox stores it once (what one run enqueued no later run enqueues again) and
`parse` reads a stored one back (for the relay and replays) by the webhook's own rules. Pure.
"""

from __future__ import annotations

import json
from typing import Any

from kc_tasks.providers import Action, Malformed, ProviderEvent, dig, load_object, razorpay, stripe
from kc_tasks.providers.kept import Table

NAME = "reconcile"
# The key reconciliation adds to a Stripe event it stores: the payment's story tells it from one
# its webhook brought.
FOUND_BY = stripe.FOUND_BY
PAID = "paid"
REFUNDED = "refunded"
DISPUTED = "disputed"
KINDS = (PAID, REFUNDED, DISPUTED)
# The type each kind is stored under.
TYPES = {
    (razorpay.NAME, PAID): "razorpay.payment.paid",
    (razorpay.NAME, REFUNDED): "razorpay.refund.refunded",
    (razorpay.NAME, DISPUTED): "razorpay.dispute.disputed",
    # Stored by an earlier release, which read Stripe's PaymentIntents and charges: still read back.
    (stripe.NAME, PAID): "stripe.payment_intent.paid",
    (stripe.NAME, REFUNDED): "stripe.charge.refunded",
}

# What redaction keeps (kc_tasks.providers.kept), by the provider whose API an event was read
# from (`source_of`). Razorpay's objects: {"payment", "order"}, {"refund", "payment"},
# {"dispute"}; an earlier release stored a payment alone. Stripe's: an earlier release stored
# its PaymentIntents and charges themselves.
KEPT: dict[str, Table] = {
    razorpay.NAME: {
        **razorpay.KEPT_PAYMENT,
        "payment": razorpay.KEPT_PAYMENT,
        "order": razorpay.KEPT_ORDER,
        "refund": razorpay.KEPT_REFUND,
        "dispute": razorpay.KEPT_DISPUTE,
    },
    stripe.NAME: stripe.KEPT_OBJECT,
}


def event_id(provider: str, payment_id: str, kind: str) -> str:
    return f"{provider}:{payment_id}:{kind}"


def split_event_id(eid: str) -> tuple[str, str]:
    """(provider, kind) of an event id; payment ids may themselves hold colons."""
    provider, _, rest = eid.partition(":")
    kind = rest.rpartition(":")[2]
    if (provider, kind) not in TYPES:
        raise Malformed(f"{eid!r} is not a reconciliation event id")
    return provider, kind


def source_of(eid: str) -> str | None:
    """The provider whose API a reconciliation event was read from, or None when `eid` is not a
    reconciliation event id."""
    try:
        return split_event_id(eid)[0]
    except Malformed:
        return None


def source(provider: str, eid: str) -> str:
    """The provider an inbox event came from: its own, or for a reconciliation event the one
    whose API it was read from (the event id's prefix)."""
    return eid.partition(":")[0] if provider == NAME else provider


def action(provider: str, kind: str, found: Any) -> Action:
    """What the stored objects ask for, as the provider's own webhook reads them."""
    if (provider, kind) not in TYPES:
        raise Malformed(f"unknown reconciliation source {provider} {kind}")
    if provider == stripe.NAME:
        return stripe.event_action(stripe.INTENT_SUCCEEDED if kind == PAID else stripe.CHARGE_REFUNDED, found)
    if dig(found, "entity") == "payment":  # an earlier release stored the payment alone
        found = {"payment": found}
    if kind == PAID:
        return razorpay.order_purchase(dig(found, "payment"), dig(found, "order"))
    if kind == REFUNDED:
        return razorpay.refund_action(dig(found, "refund") or {"status": "processed"}, dig(found, "payment"))
    return razorpay.dispute_action(dig(found, "dispute"))


def event(provider: str, kind: str, found: dict[str, Any]) -> tuple[ProviderEvent, bytes] | None:
    """The event of what was read (e.g. `{"payment": ..., "order": ...}`) and its body, or None
    when it names no payment."""
    act = action(provider, kind, found)
    if act.payment_id is None:
        return None
    return ProviderEvent(NAME, event_id(provider, act.payment_id, kind), TYPES[(provider, kind)], act), body(found)


def body(found: Any) -> bytes:
    """The API objects as stored in payment_events.body."""
    return json.dumps(found, ensure_ascii=False, sort_keys=True).encode("utf-8")


def parse(raw: bytes, eid: str) -> ProviderEvent:
    provider, kind = split_event_id(eid)
    return ProviderEvent(NAME, eid, TYPES[(provider, kind)], action(provider, kind, load_object(raw)))
