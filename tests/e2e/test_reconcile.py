"""Reconciliation end to end: real `celery -A kc_tasks worker` processes, the `kc-tasks`
command, the web process, and the providers' APIs served by a local HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery

from tests import provider_api_server as api
from tests import provider_samples as s
from tests.harness import ROOT, Flower, Web, Workers, wait_until
from tests.services import REDIS, count, purge_redis, run_sql

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))
ADMIN = {"KC_ADMIN_USER": "ops", "KC_ADMIN_PASSWORD": "correct horse battery staple"}
SECRETS = (api.RAZORPAY_KEY_ID, api.RAZORPAY_KEY_SECRET, api.STRIPE_API_KEY)


@pytest.fixture
def provider() -> Iterator[api.StandIn]:
    with api.serve() as served:
        yield served


def keys(provider: api.StandIn) -> dict[str, str]:
    return {
        "KC_RAZORPAY_KEY_ID": api.RAZORPAY_KEY_ID,
        "KC_RAZORPAY_KEY_SECRET": api.RAZORPAY_KEY_SECRET,
        "KC_RAZORPAY_API_URL": provider.url,
        "KC_STRIPE_API_KEY": api.STRIPE_API_KEY,
        "KC_STRIPE_API_URL": provider.url,
    }


def kc(database_url: str, broker_url: str, provider: api.StandIn, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, **keys(provider))
    result = subprocess.run([KC_TASKS, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
    return result


def active(database_url: str, payment_id: str) -> list[tuple]:
    return run_sql(database_url, "SELECT is_active FROM student_course_purchases WHERE payment_id = %s", (payment_id,))


def test_a_payment_whose_webhook_never_came_is_made_and_a_refund_at_the_provider_revokes_it(
    database_url: str, broker_url: str, workers: Workers, provider: api.StandIn
) -> None:
    now = int(time.time())
    student, course = api.new_id(), api.new_id()
    tampered = {"student_id": api.new_id(), "course_id": api.new_id()}
    paid = provider.razorpay_paid(now - 600, student, course, "pay_no_webhook_e2e", payment_notes=tampered)
    provider.razorpay_paid(now - 600, student, None, "pay_unmapped_e2e")
    intent = s.new_intent()
    provider.stripe_event("payment_intent.succeeded", s.stripe_intent(intent, api.new_id(), api.new_id()), now - 600)
    workers.start(database_url, broker_url)

    first = kc(database_url, broker_url, provider, "reconcile", "--since", "1h")
    assert first.returncode == 0, first.stderr
    assert "reconcile razorpay" in first.stdout and "1 purchase(s) enqueued" in first.stdout
    assert "1 unmapped" in first.stdout and "unmapped: pay_unmapped_e2e" in first.stdout
    assert wait_until(lambda: active(database_url, "pay_no_webhook_e2e") == [(True,)])
    assert wait_until(lambda: active(database_url, intent) == [(True,)])
    held = run_sql(
        database_url, "SELECT course_id::text FROM student_course_purchases WHERE payment_id = %s", (paid["id"],)
    )
    assert held == [(course,)], "the order's course, never the one in the payment's own notes"

    told = kc(database_url, broker_url, provider, "payment", "pay_no_webhook_e2e", "--json")
    story = json.loads(told.stdout)
    assert story["verdict"] == "granted"
    assert [e["source"] for e in story["entries"]][:2] == ["reconcile", "purchase"]

    again = kc(database_url, broker_url, provider, "reconcile", "--since", "1h")
    assert again.returncode == 0 and "0 purchase(s) enqueued" in again.stdout
    assert "1 already fine" in again.stdout

    # Refunded at the provider a week later, and the refund's webhook never came either: the
    # payment is long out of the window, the refund is in it.
    refund = provider.razorpay_refund(paid, now)
    refunded = kc(database_url, broker_url, provider, "reconcile", "--provider", "razorpay", "--since", "1h")
    assert "1 revocation(s) enqueued" in refunded.stdout, refunded.stdout
    assert wait_until(lambda: active(database_url, "pay_no_webhook_e2e") == [(False,)])
    assert count(database_url) == 2
    revoked = run_sql(database_url, "SELECT reason, refund_id FROM revocations WHERE payment_id = %s", (paid["id"],))
    assert revoked == [("refund", refund["id"])]

    told = kc(database_url, broker_url, provider, "payment", "pay_no_webhook_e2e")
    lines = told.stdout.strip().splitlines()
    assert lines[-1] == "not granted: revoked (refund)"
    assert any("reconciliation found razorpay.refund.refunded (no webhook brought it): enqueued" in x for x in lines)
    assert any("purchase.revoked written" in line for line in lines)
    unmapped = kc(database_url, broker_url, provider, "payment", "pay_unmapped_e2e").stdout.strip().splitlines()
    assert unmapped[-1].startswith("not granted: paid, but its server-set notes/metadata do not name both")
    dead = kc(database_url, broker_url, provider, "dlq", "list", "--json")  # kc() checks it holds no key
    assert dead.returncode == 0 and dead.stdout == ""


def test_a_stripe_webhook_that_comes_after_reconciliation_found_its_event_is_a_duplicate(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    """A Checkout Session known only through its metadata; its webhook comes late: one purchase,
    one inbox row. Then a lost dispute, found by reconciliation, revokes it."""
    now = int(time.time())
    intent, student, course = s.new_intent(), api.new_id(), api.new_id()
    event = provider.stripe_event("checkout.session.completed", s.stripe_session(intent, student, course), now - 60)
    provider.stripe_event("payment_intent.succeeded", s.stripe_intent(intent, None, None), now - 60)
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, KC_STRIPE_WEBHOOK_SECRET=s.STRIPE_SECRET, **ADMIN)

    found = kc(database_url, rabbitmq_url, provider, "reconcile", "--provider", "stripe", "--since", "1h")
    assert found.returncode == 0, found.stderr
    assert "2 event(s) seen" in found.stdout and "1 purchase(s) enqueued" in found.stdout
    assert "1 not a course purchase" in found.stdout
    assert wait_until(lambda: active(database_url, intent) == [(True,)])

    late = json.dumps(event).encode()  # Stripe's retry of the very same event
    answer = httpx.post(web.base + "/webhooks/stripe", content=late, headers=s.stripe_headers(late), timeout=30)
    assert answer.status_code == 200 and answer.json()["event_id"] == event["id"]
    rows = run_sql(database_url, "SELECT provider, status FROM payment_events WHERE event_id = %s", (event["id"],))
    assert rows == [("stripe", "enqueued")], "one inbox row"
    assert count(database_url) == 1, "one purchase"

    page = httpx.get(web.base + f"/admin/payments/{intent}", auth=(ADMIN["KC_ADMIN_USER"], ADMIN["KC_ADMIN_PASSWORD"]))
    assert "reconciliation found stripe event checkout.session.completed (no webhook brought it)" in page.text
    assert "not a course purchase" in page.text, "its PaymentIntent's event, stored ignored, says why"

    provider.stripe_event("charge.dispute.closed", s.stripe_dispute(intent, "lost"), int(time.time()))
    disputed = kc(database_url, rabbitmq_url, provider, "reconcile", "--provider", "stripe", "--since", "1h")
    assert "1 revocation(s) enqueued" in disputed.stdout, disputed.stdout
    assert wait_until(lambda: active(database_url, intent) == [(False,)])
    told = kc(database_url, rabbitmq_url, provider, "payment", intent).stdout.strip().splitlines()
    assert told[-1] == "not granted: revoked (dispute)"


def test_a_message_redis_lost_in_transit_is_made_whole_by_the_next_beat_run(
    database_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    purge_redis()
    student, course = api.new_id(), api.new_id()
    payment = provider.razorpay_paid(int(time.time()) - 60, student, course, "pay_lost_in_redis")
    web = webs(database_url, REDIS, KC_RAZORPAY_WEBHOOK_SECRET=s.RAZORPAY_SECRET, **ADMIN)
    body = s.encode(s.razorpay_event("order.paid", payment, provider.razorpay_orders[payment["order_id"]]))
    answer = httpx.post(web.base + "/webhooks/razorpay", content=body, headers=s.razorpay_headers(body), timeout=30)
    assert answer.status_code == 200 and answer.json()["status"] == "enqueued"

    lost = redis.Redis.from_url(REDIS).delete("purchases")  # the message, lost before any worker took it
    assert lost == 1
    worker = workers.start(database_url, REDIS, **keys(provider))
    Celery(broker=REDIS).send_task("kc_tasks.reconcile_payments", queue="purchases")

    assert wait_until(lambda: active(database_url, "pay_lost_in_redis") == [(True,)])

    def summary_lines() -> list[str]:
        return [line for line in worker.text().splitlines() if "reconcile_payments[" in line and " succeeded " in line]

    assert wait_until(lambda: bool(summary_lines()))
    assert "'purchases_enqueued': 1" in summary_lines()[0], "the summary is the task's result (Flower shows it)"
    assert "reconcile razorpay" in worker.text()
    for secret in SECRETS:
        assert secret not in worker.text()

    page = httpx.get(web.base + "/admin/payments/pay_lost_in_redis", auth=(ADMIN["KC_ADMIN_USER"], "wrong"))
    assert page.status_code == 401
    page = httpx.get(
        web.base + "/admin/payments/pay_lost_in_redis", auth=(ADMIN["KC_ADMIN_USER"], ADMIN["KC_ADMIN_PASSWORD"])
    )
    assert page.status_code == 200
    assert "razorpay event order.paid: enqueued" in page.text
    assert "reconciliation found razorpay.payment.paid (no webhook brought it): enqueued" in page.text
    assert page.text.index("razorpay event order.paid") < page.text.index("purchase ")
    assert '<p id="verdict"><strong>granted</strong></p>' in page.text
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    purge_redis()


def test_flower_shows_the_beat_tasks_summary_as_its_result(
    database_url: str,
    rabbitmq_url: str,
    workers: Workers,
    flower: Callable[[], Flower],
    provider: api.StandIn,
) -> None:
    provider.razorpay_paid(int(time.time()) - 60, api.new_id(), api.new_id())
    worker = workers.start(database_url, rabbitmq_url, **keys(provider))
    name = next(line.split()[-2] for line in worker.text().splitlines() if line.rstrip().endswith(" ready."))
    web = flower()
    assert wait_until(lambda: name in web.seen_workers(), timeout=30), web.text()[-3000:]

    client = Celery(broker=rabbitmq_url)

    def shown(task_id: str) -> dict:
        response = web.get("/api/tasks?taskname=kc_tasks.reconcile_payments")
        return response.json().get(task_id, {}) if response.status_code == 200 else {}

    # Razorpay's API down: the run succeeds with the error in its summary, and enqueues nothing.
    provider.fail("/v1/payments", "500", "500", "500")
    failed_id = client.send_task("kc_tasks.reconcile_payments", queue="purchases").id
    assert wait_until(lambda: shown(failed_id).get("state") == "SUCCESS", timeout=60), worker.text()[-3000:]
    failed = shown(failed_id)["result"]
    assert "'error': 'razorpay API: GET /v1/payments failed after 3 tries: HTTP 500'" in failed
    assert "WARNING" in worker.text() and "reconcile razorpay: razorpay API: GET /v1/payments failed" in worker.text()
    assert count(database_url) == 0

    task_id = client.send_task("kc_tasks.reconcile_payments", queue="purchases").id
    assert wait_until(lambda: shown(task_id).get("state") == "SUCCESS", timeout=60), worker.text()[-3000:]
    result = shown(task_id)["result"]
    assert "'purchases_enqueued': 1" in result and "'provider': 'razorpay'" in result
    assert "'provider': 'stripe'" in result and "'error': None" in result
    assert wait_until(lambda: count(database_url) == 1)
    for secret in SECRETS:
        assert secret not in result + failed + worker.text()


def test_an_order_paid_in_parts_is_granted_by_reconciliation_once_paid_in_full(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    """Three instalments of an order that takes partial payments, no webhook at all: a run after
    the first finds a captured payment of an order not paid in full (the order entity's documented
    `status` `attempted`, `amount_paid`, `amount_due`) and grants nothing; a run after the last
    grants once, under the last instalment, for the order's `amount_paid`; the earlier ones are no
    duplicate payments. The last one's order.paid, arriving late, is a repeat."""
    now = int(time.time())
    student, course = api.new_id(), api.new_id()
    [first] = provider.razorpay_instalments(now - 900, student, course, parts=3, paid=1)
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, KC_RAZORPAY_WEBHOOK_SECRET=s.RAZORPAY_SECRET)

    early = kc(database_url, rabbitmq_url, provider, "reconcile", "--provider", "razorpay", "--since", "1h")
    assert early.returncode == 0, early.stderr
    assert "0 purchase(s) enqueued" in early.stdout and "1 not paid" in early.stdout, early.stdout
    assert f"not paid in full yet: {first['id']}" in early.stdout
    payments = provider.razorpay_instalments(now - 900, student, course, parts=3, paid=3, order_id=first["order_id"])
    paid = kc(database_url, rabbitmq_url, provider, "reconcile", "--provider", "razorpay", "--since", "1h")

    assert "1 purchase(s) enqueued" in paid.stdout, paid.stdout
    assert "2 earlier instalment(s) of an order paid in parts" in paid.stdout
    assert wait_until(lambda: active(database_url, payments[2]["id"]) == [(True,)])
    assert run_sql(database_url, "SELECT payment_id, amount_cents, is_active FROM student_course_purchases") == [
        (payments[2]["id"], 149700, True)
    ]
    late = s.encode(s.razorpay_event("order.paid", payments[2], provider.razorpay_orders[first["order_id"]]))
    answer = httpx.post(web.base + "/webhooks/razorpay", content=late, headers=s.razorpay_headers(late), timeout=30)
    assert answer.status_code == 200 and answer.json()["status"] == "enqueued"
    again = kc(database_url, rabbitmq_url, provider, "reconcile", "--provider", "razorpay", "--since", "1h")
    assert "0 purchase(s) enqueued" in again.stdout, again.stdout
    assert wait_until(
        lambda: run_sql(database_url, "SELECT count(*) FROM payment_events WHERE status = 'enqueued'") == [(2,)]
    )
    assert count(database_url) == 1
    assert run_sql(database_url, "SELECT count(*) FROM duplicate_payments") == [(0,)]


def test_a_refund_pending_past_the_window_revokes_once_it_is_processed(
    database_url: str, rabbitmq_url: str, workers: Workers, provider: api.StandIn
) -> None:
    """Razorpay's refund entity with `status` pending (a bank refund can take days): a run sees it
    pending and keeps it. It is processed after it has left the window, and its refund.processed
    webhook is lost: a later run fetches it (GET /v1/refunds/{id}) and revokes."""
    now = int(time.time())
    payment = provider.razorpay_paid(now - 3 * 3600, api.new_id(), api.new_id(), "pay_refund_pending")
    workers.start(database_url, rabbitmq_url)
    kc(database_url, rabbitmq_url, provider, "reconcile", "--provider", "razorpay", "--since", "4h")
    assert wait_until(lambda: active(database_url, payment["id"]) == [(True,)])
    refund = provider.razorpay_refund(payment, now - 2 * 3600, status="pending")

    seen = kc(database_url, rabbitmq_url, provider, "reconcile", "--provider", "razorpay", "--since", "3h")
    assert "1 refund(s) still pending" in seen.stdout, seen.stdout
    provider.razorpay_refund_processed(payment, refund)
    later = kc(database_url, rabbitmq_url, provider, "reconcile", "--provider", "razorpay", "--since", "1h")

    assert later.returncode == 0, later.stderr
    assert f"refund {refund['id']} seen pending before is processed now" in later.stdout, later.stdout
    assert "1 revocation(s) enqueued" in later.stdout
    assert wait_until(lambda: active(database_url, payment["id"]) == [(False,)])
    assert ("/v1/refunds/" + refund["id"], {}) in provider.requests
    assert run_sql(database_url, "SELECT count(*) FROM pending_refunds") == [(0,)], "final: not fetched again"
    again = kc(database_url, rabbitmq_url, provider, "reconcile", "--provider", "razorpay", "--since", "1h")
    assert "refund(s) still pending" not in again.stdout
    assert provider.requests.count(("/v1/refunds/" + refund["id"], {})) == 1
