"""The read model of a payment's state (kc_tasks.payments.state) on real PostgreSQL: one payment
through created, a duplicate of it, revoked, restored and its dead letter purged, the state read
back after each step, each part from its own table, and the SQL conditions agreeing with it."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from kc_tasks.core.names import (
    CREATE_PURCHASE,
    DUPLICATE_PAYMENT,
    PURCHASE_CREATED,
    PURCHASE_RESTORED,
    PURCHASE_REVOKED,
    REVOKE_PURCHASE,
)
from kc_tasks.core.payload import RevocationKwargs, parse_purchase
from kc_tasks.core.sending import task_id_for
from kc_tasks.payments import state
from kc_tasks.store.index_guard import IndexGuard
from kc_tasks.worker.purchases import create_purchase
from kc_tasks.worker.restorations import restore
from kc_tasks.worker.revocations import revoke


def read(engine: Engine, *payment_ids: str) -> dict[str, state.PaymentState]:
    with engine.connect() as conn:
        return state.read_many(conn, payment_ids, with_events=True)


def in_sql(engine: Engine, payment_id: str) -> tuple[bool, bool]:
    """(bought, revoked) as the SQL conditions answer them."""
    with engine.connect() as conn:
        pid = sa.literal(payment_id, sa.Text)
        row = conn.execute(sa.select(state.bought_where(pid), state.revoked_where(pid))).one()
    return bool(row[0]), bool(row[1])


def agree(engine: Engine, now: state.PaymentState) -> None:
    assert in_sql(engine, now.payment_id) == (now.bought, now.revoked)


def test_one_payment_read_back_through_created_duplicate_revoked_restored_and_purged(
    engine: Engine, sql: Callable[..., list[tuple]]
) -> None:
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    paid, again = f"pay_{uuid.uuid4().hex}", f"pay_{uuid.uuid4().hex}"
    kwargs = {"student_id": student, "course_id": course, "amount_cents": 49900, "currency": "INR"}
    guard = IndexGuard(ttl=300)

    never = read(engine, paid)[paid]
    assert never == state.PaymentState(paid)
    assert never.active is None and not (never.bought or never.revoked or never.settled or never.revocable)
    agree(engine, never)

    # Created: its purchase, its payments row, its purchase.created event; nothing else.
    create_purchase(engine, guard, parse_purchase({"payment_id": paid, **kwargs}))
    (purchase_id,) = sql("SELECT id FROM student_course_purchases WHERE payment_id = %s", (paid,))[0]
    now = read(engine, paid)[paid]
    assert now.purchase is not None and str(now.purchase.id) == str(purchase_id)
    assert (now.purchase.student_id, now.purchase.course_id) == (student, course)
    assert (now.active, now.bought, now.revoked, now.settled, now.revocable) == (True, True, False, True, True)
    assert now.payment is not None and now.payment.revoked_at is None
    assert (now.duplicate, now.revocation, now.restorations, now.purged) == (None, None, (), ())
    assert [e.type for e in now.written] == [PURCHASE_CREATED]
    agree(engine, now)

    # A second payment for the course the student holds: a duplicate of the first, no purchase.
    create_purchase(engine, guard, parse_purchase({"payment_id": again, **kwargs}))
    states = read(engine, paid, again)
    dup = states[again]
    assert dup.purchase is None and dup.active is None
    assert dup.duplicate is not None and dup.duplicate.held_payment_id == paid
    assert str(dup.duplicate.purchase_id) == str(purchase_id)
    assert (dup.bought, dup.revoked, dup.revocable) == (True, False, False)
    assert [e.type for e in dup.written] == [DUPLICATE_PAYMENT]
    assert states[paid].duplicate is None  # the record is the duplicate's, not the held payment's
    agree(engine, dup)

    # Revoked: the standing revocation, the purchase inactive, the payments row revoked.
    revoke(engine, RevocationKwargs(payment_id=paid, reason="refund", refund_id="rfnd_1"))
    now = read(engine, paid)[paid]
    assert now.revocation is not None and (now.revocation.reason, now.revocation.refund_id) == ("refund", "rfnd_1")
    assert (now.active, now.bought, now.revoked, now.revocable) == (False, True, True, False)
    assert now.payment is not None and now.payment.revoked_at is not None
    assert now.restorations == ()
    assert sorted(e.type for e in now.written) == sorted([PURCHASE_CREATED, PURCHASE_REVOKED])
    assert now.has_outcome(REVOKE_PURCHASE, task_id_for(paid, REVOKE_PURCHASE))
    agree(engine, now)

    # Restored: the revocation moved to restorations; still revoked (never to be revoked again
    # by the same refund), active again.
    restore(engine, paid, "refund failed: card closed")
    now = read(engine, paid)[paid]
    assert now.revocation is None
    assert [(r.reason, r.revocation_reason, r.refund_id) for r in now.restorations] == [
        ("refund failed: card closed", "refund", "rfnd_1")
    ]
    assert (now.active, now.bought, now.revoked, now.revocable) == (True, True, True, False)
    assert now.payment is not None and now.payment.revoked_at is None
    assert PURCHASE_RESTORED in [e.type for e in now.written]
    agree(engine, now)

    # The duplicate's purchase task dead-lettered, then purged by an operator: found by its task
    # id even where the dead letter named no payment; it belongs to that payment alone.
    task_id = task_id_for(again, CREATE_PURCHASE)
    sql("INSERT INTO purged_dead_letters (task_id, task, payment_id) VALUES (%s, %s, NULL)", (task_id, CREATE_PURCHASE))
    states = read(engine, paid, again)
    assert [p.task_id for p in states[again].purged] == [task_id] and states[paid].purged == ()
    assert states[again].has_outcome(REVOKE_PURCHASE, task_id)
    assert not states[again].has_outcome(REVOKE_PURCHASE, task_id_for(again, REVOKE_PURCHASE))

    # Its inbox events, read only when asked for.
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body) "
        "VALUES ('kc', 'evt_1', 'payment.captured', %s, 'enqueued', '{}')",
        (paid,),
    )
    assert [(e.event_id, e.status) for e in read(engine, paid)[paid].events] == [("evt_1", "enqueued")]
    with engine.connect() as conn:
        assert state.read(conn, paid).events == ()
