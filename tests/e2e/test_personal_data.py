"""A buyer's personal data, sent by Razorpay and Stripe with every payment, goes nowhere but
the stored body of its event, and leaves that too once the body is redacted.

Real web and worker processes on RabbitMQ and PostgreSQL: bodies full of personal data (email,
phone, UPI address, card, name, address) through every path — purchases, a repeat, ignored and
unmapped events, refunds, lost disputes, a purchase the database refuses (a dead letter), a
payment found by reconciliation —
then a search of the logs (JSON and text), the dead-letter queue, the events on kc.events, the
task events Flower shows, and every table of the database."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kombu import Connection, Exchange, Queue

from tests import provider_api_server as api
from tests import provider_samples as s
from tests.builders import SECRETS
from tests.harness import Web, Workers, kc, post_razorpay, post_stripe, wait_until
from tests.services import purchases_of, run_sql

# A purchase of this amount is refused by a constraint the test adds: its task dead-letters.
REFUSED_AMOUNT = 1234


class Tap:
    """A queue of its own bound to an exchange, keeping every message's raw body."""

    def __init__(self, broker_url: str, exchange: Exchange) -> None:
        self.queue = Queue(f"test-tap-{uuid.uuid4().hex[:8]}", exchange, routing_key="#", auto_delete=True)
        self.bodies: list[str] = []
        self._url = broker_url
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        with Connection(self._url) as conn, conn.Consumer(self.queue, callbacks=[self._keep], accept=["json"]):
            self._ready.set()
            while not self._stop.is_set():
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass

    def _keep(self, body: Any, message: Any) -> None:
        raw = message.body
        self.bodies.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        message.ack()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def found_in(text: str) -> list[str]:
    """The personal values in `text`, as written or JSON-escaped."""
    return [p for p in s.PERSONAL if p in text or json.dumps(p)[1:-1] in text]


def database_text(database_url: str) -> str:
    """Every row of every table, as text."""
    tables = [t for (t,) in run_sql(database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    return "\n".join(
        str(run_sql(database_url, f"SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {table} t")[0][0])
        for table in tables
    )


def ids(listing: str) -> list[str]:
    return [json.loads(line)["id"] for line in listing.splitlines()]


def new_pair() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


def card_order(student: str, course: str, amount: int = 49900) -> dict[str, Any]:
    payment = s.razorpay_payment(amount=amount, method="card")
    return s.razorpay_event("order.paid", payment, s.razorpay_order(payment, student, course))


def test_personal_data_reaches_no_log_dead_letter_event_or_task_and_leaves_the_inbox(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web]
) -> None:
    run_sql(
        database_url,
        "ALTER TABLE student_course_purchases ADD CONSTRAINT refuses_one_amount "
        f"CHECK (amount_cents <> {REFUSED_AMOUNT})",
    )
    events = Tap(rabbitmq_url, Exchange("kc.events", type="topic", durable=True))
    # What Flower shows of each task (its arguments) comes from these task events.
    task_events = Tap(rabbitmq_url, Exchange("celeryev", type="topic"))
    try:
        worker = workers.start(database_url, rabbitmq_url)
        web = webs(database_url, rabbitmq_url, KC_LOG_FORMAT="json", **SECRETS)
        student, course = str(uuid.uuid4()), str(uuid.uuid4())

        # Razorpay: a card payment bought, repeated, refunded; a UPI payment lost to a dispute;
        # one the database refuses; one whose order names only the student.
        bought = card_order(student, course)
        payment = bought["payload"]["payment"]["entity"]
        refunded = dict(payment, amount_refunded=payment["amount"], refund_status="full", status="refunded")
        disputed = s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()))
        lost = disputed["payload"]["payment"]["entity"]
        refused = card_order(str(uuid.uuid4()), str(uuid.uuid4()), REFUSED_AMOUNT)
        answers = [
            post_razorpay(web, bought, "evt_rzp_paid"),
            post_razorpay(web, bought, "evt_rzp_paid"),
            post_razorpay(web, s.razorpay_event("payment.captured", payment), "evt_rzp_captured"),
            post_razorpay(web, disputed, "evt_rzp_paid_2"),
            post_razorpay(web, refused, "evt_rzp_refused"),
            post_razorpay(web, s.razorpay_paid(student, None), "evt_rzp_unmapped"),
        ]
        # Stripe: a Checkout Session and its PaymentIntent, refunded; a PaymentIntent lost to a
        # dispute; a session whose metadata names a student that is no UUID.
        intent, other = s.new_intent(), s.new_intent()
        stripe_student, stripe_course = str(uuid.uuid4()), str(uuid.uuid4())
        answers += [
            post_stripe(
                web,
                s.stripe_event("checkout.session.completed", s.stripe_session(intent, stripe_student, stripe_course)),
            ),
            post_stripe(
                web, s.stripe_event("payment_intent.succeeded", s.stripe_intent(intent, stripe_student, stripe_course))
            ),
            post_stripe(web, s.stripe_event("payment_intent.succeeded", s.stripe_intent(other, *new_pair()))),
            post_stripe(
                web, s.stripe_event("checkout.session.completed", s.stripe_session(s.new_intent(), "x", course))
            ),
        ]
        assert [a.status_code for a in answers] == [200] * len(answers)
        assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(True, 49900, "INR")], timeout=30)
        assert wait_until(lambda: purchases_of(database_url, lost["id"]) == [(True, 49900, "INR")], timeout=30)
        assert wait_until(lambda: purchases_of(database_url, other) == [(True, 99900, "INR")], timeout=30)
        answers = [
            post_razorpay(web, s.razorpay_event("refund.processed", refunded, refund=s.razorpay_refund(payment)), "r1"),
            post_razorpay(web, s.razorpay_event("payment.dispute.lost", lost, dispute=s.razorpay_dispute(lost)), "d1"),
            post_stripe(web, s.stripe_event("charge.refunded", s.stripe_charge(intent))),
            post_stripe(web, s.stripe_event("charge.dispute.closed", s.stripe_dispute(other, "lost"))),
        ]
        assert [a.status_code for a in answers] == [200] * len(answers)
        for revoked in (payment["id"], lost["id"], intent, other):
            assert wait_until(lambda p=revoked: [r[0] for r in purchases_of(database_url, p)] == [False], timeout=30)

        env = {"DATABASE_URL": database_url, "CELERY_BROKER_URL": rabbitmq_url}
        # A payment whose webhook never came: reconciliation stores the API's objects.
        with api.serve() as provider:
            missed = provider.razorpay_paid(int(time.time()) - 3600, *new_pair())
            found = kc(
                "reconcile",
                "--provider",
                "razorpay",
                KC_RAZORPAY_KEY_ID=api.RAZORPAY_KEY_ID,
                KC_RAZORPAY_KEY_SECRET=api.RAZORPAY_KEY_SECRET,
                KC_RAZORPAY_API_URL=provider.url,
                **env,
            )
        assert found.returncode == 0, found.stderr
        assert wait_until(lambda: purchases_of(database_url, missed["id"]) == [(True, 49900, "INR")], timeout=30)
        assert wait_until(lambda: kc("dlq", "list", "--json", **env).stdout.count("\n") == 1, timeout=30)
        letters = kc("dlq", "list", "--json", **env)
        assert refused["payload"]["payment"]["entity"]["id"] in letters.stdout, "the refused purchase is a dead letter"
        assert wait_until(lambda: len(events.bodies) >= 6, timeout=30), "3 purchases created, 3 revoked, at least"
        stored = database_text(database_url)
        assert found_in(stored) == list(s.PERSONAL), "the inbox keeps the bodies whole for KC_INBOX_BODY_DAYS"

        inbox = run_sql(database_url, "SELECT count(*) FROM payment_events")[0][0]
        redact = kc("inbox", "redact", "--older-than", "0s", **env)
        assert (redact.returncode, redact.stdout) == (0, f"redacted {inbox} event(s)\n"), redact.stderr
        letters_after = kc("dlq", "list", "--json", **env)
        assert ids(letters_after.stdout) == ids(letters.stdout), "reading the DLQ to redact left it as it was"
    finally:
        events.close()
        task_events.close()

    worker_log, web_log = worker.text(), web.text()
    assert any(line.startswith("{") and json.loads(line).get("message") for line in web_log.splitlines())
    assert "grants nothing" in worker_log + web_log, "an unmapped event is logged, with its why"
    assert any(payment["id"] in body and "student_id" in body for body in task_events.bodies), "task arguments"
    everywhere = {
        "database": database_text(database_url),
        "web log (JSON)": web_log,
        "worker log (text)": worker_log,
        "dead letters": letters.stdout,
        "kc.events": "\n".join(events.bodies),
        "task events (Flower)": "\n".join(task_events.bodies),
        "commands' output": redact.stdout + redact.stderr + letters.stderr + found.stdout + found.stderr,
    }
    assert {where: found_in(text) for where, text in everywhere.items() if found_in(text)} == {}
