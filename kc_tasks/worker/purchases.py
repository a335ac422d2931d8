"""Turning validated Purchases into exactly one purchase row each, whatever the deliveries.

`create_all` is the one way in, for a batch of any size (a task alone is a batch of one).
Its first statement inserts the purchases with their events, race-free by construction:

- each payment's row in `payments` is upserted first (ON CONFLICT DO UPDATE, which locks the
  latest committed version even when it changes nothing). revoke_purchase upserts the same
  row before it deactivates anything, so of the two, the second waits for the first to
  commit and then sees it: a revocation committed before this statement makes the purchase
  inactive from the start; one that comes later waits, and finds the purchase. No
  follow-up statement is needed, so no crash or lost connection after the commit can leave
  a revoked payment's purchase active;
- the purchase goes in with ON CONFLICT (student_id, course_id) WHERE is_active = true DO
  NOTHING (unique_active_purchase), unless the payment already made a row, with its
  purchase.created event in the outbox, in autocommit: one round trip for new purchases.

What that statement does not create (a repeated delivery, a course already held, a payment
twice in the batch, no usable index) is resolved one purchase at a time: with the index,
the same insert then a look at what stands in its way; without it, a transaction that takes
advisory locks on the pair and on the payment, and the payment's row, before it looks and
inserts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from kc_tasks.core import errors
from kc_tasks.core.names import DUPLICATE_PAYMENT, PURCHASE_CREATED
from kc_tasks.core.payload import PurchaseKwargs
from kc_tasks.store import db
from kc_tasks.store.events import Event, from_rows
from kc_tasks.store.index_guard import IndexGuard

logger = logging.getLogger(__name__)

RESOLVE_ATTEMPTS = 5
_t = db.purchases
_dup = db.duplicate_payments
_outbox = db.event_outbox


@dataclass(frozen=True)
class PurchaseOutcome:
    purchase_id: str
    created: bool
    # Set when this payment arrived for a course the student already held: refund it.
    duplicate_of: str | None = None
    # Events committed with this outcome, still to be published.
    events: tuple[Event, ...] = field(default=(), compare=False)

    def as_result(self) -> dict[str, Any]:
        return {"purchase_id": self.purchase_id, "created": self.created}


def create_all(
    engine: Engine, guard: IndexGuard, batch: Sequence[PurchaseKwargs]
) -> list[PurchaseOutcome | errors.KcTasksError]:
    """The outcome of each purchase of the batch, in its order. The first purchase of each
    payment and of each student/course pair goes into one statement; the others, and those
    it did not create, are resolved one by one.

    Raises what that statement raised (nothing committed). A purchase that fails afterwards,
    alone, gets its error in its place (as asyncio.gather's return_exceptions does): the
    others' outcomes are committed and stand."""
    first = _firsts(batch)
    with db.translate_errors(engine.url):
        created = _insert(engine, guard, [batch[i] for i in first]) if first else {}
    return [
        (created.get(purchase.payment_id) if i in first else None) or _resolved(engine, guard, purchase)
        for i, purchase in enumerate(batch)
    ]


def _resolved(engine: Engine, guard: IndexGuard, purchase: PurchaseKwargs) -> PurchaseOutcome | errors.KcTasksError:
    try:
        with db.translate_errors(engine.url):
            return _resolve(engine, guard, purchase)
    except errors.KcTasksError as exc:
        return exc


def create_purchase(engine: Engine, guard: IndexGuard, purchase: PurchaseKwargs) -> PurchaseOutcome:
    """One purchase: create_all of a batch of one, its error raised."""
    outcome = create_all(engine, guard, [purchase])[0]
    if isinstance(outcome, errors.KcTasksError):
        raise outcome
    return outcome


def _firsts(batch: Sequence[PurchaseKwargs]) -> set[int]:
    """The positions of the first purchase of each payment and of each student/course pair:
    one statement sees only what was committed before it, so it takes each of them once."""
    payments: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    first: set[int] = set()
    for i, purchase in enumerate(batch):
        pair = (purchase.student_id, purchase.course_id)
        if purchase.payment_id not in payments and pair not in pairs:
            first.add(i)
        payments.add(purchase.payment_id)
        pairs.add(pair)
    return first


def _insert(engine: Engine, guard: IndexGuard, batch: Sequence[PurchaseKwargs]) -> dict[str, PurchaseOutcome]:
    """The purchases the one statement created, by payment id; empty when the index is not
    usable or a rival delivery of one of them is being inserted right now."""
    if not guard.status(engine).usable:
        return {}
    with db.autocommit(engine) as conn:
        try:
            with db.translate_errors(engine.url):
                created = from_rows(conn.exec_driver_sql(_INSERT_ON_CONFLICT, _columns(batch)))
        except errors.ConflictTargetMissing:
            guard.refresh(engine)  # broke since the last check: each purchase takes the locked path
            return {}
        except errors.UniqueConflict:
            return {}  # a payment of the batch is being inserted for another course right now
    by_payment = {p.payment_id: p for p in batch}
    return {e.data["payment_id"]: _created(by_payment[e.data["payment_id"]], (e,)) for e in created}


def _resolve(engine: Engine, guard: IndexGuard, purchase: PurchaseKwargs) -> PurchaseOutcome:
    """One purchase the batch's statement did not create: what stands in its way, or the
    purchase made now."""
    for _ in range(RESOLVE_ATTEMPTS):
        outcome = _with_index(engine, guard, purchase) if guard.status(engine).usable else None
        if outcome is None:
            outcome = _with_locks(engine, purchase)
        if outcome is not None:
            return outcome
    # Only reachable if the existing purchase kept changing under us: try again later.
    raise errors.DatabaseBusy(f"payment {purchase.payment_id}: purchases of this course kept changing")


def _with_index(engine: Engine, guard: IndexGuard, purchase: PurchaseKwargs) -> PurchaseOutcome | None:
    """What already stands for this payment or pair, else the purchase inserted now. None
    means: use the locked path (the index is gone, or a row moved)."""
    with db.autocommit(engine) as conn:
        outcome = _existing(conn, purchase)
        if outcome is not None:
            return outcome
        try:
            with db.translate_errors(engine.url):
                created = from_rows(conn.exec_driver_sql(_INSERT_ON_CONFLICT, _columns([purchase])))
        except errors.ConflictTargetMissing:
            # The index vanished or broke since the last check: trust it no longer, and
            # let the caller finish this delivery by the locked path, in this attempt.
            guard.refresh(engine)
            return None
        except errors.UniqueConflict:
            created = ()  # the same payment is being inserted for another course right now
        if created:
            return _created(purchase, created)
        return _existing(conn, purchase)


def _with_locks(engine: Engine, purchase: PurchaseKwargs) -> PurchaseOutcome | None:
    """The fallback: serialise on the pair and on the payment, lock the payment's row, then
    look, then insert."""
    with engine.begin() as conn:
        conn.execute(sa.select(*(sa.func.pg_advisory_xact_lock(k) for k in lock_keys(purchase))))
        conn.exec_driver_sql(_LOCK_PAYMENT, {"payment_id": purchase.payment_id})
        outcome = _existing(conn, purchase)
        if outcome is not None:
            return outcome
        try:
            # A worker that still trusts a just-recreated index may insert beside us.
            with conn.begin_nested(), db.translate_errors(engine.url):
                created = from_rows(conn.exec_driver_sql(_INSERT_PLAIN, _columns([purchase])))
        except errors.UniqueConflict:
            return _existing(conn, purchase)
        if not created:  # a fast-path worker that trusts a just-recreated index got here first
            return _existing(conn, purchase)
    return _created(purchase, created, path=" (fallback path)")


def _created(purchase: PurchaseKwargs, events: tuple[Event, ...], path: str = "") -> PurchaseOutcome:
    purchase_id = str(events[0].data["id"])
    # Celery's "succeeded" line already reports each purchase; only the fallback is worth INFO.
    level = logging.INFO if path else logging.DEBUG
    logger.log(level, "purchase %s created for payment %s%s", purchase_id, purchase.payment_id, path)
    return PurchaseOutcome(purchase_id, created=True, events=events)


def _existing(conn: Connection, purchase: PurchaseKwargs) -> PurchaseOutcome | None:
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
        return PurchaseOutcome(str(same_payment.id), created=False)
    recorded = conn.execute(sa.select(_dup.c.purchase_id).where(_dup.c.payment_id == purchase.payment_id)).scalar()
    if recorded is not None:
        return PurchaseOutcome(str(recorded), created=False, duplicate_of=str(recorded))
    held = next((r for r in rows if r.is_active), None)
    if held is None:
        return None
    events = from_rows(conn.execute(_record_duplicate_payment(purchase, str(held.id), held.payment_id)))
    logger.warning(
        "payment %s is a duplicate: student %s already holds course %s by payment %s (purchase %s); refund it",
        purchase.payment_id,
        purchase.student_id,
        purchase.course_id,
        held.payment_id,
        held.id,
    )
    return PurchaseOutcome(str(held.id), created=False, duplicate_of=str(held.id), events=events)


def _record_duplicate_payment(purchase: PurchaseKwargs, purchase_id: str, held_payment_id: str) -> sa.Insert:
    """Record the payment for a refund, with its purchase.duplicate_payment event, once."""
    recorded = (
        pg_insert(_dup)
        .values(
            payment_id=purchase.payment_id,
            purchase_id=purchase_id,
            held_payment_id=held_payment_id,
            student_id=purchase.student_id,
            course_id=purchase.course_id,
            amount_cents=purchase.amount_cents,
            currency=purchase.currency,
        )
        .on_conflict_do_nothing(index_elements=[_dup.c.payment_id])
        .returning(*_dup.c)
        .cte("recorded")
    )
    return _event_from(recorded, DUPLICATE_PAYMENT)


# The batch, one array per column: one prepared statement serves a batch of any size.
_BATCH = """
batch AS (
    SELECT * FROM unnest(%(id)s::uuid[], %(student_id)s::uuid[], %(course_id)s::uuid[], %(payment_id)s::text[],
                         %(amount_cents)s::bigint[], %(currency)s::text[], %(metadata)s::jsonb[])
           AS b (id, student_id, course_id, payment_id, amount_cents, currency, metadata)
)"""

# Lock each payment's row, made if new, and return it if it is revoked: DO UPDATE locks the
# latest committed version, waiting for a revocation in flight, and changes nothing (its
# WHERE is false) unless the payment is revoked. In payment_id order, so that two batches
# lock the rows they share in one order.
_PAYMENT = """
payment AS (
    INSERT INTO payments (payment_id)
    SELECT payment_id FROM batch ORDER BY payment_id
    ON CONFLICT (payment_id) DO UPDATE SET revoked_at = payments.revoked_at WHERE payments.revoked_at IS NOT NULL
    RETURNING payment_id, revoked_at
)"""

_LOCK_PAYMENT = f"WITH batch AS (SELECT %(payment_id)s::text AS payment_id), {_PAYMENT.strip()} SELECT 1"


def _insert_statement(on_conflict: bool) -> str:
    """Insert each purchase of the batch whose payment never made a row, with its
    purchase.created event, in one statement, so the row and its event commit together or not
    at all. A payment revoked before (a refund sent before the capture; also one recorded by
    a worker older than the payments table) still makes its one row, inactive from the start.

    With `on_conflict`, ON CONFLICT (student_id, course_id) WHERE is_active = true DO NOTHING:
    the WHERE is required, without it PostgreSQL cannot infer a partial unique index and
    raises "there is no unique or exclusion constraint matching the ON CONFLICT
    specification". Rows go in by pair: two batches that share pairs wait for each other in
    one order, instead of each holding one the other needs."""
    conflict = "ON CONFLICT (student_id, course_id) WHERE is_active = true DO NOTHING" if on_conflict else ""
    return f"""
WITH {_BATCH.strip()}, {_PAYMENT.strip()}, purchase AS (
    INSERT INTO student_course_purchases
           (id, student_id, course_id, payment_id, amount_cents, currency, metadata, is_active)
    SELECT b.id, b.student_id, b.course_id, b.payment_id, b.amount_cents, b.currency, b.metadata,
           NOT EXISTS (SELECT 1 FROM payment r WHERE r.payment_id = b.payment_id AND r.revoked_at IS NOT NULL)
           AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.payment_id = b.payment_id)
      FROM batch b
     WHERE NOT EXISTS (SELECT 1 FROM student_course_purchases paid WHERE paid.payment_id = b.payment_id)
       AND NOT EXISTS (SELECT 1 FROM duplicate_payments d WHERE d.payment_id = b.payment_id)
     ORDER BY b.student_id, b.course_id
    {conflict}
    RETURNING *
), noted AS (
    UPDATE revocations r SET purchase_id = purchase.id::text::uuid, revoked_at = coalesce(r.revoked_at, now())
      FROM purchase
     WHERE r.payment_id = purchase.payment_id AND NOT purchase.is_active AND r.purchase_id IS NULL
)
INSERT INTO event_outbox (id, type, data)
SELECT gen_random_uuid(), '{PURCHASE_CREATED}', to_jsonb(purchase) FROM purchase
RETURNING id, type, occurred_at, data
"""


def _columns(batch: Sequence[PurchaseKwargs]) -> dict[str, list[Any]]:
    return {
        "id": [str(uuid.uuid4()) for _ in batch],
        "student_id": [p.student_id for p in batch],
        "course_id": [p.course_id for p in batch],
        "payment_id": [p.payment_id for p in batch],
        "amount_cents": [p.amount_cents for p in batch],
        "currency": [p.currency for p in batch],
        "metadata": [None if p.metadata is None else json.dumps(p.metadata) for p in batch],
    }


def _event_from(rows: sa.CTE, event_type: str) -> sa.Insert:
    """An outbox event for each row the CTE wrote, its data the row itself."""
    assert event_type == DUPLICATE_PAYMENT  # a constant, rendered into the SQL
    return (
        sa.insert(_outbox)
        .from_select(
            ["id", "type", "data"],
            sa.select(
                sa.func.gen_random_uuid(), sa.literal_column(f"'{event_type}'"), sa.func.to_jsonb(rows.table_valued())
            ).select_from(rows),
        )
        .returning(_outbox.c.id, _outbox.c.type, _outbox.c.occurred_at, _outbox.c.data)
    )


def lock_keys(purchase: PurchaseKwargs) -> list[int]:
    """Advisory lock keys of the pair and of the payment, sorted so that no two lockers deadlock."""
    return pair_lock_keys(purchase.student_id, purchase.course_id, purchase.payment_id)


def pair_lock_keys(student_id: str, course_id: str, payment_id: str) -> list[int]:
    """`lock_keys` of a purchase row (kc_tasks.worker.restorations takes them too); UUIDs as text."""
    names = (f"pair:{student_id}:{course_id}", f"payment:{payment_id}")
    return sorted(_key(n) for n in names)


def _key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"kc_tasks:{name}".encode(), digest_size=8).digest(), "big", signed=True)


_INSERT_ON_CONFLICT = _insert_statement(on_conflict=True)
_INSERT_PLAIN = _insert_statement(on_conflict=False)
