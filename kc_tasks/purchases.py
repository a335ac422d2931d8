"""Turning a validated Purchase into exactly one purchase row, whatever the deliveries.

Two paths, both race-free:
- with a usable unique_active_purchase, one INSERT ... ON CONFLICT (student_id, course_id)
  WHERE is_active = true DO NOTHING, in autocommit: one round trip for a new purchase;
- without it, a transaction that takes advisory locks on the student/course pair and on the
  payment before it looks and inserts, so concurrent deliveries queue instead of racing.

`create_many` is the first path for several purchases at once, in one statement: what it
does not create is left to `create_purchase`, which finds what stands in its way.
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
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from kc_tasks import db, errors
from kc_tasks.events import DUPLICATE_PAYMENT, PURCHASE_CREATED, Event, from_rows
from kc_tasks.index_guard import IndexGuard
from kc_tasks.payload import Purchase

logger = logging.getLogger(__name__)

RESOLVE_ATTEMPTS = 5
_t = db.purchases
_paid = _t.alias("paid")
_dup = db.duplicate_payments
_revoked = db.revocations
_outbox = db.event_outbox
_INSERTED = ("id", "student_id", "course_id", "payment_id", "amount_cents", "currency", "metadata")


@dataclass(frozen=True)
class Outcome:
    purchase_id: str
    created: bool
    # Set when this payment arrived for a course the student already held: refund it.
    duplicate_of: str | None = None
    # Events committed with this outcome, still to be published.
    events: tuple[Event, ...] = field(default=(), compare=False)

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


def create_many(engine: Engine, guard: IndexGuard, batch: Sequence[Purchase]) -> dict[str, Outcome]:
    """The new purchases of a batch, by payment id, inserted with their events in one
    autocommit statement; those it did not create are not in the answer. Each payment and
    each student/course pair must appear once: the statement sees only what was committed
    before it. Empty when the index is not usable. Raises what the statement raised; nothing
    is committed then."""
    payments = {p.payment_id for p in batch}
    pairs = {(p.student_id, p.course_id) for p in batch}
    if len(payments) < len(batch) or len(pairs) < len(batch):
        raise ValueError("a batch holds each payment and each student/course pair once")
    if not batch or not guard.status(engine).usable:
        return {}
    # Rows go in by pair: two batches that share pairs wait for each other in one order,
    # instead of each holding one the other needs.
    ordered = sorted(batch, key=lambda p: (p.student_id, p.course_id))
    columns: dict[str, list[Any]] = {name: [] for name in _INSERTED}
    for purchase in ordered:
        for name, value in _params(purchase).items():
            columns[name].append(value)
    try:
        with db.translate_errors(engine.url), engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            created = from_rows(conn.exec_driver_sql(_INSERT_MANY, columns))
    except errors.ConflictTargetMissing:
        guard.refresh(engine)  # broke since the last check: each purchase takes its own path
        return {}
    by_payment = {p.payment_id: p for p in ordered}
    return {event.data["payment_id"]: _created(by_payment[event.data["payment_id"]], (event,)) for event in created}


def _with_index(engine: Engine, guard: IndexGuard, purchase: Purchase) -> Outcome | None:
    """The fast path. None means: use the locked path (the index is gone, or a row moved)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        try:
            with db.translate_errors(engine.url):
                created = from_rows(conn.exec_driver_sql(_INSERT_ON_CONFLICT, _params(purchase)))
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


def _with_locks(engine: Engine, purchase: Purchase) -> Outcome | None:
    """The fallback: serialise on the pair and on the payment, then look, then insert."""
    with engine.begin() as conn:
        conn.execute(sa.select(*(sa.func.pg_advisory_xact_lock(k) for k in lock_keys(purchase))))
        outcome = _existing(conn, purchase)
        if outcome is not None:
            return outcome
        try:
            # A worker that still trusts a just-recreated index may insert beside us.
            with conn.begin_nested(), db.translate_errors(engine.url):
                created = from_rows(conn.exec_driver_sql(_INSERT_PLAIN, _params(purchase)))
        except errors.UniqueConflict:
            return _existing(conn, purchase)
        if not created:  # a fast-path worker that trusts a just-recreated index got here first
            return _existing(conn, purchase)
    return _created(purchase, created, path=" (fallback path)")


def _created(purchase: Purchase, events: tuple[Event, ...], path: str = "") -> Outcome:
    purchase_id = str(events[0].data["id"])
    # Celery's "succeeded" line already reports each purchase; only the fallback is worth INFO.
    level = logging.INFO if path else logging.DEBUG
    logger.log(level, "purchase %s created for payment %s%s", purchase_id, purchase.payment_id, path)
    return Outcome(purchase_id, created=True, events=events)


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
    events = from_rows(conn.execute(_record_duplicate_payment(purchase, str(held.id), held.payment_id)))
    logger.warning(
        "payment %s is a duplicate: student %s already holds course %s by payment %s (purchase %s); refund it",
        purchase.payment_id,
        purchase.student_id,
        purchase.course_id,
        held.payment_id,
        held.id,
    )
    return Outcome(str(held.id), created=False, duplicate_of=str(held.id), events=events)


def _record_duplicate_payment(purchase: Purchase, purchase_id: str, held_payment_id: str) -> sa.Insert:
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


def _insert_with_event(on_conflict: bool) -> str:
    """INSERT ... SELECT unless the payment was ever used, with its purchase.created event.

    With `on_conflict`, ON CONFLICT (student_id, course_id) WHERE is_active = true DO
    NOTHING: the WHERE is required, without it PostgreSQL cannot infer a partial unique
    index and raises "there is no unique or exclusion constraint matching the ON CONFLICT
    specification". One statement, so the row and its event commit together or not at all.
    Built and compiled once: the hot path only binds values.
    """
    values = sa.select(*(sa.bindparam(name, type_=_t.c[name].type) for name in _INSERTED))
    return _insert_from(values, sa.bindparam("payment_id"), on_conflict)


def _insert_many() -> str:
    """_insert_with_event's statement (with ON CONFLICT) for many purchases: the values come
    as one array per column, so one prepared statement serves a batch of any size."""
    rows = (
        sa.func.unnest(*(sa.bindparam(name, type_=postgresql.ARRAY(_t.c[name].type)) for name in _INSERTED))
        .table_valued(*_INSERTED, with_ordinality="n")
        .render_derived(with_types=False)
        .alias("batch")
    )
    values = sa.select(*(rows.c[name] for name in _INSERTED)).order_by(rows.c.n)
    return _insert_from(values, rows.c.payment_id, on_conflict=True)


def _insert_from(values: sa.Select, payment_id: Any, on_conflict: bool) -> str:
    """Insert `values` whose payment was never used (`payment_id`: its expression in them),
    with a purchase.created event per row inserted; compiled for psycopg."""
    # A payment revoked before its purchase was made (a refund sent before the capture)
    # still makes its one row, inactive from the start: it never grants the course.
    values = values.add_columns((~sa.exists().where(_revoked.c.payment_id == payment_id)).label("is_active")).where(
        ~sa.exists().where(_paid.c.payment_id == payment_id),
        ~sa.exists().where(_dup.c.payment_id == payment_id),
    )
    insert = pg_insert(_t).from_select([*_INSERTED, "is_active"], values)
    if on_conflict:
        insert = insert.on_conflict_do_nothing(
            index_elements=[_t.c.student_id, _t.c.course_id], index_where=_t.c.is_active == sa.true()
        )
    statement = _event_from(insert.returning(*_t.c).cte("purchase"), PURCHASE_CREATED)
    return str(statement.compile(dialect=postgresql.psycopg.dialect()))


def _params(purchase: Purchase) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "student_id": purchase.student_id,
        "course_id": purchase.course_id,
        "payment_id": purchase.payment_id,
        "amount_cents": purchase.amount_cents,
        "currency": purchase.currency,
        "metadata": None if purchase.metadata is None else json.dumps(purchase.metadata),
    }


def _event_from(rows: sa.CTE, event_type: str) -> sa.Insert:
    """An outbox event for each row the CTE wrote, its data the row itself."""
    assert event_type in (PURCHASE_CREATED, DUPLICATE_PAYMENT)  # a constant, rendered into the SQL
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


def lock_keys(purchase: Purchase) -> list[int]:
    """Advisory lock keys of the pair and of the payment, sorted so that no two lockers deadlock."""
    names = (f"pair:{purchase.student_id}:{purchase.course_id}", f"payment:{purchase.payment_id}")
    return sorted(_key(n) for n in names)


def _key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"kc_tasks:{name}".encode(), digest_size=8).digest(), "big", signed=True)


_INSERT_ON_CONFLICT = _insert_with_event(on_conflict=True)
_INSERT_PLAIN = _insert_with_event(on_conflict=False)
_INSERT_MANY = _insert_many()
