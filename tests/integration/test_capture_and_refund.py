"""A capture and a refund of one payment, in every order: the refund before, during and after
the purchase's INSERT. Each interleaving is made certain with a lock the test holds (an
uncommitted purchase of the same student and course, which the INSERT must wait for), never
a sleep. Whatever the order, the payment ends with one purchase, inactive, and at most one
purchase.revoked event; no step after the purchase's commit is needed for that."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import Engine

from kc_tasks.core.payload import PurchaseKwargs, RevocationKwargs
from kc_tasks.store.index_guard import IndexGuard
from kc_tasks.worker.purchases import create_purchase, lock_keys
from kc_tasks.worker.revocations import revoke
from tests.builders import INSERT_ROW, order
from tests.services import run_sql


def refund(p: PurchaseKwargs) -> RevocationKwargs:
    return RevocationKwargs(payment_id=p.payment_id, reason="refund", refund_id="rfnd_1")


def in_thread(work: Callable[[], Any]) -> Future[Any]:
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def waiting(database_url: str) -> int:
    """kc_tasks backends of this database waiting for a lock."""
    return run_sql(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kc_tasks' "
        "AND datname = current_database() AND wait_event_type = 'Lock'",
    )[0][0]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def the_end(sql: Callable[..., list[tuple]], p: PurchaseKwargs) -> tuple[list[tuple], int]:
    rows = sql("SELECT is_active FROM student_course_purchases WHERE payment_id = %s", (p.payment_id,))
    revoked = sql(
        "SELECT count(*) FROM event_outbox WHERE type = 'purchase.revoked' AND data->>'payment_id' = %s",
        (p.payment_id,),
    )[0][0]
    return rows, revoked


@pytest.fixture
def holder(database_url: str) -> Iterator[psycopg.Connection]:
    """The test's own connection, in a transaction until the test ends it."""
    conn = psycopg.connect(database_url)
    yield conn
    conn.close()


@pytest.fixture
def guard(engine: Engine) -> IndexGuard:
    guard = IndexGuard(ttl=300)
    assert guard.status(engine).usable
    return guard


def test_a_refund_before_the_insert_makes_the_purchase_inactive_from_the_start(engine, guard, sql) -> None:
    p = order()
    assert revoke(engine, refund(p)).as_result() == {"purchase_id": None, "revoked": True}
    made = create_purchase(engine, guard, p)
    assert made.created
    assert the_end(sql, p) == ([(False,)], 0), "never active, so nothing to announce as revoked"


def test_a_refund_during_the_insert_waits_for_it_then_revokes_the_purchase(
    engine,
    guard,
    database_url,
    holder: psycopg.Connection,
    sql,
) -> None:
    """The INSERT has locked the payment's row and waits for a rival purchase of its pair;
    the refund comes now. It must not be lost between the INSERT's snapshot and its commit."""
    p = order()
    holder.execute(INSERT_ROW, ("00000000-0000-4000-8000-000000000001", p.student_id, p.course_id, "pay_rival"))
    capture = in_thread(lambda: create_purchase(engine, guard, p))
    wait_for(lambda: waiting(database_url) == 1, "the INSERT waits for the rival's pair")
    refunded = in_thread(lambda: revoke(engine, refund(p)))
    # The refund either waits for the INSERT (one row per payment orders them) or, if it did
    # not, has finished without seeing the purchase: both are states this test must judge.
    wait_for(lambda: refunded.done() or waiting(database_url) == 2, "the refund ran or waits")
    holder.rollback()  # the rival gives up: the INSERT goes through and commits
    made = capture.result(timeout=30)
    outcome = refunded.result(timeout=30)
    assert made.created
    assert outcome.as_result() == {"purchase_id": made.purchase_id, "revoked": True}
    assert the_end(sql, p) == ([(False,)], 1), "the refunded payment keeps no active purchase"


def test_a_refund_after_the_insert_revokes_the_purchase_once(engine, guard, sql) -> None:
    p = order()
    made = create_purchase(engine, guard, p)
    assert revoke(engine, refund(p)).as_result() == {"purchase_id": made.purchase_id, "revoked": True}
    assert revoke(engine, refund(p)).as_result() == {"purchase_id": made.purchase_id, "revoked": False}
    assert not create_purchase(engine, guard, p).created, "a redelivery after it changes nothing"
    assert the_end(sql, p) == ([(False,)], 1)


def test_a_refund_while_the_locked_path_waits_for_its_pair_is_seen_by_it(
    engine,
    database_url,
    holder: psycopg.Connection,
    sql,
) -> None:
    """Without unique_active_purchase the purchase is made in a transaction that takes the
    pair's advisory lock, then the payment's row: a refund committed while it waits for the
    pair is seen once it has the row, and the purchase is made inactive."""
    sql("DROP INDEX unique_active_purchase")
    guard = IndexGuard(ttl=300)
    p = order()
    # The locked path takes the advisory locks of the pair and the payment: the holder takes one.
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (lock_keys(p)[0],))
    capture = in_thread(lambda: create_purchase(engine, guard, p))
    wait_for(lambda: waiting(database_url) == 1, "the locked path waits for the pair")
    assert revoke(engine, refund(p)).as_result() == {"purchase_id": None, "revoked": True}
    holder.rollback()
    made = capture.result(timeout=30)
    assert made.created
    assert the_end(sql, p) == ([(False,)], 0), "never active"
