"""kc_tasks' own webhook format (POST /webhooks/payments), for a payment service that signs
its calls: `{"id": ..., "type": "payment.succeeded" | "payment.refunded", "data": {...}}`."""

from __future__ import annotations

from collections.abc import Sequence

from kc_tasks.providers import (
    REFUND,
    Ignored,
    Malformed,
    ProviderEvent,
    Purchase,
    Revocation,
    load_object,
    signature,
    text,
)
from kc_tasks.providers.kept import Kwargs, Table, leaves

NAME = "kc"
PAYMENT_SUCCEEDED = "payment.succeeded"
PAYMENT_REFUNDED = "payment.refunded"
# What redaction keeps (kc_tasks.providers.kept): {"id", "type", "data": {task kwargs}}. The
# kwargs are kept but for `metadata`, the platform's own free-form data, which the purchase row
# keeps.
KWARGS = ("payment_id", "student_id", "course_id", "amount_cents", "currency", "refund_id")
KEPT: Table = {**leaves("id", "type"), "data": Kwargs(leaves(*KWARGS))}


def verify(body: bytes, header: str | None, secrets: Sequence[str]) -> str | None:
    """None when any of the secrets signed the body; else why not (never echoing the signature)."""
    problem: str | None = f"missing {signature.HEADER} header"
    for secret in secrets:
        problem = signature.verify(secret.encode(), body, header)
        if problem is None:
            return None
    return problem


def parse(body: bytes) -> ProviderEvent:
    event = load_object(body)
    for field, kind in (("id", str), ("type", str), ("data", dict)):
        if not isinstance(event.get(field), kind):
            raise Malformed(f"{field}: is required and must be a {'string' if kind is str else 'object'}")
    if text(event["id"]) is None or text(event["type"]) is None:
        raise Malformed("id and type: must be non-empty text (no NUL, valid Unicode)")
    data = event["data"]
    kind = event["type"]
    if kind == PAYMENT_SUCCEEDED:
        return ProviderEvent(NAME, event["id"], kind, Purchase(dict(data)))
    if kind == PAYMENT_REFUNDED:
        payment_id = text(data.get("payment_id"))
        if payment_id is None:
            raise Malformed("data.payment_id: is required and must be a string")
        refund_id = data.get("refund_id")
        if refund_id is not None and not text(refund_id):
            raise Malformed("data.refund_id: must be a string")
        return ProviderEvent(NAME, event["id"], kind, Revocation(payment_id, REFUND, refund_id))
    return ProviderEvent(NAME, event["id"], kind, Ignored(f"type {kind} is not acted on", text(data.get("payment_id"))))
