"""Restoring a revoked purchase: `kc-tasks payment restore PAYMENT_ID --reason TEXT`.

For a refund that failed after it was processed (the buyer paid, and the refund revoked the
purchase): an operator makes the purchase of **that payment** active again. One transaction, by
the tables' owner:

- the advisory locks of the student/course pair and of the payment (those the purchases' locked
  path takes), then the payment's row in `payments` (the lock create_purchase and
  revoke_purchase take first): no purchase of the pair and no revocation of the payment is
  decided beside it;
- refused, with why, unless the payment's purchase exists, is inactive and was revoked, and the
  student holds no other active purchase of the course (unique_active_purchase has the last
  word: a purchase inserted meanwhile makes the UPDATE fail, and that is a refusal too);
- the purchase becomes active, its revocation moves from `revocations` to `restorations` with
  the operator's reason (so a later refund or lost dispute revokes it again as the first one
  did), and a `purchase.restored` event is written to the outbox, published by the relay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from kc_tasks.core import errors
from kc_tasks.core.names import PURCHASE_RESTORED
from kc_tasks.store import db
from kc_tasks.store.events import Event, from_rows
from kc_tasks.worker.purchases import pair_lock_keys

logger = logging.getLogger(__name__)

_t, _r, _dup = db.purchases, db.revocations, db.duplicate_payments

# The payment's row, locked (and made if an old release never wrote it); no longer revoked.
_LOCK_PAYMENT = """
INSERT INTO payments (payment_id) VALUES (%(payment_id)s)
ON CONFLICT (payment_id) DO UPDATE SET revoked_at = NULL
"""

# The purchase made active, its revocation moved to restorations, and its event: one statement.
_RESTORE = f"""
WITH restored AS (
    UPDATE student_course_purchases SET is_active = true, updated_at = now()
     WHERE payment_id = %(payment_id)s AND NOT is_active
 RETURNING id, student_id, course_id, payment_id, amount_cents, currency, metadata, is_active, created_at, updated_at
), overruled AS (
    DELETE FROM revocations WHERE payment_id = %(payment_id)s
 RETURNING payment_id, reason, refund_id, coalesce(revoked_at, created_at) AS revoked_at
), kept AS (
    INSERT INTO restorations (id, payment_id, purchase_id, reason, revocation_reason, refund_id, revoked_at)
    SELECT gen_random_uuid(), o.payment_id, r.id, %(reason)s, o.reason, o.refund_id, o.revoked_at
      FROM overruled o, restored r
)
INSERT INTO event_outbox (id, type, data)
SELECT gen_random_uuid(), '{PURCHASE_RESTORED}', to_jsonb(restored) || jsonb_build_object('reason', %(reason)s::text)
  FROM restored
RETURNING id, type, occurred_at, data
"""


@dataclass(frozen=True)
class Restored:
    purchase_id: str
    student_id: str
    course_id: str
    # The revocation overruled: its reason and refund id.
    revocation_reason: str
    refund_id: str | None
    event: Event


def restore(engine: Engine, payment_id: str, reason: str) -> Restored:
    """Make the payment's revoked purchase active again; RestoreRefused (nothing changed) with why."""
    reason = reason.strip()
    if not reason:
        raise errors.RestoreRefused("--reason must say why the course is given back")
    with db.translate_errors(engine.url), engine.begin() as conn:
        found = _purchase(conn, payment_id)
        conn.execute(sa.select(*(sa.func.pg_advisory_xact_lock(k) for k in pair_lock_keys(*found))))
        conn.exec_driver_sql(_LOCK_PAYMENT, {"payment_id": payment_id})
        purchase = conn.execute(sa.select(_t).where(_t.c.payment_id == payment_id).with_for_update()).one()
        if purchase.is_active:
            raise errors.RestoreRefused(f"purchase {purchase.id} of payment {payment_id} is active: nothing to restore")
        revocation = conn.execute(sa.select(_r).where(_r.c.payment_id == payment_id)).first()
        if revocation is None:
            raise errors.RestoreRefused(
                f"purchase {purchase.id} of payment {payment_id} is inactive but was never revoked (an older "
                "duplicate made inactive by a migration or by kc-tasks ensure-index): nothing to restore"
            )
        _refuse_if_held(conn, purchase)
        try:
            with conn.begin_nested(), db.translate_errors(engine.url):
                events = from_rows(conn.exec_driver_sql(_RESTORE, {"payment_id": payment_id, "reason": reason}))
        except errors.UniqueConflict:  # an active purchase of the pair committed meanwhile
            _refuse_if_held(conn, purchase)
            raise
    logger.warning(
        "purchase %s of payment %s restored by an operator (%s): its revocation (%s%s) is overruled",
        purchase.id,
        payment_id,
        reason,
        revocation.reason,
        f", refund {revocation.refund_id}" if revocation.refund_id else "",
    )
    return Restored(
        str(purchase.id),
        str(purchase.student_id),
        str(purchase.course_id),
        revocation.reason,
        revocation.refund_id,
        events[0],
    )


def _purchase(conn: Connection, payment_id: str) -> tuple[str, str, str]:
    """(student, course, payment) of the payment's purchase; RestoreRefused when it made none."""
    row = conn.execute(sa.select(_t.c.student_id, _t.c.course_id).where(_t.c.payment_id == payment_id)).first()
    if row is not None:
        return str(row.student_id), str(row.course_id), payment_id
    duplicate = conn.execute(sa.select(_dup).where(_dup.c.payment_id == payment_id)).first()
    if duplicate is not None:
        raise errors.RestoreRefused(
            f"payment {payment_id} made no purchase: it was a duplicate payment of course {duplicate.course_id}, "
            f"which student {duplicate.student_id} held by payment {duplicate.held_payment_id}; nothing to restore"
        )
    raise errors.RestoreRefused(f"payment {payment_id} made no purchase: nothing to restore (see kc-tasks payment)")


def _refuse_if_held(conn: Connection, purchase: sa.Row) -> None:
    held = conn.execute(
        sa.select(_t.c.id, _t.c.payment_id).where(
            _t.c.student_id == purchase.student_id, _t.c.course_id == purchase.course_id, _t.c.is_active
        )
    ).first()
    if held is not None:
        raise errors.RestoreRefused(
            f"student {purchase.student_id} already holds course {purchase.course_id} by payment {held.payment_id} "
            f"(purchase {held.id}): restoring payment {purchase.payment_id} would grant it twice; refund one of them"
        )
