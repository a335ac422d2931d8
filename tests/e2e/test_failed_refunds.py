"""A refund that fails after it was processed, on both providers, through a real web process
and a real worker: the full refund revoked the purchase, then the refund failed, so the buyer
paid and has no course. The event is stored, logged as a warning, counted
(kc_refund_failures_total), and the payment's story says "refund failed: paid, no course"; an
operator gives the course back with `kc-tasks payment restore`, which records
`purchase.restored`, and refuses when the student holds the course by another payment.

The samples: Stripe's `charge.refund.updated` and `refund.failed` carry the Refund object, whose
`status` (failed or canceled), `payment_intent` and `failure_reason` kc_tasks reads; Razorpay's
`refund.failed` carries the refund entity (`status` failed, `payment_id`) and its payment."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests import provider_samples as s
from tests.builders import SECRETS, evt
from tests.harness import (
    Consumer,
    Web,
    Workers,
    courses_of,
    free_port,
    kc_tasks_command,
    post_razorpay,
    post_stripe,
    wait_until,
)
from tests.services import broker_idle, purchases_of, run_sql


def refund_failures(metrics_port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return {
        sample.labels["provider"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "kc_refund_failures_total"
    }


def warnings_about(web: Web, payment_id: str) -> list[str]:
    return [
        line for line in web.text().splitlines() if "WARNING" in line and "not paid back" in line and payment_id in line
    ]


def test_a_stripe_refund_that_failed_is_surfaced_and_the_operator_restores_the_course(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    workers.start(database_url, rabbitmq_url)
    port = free_port()
    web = webs(database_url, rabbitmq_url, KC_WEB_METRICS_PORT=str(port), **SECRETS)
    consumer = Consumer(rabbitmq_url)
    try:
        intent, student, course = s.new_intent(), str(uuid.uuid4()), str(uuid.uuid4())
        post_stripe(web, s.stripe_event("checkout.session.completed", s.stripe_session(intent, student, course)))
        assert wait_until(lambda: purchases_of(database_url, intent) == [(True, 99900, "INR")])
        post_stripe(web, s.stripe_event("charge.refunded", s.stripe_charge(intent)))
        assert wait_until(lambda: purchases_of(database_url, intent) == [(False, 99900, "INR")])

        refund = s.stripe_refund(intent, "failed", "expired_or_canceled_card")
        answers = [
            post_stripe(web, s.stripe_event("charge.refund.updated", refund)),
            post_stripe(web, s.stripe_event("refund.failed", refund)),
        ]

        assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "ignored")] * 2
        assert wait_until(lambda: broker_idle(rabbitmq_url))
        assert purchases_of(database_url, intent) == [(False, 99900, "INR")], "kc_tasks itself restores nothing"
        assert len(warnings_about(web, intent)) == 2
        assert f"kc-tasks payment restore {intent} --reason TEXT" in warnings_about(web, intent)[0]
        assert refund_failures(port) == {"razorpay": 0.0, "stripe": 2.0}
        told = kc_tasks_command(database_url, rabbitmq_url, "payment", intent).stdout.strip().splitlines()
        assert any(
            f"stripe event charge.refund.updated: ignored: refund failed: refund {refund['id']} of this payment "
            "failed after it was processed (expired_or_canceled_card)" in line
            for line in told
        ), told
        assert told[-1].startswith("not granted: refund failed: paid, no course (revoked (refund), then the refund")

        restored = kc_tasks_command(
            database_url, rabbitmq_url, "payment", "restore", intent, "--reason", "refund failed: card closed"
        )

        assert restored.returncode == 0, restored.stderr
        assert f"of payment {intent} is active again: student {student}, course {course}" in restored.stdout
        assert purchases_of(database_url, intent) == [(True, 99900, "INR")]
        assert courses_of(web, student) == [course]
        assert run_sql(
            database_url,
            "SELECT data->>'payment_id', data->>'reason', (data->>'is_active')::boolean FROM event_outbox "
            "WHERE type = 'purchase.restored'",
        ) == [(intent, "refund failed: card closed", True)]
        assert wait_until(lambda: "purchase.restored" in [e["type"] for e in consumer.received], timeout=60), (
            "published by the worker's sweep"
        )
        told = kc_tasks_command(database_url, rabbitmq_url, "payment", intent).stdout.strip().splitlines()
        assert told[-1] == "granted"
        assert any("restored by an operator: refund failed: card closed (overruled the revocation: refund)" in x
                   for x in told)  # fmt: skip
        again = kc_tasks_command(database_url, rabbitmq_url, "payment", "restore", intent, "--reason", "twice")
        assert again.returncode == 1 and "is active: nothing to restore" in again.stderr

        # The restoration overruled that revocation only: a dispute lost later revokes again.
        post_stripe(web, s.stripe_event("charge.dispute.closed", s.stripe_dispute(intent, "lost")))
        assert wait_until(lambda: purchases_of(database_url, intent) == [(False, 99900, "INR")])
    finally:
        consumer.close()


def test_a_razorpay_refund_that_failed_is_surfaced_and_restore_refuses_a_second_grant(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    workers.start(database_url, rabbitmq_url)
    port = free_port()
    web = webs(database_url, rabbitmq_url, KC_WEB_METRICS_PORT=str(port), **SECRETS)
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    order_paid = s.razorpay_paid(student, course)
    payment = order_paid["payload"]["payment"]["entity"]
    post_razorpay(web, order_paid, evt())
    assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(True, 49900, "INR")])
    refunded = dict(payment, amount_refunded=payment["amount"], refund_status="full", status="refunded")
    refund = s.razorpay_refund(refunded)
    post_razorpay(web, s.razorpay_event("refund.processed", refunded, refund=refund), evt())
    assert wait_until(lambda: purchases_of(database_url, payment["id"]) == [(False, 49900, "INR")])

    failed = s.razorpay_event("refund.failed", refunded, refund=dict(refund, status="failed"))
    answer = post_razorpay(web, failed, evt())

    assert (answer.status_code, answer.json()["status"]) == (200, "ignored")
    assert len(warnings_about(web, payment["id"])) == 1
    assert refund_failures(port) == {"razorpay": 1.0, "stripe": 0.0}
    told = kc_tasks_command(database_url, rabbitmq_url, "payment", payment["id"]).stdout.strip().splitlines()
    assert f"razorpay event refund.failed: ignored: refund failed: refund {refund['id']}" in "\n".join(told)
    assert told[-1].startswith("not granted: refund failed: paid, no course")

    # Meanwhile the student bought the course again: restoring would grant it twice.
    again = s.razorpay_paid(student, course)
    post_razorpay(web, again, evt())
    second = again["payload"]["payment"]["entity"]["id"]
    assert wait_until(lambda: purchases_of(database_url, second) == [(True, 49900, "INR")])
    refused = kc_tasks_command(database_url, rabbitmq_url, "payment", "restore", payment["id"], "--reason", "x")

    assert refused.returncode == 1
    assert f"student {student} already holds course {course} by payment {second}" in refused.stderr
    assert "would grant it twice" in refused.stderr
    assert purchases_of(database_url, payment["id"]) == [(False, 49900, "INR")]
    assert run_sql(database_url, "SELECT count(*) FROM event_outbox WHERE type = 'purchase.restored'") == [(0,)]
    unknown = kc_tasks_command(database_url, rabbitmq_url, "payment", "restore", "pay_never_seen", "--reason", "x")
    assert unknown.returncode == 1 and "payment pay_never_seen made no purchase" in unknown.stderr
