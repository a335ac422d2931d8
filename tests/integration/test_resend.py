"""Beat's resend sweep on real PostgreSQL and RabbitMQ (kc_tasks.payments.reconciler.resend_waiting): an
inbox event of any provider enqueued long enough ago whose task has no outcome is sent again
under its task id; one with an outcome (in the database, a dead letter waiting, a dead letter
purged) never is."""

from __future__ import annotations

import json
import uuid

from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks.core import names
from kc_tasks.payments import inbox
from kc_tasks.payments.reconciler import resend_waiting
from tests.builders import purchase_row
from tests.services import take_queued as queued

HOUR, WINDOW = 3600, 259200


def stored(sql, event_id: str, kind: str, data: dict, age: str = "1 hour") -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"id": event_id, "type": kind, "data": data})
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body, received_at) "
        f"VALUES ('kc', %s, %s, %s, 'enqueued', %s, now() - interval '{age}')",
        (event_id, kind, data["payment_id"], body),
    )


def paid(payment_id: str) -> dict:
    return {
        "payment_id": payment_id,
        "student_id": str(uuid.uuid4()),
        "course_id": str(uuid.uuid4()),
        "amount_cents": 4999,
        "currency": "INR",
    }


def test_only_events_without_an_outcome_are_sent_again(engine: Engine, broker: Celery, sql) -> None:
    stored(sql, "evt_lost", "payment.succeeded", paid("pay_lost"))
    stored(sql, "evt_done", "payment.succeeded", paid("pay_done"))
    purchase_row(sql, "pay_done")
    stored(sql, "evt_refund_lost", "payment.refunded", {"payment_id": "pay_done"})
    stored(sql, "evt_young", "payment.succeeded", paid("pay_young"), age="10 seconds")
    stored(sql, "evt_too_old", "payment.succeeded", paid("pay_too_old"), age="4 days")
    stored(sql, "evt_dead", "payment.succeeded", paid("pay_dead"))
    stored(sql, "evt_purged", "payment.succeeded", paid("pay_purged"))
    sql(
        "INSERT INTO purged_dead_letters (task_id, task, payment_id) VALUES (%s, 'kc_tasks.create_purchase', %s)",
        (inbox.task_id_for("pay_purged"), "pay_purged"),
    )

    sent = resend_waiting(engine, broker, HOUR / 4, WINDOW, lambda: {inbox.task_id_for("pay_dead")})

    assert sent == ["kc evt_lost", "kc evt_refund_lost"]
    assert sorted((name, task_id) for name, task_id, _ in queued()) == sorted(
        [
            (names.CREATE_PURCHASE, inbox.task_id_for("pay_lost")),
            (names.REVOKE_PURCHASE, inbox.task_id_for("pay_done", names.REVOKE_PURCHASE)),
        ]
    )


def test_without_the_dead_letters_nothing_undecided_is_sent(engine: Engine, broker: Celery, sql) -> None:
    stored(sql, "evt_lost", "payment.succeeded", paid("pay_lost"))

    def unreadable() -> set[str]:
        raise ConnectionError("broker away")

    assert resend_waiting(engine, broker, HOUR / 4, WINDOW, unreadable) == []
    assert queued() == []
