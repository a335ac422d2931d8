"""What reconciliation read from a provider's API, as inbox events (provider `reconcile`).

An object of Razorpay's or Stripe's API (a payment entity, a PaymentIntent, a charge) becomes
an Event with event id `<provider>:<payment_id>:<paid|refunded>`: the inbox stores it once,
so what one run enqueued no later run enqueues again. `parse` reads a stored one back (for
the relay and replays). Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from kc_tasks.providers import Action, Event, Ignored, Malformed, Revocation, load_object, razorpay, stripe

NAME = "reconcile"
PAID = "paid"
REFUNDED = "refunded"
KINDS = (PAID, REFUNDED)
# The object each (provider, kind) is read from.
OBJECTS = {
    (razorpay.NAME, PAID): "payment",
    (razorpay.NAME, REFUNDED): "payment",
    (stripe.NAME, PAID): "payment_intent",
    (stripe.NAME, REFUNDED): "charge",
}


def event_id(provider: str, payment_id: str, kind: str) -> str:
    return f"{provider}:{payment_id}:{kind}"


def split_event_id(eid: str) -> tuple[str, str]:
    """(provider, kind) of an event id; payment ids may themselves hold colons."""
    provider, _, rest = eid.partition(":")
    kind = rest.rpartition(":")[2]
    if (provider, kind) not in OBJECTS:
        raise Malformed(f"{eid!r} is not a reconciliation event id")
    return provider, kind


def action(provider: str, kind: str, obj: Any) -> Action:
    """What the object asks for, as the provider's own module reads it."""
    if (provider, kind) not in OBJECTS:
        raise Malformed(f"unknown reconciliation source {provider} {kind}")
    if provider == razorpay.NAME:
        found = razorpay.payment_action(obj)
    elif kind == PAID:
        found = stripe.intent_action(obj)
    else:
        found = stripe.charge_action(obj)
    # A Razorpay payment is either captured or refunded; the event of the other kind is nothing.
    if kind == PAID and isinstance(found, Revocation):
        return Ignored("fully refunded", found.payment_id)
    if kind == REFUNDED and not isinstance(found, Revocation):
        return Ignored("not fully refunded", found.payment_id)
    return found


def event(provider: str, kind: str, obj: Any) -> Event | None:
    """The event of one API object, or None when it names no payment."""
    found = action(provider, kind, obj)
    if found.payment_id is None:
        return None
    return Event(NAME, event_id(provider, found.payment_id, kind), type_of(provider, kind), found)


def type_of(provider: str, kind: str) -> str:
    return f"{provider}.{OBJECTS[(provider, kind)]}.{kind}"


def body(obj: Any) -> bytes:
    """The API object as stored in payment_events.body."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")


def parse(raw: bytes, eid: str) -> Event:
    provider, kind = split_event_id(eid)
    found = action(provider, kind, load_object(raw))
    return Event(NAME, eid, type_of(provider, kind), found)
