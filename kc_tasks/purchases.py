"""Turning a validated Purchase into exactly one purchase row, whatever the deliveries.

Two paths, both race-free:
- with a usable unique_active_purchase, one INSERT ... ON CONFLICT (student_id, course_id)
  WHERE is_active = true DO NOTHING, in autocommit: one round trip for a new purchase;
- without it, a transaction that takes advisory locks on the student/course pair and on the
  payment before it looks and inserts, so concurrent deliveries queue instead of racing.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from kc_tasks import db, errors
from kc_tasks.index_guard import IndexGuard
from kc_tasks.payload import Purchase

logger = logging.getLogger(__name__)

RESOLVE_ATTEMPTS = 5
_t = db.purchases
_paid = _t.alias("paid")
_dup = db.duplicate_payments


@dataclass(frozen=True)
class Outcome:
    purchase_id: str
    created: bool
    # Set when this payment arrived for a course the student already held: refund it.
    duplicate_of: str | None = None

    def as_result(self) -> dict[str, Any]:
        return {"purchase_id": self.purchase_id, "created": self.created}


def create_purchase(engine: Engine, guard: IndexGuard, purchase: Purchase) -> Outcome:
    """Insert the purchase once; a repeated or rival delivery finds what is already there."""
    with db.translate_errors(engine.url):
        for _ in range(RESOLVE_ATTEMPTS):
            status = guard.status(engine)
            outcome = _with_index(engine, guard, purchase) if status.usable else None
            if outcome is None:
                outcome = _with_locks(engine, purchase)
            if outcome is not None:
                return outcome
    # Only reachable if the existing purchase kept changing under us: try again later.
    raise errors.DatabaseBusy(f"payment {purchase.payment_id}: purchases of this course kept changing")


def _with_index(engine: Engine, guard: IndexGuard, purchase: Purchase) -> Outcome | None:
    """The fast path. None means: use the locked path (the index is gone, or a row moved)."""
    new_id = str(uuid.uuid4())
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        try:
            with db.translate_errors(engine.url):
                inserted = conn.execute(_insert_if_new(purchase, new_id)).scalar()
        except errors.ConflictTargetMissing:
            # The index vanished or broke since the last check: trust it no longer, and
            # let the caller finish this delivery by the locked path, in this attempt.
            guard.refresh(engine)
            return None
        except errors.UniqueConflict:
            inserted = None  # the same payment is being inserted for another course right now
        if inserted is not None:
            logger.info("purchase %s created for payment %s", inserted, purchase.payment_id)
            return Outcome(str(inserted), created=True)
        return _existing(conn, purchase)


def _with_locks(engine: Engine, purchase: Purchase) -> Outcome | None:
    """The fallback: serialise on the pair and on the payment, then look, then insert."""
    with engine.begin() as conn:
        conn.execute(sa.select(*(sa.func.pg_advisory_xact_lock(k) for k in lock_keys(purchase))))
        outcome = _existing(conn, purchase)
        if outcome is not None:
            return outcome
        new_id = str(uuid.uuid4())
        try:
            # A worker that still trusts a just-recreated index may insert beside us.
            with conn.begin_nested(), db.translate_errors(engine.url):
                conn.execute(_plain_insert(purchase, new_id))
        except errors.UniqueConflict:
            return _existing(conn, purchase)
    logger.info("purchase %s created for payment %s (fallback path)", new_id, purchase.payment_id)
    return Outcome(new_id, created=True)


def _existing(conn: Connection, purchase: Purchase) -> Outcome | None:
    """What already stands for this payment or pair; None if nothing does any more."""
    rows = conn.execute(
        sa.select(_t.c.id, _t.c.payment_id, _t.c.is_active).where(
            sa.or_(
                _t.c.payment_id == purchase.payment_id,
                sa.and_(_t.c.student_id == purchase.student_id, _t.c.course_id == purchase.course_id, _t.c.is_active),
            )
        )
    ).all()
    same_payment = next((r for r in rows if r.payment_id == purchase.payment_id), None)
    if same_payment is not None:
        return Outcome(str(same_payment.id), created=False)
    recorded = conn.execute(sa.select(_dup.c.purchase_id).where(_dup.c.payment_id == purchase.payment_id)).scalar()
    if recorded is not None:
        return Outcome(str(recorded), created=False, duplicate_of=str(recorded))
    held = next((r for r in rows if r.is_active), None)
    if held is None:
        return None
    _record_duplicate_payment(conn, purchase, str(held.id))
    logger.warning(
        "payment %s is a duplicate: student %s already holds course %s by payment %s (purchase %s); refund it",
        purchase.payment_id,
        purchase.student_id,
        purchase.course_id,
        held.payment_id,
        held.id,
    )
    return Outcome(str(held.id), created=False, duplicate_of=str(held.id))


def _record_duplicate_payment(conn: Connection, purchase: Purchase, purchase_id: str) -> None:
    conn.execute(
        pg_insert(_dup)
        .values(
            payment_id=purchase.payment_id,
            purchase_id=purchase_id,
            student_id=purchase.student_id,
            course_id=purchase.course_id,
            amount_cents=purchase.amount_cents,
            currency=purchase.currency,
        )
        .on_conflict_do_nothing(index_elements=[_dup.c.payment_id])
    )


def _row(purchase: Purchase, new_id: str) -> dict[str, Any]:
    return {
        "id": new_id,
        "student_id": purchase.student_id,
        "course_id": purchase.course_id,
        "payment_id": purchase.payment_id,
        "amount_cents": purchase.amount_cents,
        "currency": purchase.currency,
        "metadata": purchase.metadata,
    }


def _plain_insert(purchase: Purchase, new_id: str) -> sa.Insert:
    return sa.insert(_t).values(**_row(purchase, new_id))


def _insert_if_new(purchase: Purchase, new_id: str) -> sa.Insert:
    """INSERT ... SELECT unless the payment was ever used, ON CONFLICT on the partial index.

    The `WHERE is_active = true` of the conflict target is required: without it PostgreSQL
    cannot infer a partial unique index and raises "there is no unique or exclusion
    constraint matching the ON CONFLICT specification".
    """
    row = _row(purchase, new_id)
    values = sa.select(*(sa.literal(value, _t.c[name].type) for name, value in row.items())).where(
        ~sa.exists().where(_paid.c.payment_id == purchase.payment_id),
        ~sa.exists().where(_dup.c.payment_id == purchase.payment_id),
    )
    return (
        pg_insert(_t)
        .from_select(list(row), values)
        .on_conflict_do_nothing(
            index_elements=[_t.c.student_id, _t.c.course_id], index_where=_t.c.is_active == sa.true()
        )
        .returning(_t.c.id)
    )


def lock_keys(purchase: Purchase) -> list[int]:
    """Advisory lock keys of the pair and of the payment, sorted so that no two lockers deadlock."""
    names = (f"pair:{purchase.student_id}:{purchase.course_id}", f"payment:{purchase.payment_id}")
    return sorted(_key(n) for n in names)


def _key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"kc_tasks:{name}".encode(), digest_size=8).digest(), "big", signed=True)
