"""revoke_purchase's database work on a real PostgreSQL, and the task in a real worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks.core import errors
from kc_tasks.core.payload import PurchaseKwargs, RevocationKwargs
from kc_tasks.core.settings import normalize_database_url
from kc_tasks.store import db
from kc_tasks.store.index_guard import IndexGuard
from kc_tasks.worker.purchases import create_purchase
from kc_tasks.worker.revocations import revoke
from tests.builders import kwargs, refund
from tests.builders import sample_order as order
from tests.harness import Seen
from tests.services import active, run_sql


def revoked_events(sql: Callable[..., list[tuple]], payment_id: str) -> list[dict]:
    return [
        r[0]
        for r in sql(
            "SELECT data FROM event_outbox WHERE type = 'purchase.revoked' AND data->>'payment_id' = %s", (payment_id,)
        )
    ]


def test_a_refund_makes_the_purchase_inactive_with_one_event(engine: Engine, guard: IndexGuard, sql) -> None:
    p = order()
    made = create_purchase(engine, guard, p)
    first = revoke(engine, refund(p.payment_id))
    again = revoke(engine, refund(p.payment_id))
    assert first.as_result() == {"purchase_id": made.purchase_id, "revoked": True}
    assert again.as_result() == {"purchase_id": made.purchase_id, "revoked": False}
    assert active(sql, p.payment_id) == [False]
    events = revoked_events(sql, p.payment_id)
    assert len(events) == 1, "a second revocation records no second event"
    assert events[0]["reason"] == "refund" and events[0]["refund_id"] == "rfnd_1"
    assert events[0]["id"] == made.purchase_id and events[0]["is_active"] is False
    assert sql("SELECT updated_at > created_at FROM student_course_purchases") == [(True,)]


def test_a_refund_before_the_purchase_leaves_it_inactive_from_the_start(engine: Engine, guard: IndexGuard, sql) -> None:
    p = order()
    early = revoke(engine, refund(p.payment_id))
    assert early.as_result() == {"purchase_id": None, "revoked": True}
    made = create_purchase(engine, guard, p)
    assert made.created
    assert active(sql, p.payment_id) == [False]
    assert revoked_events(sql, p.payment_id) == [], "it never was active: nothing to announce"
    assert sql("SELECT purchase_id::text FROM revocations WHERE payment_id = %s", (p.payment_id,)) == [
        (made.purchase_id,)
    ]
    assert not create_purchase(engine, guard, p).created, "one payment, one row, ever"


def test_a_revocation_recorded_without_the_payments_row_still_keeps_the_purchase_inactive(
    engine: Engine, guard: IndexGuard, sql
) -> None:
    """A worker older than the payments table records revocations only: a purchase made
    after one is inactive from the start, during a rolling upgrade too."""
    p = order()
    sql("INSERT INTO revocations (payment_id, reason) VALUES (%s, 'refund')", (p.payment_id,))
    assert create_purchase(engine, guard, p).created
    assert active(sql, p.payment_id) == [False]
    assert revoke(engine, refund(p.payment_id)).revoked is False, "already recorded, nothing to change"
    assert sql("SELECT revoked_at IS NOT NULL FROM payments WHERE payment_id = %s", (p.payment_id,)) == [(True,)]


def test_what_a_revocation_logs_once(engine: Engine, guard: IndexGuard, caplog) -> None:
    """One line when a revocation changes something, naming the purchase, the payment and the
    reason; none for a repeat."""
    bought, early = order(), order()
    made = create_purchase(engine, guard, bought)
    caplog.set_level(logging.DEBUG, logger="kc_tasks.worker.revocations")
    revoke(engine, RevocationKwargs(payment_id=bought.payment_id, reason="dispute_lost", refund_id=None))
    revoke(engine, refund(early.payment_id))
    logged = list(caplog.record_tuples)
    revoke(engine, RevocationKwargs(payment_id=bought.payment_id, reason="dispute_lost", refund_id=None))
    revoke(engine, refund(early.payment_id))
    assert caplog.record_tuples == logged, "nothing for the repeats"
    assert logged == [
        (
            "kc_tasks.worker.revocations",
            logging.INFO,
            f"purchase {made.purchase_id} of payment {bought.payment_id} revoked (dispute_lost)",
        ),
        (
            "kc_tasks.worker.revocations",
            logging.INFO,
            f"payment {early.payment_id} revoked (refund) before it made a purchase: it never will make an active one",
        ),
    ]


def test_the_revocation_returns_the_event_it_wrote(engine: Engine, guard: IndexGuard, sql) -> None:
    p = order()
    create_purchase(engine, guard, p)
    outcome = revoke(engine, refund(p.payment_id))
    assert [(e.id, e.type) for e in outcome.events] == [
        (event_id, "purchase.revoked")
        for (event_id,) in sql("SELECT id::text FROM event_outbox WHERE type = 'purchase.revoked'")
    ], "the task publishes what the outcome carries"


def test_a_recorded_revocation_whose_purchase_is_still_active_is_finished(
    engine: Engine, guard: IndexGuard, sql
) -> None:
    """A revocation recorded by a worker that deactivated in a second transaction, and did not
    get there: the next delivery of it makes the purchase inactive, and says it changed something."""
    p = order()
    made = create_purchase(engine, guard, p)
    sql("INSERT INTO revocations (payment_id, reason) VALUES (%s, 'refund')", (p.payment_id,))
    assert revoke(engine, refund(p.payment_id)).as_result() == {"purchase_id": made.purchase_id, "revoked": True}
    assert active(sql, p.payment_id) == [False]
    assert len(revoked_events(sql, p.payment_id)) == 1


def test_an_unreachable_database_is_retryable_and_named_without_its_password() -> None:
    engine = db.make_engine(normalize_database_url("postgresql://kc:s3cret@127.0.0.1:1/shop"))
    with pytest.raises(errors.DatabaseUnavailable) as caught:
        revoke(engine, refund("pay_1"))
    assert "127.0.0.1:1/shop" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_the_refund_of_a_duplicate_payment_leaves_the_held_purchase_active(
    engine: Engine, guard: IndexGuard, sql
) -> None:
    held = order()
    duplicate = order(held.student_id, held.course_id)
    create_purchase(engine, guard, held)
    assert create_purchase(engine, guard, duplicate).duplicate_of is not None
    outcome = revoke(engine, refund(duplicate.payment_id))
    assert outcome.purchase_id is None and outcome.events == ()
    assert active(sql, held.payment_id) == [True]


def test_after_a_refund_a_new_payment_buys_the_course_again(engine: Engine, guard: IndexGuard, sql) -> None:
    first = order()
    create_purchase(engine, guard, first)
    revoke(engine, refund(first.payment_id))
    second = order(first.student_id, first.course_id)
    assert create_purchase(engine, guard, second).created
    assert active(sql, second.payment_id) == [True]


def test_revocation_works_without_the_index(engine: Engine, guard: IndexGuard, sql) -> None:
    sql("DROP INDEX unique_active_purchase")
    p = order()
    revoke(engine, refund(p.payment_id))
    assert create_purchase(engine, guard, p).created
    assert active(sql, p.payment_id) == [False]
    q = order()
    create_purchase(engine, guard, q)
    assert revoke(engine, refund(q.payment_id)).revoked
    assert active(sql, q.payment_id) == [False]


def test_concurrent_refunds_and_captures_never_leave_an_active_purchase(engine: Engine, guard: IndexGuard, sql) -> None:
    payments = [order() for _ in range(30)]
    errors: list[BaseException] = []

    def capture(p: PurchaseKwargs) -> None:
        try:
            create_purchase(engine, guard, p)
        except BaseException as exc:
            errors.append(exc)

    def refund_it(p: PurchaseKwargs) -> None:
        try:
            revoke(engine, refund(p.payment_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f, args=(p,)) for p in payments for f in (capture, refund_it)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sql("SELECT count(*) FROM student_course_purchases WHERE is_active") == [(0,)]
    assert sql("SELECT count(*) FROM student_course_purchases") == [(30,)]
    per_payment = sql(
        "SELECT data->>'payment_id', count(*) FROM event_outbox WHERE type = 'purchase.revoked' GROUP BY 1"
    )
    assert all(n == 1 for _, n in per_payment)


def test_revoke_purchase_task_returns_the_contract_result(celery_app: Celery, seen: Seen, app_database: str) -> None:
    order_kwargs = kwargs()
    made = celery_app.send_task("kc_tasks.create_purchase", kwargs=order_kwargs, queue="purchases").id
    seen.wait(made)
    revocation = {"payment_id": order_kwargs["payment_id"], "reason": "refund", "refund_id": "rfnd_x"}
    first = celery_app.send_task("kc_tasks.revoke_purchase", kwargs=revocation, queue="purchases").id
    seen.wait(first)
    again = celery_app.send_task("kc_tasks.revoke_purchase", kwargs=revocation, queue="purchases").id
    seen.wait(again)
    purchase_id = seen.results[made]["purchase_id"]
    assert seen.results[first] == {"purchase_id": purchase_id, "revoked": True}
    assert seen.results[again] == {"purchase_id": purchase_id, "revoked": False}
    assert run_sql(app_database, "SELECT is_active FROM student_course_purchases") == [(False,)]


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"payment_id": "pay_1"}, "reason: is required"),
        ({"payment_id": "", "reason": "refund"}, "payment_id"),
        ({"payment_id": "pay_1", "reason": "x" * 65}, "reason"),
        ({"payment_id": "pay_1", "reason": "refund", "amount": 1}, "amount: is not a revoke_purchase kwarg"),
    ],
)
def test_a_bad_revocation_fails_at_once_without_retries(
    celery_app: Celery,
    seen: Seen,
    bad: dict[str, Any],
    named: str,
) -> None:
    task_id = celery_app.send_task("kc_tasks.revoke_purchase", kwargs=bad, queue="purchases").id
    seen.wait(task_id)
    assert type(seen.failures[task_id]).__name__ == "InvalidRevocation"
    assert named in str(seen.failures[task_id])
    assert seen.retries == []
