"""Revoking the purchase a payment made (a refund, a dispute, a support decision).

One transaction, two statements. The first upserts the payment's row in `payments`
(revoked_at set) and records the revocation, whether or not the payment has made a purchase
yet: a provider may send the refund before the capture. Its row lock is the one
create_purchase takes in its INSERT (purchases.py): a purchase statement in flight makes
this one wait until it commits. The second statement, with a snapshot taken after that wait,
makes the payment's active purchase inactive with its purchase.revoked event. So a purchase
committed before the revocation is found here, and one that comes after sees the row
revoked and is made inactive from the start: the payment never keeps an active purchase,
and only one purchase.revoked event is written (the UPDATE's `WHERE is_active` lets one
statement through).

Only the purchase **that payment** made is touched: the refund of a duplicate payment
(recorded in duplicate_payments, no purchase row of its own) leaves the purchase the
student holds by another payment active. A new payment buys the course again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from kc_tasks.core.names import PURCHASE_REVOKED
from kc_tasks.core.payload import RevocationKwargs
from kc_tasks.store import db
from kc_tasks.store.events import Event, from_rows

logger = logging.getLogger(__name__)

_t = db.purchases
_r = db.revocations

# Revoke the payment's row, locking it (waiting for a purchase statement in flight), and
# record the revocation once; returns the payment id if this call recorded it.
_RECORD = """
WITH payment AS (
    INSERT INTO payments (payment_id, revoked_at) VALUES (%(payment_id)s, now())
    ON CONFLICT (payment_id) DO UPDATE SET revoked_at = coalesce(payments.revoked_at, excluded.revoked_at)
    RETURNING payment_id
)
INSERT INTO revocations (payment_id, reason, refund_id)
SELECT payment_id, %(reason)s, %(refund_id)s FROM payment
ON CONFLICT (payment_id) DO NOTHING
RETURNING payment_id
"""

# The payment's purchase, if active, becomes inactive with its purchase.revoked event; the
# revocation notes the purchase. One statement, run after _RECORD in its transaction.
_DEACTIVATE = f"""
WITH revoked AS (
    UPDATE student_course_purchases p
       SET is_active = false, updated_at = now()
      FROM revocations r
     WHERE r.payment_id = p.payment_id
       AND p.payment_id = %(payment_id)s
       AND p.is_active
 RETURNING p.id, p.student_id, p.course_id, p.payment_id, p.amount_cents, p.currency, p.metadata,
           p.is_active, p.created_at, p.updated_at, r.reason, r.refund_id
), noted AS (
    UPDATE revocations r
       SET purchase_id = p.id::text::uuid, revoked_at = coalesce(r.revoked_at, now())
      FROM student_course_purchases p
     WHERE r.payment_id = p.payment_id
       AND r.payment_id = %(payment_id)s
       AND r.purchase_id IS NULL
)
INSERT INTO event_outbox (id, type, data)
SELECT gen_random_uuid(), '{PURCHASE_REVOKED}', to_jsonb(revoked) FROM revoked
RETURNING id, type, occurred_at, data
"""


@dataclass(frozen=True)
class RevocationOutcome:
    # The purchase the payment made; None while it has made none.
    purchase_id: str | None
    # True when this call changed something: it recorded the revocation, or deactivated the purchase.
    revoked: bool
    events: tuple[Event, ...] = field(default=(), compare=False)

    def as_result(self) -> dict[str, Any]:
        return {"purchase_id": self.purchase_id, "revoked": self.revoked}


def revoke(engine: Engine, revocation: RevocationKwargs) -> RevocationOutcome:
    """Record the revocation once, then make the payment's purchase inactive if it is active."""
    params = {"payment_id": revocation.payment_id, "reason": revocation.reason, "refund_id": revocation.refund_id}
    with db.translate_errors(engine.url), engine.begin() as conn:
        recorded = conn.exec_driver_sql(_RECORD, params).first()
        events = from_rows(conn.exec_driver_sql(_DEACTIVATE, params))
        purchase_id = conn.execute(sa.select(_t.c.id).where(_t.c.payment_id == revocation.payment_id)).scalar()
    if events:
        logger.info("purchase %s of payment %s revoked (%s)", purchase_id, revocation.payment_id, revocation.reason)
    elif recorded is not None and purchase_id is None:
        logger.info(
            "payment %s revoked (%s) before it made a purchase: it never will make an active one",
            revocation.payment_id,
            revocation.reason,
        )
    return RevocationOutcome(
        None if purchase_id is None else str(purchase_id), recorded is not None or bool(events), events
    )
