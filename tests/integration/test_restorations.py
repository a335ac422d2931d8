"""`kc-tasks payment restore` on real PostgreSQL: the payment's revoked purchase active again
with its purchase.restored event, a second active purchase of the course never (a rival
purchase in flight included), and only the tables' owner may do it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy.engine import Engine

from kc_tasks.core import errors
from kc_tasks.store import roles
from kc_tasks.store.index_guard import IndexGuard
from kc_tasks.worker import restorations
from kc_tasks.worker.purchases import create_purchase
from kc_tasks.worker.revocations import revoke
from tests.builders import refund
from tests.builders import sample_order as order
from tests.harness import kc
from tests.services import active, hold_pairs, run_sql


def revoked_purchase(engine: Engine, guard: IndexGuard) -> tuple[str, str, str]:
    """(payment, student, course) of a purchase its refund revoked."""
    p = order()
    create_purchase(engine, guard, p)
    revoke(engine, refund(p.payment_id, "rfnd_failed_later"))
    return p.payment_id, p.student_id, p.course_id


def test_restore_makes_the_purchase_active_with_its_event_and_a_later_refund_revokes_again(
    engine: Engine,
    guard: IndexGuard,
    sql,
) -> None:
    payment, _, _ = revoked_purchase(engine, guard)

    restored = restorations.restore(engine, payment, "refund failed: card closed")

    assert active(sql, payment) == [True]
    assert (restored.revocation_reason, restored.refund_id) == ("refund", "rfnd_failed_later")
    assert restored.event.type == "purchase.restored"
    assert restored.event.data["reason"] == "refund failed: card closed" and restored.event.data["is_active"]
    assert sql("SELECT count(*) FROM revocations") == [(0,)]
    assert sql("SELECT payment_id, reason, revocation_reason, refund_id FROM restorations") == [
        (payment, "refund failed: card closed", "refund", "rfnd_failed_later")
    ]
    assert sql("SELECT revoked_at FROM payments WHERE payment_id = %s", (payment,)) == [(None,)]
    # A new revocation of that payment (the refund made again, a dispute lost) revokes it again.
    again = revoke(engine, refund(payment, "rfnd_second"))
    assert again.revoked and active(sql, payment) == [False]


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ("active", "is active: nothing to restore"),
        ("never revoked", "is inactive but was never revoked"),
        ("no purchase", "made no purchase: nothing to restore"),
        ("duplicate", "made no purchase: it was a duplicate payment of course"),
        ("held", "already holds course"),
        ("no reason", "--reason must say why"),
    ],
)
def test_restore_refuses_with_a_clear_message_and_changes_nothing(
    engine: Engine,
    guard: IndexGuard,
    sql,
    state: str,
    says: str,
) -> None:
    payment, student, course = revoked_purchase(engine, guard)
    reason = "x"
    if state == "active":
        payment = order().payment_id
        create_purchase(engine, guard, order(payment=payment))
    elif state == "never revoked":
        sql("DELETE FROM revocations")
    elif state == "no purchase":
        payment = "pay_unknown"
    elif state == "duplicate":
        create_purchase(engine, guard, order(student, course, "pay_holder"))
        create_purchase(engine, guard, order(student, course, "pay_duplicate"))
        payment = "pay_duplicate"
    elif state == "held":
        create_purchase(engine, guard, order(student, course, "pay_bought_again"))
    elif state == "no reason":
        reason = "  "
    before = sql("SELECT payment_id, is_active, updated_at FROM student_course_purchases ORDER BY payment_id")

    with pytest.raises(errors.RestoreRefused, match=says):
        restorations.restore(engine, payment, reason)

    assert sql("SELECT payment_id, is_active, updated_at FROM student_course_purchases ORDER BY payment_id") == before
    assert sql("SELECT count(*) FROM event_outbox WHERE type = 'purchase.restored'") == [(0,)]
    assert sql("SELECT count(*) FROM restorations") == [(0,)]


def test_a_purchase_of_the_course_in_flight_wins_or_loses_but_never_both(
    engine: Engine,
    guard: IndexGuard,
    database_url: str,
    sql,
) -> None:
    """A rival purchase of the pair inserted, not yet committed: the restore waits on
    unique_active_purchase. Committed, it stands and the restore is refused; rolled back, the
    restore goes through. Either way one active purchase."""
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    for outcome in ("commit", "rollback"):
        payment, student, course = revoked_purchase(engine, guard)
        rival = hold_pairs(database_url, [{"student_id": student, "course_id": course}])
        result: list[object] = []
        thread = threading.Thread(target=_try_restore, args=(engine, payment, result))
        thread.start()
        assert _eventually(lambda: sql(waiting) == [(1,)]), "the restore waits for the rival"
        getattr(rival, outcome)()
        rival.close()
        thread.join(30)

        actives = sql(
            "SELECT count(*) FROM student_course_purchases WHERE student_id = %s AND course_id = %s AND is_active",
            (student, course),
        )
        assert actives == [(1,)], outcome
        if outcome == "commit":
            assert isinstance(result[0], errors.RestoreRefused) and "already holds course" in str(result[0])
            assert active(sql, payment) == [False]
        else:
            assert isinstance(result[0], restorations.Restored) and active(sql, payment) == [True]


def _try_restore(engine: Engine, payment: str, result: list[object]) -> None:
    try:
        result.append(restorations.restore(engine, payment, "refund failed"))
    except errors.RestoreRefused as exc:
        result.append(exc)


def _eventually(condition: Callable[[], bool]) -> bool:
    from tests.harness import wait_until

    return wait_until(condition, timeout=30, interval=0.05)


def test_only_the_tables_owner_may_restore(
    roles_db: str,
    login: Callable[..., str],
    engine: Engine,
    guard: IndexGuard,
    sql,
) -> None:
    payment, _, _ = revoked_purchase(engine, guard)

    restore = ("payment", "restore", payment, "--reason", "refund failed")
    as_worker = kc(*restore, DATABASE_URL=login(roles.WORKER))
    as_owner = kc(*restore, DATABASE_URL=login(roles.OWNER))

    assert as_worker.returncode == 1 and "runs as the tables' owner" in as_worker.stderr, as_worker.stderr
    assert as_owner.returncode == 0 and "is active again" in as_owner.stdout, as_owner.stderr
    assert active(sql, payment) == [True]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run_sql(login(roles.WEB), "DELETE FROM revocations")
