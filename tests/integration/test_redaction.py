"""The inbox's redaction on a real PostgreSQL: old final events reduced to the fields kc_tasks
reads, recent or waiting ones untouched, in bounded batches that never wait on a lock; and
everything that reads a body (the story, replays, reconciliation) working on the redacted one."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery
from celery.signals import task_failure, task_success
from sqlalchemy.engine import Engine

from kc_tasks.core import names
from kc_tasks.core.payload import parse_purchase
from kc_tasks.payments import inbox, redaction, story
from kc_tasks.providers import razorpay, stripe
from kc_tasks.store.index_guard import IndexGuard
from kc_tasks.worker.purchases import create_purchase
from tests import provider_api_server as api
from tests import provider_samples as s
from tests.harness import Seen
from tests.harness import kc as kc_command
from tests.harness import reconcile as run
from tests.services import AMQP
from tests.services import take_queued as queued

DAY = 86400.0
KEEP = 30 * DAY
STUDENT, COURSE = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture
def provider_api() -> Iterator[api.StandIn]:
    with api.serve() as served:
        yield served


@pytest.fixture
def seen() -> Iterator[Seen]:
    watched = Seen()
    task_success.connect(watched.on_success, weak=False)
    task_failure.connect(watched.on_failure, weak=False)
    yield watched
    task_success.disconnect(watched.on_success)
    task_failure.disconnect(watched.on_failure)


def store(sql: Any, provider: str, event_id: str, status: str, body: dict[str, Any], days_ago: float) -> None:
    """An event as the inbox stores it, received `days_ago` days ago."""
    raw = json.dumps(body)
    event = inbox.parse(provider, raw.encode(), event_id)
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body, received_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, now() - make_interval(secs => %s))",
        (provider, event_id, event.type, event.payment_id, status, raw, days_ago * DAY),
    )


def bodies(sql: Any) -> dict[str, tuple[str, bool]]:
    """event id -> (body, whether it is stamped redacted)."""
    rows = sql("SELECT event_id, body, body_redacted_at IS NOT NULL FROM payment_events")
    return {event_id: (body, stamped) for event_id, body, stamped in rows}


def personal(text: str) -> list[str]:
    return [p for p in s.PERSONAL if p in text]


def order_paid(payment_id: str) -> dict[str, Any]:
    return s.razorpay_paid(STUDENT, COURSE, payment_id)


def purchase_row(sql: Any, payment_id: str) -> None:
    sql(
        "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), %s, 49900, 'INR')",
        (payment_id,),
    )


def test_old_final_events_are_redacted_recent_and_waiting_ones_never(engine: Engine, sql: Any) -> None:
    refunded = dict(s.razorpay_payment("pay_refund"), amount_refunded=49900, refund_status="full")
    pi_dead = s.new_intent()
    unmapped = s.stripe_event("payment_intent.succeeded", s.stripe_intent("pi_u", STUDENT, "x"))
    dead = s.stripe_event("payment_intent.succeeded", s.stripe_intent(pi_dead, STUDENT, COURSE))
    old = {
        # final: its purchase is made; stored ignored, unmapped, invalid; a refund done; dead-lettered
        "done": ("razorpay", "enqueued", order_paid("pay_done")),
        "ignored": ("razorpay", "ignored", s.razorpay_event("payment.captured", s.razorpay_payment("pay_cap"))),
        "unmapped": ("stripe", "unmapped", unmapped),
        "invalid": ("kc", "invalid", {"id": "e", "type": "payment.succeeded", "data": {"email": s.EMAIL}}),
        "revoked": ("stripe", "enqueued", s.stripe_event("charge.refunded", s.stripe_charge("pi_revoked"))),
        "dead": ("stripe", "enqueued", dead),
        # waiting: received; enqueued without an outcome; a refund whose purchase is made but not yet revoked
        "received": ("razorpay", "received", order_paid("pay_received")),
        "waiting": ("razorpay", "enqueued", order_paid("pay_waiting")),
        "refund waiting": ("razorpay", "enqueued", s.razorpay_event("refund.processed", refunded)),
    }  # fmt: skip
    for event_id, (source, status, body) in old.items():
        store(sql, source, event_id, status, body, days_ago=40)
    store(sql, "razorpay", "recent", "ignored", s.razorpay_event("payment.failed", s.razorpay_payment()), days_ago=29)
    purchase_row(sql, "pay_done")
    purchase_row(sql, "pay_refund")
    sql("INSERT INTO revocations (payment_id, reason) VALUES ('pi_revoked', 'refund')")
    before = bodies(sql)
    asked: list[int] = []

    def dlq() -> set[str]:
        asked.append(1)
        return {inbox.task_id_for(pi_dead)}

    assert redaction.redact_final(engine, KEEP, dlq) == 6
    after = bodies(sql)
    final = {"done", "ignored", "unmapped", "invalid", "revoked", "dead"}
    for event_id, (body, stamped) in after.items():
        if event_id in final:
            assert stamped and personal(body) == [], event_id
            assert body == redaction.redacted(old[event_id][0], event_id, before[event_id][0])
        else:
            assert (body, stamped) == before[event_id], f"{event_id} is untouched"
            assert personal(body), event_id
    assert asked == [1], "the DLQ is read once, only because some enqueued event has no outcome"

    stamps = sql("SELECT event_id, body_redacted_at FROM payment_events ORDER BY event_id")
    assert redaction.redact_final(engine, KEEP, dlq) == 0, "a second run changes nothing"
    assert bodies(sql) == after
    assert sql("SELECT event_id, body_redacted_at FROM payment_events ORDER BY event_id") == stamps


def test_without_the_dlq_an_enqueued_event_without_outcome_waits(
    engine: Engine, sql: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store(sql, "razorpay", "waiting", "enqueued", order_paid("pay_waiting"), days_ago=40)
    store(sql, "razorpay", "ignored", "ignored", s.razorpay_event("payment.failed", s.razorpay_payment()), 40)

    def unreachable() -> set[str]:
        raise ConnectionRefusedError("broker down")

    with caplog.at_level(logging.WARNING, logger="kc_tasks"):
        assert redaction.redact_final(engine, KEEP, unreachable) == 1
    assert "dead letters not read (ConnectionRefusedError: broker down)" in caplog.text
    assert {k: v[1] for k, v in bodies(sql).items()} == {"waiting": False, "ignored": True}
    assert redaction.redact_final(engine, KEEP) == 0, "without a DLQ reader: left for a run that has one"


def test_a_large_inbox_goes_in_bounded_batches_that_never_wait_and_block_nothing(
    engine: Engine, database_url: str, sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built so that waiting would show: a row held locked by another transaction, and the
    redactor paused inside its third batch while others write to the inbox and run it too."""
    total, batch = 1000, 100
    body = json.dumps(s.razorpay_event("payment.failed", s.razorpay_payment("pay_many")))
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body, received_at) "
        "SELECT 'razorpay', 'evt_' || lpad(n::text, 5, '0'), 'payment.failed', 'pay_many', 'ignored', %s, "
        "now() - interval '40 days' FROM generate_series(1, %s) n",
        (body, total),
    )
    store(sql, "razorpay", "evt_waiting", "received", order_paid("pay_received"), days_ago=40)
    url = database_url.replace("+psycopg", "")
    held = psycopg.connect(url)
    held.execute("SELECT 1 FROM payment_events WHERE event_id = 'evt_00500' FOR UPDATE")

    paused, go = threading.Event(), threading.Event()
    calls = 0
    real = redaction.redacted

    def pausing(source: str, event_id: str, text: str) -> str:
        nonlocal calls
        if threading.current_thread().name == "redactor":
            calls += 1
            if calls == 2 * batch + 1:  # the third batch's first row: its rows are locked now
                paused.set()
                assert go.wait(60)
        return real(source, event_id, text)

    monkeypatch.setattr(redaction, "redacted", pausing)
    done: list[int] = []
    redactor = threading.Thread(
        target=lambda: done.append(redaction.redact_final(engine, KEEP, batch=batch)), name="redactor"
    )
    redactor.start()
    try:
        assert paused.wait(60), "the redactor went past the row held by another transaction"
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SET lock_timeout = '2s'")  # a wait would fail the statement
            assert other.execute(
                "SELECT count(*) FROM payment_events WHERE body_redacted_at IS NOT NULL"
            ).fetchone() == (2 * batch,), "each batch is committed on its own"
            with other.transaction():
                free = other.execute(
                    "SELECT count(*) FROM (SELECT FROM payment_events FOR UPDATE SKIP LOCKED) free"
                ).fetchone()
            assert free == (total + 1 - batch - 1,), "the redactor holds one batch of rows, no more"
            # What the webhooks do meanwhile: store new events, mark one enqueued, meet a repeat.
            other.execute(
                "INSERT INTO payment_events (provider, event_id, type, status, body) "
                "VALUES ('stripe', 'evt_new', 'payment_intent.succeeded', 'received', '{}')"
            )
            other.execute("UPDATE payment_events SET status = 'enqueued' WHERE event_id = 'evt_waiting'")
            repeat = other.execute(
                "INSERT INTO payment_events (provider, event_id, type, status, body) "
                "VALUES ('razorpay', 'evt_00250', 'payment.failed', 'ignored', '{}') ON CONFLICT DO NOTHING"
            )
            assert repeat.rowcount == 0
        second = redaction.redact_final(engine, KEEP, batch=batch)
        assert second == total - 2 * batch - batch - 1, "a second run at once skips the locked rows, never waits"
    finally:
        go.set()
        redactor.join(60)
    assert done == [3 * batch], "the paused run finishes its batch; the second run did the rest"
    assert sql("SELECT event_id FROM payment_events WHERE body_redacted_at IS NULL ORDER BY 1") == [
        ("evt_00500",),
        ("evt_new",),
        ("evt_waiting",),
    ]
    held.rollback()
    held.close()
    assert redaction.redact_final(engine, KEEP, batch=batch) == 1, "the held row is left for the next run"


def test_the_story_replays_and_reconciliation_work_on_a_redacted_body(
    engine: Engine,
    broker: Celery,
    sql: Any,
    provider_api: api.StandIn,
) -> None:
    body = s.encode(s.razorpay_paid(STUDENT, COURSE, "pay_story", extra_notes={"coupon": "DIWALI"}))
    event = razorpay.parse(body, "evt_story")
    receipt = inbox.receive(engine, broker, event, body)
    (sent,) = queued()
    create_purchase(engine, IndexGuard(300), parse_purchase(sent[2]))
    intent = s.new_intent()
    came = provider_api.stripe_event(
        "payment_intent.succeeded", s.stripe_intent(intent, STUDENT, COURSE), int(time.time())
    )
    stripe_body = s.encode(came)
    inbox.receive(engine, broker, stripe.parse(stripe_body), stripe_body)
    queued()
    sql("UPDATE payment_events SET received_at = now() - interval '40 days'")
    told = story.tell(engine, broker, "pay_story")

    assert redaction.redact_final(engine, KEEP) == 1, "the Stripe event has no outcome: it waits"
    assert personal(sql("SELECT body FROM payment_events WHERE event_id = 'evt_story'")[0][0]) == []
    again = story.tell(engine, broker, "pay_story")
    assert again.verdict == told.verdict == story.GRANTED
    assert [e.text for e in again.entries if "redacted" not in e.text] == [e.text for e in told.entries]
    assert any("body redacted to the fields kc_tasks reads" in e.text for e in again.entries)

    assert inbox.replay(engine, broker, "razorpay", ["evt_story"]) == {"evt_story": names.ENQUEUED}
    (replayed,) = queued()
    assert replayed[:2] == (names.CREATE_PURCHASE, receipt.task_id)
    assert replayed[2] == {k: v for k, v in sent[2].items() if k != "metadata"}, "the order's other notes are gone"

    purchase_row(sql, intent)
    assert redaction.redact_final(engine, KEEP) == 1
    summary = run(engine, broker, provider_api, "stripe")
    assert (summary.seen, summary.already_fine, summary.purchases_enqueued) == (1, 1, 0)
    assert queued() == [] and sql("SELECT count(*) FROM payment_events WHERE provider = 'stripe'") == [(1,)]


def test_the_command_redacts_by_hand(database_url: str, sql: Any) -> None:
    store(sql, "kc", "evt_kc", "invalid", {"id": "evt_kc", "type": "payment.succeeded", "data": {"x": s.EMAIL}}, 2)
    store(sql, "razorpay", "evt_new", "ignored", s.razorpay_event("payment.failed", s.razorpay_payment()), 0.5)

    default = kc_command("inbox", "redact", DATABASE_URL=database_url, CELERY_BROKER_URL=AMQP)
    assert (default.returncode, default.stdout) == (0, "redacted 0 event(s)\n"), default.stderr
    by_hand = kc_command("inbox", "redact", "--older-than", "1d", DATABASE_URL=database_url, CELERY_BROKER_URL=AMQP)
    assert (by_hand.returncode, by_hand.stdout) == (0, "redacted 1 event(s)\n"), by_hand.stderr
    assert bodies(sql)["evt_kc"] == ('{"data":{"x":null},"id":"evt_kc","type":"payment.succeeded"}', True)


def test_beats_task_redacts_what_kc_inbox_body_days_allows(
    celery_app: Celery,
    seen: Seen,
    app_database: str,
) -> None:
    from tests.services import run_sql

    def put(event_id: str, days: int) -> None:
        run_sql(
            app_database,
            "INSERT INTO payment_events (provider, event_id, type, status, body, received_at) "
            "VALUES ('stripe', %s, 'customer.created', 'ignored', %s, now() - make_interval(days => %s))",
            (event_id, json.dumps({"id": event_id, "data": {"object": {"email": s.EMAIL}}}), days),
        )

    from celeryconfig import beat_schedule

    assert beat_schedule["redact-inbox"]["task"] == "kc_tasks.redact_inbox"
    assert beat_schedule["redact-inbox"]["schedule"] == 3600.0, "hourly: a body outlives its days by an hour at most"
    put("evt_31_days", 31)
    put("evt_29_days", 29)
    task_id = celery_app.send_task("kc_tasks.redact_inbox", queue="purchases").id
    seen.wait(task_id)
    assert seen.results[task_id] == {"redacted": 1}
    assert run_sql(app_database, "SELECT event_id, body FROM payment_events WHERE body_redacted_at IS NOT NULL") == [
        ("evt_31_days", '{"data":{"object":{}},"id":"evt_31_days"}')
    ]
