"""create_purchase's database work on a real PostgreSQL: idempotent under any delivery."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from kc_tasks.core import errors
from kc_tasks.core.payload import PurchaseKwargs
from kc_tasks.core.settings import describe_database, normalize_database_url
from kc_tasks.store import db
from kc_tasks.store.index_guard import IndexGuard
from kc_tasks.worker.purchases import PurchaseOutcome, create_all, create_purchase
from tests.builders import order


def rows(sql: Callable[..., list[tuple]], p: PurchaseKwargs) -> list[tuple]:
    return sql(
        "SELECT payment_id, is_active FROM student_course_purchases WHERE student_id = %s AND course_id = %s "
        "ORDER BY created_at",
        (p.student_id, p.course_id),
    )


def test_a_new_payment_creates_one_purchase_and_a_repeat_finds_it(engine: Engine, guard: IndexGuard, sql) -> None:
    p = order(metadata={"coupon": "DIWALI", "seats": 2})
    first = create_purchase(engine, guard, p)
    again = create_purchase(engine, guard, p)
    assert first.created and not again.created
    assert again.purchase_id == first.purchase_id
    stored = sql(
        "SELECT id::text, payment_id, amount_cents, currency, metadata, is_active FROM student_course_purchases"
    )
    assert stored == [(first.purchase_id, p.payment_id, 4999, "INR", {"coupon": "DIWALI", "seats": 2}, True)]


def test_a_purchase_without_metadata_stores_none_not_a_json_null(engine, guard, sql) -> None:
    p = order()
    assert p.metadata is None
    create_purchase(engine, guard, p)
    assert sql("SELECT metadata IS NULL FROM student_course_purchases") == [(True,)]
    assert sql("SELECT data->'metadata' IS NULL FROM event_outbox") == [(False,)], "the event has the key, as null"


def test_what_each_path_logs_for_the_purchase_it_creates(engine, sql, caplog) -> None:
    """Celery's "succeeded" line already reports each purchase: the fast path's own line is
    DEBUG; the fallback's, the rarer path and worth an operator's notice, INFO."""
    caplog.set_level(logging.DEBUG, logger="kc_tasks.worker.purchases")
    fast, slow = order(), order()
    made = create_purchase(engine, IndexGuard(ttl=300), fast)
    sql("DROP INDEX unique_active_purchase")
    fallback = create_purchase(engine, IndexGuard(ttl=300), slow)
    assert fallback.created
    assert [r for r in caplog.record_tuples if r[0] == "kc_tasks.worker.purchases"] == [
        (
            "kc_tasks.worker.purchases",
            logging.DEBUG,
            f"purchase {made.purchase_id} created for payment {fast.payment_id}",
        ),
        (
            "kc_tasks.worker.purchases",
            logging.INFO,
            f"purchase {fallback.purchase_id} created for payment {slow.payment_id} (fallback path)",
        ),
    ]


def test_a_rival_payment_for_a_held_course_is_recorded_for_refund_not_purchased(engine, guard, sql) -> None:
    p = order()
    rival = order(p.student_id, p.course_id)
    held = create_purchase(engine, guard, p)
    outcome = create_purchase(engine, guard, rival)
    assert outcome == PurchaseOutcome(held.purchase_id, created=False, duplicate_of=held.purchase_id)
    assert rows(sql, p) == [(p.payment_id, True)]
    assert sql("SELECT payment_id, purchase_id::text FROM duplicate_payments") == [(rival.payment_id, held.purchase_id)]


def test_a_rival_payment_is_recorded_whole_with_its_event_and_one_warning(engine, guard, sql, caplog) -> None:
    """What a refund of the rival payment needs: its amount, both payments, the purchase held."""
    p = order()
    rival = order(p.student_id, p.course_id, amount_cents=100, currency="USD")
    held = create_purchase(engine, guard, p)
    caplog.set_level(logging.DEBUG, logger="kc_tasks.worker.purchases")
    outcome = create_purchase(engine, guard, rival)
    again = create_purchase(engine, guard, rival)
    assert outcome == again == PurchaseOutcome(held.purchase_id, created=False, duplicate_of=held.purchase_id)
    assert [e.type for e in outcome.events] == ["purchase.duplicate_payment"] and again.events == ()
    record = (rival.payment_id, held.purchase_id, p.payment_id, p.student_id, p.course_id, 100, "USD")
    assert sql(
        "SELECT payment_id, purchase_id::text, held_payment_id, student_id::text, course_id::text, amount_cents, "
        "currency FROM duplicate_payments"
    ) == [record]
    events = sql("SELECT id::text, data FROM event_outbox WHERE type = 'purchase.duplicate_payment'")
    assert [event_id for event_id, _ in events] == [outcome.events[0].id], "one event, once"
    keys = ("payment_id", "purchase_id", "held_payment_id", "student_id", "course_id", "amount_cents", "currency")
    assert tuple(events[0][1][k] for k in keys) == record
    assert caplog.record_tuples == [
        (
            "kc_tasks.worker.purchases",
            logging.WARNING,
            f"payment {rival.payment_id} is a duplicate: student {p.student_id} already holds course {p.course_id} "
            f"by payment {p.payment_id} (purchase {held.purchase_id}); refund it",
        )
    ], "warned once, when recorded"


def test_a_refunded_rival_payment_never_buys_the_course_later(engine, guard, sql) -> None:
    p = order()
    rival = order(p.student_id, p.course_id)
    create_purchase(engine, guard, p)
    create_purchase(engine, guard, rival)
    sql("UPDATE student_course_purchases SET is_active = false")
    assert not create_purchase(engine, guard, rival).created
    assert rows(sql, p) == [(p.payment_id, False)]


def test_a_stale_replay_of_a_deactivated_purchase_creates_nothing(engine, guard, sql) -> None:
    p = order()
    first = create_purchase(engine, guard, p)
    sql("UPDATE student_course_purchases SET is_active = false WHERE payment_id = %s", (p.payment_id,))
    for _ in range(3):
        assert create_purchase(engine, guard, p) == PurchaseOutcome(first.purchase_id, created=False)
    fresh = order(p.student_id, p.course_id)
    assert create_purchase(engine, guard, fresh).created
    assert rows(sql, p) == [(p.payment_id, False), (fresh.payment_id, True)]


def test_a_payment_reused_for_another_course_returns_its_first_purchase(engine, guard, sql) -> None:
    p = order()
    first = create_purchase(engine, guard, p)
    other_course = order(p.student_id, payment=p.payment_id)
    assert create_purchase(engine, guard, other_course) == PurchaseOutcome(first.purchase_id, created=False)
    assert sql("SELECT count(*) FROM student_course_purchases")[0][0] == 1


def _at_once(database_url: str, items: list[Any], act: Callable[[Engine, Any, Callable[[], Any]], Any]) -> list[Any]:
    """act(engine, item, go) for each item in a thread of its own, with an engine of its own (as
    separate worker processes); go() waits until every thread is ready, then all run at once.
    A thread that hangs, or never reaches go(), fails the test: no outcome is dropped."""
    barrier = threading.Barrier(len(items), timeout=60)
    results: list[Any] = []
    failures: list[BaseException] = []

    def run(item: Any) -> None:
        engine = db.make_engine(normalize_database_url(database_url))
        try:
            results.append(act(engine, item, barrier.wait))
        except BaseException as exc:
            failures.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [t for t in threads if t.is_alive()], "a delivery hung"
    assert not failures, failures
    assert len(results) == len(items), "every delivery has its outcome"
    return results


def _race(database_url: str, deliveries: list[PurchaseKwargs], ttl: float = 300) -> list[PurchaseOutcome]:
    """Each delivery from its own engine and thread, its index check made, released at once."""

    def deliver(engine: Engine, p: PurchaseKwargs, go: Callable[[], Any]) -> PurchaseOutcome:
        guard = IndexGuard(ttl)
        guard.status(engine)
        go()
        return create_purchase(engine, guard, p)

    return _at_once(database_url, deliveries, deliver)


@pytest.mark.parametrize("index", ["with the index", "without the index"])
def test_concurrent_deliveries_of_one_payment_and_its_rivals_make_one_purchase(database_url, sql, index) -> None:
    if index == "without the index":
        sql("DROP INDEX unique_active_purchase")
    for _ in range(5):
        p = order()
        rivals = [order(p.student_id, p.course_id) for _ in range(3)]
        outcomes = _race(database_url, [p] * 5 + rivals)
        assert sum(o.created for o in outcomes) == 1
        assert len({o.purchase_id for o in outcomes}) == 1, "every delivery names the one purchase"
        active = sql(
            "SELECT count(*) FROM student_course_purchases WHERE student_id = %s AND course_id = %s AND is_active",
            (p.student_id, p.course_id),
        )
        assert active == [(1,)]
        assert sql("SELECT count(*) FROM duplicate_payments WHERE student_id = %s", (p.student_id,)) == [(3,)]


def test_without_the_index_the_fallback_is_race_free_even_with_no_unique_constraint_at_all(database_url, sql) -> None:
    """The old write-up's "check, then insert" lets two deliveries both insert; the locks do not."""
    sql("DROP INDEX unique_active_purchase")
    sql("ALTER TABLE student_course_purchases DROP CONSTRAINT student_course_purchases_payment_id_key")
    for _ in range(5):
        p = order()
        _race(database_url, [p] * 6 + [order(p.student_id, p.course_id) for _ in range(2)])
        assert sql("SELECT count(*) FROM student_course_purchases WHERE student_id = %s", (p.student_id,)) == [(1,)]


def test_the_locked_path_tells_a_held_course_from_the_same_course_or_student_elsewhere(engine, sql) -> None:
    """Without a usable index each purchase is made by the locked path alone (no statement
    relies on the index), and only the same student and course stand in its way."""
    sql("DROP INDEX unique_active_purchase")
    guard = IndexGuard(ttl=300)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    p = order()
    held = create_purchase(engine, guard, p)
    assert create_purchase(engine, guard, order(course=p.course_id)).created, "another student, the same course"
    assert create_purchase(engine, guard, order(student=p.student_id)).created, "the same student, another course"
    rival = create_purchase(engine, guard, order(p.student_id, p.course_id))
    assert rival == PurchaseOutcome(held.purchase_id, created=False, duplicate_of=held.purchase_id)
    assert not [s for s in statements if "ON CONFLICT (student_id, course_id)" in s]


def test_a_guard_that_checks_the_index_every_time_still_resolves(engine, sql) -> None:
    guard = IndexGuard(ttl=0)
    p = order()
    held = create_purchase(engine, guard, p)
    rival = create_purchase(engine, guard, order(p.student_id, p.course_id))
    assert rival == PurchaseOutcome(held.purchase_id, created=False, duplicate_of=held.purchase_id)


def test_an_index_dropped_after_the_check_is_met_in_the_same_call(engine, sql, caplog) -> None:
    guard = IndexGuard(ttl=300)
    assert create_purchase(engine, guard, order()).created
    assert guard.cached is not None and guard.cached.usable
    sql("DROP INDEX unique_active_purchase")
    p = order()
    assert create_purchase(engine, guard, p).created, "no error, no retry: the fallback finishes the delivery"
    assert guard.cached is not None and not guard.cached.usable
    assert "unique_active_purchase index not usable: it does not exist - will use fallback method" in caplog.text
    assert not create_purchase(engine, guard, p).created


def test_an_invalid_index_left_by_a_failed_concurrent_build_is_not_trusted(engine, guard, sql) -> None:
    sql("DROP INDEX unique_active_purchase")
    twin = order()
    for payment in ("pay_twin_1", "pay_twin_2"):
        sql(
            "INSERT INTO student_course_purchases (student_id, course_id, payment_id, amount_cents, currency) "
            "VALUES (%s, %s, %s, 1, 'INR')",
            (twin.student_id, twin.course_id, payment),
        )
    with pytest.raises(Exception, match="could not create unique index"):
        sql(
            "CREATE UNIQUE INDEX CONCURRENTLY unique_active_purchase ON student_course_purchases "
            "(student_id, course_id) WHERE is_active = true"
        )
    assert sql("SELECT indexname FROM pg_indexes WHERE indexname = 'unique_active_purchase'") == [
        ("unique_active_purchase",)
    ], "listed in pg_indexes all the same"
    status = guard.status(engine)
    assert not status.usable and "INVALID" in status.reason
    p = order()
    outcomes = [create_purchase(engine, guard, p) for _ in range(3)]
    assert [o.created for o in outcomes] == [True, False, False]


def test_statements_per_purchase_and_no_index_queries_while_the_check_is_fresh(engine, guard) -> None:
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    guard.status(engine)
    statements.clear()
    for _ in range(20):
        create_purchase(engine, guard, order())
    assert len(statements) == 20, "one round trip per new purchase"
    assert not [s for s in statements if "pg_index" in s or "EXPLAIN" in s]


def test_a_repeated_delivery_costs_two_statements_and_writes_nothing(engine, guard, sql) -> None:
    """The batch's statement, which creates nothing, then one look that finds the purchase."""
    p = order()
    create_purchase(engine, guard, p)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert not create_purchase(engine, guard, p).created
    assert [s.lstrip().split(None, 1)[0] for s in statements] == ["WITH", "SELECT"]
    assert sql("SELECT count(*) FROM event_outbox") == [(1,)]


def test_an_empty_batch_costs_no_statement(engine, guard) -> None:
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert create_all(engine, guard, []) == []
    assert statements == []


def test_a_terminated_connection_is_a_retryable_error_and_the_pool_recovers(engine, guard, sql) -> None:
    create_purchase(engine, guard, order())
    sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'kc_tasks' "
        "AND datname = current_database()"
    )
    with pytest.raises(errors.RetryableError) as caught:
        create_purchase(engine, guard, order())
    assert f"({describe_database(engine.url)})" in str(caught.value), "the database is named"
    for _ in range(3):
        assert create_purchase(engine, guard, order()).created
    held = sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kc_tasks' AND datname = current_database()"
    )[0][0]
    assert held <= engine.pool.size()


def test_an_unreachable_database_is_retryable_and_named_without_its_password(guard) -> None:
    engine = db.make_engine(normalize_database_url("postgresql://kc:s3cret@127.0.0.1:1/shop"))
    with pytest.raises(errors.DatabaseUnavailable) as caught:
        create_purchase(engine, guard, order())
    assert "127.0.0.1:1/shop" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_batch_creates_its_new_purchases_with_their_events_in_one_statement(engine, guard, sql) -> None:
    held, other = order(), order()
    assert create_purchase(engine, guard, held).created and create_purchase(engine, guard, other).created
    batch = [order(metadata={"n": i}) for i in range(20)]
    rival = order(other.student_id, other.course_id)  # the student already holds that course
    outcomes = create_all(engine, guard, [*batch, held, rival])
    assert all(isinstance(o, PurchaseOutcome) for o in outcomes)
    created, (again, duplicate) = outcomes[:20], outcomes[20:]
    assert all(o.created and len(o.events) == 1 for o in created)
    assert again == PurchaseOutcome(create_purchase(engine, guard, held).purchase_id, created=False)
    assert duplicate.duplicate_of is not None and not duplicate.created, "what stands in the way is found"
    stored = dict(sql("SELECT payment_id, id::text FROM student_course_purchases"))
    assert [o.purchase_id for o in created] == [stored[p.payment_id] for p in batch]
    assert sql(
        "SELECT count(DISTINCT created_at) FROM student_course_purchases WHERE payment_id = ANY(%s)",
        ([p.payment_id for p in batch],),
    ) == [(1,)], "one statement, one transaction"
    events = sql("SELECT data->>'payment_id', data->'metadata' FROM event_outbox WHERE type = 'purchase.created'")
    expected = [(held.payment_id, None), (other.payment_id, None)] + [(p.payment_id, p.metadata) for p in batch]
    assert sorted(events) == sorted(expected), "one purchase.created event per new purchase, none for the others"
    assert sql("SELECT payment_id FROM duplicate_payments") == [(rival.payment_id,)]
    assert not any(o.created for o in create_all(engine, guard, [rival, *batch[:3]])), "a used payment buys nothing"
    assert sql("SELECT count(*) FROM student_course_purchases") == [(22,)]
    assert sql("SELECT count(*) FROM payments WHERE revoked_at IS NULL") == [(23,)], "a row for every payment seen"


def test_a_payment_or_a_pair_twice_in_one_batch_is_made_once(engine, guard, sql) -> None:
    p = order()
    same_payment, same_pair = order(payment=p.payment_id), order(p.student_id, p.course_id)
    first, second, third = create_all(engine, guard, [p, same_payment, same_pair])
    assert isinstance(first, PurchaseOutcome) and first.created
    assert second == PurchaseOutcome(first.purchase_id, created=False), "the second delivery finds the first's purchase"
    assert third == PurchaseOutcome(first.purchase_id, created=False, duplicate_of=first.purchase_id)
    assert sql("SELECT count(*) FROM student_course_purchases") == [(1,)]


def test_without_a_usable_index_a_batch_is_made_by_the_fallback(engine, sql) -> None:
    guard = IndexGuard(ttl=300)
    assert all(o.created for o in create_all(engine, guard, [order(), order()]))  # cached as usable
    sql("DROP INDEX unique_active_purchase")
    assert all(o.created for o in create_all(engine, guard, [order(), order()])), "the broken index is met"
    assert guard.cached is not None and not guard.cached.usable
    p = order()
    assert [o.created for o in create_all(engine, guard, [p, order(p.student_id, p.course_id)])] == [True, False]
    assert sql("SELECT count(*) FROM student_course_purchases") == [(5,)]


def _batches_at_once(database_url: str, batches: list[list[PurchaseKwargs]]) -> list[list[PurchaseOutcome]]:
    def insert(engine: Engine, batch: list[PurchaseKwargs], go: Callable[[], Any]) -> list[PurchaseOutcome]:
        go()
        outcomes = create_all(engine, IndexGuard(ttl=300), batch)
        assert all(isinstance(o, PurchaseOutcome) for o in outcomes), outcomes
        return outcomes  # type: ignore[return-value]

    return _at_once(database_url, batches, insert)


def test_concurrent_batches_of_the_same_pairs_in_opposite_orders_do_not_deadlock(database_url, sql) -> None:
    """Each batch inserts in the order of its pairs: two batches that share pairs wait for
    each other instead of each holding a row the other needs."""
    for _ in range(5):
        shared = [order() for _ in range(30)]
        rivals = [order(p.student_id, p.course_id) for p in reversed(shared)]
        results = _batches_at_once(database_url, [shared, rivals])
        assert sum(o.created for r in results for o in r) == 30, "each pair bought once, by one batch or the other"
    assert sql("SELECT count(*) FROM student_course_purchases") == [(150,)]
