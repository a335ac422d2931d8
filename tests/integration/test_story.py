"""A payment's story, read from real PostgreSQL rows and a real dead-letter queue."""

from __future__ import annotations

import uuid

from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks import dead_letters, story


def test_a_duplicate_payment_tells_which_payment_holds_the_course(engine: Engine, broker: Celery, sql) -> None:
    student, course, held = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body, received_at) "
        "VALUES ('stripe', 'evt_1', 'payment_intent.succeeded', 'pi_second', 'enqueued', '{}', "
        "now() - interval '1 min')"
    )
    sql(
        "INSERT INTO duplicate_payments (payment_id, purchase_id, held_payment_id, student_id, course_id, "
        "amount_cents, currency) VALUES ('pi_second', %s, 'pi_first', %s, %s, 99900, 'INR')",
        (held, student, course),
    )
    told = story.tell(engine, broker, "pi_second")
    assert [e.source for e in told.entries] == ["inbox", "duplicate"], "oldest first"
    assert told.verdict == ("not granted: duplicate payment; the student already holds the course by payment pi_first")
    assert told.text().splitlines()[-1] == told.verdict


def test_a_dead_letter_carrying_the_payment_id_is_in_the_story(engine: Engine, broker: Celery, sql) -> None:
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body) "
        "VALUES ('kc', 'evt_dl', 'payment.succeeded', 'pay_dead', 'enqueued', '{}')"
    )
    letter = dead_letters.DeadLetter(
        task="kc_tasks.create_purchase",
        task_id=str(uuid.uuid4()),
        kwargs={"payment_id": "pay_dead", "currency": "rupees"},
        error_type="InvalidPurchase",
        error_message="currency: must be three upper-case letters",
        reason=dead_letters.PERMANENT,
    )
    dead_letters.publish(broker, letter)
    dead_letters.publish(broker, dead_letters.DeadLetter(None, None, {"payment_id": "other"}, "E", "m", "r"))

    told = story.tell(engine, broker, "pay_dead")
    assert [e.source for e in told.entries] == ["inbox", "dead letter"]
    assert letter.id in told.entries[1].text
    assert told.verdict.startswith("not granted: dead-lettered (InvalidPurchase: currency")
    assert dead_letters.depth(broker) == 2, "reading the story leaves the dead letters where they were"


def test_the_story_without_a_broker_still_answers(engine: Engine, sql) -> None:
    sql(
        "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'pay_ok', 100, 'INR')"
    )
    told = story.tell(engine, Celery(broker="amqp://guest:guest@127.0.0.1:1//"), "pay_ok")
    assert told.verdict == "granted"
    assert told.unread == ["dead letters: the broker is unreachable"]
    assert story.tell(engine, None, "pay_never_seen").verdict == "unknown"
