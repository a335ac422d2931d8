"""Revoking the purchase a payment made (a refund, a dispute, a support decision).

A revocation is recorded per payment first, in a statement of its own, whether or not the
payment has made a purchase yet: a provider may send the refund before the capture. Then one
statement makes that payment's active purchase inactive and records its purchase.revoked
event. The two are separate commits on purpose: a purchase committed after the revocation
was recorded is made inactive from the start (purchases.py checks `revocations` in its
INSERT), and one committed in between is found either by the second statement or by the
`settle` that create_purchase runs after making a purchase. Either way the payment never
keeps an active purchase, and only one purchase.revoked event is written: the UPDATE's
`WHERE is_active` lets only one statement through.

Only the purchase **that payment** made is touched: the refund of a duplicate payment
(recorded in duplicate_payments, no purchase row of its own) leaves the purchase the
student holds by another payment active. A new payment buys the course again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from kc_tasks import db
from kc_tasks.events import PURCHASE_REVOKED, Event, from_rows
from kc_tasks.payload import Revocation

logger = logging.getLogger(__name__)

_t = db.purchases
_r = db.revocations

# Every purchase of these payments that is active while its payment is revoked becomes
# inactive, with its purchase.revoked event; the revocation notes the purchase. One statement.
_SETTLE = f"""
WITH revoked AS (
    UPDATE student_course_purchases p
       SET is_active = false, updated_at = now()
      FROM revocations r
     WHERE r.payment_id = p.payment_id
       AND p.payment_id = ANY(%(payment_ids)s)
       AND p.is_active
 RETURNING p.id, p.student_id, p.course_id, p.payment_id, p.amount_cents, p.currency, p.metadata,
           p.is_active, p.created_at, p.updated_at, r.reason, r.refund_id
), noted AS (
    UPDATE revocations r
       SET purchase_id = p.id, revoked_at = coalesce(r.revoked_at, now())
      FROM student_course_purchases p
     WHERE r.payment_id = p.payment_id
       AND r.payment_id = ANY(%(payment_ids)s)
       AND r.purchase_id IS NULL
)
INSERT INTO event_outbox (id, type, data)
SELECT gen_random_uuid(), '{PURCHASE_REVOKED}', to_jsonb(revoked) FROM revoked
RETURNING id, type, occurred_at, data
"""


@dataclass(frozen=True)
class Outcome:
    # The purchase the payment made; None while it has made none.
    purchase_id: str | None
    # True when this call changed something: it recorded the revocation, or deactivated the purchase.
    revoked: bool
    events: tuple[Event, ...] = field(default=(), compare=False)

    def as_result(self) -> dict[str, Any]:
        return {"purchase_id": self.purchase_id, "revoked": self.revoked}


def revoke(engine: Engine, revocation: Revocation) -> Outcome:
    """Record the revocation once, then make the payment's purchase inactive if it is active."""
    with db.translate_errors(engine.url), engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        recorded = conn.execute(
            pg_insert(_r)
            .values(payment_id=revocation.payment_id, reason=revocation.reason, refund_id=revocation.refund_id)
            .on_conflict_do_nothing(index_elements=[_r.c.payment_id])
            .returning(_r.c.payment_id)
        ).first()
        events = settle(conn, [revocation.payment_id])
        purchase_id = conn.execute(sa.select(_t.c.id).where(_t.c.payment_id == revocation.payment_id)).scalar()
    if events:
        logger.info("purchase %s of payment %s revoked (%s)", purchase_id, revocation.payment_id, revocation.reason)
    elif recorded is not None and purchase_id is None:
        logger.info(
            "payment %s revoked (%s) before it made a purchase: it never will make an active one",
            revocation.payment_id,
            revocation.reason,
        )
    return Outcome(None if purchase_id is None else str(purchase_id), recorded is not None or bool(events), events)


def settle(conn: Connection, payment_ids: Sequence[str]) -> tuple[Event, ...]:
    """Deactivate the active purchases of these payments that a revocation names, with their
    purchase.revoked events; run after a purchase is made, and by revoke. On an autocommit
    connection (or inside the caller's transaction)."""
    if not payment_ids:
        return ()
    return from_rows(conn.exec_driver_sql(_SETTLE, {"payment_ids": list(payment_ids)}))


def settle_created(engine: Engine, payment_ids: Sequence[str]) -> tuple[Event, ...]:
    """settle, for purchases just committed, on a connection of its own."""
    with db.translate_errors(engine.url), engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return settle(conn, payment_ids)
