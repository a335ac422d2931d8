"""The branches of create_purchase that keep "current transaction is aborted" away, each met
by an interleaving made certain with a lock the test holds: a delivery is started in a thread,
the test waits until its backend waits on the test's lock (pg_blocking_pids), commits what
stands in its way, and lets it go. No sleep decides the order."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import psycopg
import pytest
from sqlalchemy.engine import Engine

from kc_tasks.core import errors
from kc_tasks.core.payload import PurchaseKwargs
from kc_tasks.store.index_guard import IndexGuard
from kc_tasks.worker.purchases import RESOLVE_ATTEMPTS, PurchaseOutcome, create_all, create_purchase, lock_keys
from tests.builders import INSERT_ROW, order
from tests.services import run_sql


@pytest.fixture
def holder(database_url: str) -> Iterator[psycopg.Connection]:
    """The test's own connection, in a transaction until the test commits it."""
    conn = psycopg.connect(database_url)
    yield conn
    conn.close()


def deliver(engine: Engine, guard: IndexGuard, p: PurchaseKwargs) -> Future[PurchaseOutcome]:
    """create_purchase(p) in a thread of its own; its outcome or error, later."""
    future: Future[PurchaseOutcome] = Future()

    def run() -> None:
        try:
            future.set_result(create_purchase(engine, guard, p))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def wait_blocked_by(database_url: str, conn: psycopg.Connection, future: Future[PurchaseOutcome]) -> None:
    """Until a kc_tasks backend waits for a lock `conn` holds (the delivery reached it)."""
    pid = conn.info.backend_pid
    deadline = time.monotonic() + 30
    while not run_sql(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kc_tasks' AND %s = ANY(pg_blocking_pids(pid))",
        (pid,),
    )[0][0]:
        assert not future.done(), f"the delivery finished without meeting the lock: {future.result()}"
        assert time.monotonic() < deadline, "the delivery never reached the lock"
        time.sleep(0.02)


def unusable_guard(engine: Engine, sql: Callable[..., list[tuple]]) -> IndexGuard:
    """A guard that checked while unique_active_purchase was gone and still believes it: its
    deliveries take the locked path although the index is back (a worker whose check is stale)."""
    sql("DROP INDEX unique_active_purchase")
    guard = IndexGuard(ttl=300)
    assert not guard.status(engine).usable
    sql(
        "CREATE UNIQUE INDEX unique_active_purchase ON student_course_purchases (student_id, course_id) "
        "WHERE is_active = true"
    )
    return guard


def test_the_same_payment_for_two_courses_at_once_on_the_fast_path(engine, database_url, holder, sql) -> None:
    """_with_index meets UniqueConflict: the payment's other course is being inserted right now."""
    first = order()
    other_course = order(first.student_id, payment=first.payment_id)
    first_id = str(uuid.uuid4())
    holder.execute(INSERT_ROW, (first_id, first.student_id, first.course_id, first.payment_id))
    guard = IndexGuard(ttl=300)
    assert guard.status(engine).usable
    outcome = deliver(engine, guard, other_course)
    wait_blocked_by(database_url, holder, outcome)
    holder.commit()
    assert outcome.result(timeout=30) == PurchaseOutcome(first_id, created=False), (
        "the payment's purchase, not an error"
    )
    assert sql("SELECT payment_id, course_id::text FROM student_course_purchases") == [
        (first.payment_id, first.course_id)
    ]
    assert create_purchase(engine, guard, order()).created, "the pooled connection is still usable"


def test_a_batch_whose_statement_meets_a_payment_in_flight_makes_the_others_one_by_one(
    engine, database_url, holder, sql
) -> None:
    """The batch's statement meets UniqueConflict (one payment of it is being inserted for
    another course right now) and creates nothing: each purchase is then made on its own, on
    the fast path, with its event."""
    busy, free = order(), order()
    busy_id = str(uuid.uuid4())
    holder.execute(INSERT_ROW, (busy_id, busy.student_id, str(uuid.uuid4()), busy.payment_id))
    guard = IndexGuard(ttl=300)
    assert guard.status(engine).usable
    outcomes: Future[list] = Future()

    def run() -> None:
        try:
            outcomes.set_result(create_all(engine, guard, [busy, free]))
        except BaseException as exc:
            outcomes.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    wait_blocked_by(database_url, holder, outcomes)
    holder.commit()
    first, second = outcomes.result(timeout=30)
    assert first == PurchaseOutcome(busy_id, created=False), "the payment's purchase, made for its other course"
    assert isinstance(second, PurchaseOutcome) and second.created
    assert sql("SELECT id::text FROM student_course_purchases WHERE payment_id = %s", (free.payment_id,)) == [
        (second.purchase_id,)
    ]
    assert [e.data["payment_id"] for e in second.events] == [free.payment_id]
    assert sql("SELECT data->>'payment_id' FROM event_outbox") == [(free.payment_id,)]


def test_a_fast_path_rival_met_in_the_locked_paths_savepoint(engine, database_url, holder, sql) -> None:
    """_with_locks meets UniqueConflict in its savepoint: a worker that trusts the index
    inserted another payment of the pair. The transaction goes on and records a refund."""
    guard = unusable_guard(engine, sql)
    held = order()
    rival = order(held.student_id, held.course_id)
    held_id = str(uuid.uuid4())
    holder.execute(INSERT_ROW, (held_id, held.student_id, held.course_id, held.payment_id))
    outcome = deliver(engine, guard, rival)
    wait_blocked_by(database_url, holder, outcome)
    holder.commit()
    assert outcome.result(timeout=30) == PurchaseOutcome(held_id, created=False, duplicate_of=held_id)
    assert sql("SELECT payment_id, purchase_id::text FROM duplicate_payments") == [(rival.payment_id, held_id)]
    assert sql("SELECT count(*) FROM student_course_purchases") == [(1,)]


def test_the_same_delivery_on_the_fast_path_first_leaves_the_locked_path_nothing_to_create(
    engine, database_url, holder, sql
) -> None:
    """_with_locks looked (nothing there), then a fast-path worker committed the same payment
    before its INSERT: the INSERT creates nothing ("nothing created") and the delivery names
    the other worker's purchase. The test holds duplicate_payments, which the look reads
    second, so the commit falls between the look and the INSERT."""
    guard = unusable_guard(engine, sql)
    p = order()
    holder.execute("LOCK TABLE duplicate_payments IN ACCESS EXCLUSIVE MODE")
    outcome = deliver(engine, guard, p)
    wait_blocked_by(database_url, holder, outcome)
    other_id = str(uuid.uuid4())
    sql(INSERT_ROW, (other_id, p.student_id, p.course_id, p.payment_id))  # the fast-path worker's row
    holder.commit()
    assert outcome.result(timeout=30) == PurchaseOutcome(other_id, created=False)
    assert sql("SELECT id::text FROM student_course_purchases") == [(other_id,)]
    assert sql("SELECT count(*) FROM event_outbox") == [(0,)], "no purchase.created for a purchase not created"


def test_the_locked_path_waits_for_its_own_pair_and_payment_only(engine, database_url, holder, sql) -> None:
    """Its advisory locks are those of the purchase's pair and payment: held by another
    session, they stop that purchase and no other."""
    sql("DROP INDEX unique_active_purchase")
    guard = IndexGuard(ttl=300)
    p = order()
    holder.execute("SELECT pg_advisory_xact_lock(%s), pg_advisory_xact_lock(%s)", lock_keys(p))
    assert deliver(engine, guard, order()).result(timeout=20).created, "another pair and payment go by"
    waits = deliver(engine, guard, p)
    wait_blocked_by(database_url, holder, waits)
    holder.rollback()
    assert waits.result(timeout=30).created


def test_a_purchase_that_keeps_changing_is_retried_later_not_failed(engine, sql) -> None:
    """Every attempt meets a unique conflict and then finds nothing standing there (PostgreSQL
    made to raise unique_violation for this payment): after RESOLVE_ATTEMPTS the delivery is
    a retryable DatabaseBusy, with no aborted transaction left behind."""
    p = order(payment="pay_keeps_changing")
    sql(
        "CREATE FUNCTION conflict_always() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.payment_id = 'pay_keeps_changing' THEN "
        "PERFORM nextval('conflicts_met'); "
        "RAISE unique_violation USING MESSAGE = 'a rival row came and went'; END IF; RETURN NEW; END $$"
    )
    sql("CREATE SEQUENCE conflicts_met")  # not rolled back with the statements it counts
    sql(
        "CREATE TRIGGER conflict_always BEFORE INSERT ON student_course_purchases "
        "FOR EACH ROW EXECUTE FUNCTION conflict_always()"
    )
    with pytest.raises(errors.DatabaseBusy, match="kept changing") as caught:
        create_purchase(engine, IndexGuard(ttl=300), p)
    assert isinstance(caught.value, errors.RetryableError)
    assert sql("SELECT last_value FROM conflicts_met") == [(1 + 2 * RESOLVE_ATTEMPTS,)], (
        "the batch's statement, then each attempt tried the fast path, then the locked path"
    )
    assert sql("SELECT count(*) FROM student_course_purchases") == [(0,)]
    assert create_purchase(engine, IndexGuard(ttl=300), order()).created, "the pool's connections are clean"
