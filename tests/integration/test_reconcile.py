"""Reconciliation against a local server of the providers' APIs, on real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks.core import names
from kc_tasks.core.errors import ProviderApiError
from kc_tasks.core.settings import Settings
from kc_tasks.payments import inbox, reconciler
from kc_tasks.providers import apis
from tests import provider_api_server as api
from tests import provider_samples as s
from tests.builders import purchase_row
from tests.harness import kc, settings_for
from tests.harness import reconcile as run
from tests.services import AMQP
from tests.services import take_queued as queued

HOUR = 3600
DAY = 24 * HOUR
REVOKE = names.REVOKE_PURCHASE


@pytest.fixture
def now() -> int:
    """The test's own clock reading, taken when it runs."""
    return int(time.time())


@pytest.fixture
def provider() -> Iterator[api.StandIn]:
    with api.serve() as served:
        yield served


def tasks() -> list[tuple[str, str]]:
    return sorted((name, task_id) for name, task_id, _ in queued())


def test_razorpay_every_page_read_and_the_course_comes_from_the_order(
    engine: Engine, broker: Celery, provider: api.StandIn, sql, now: int
) -> None:
    student, course = api.new_id(), api.new_id()
    tampered = {"student_id": api.new_id(), "course_id": api.new_id()}  # what a browser could set
    missing = provider.razorpay_paid(now - HOUR, student, course, "pay_missing_webhook", payment_notes=tampered)
    provider.razorpay_paid(now - HOUR, api.new_id(), api.new_id(), "pay_webhook_came")
    provider.razorpay_paid(now - HOUR, student, None, "pay_half_mapped")
    provider.razorpay_paid(now - HOUR, None, None, "pay_other_product")
    provider.razorpay_paid(now - HOUR, payment_id="pay_no_order", with_order=False, payment_notes=tampered)
    provider.razorpay_paid(now - 48 * HOUR, api.new_id(), api.new_id(), "pay_out_of_window")
    for i in range(130):
        provider.razorpay_paid(now - 2 * HOUR - i, api.new_id(), api.new_id(), status="failed")
    purchase_row(sql, "pay_webhook_came")

    summary = run(engine, broker, provider, "razorpay")

    assert [q["skip"] for q in provider.pages("/v1/payments")] == ["0", "100"], "both pages, count/skip"
    orders = sorted(path for path, _ in provider.requests if path.startswith("/v1/orders/"))
    assert orders == sorted(f"/v1/orders/order_{p}" for p in ("missing_webhook", "half_mapped", "other_product"))
    assert "/v1/orders/order_webhook_came" not in orders, "no order fetch for a payment that has its purchase"
    seen = (summary.seen, summary.already_fine, summary.purchases_enqueued, summary.unmapped, summary.not_paid)
    assert seen == (135, 1, 1, 1, 130)
    assert summary.not_course == 2 and summary.found == {"payment": 1}
    [(name, task_id, kwargs)] = queued()
    assert (name, task_id) == ("kc_tasks.create_purchase", inbox.task_id_for(missing["id"]))
    assert kwargs == {
        "payment_id": "pay_missing_webhook",
        "student_id": student,
        "course_id": course,
        "amount_cents": 49900,
        "currency": "INR",
    }
    assert sorted(sql("SELECT provider, event_id, status FROM payment_events")) == [
        ("reconcile", "razorpay:pay_half_mapped:paid", "unmapped"),
        ("reconcile", "razorpay:pay_missing_webhook:paid", "enqueued"),
        ("reconcile", "razorpay:pay_other_product:paid", "ignored"),
    ]

    fetched = len(provider.requests)
    again = run(engine, broker, provider, "razorpay")
    assert (again.purchases_enqueued, again.already_fine, again.unmapped) == (0, 4, 0)
    assert queued() == [], "a second run enqueues nothing again"
    assert not [p for p, _ in provider.requests[fetched:] if p.startswith("/v1/orders/")], "nor fetches an order"


def test_a_refund_today_of_a_razorpay_payment_made_five_days_ago_revokes_it(
    engine: Engine, broker: Celery, provider: api.StandIn, sql, now: int
) -> None:
    """Refunds are read by refund time: the payment itself is outside every window."""
    old = provider.razorpay_paid(now - 5 * DAY, api.new_id(), api.new_id(), "pay_five_days_old")
    refund = provider.razorpay_refund(old, now - HOUR)
    partial = provider.razorpay_paid(now - 5 * DAY, api.new_id(), api.new_id(), "pay_partly_refunded")
    provider.razorpay_refund(partial, now - HOUR, amount=100)
    never_bought = provider.razorpay_paid(now - 5 * DAY, None, None, "pay_not_a_course")
    provider.razorpay_refund(never_bought, now - HOUR)
    purchase_row(sql, "pay_five_days_old")
    purchase_row(sql, "pay_partly_refunded")

    summary = run(engine, broker, provider, "razorpay")

    assert (summary.revocations_enqueued, summary.purchases_enqueued, summary.found) == (1, 0, {"refund": 1})
    [(name, task_id, kwargs)] = queued()
    assert (name, task_id) == (REVOKE, inbox.task_id_for("pay_five_days_old", REVOKE))
    assert kwargs == {"payment_id": "pay_five_days_old", "reason": "refund", "refund_id": refund["id"]}
    fetched = sorted(p for p, _ in provider.requests if p.startswith("/v1/payments/"))
    assert fetched == ["/v1/payments/pay_five_days_old", "/v1/payments/pay_partly_refunded"], (
        "a refund's payment is fetched only where a purchase is active"
    )
    assert sql("SELECT event_id, status FROM payment_events") == [("razorpay:pay_five_days_old:refunded", "enqueued")]
    assert run(engine, broker, provider, "razorpay").revocations_enqueued == 0
    assert queued() == []


def test_a_lost_razorpay_dispute_revokes_and_a_won_one_does_not(
    engine: Engine, broker: Celery, provider: api.StandIn, sql, now: int
) -> None:
    """Razorpay lists disputes by the time they were opened: one opened two months ago and lost
    today is still found, whatever the window."""
    lost = provider.razorpay_paid(now - 70 * DAY, api.new_id(), api.new_id(), "pay_dispute_lost")
    won = provider.razorpay_paid(now - 10 * DAY, api.new_id(), api.new_id(), "pay_dispute_won")
    provider.razorpay_dispute(lost, now - 60 * DAY, "lost")
    provider.razorpay_dispute(won, now - HOUR, "won")
    purchase_row(sql, "pay_dispute_lost")
    purchase_row(sql, "pay_dispute_won")

    summary = run(engine, broker, provider, "razorpay")

    assert (summary.revocations_enqueued, summary.found) == (1, {"dispute": 1})
    [(_, task_id, kwargs)] = queued()
    assert task_id == inbox.task_id_for("pay_dispute_lost", REVOKE)
    assert kwargs == {"payment_id": "pay_dispute_lost", "reason": "dispute"}
    assert sql("SELECT event_id FROM payment_events") == [("razorpay:pay_dispute_lost:disputed",)]
    [disputes] = provider.pages("/v1/disputes")
    assert int(disputes["to"]) - int(disputes["from"]) >= reconciler.DISPUTE_LOOKBACK


def test_a_partly_refunded_payment_whose_webhook_never_came_is_still_granted(
    engine: Engine, broker: Celery, provider: api.StandIn, now: int
) -> None:
    payment = provider.razorpay_paid(now - 2 * HOUR, api.new_id(), api.new_id(), "pay_partly")
    provider.razorpay_refund(payment, now - HOUR, amount=100)
    summary = run(engine, broker, provider, "razorpay")
    assert (summary.purchases_enqueued, summary.revocations_enqueued) == (1, 0)
    assert tasks() == [("kc_tasks.create_purchase", inbox.task_id_for("pay_partly"))]


def test_stripe_events_api_every_page_each_event_through_the_webhooks_rules(
    engine: Engine, broker: Celery, provider: api.StandIn, sql, now: int
) -> None:
    """A payment known only through its Checkout Session's metadata, a refund today of a payment
    made five days ago, a lost dispute, a free checkout; and events whose webhook came."""
    student, course = api.new_id(), api.new_id()
    intent = s.new_intent()
    session = provider.stripe_event("checkout.session.completed", s.stripe_session(intent, student, course), now - HOUR)
    # Its PaymentIntent carries no metadata (Checkout does not copy it): not a course purchase.
    provider.stripe_event("payment_intent.succeeded", s.stripe_intent(intent, None, None), now - HOUR)
    old, disputed = s.new_intent(), s.new_intent()
    provider.stripe_event("charge.refunded", s.stripe_charge(old), now - HOUR)
    provider.stripe_event("charge.dispute.closed", s.stripe_dispute(disputed, "lost"), now - HOUR)
    free = s.stripe_session(None, api.new_id(), api.new_id(), payment_status="no_payment_required", amount_total=0)
    provider.stripe_event("checkout.session.completed", free, now - HOUR)
    came = provider.stripe_event("payment_intent.succeeded", s.stripe_intent(s.new_intent(), student, course), now)
    sql(
        "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body) "
        "VALUES ('stripe', %s, 'payment_intent.succeeded', %s, 'enqueued', '{}')",
        (came["id"], came["data"]["object"]["id"]),
    )
    purchase_row(sql, came["data"]["object"]["id"])
    for i in range(110):  # not acted on, and more than a page
        provider.stripe_event("checkout.session.completed", s.stripe_session(s.new_intent(), None, None), now - i)

    summary = run(engine, broker, provider, "stripe")

    pages = provider.pages("/v1/events")
    assert len(pages) == 2 and "starting_after" not in pages[0] and pages[1]["starting_after"].startswith("evt_")
    assert sorted(pages[0]["types[]"]) == sorted(
        [
            "charge.dispute.closed",
            "charge.refund.updated",
            "charge.refunded",
            "checkout.session.async_payment_succeeded",
            "checkout.session.completed",
            "payment_intent.succeeded",
            "refund.failed",
        ]
    )
    assert (summary.seen, summary.already_fine, summary.purchases_enqueued, summary.revocations_enqueued) == (
        116,
        1,
        2,
        2,
    )
    assert summary.not_course == 111 and summary.found == {"payment": 2, "refund": 1, "dispute": 1}
    assert tasks() == sorted(
        [
            ("kc_tasks.create_purchase", inbox.task_id_for(intent)),
            ("kc_tasks.create_purchase", inbox.task_id_for(free["id"])),
            (REVOKE, inbox.task_id_for(old, REVOKE)),
            (REVOKE, inbox.task_id_for(disputed, REVOKE)),
        ]
    )
    stored = dict(sql("SELECT event_id, status FROM payment_events WHERE provider = 'stripe'"))
    assert stored[session["id"]] == "enqueued" and len(stored) == 116, "under each event's own id"

    again = run(engine, broker, provider, "stripe")
    assert (again.already_fine, again.purchases_enqueued, again.revocations_enqueued) == (116, 0, 0)
    assert queued() == []


def test_stripe_events_of_the_other_mode_grant_nothing(
    engine: Engine, broker: Celery, provider: api.StandIn, sql, now: int
) -> None:
    event = provider.stripe_event(
        "payment_intent.succeeded", s.stripe_intent(s.new_intent(), api.new_id(), api.new_id()), now - HOUR
    )
    assert event["livemode"] is False
    client = reconciler.api_for(settings_for(provider), "stripe")
    try:
        summary = reconciler.run(engine, broker, client, reconciler.window(DAY), stripe_livemode=True)
    finally:
        client.close()
    assert summary.purchases_enqueued == 0 and queued() == []
    assert sql("SELECT status FROM payment_events") == [("ignored",)]


@pytest.mark.parametrize("fault", ["429", "500"])
def test_a_rate_limit_or_a_passing_failure_is_waited_out(
    engine: Engine, broker: Celery, provider: api.StandIn, fault: str, now: int
) -> None:
    payment = provider.razorpay_paid(now - HOUR, api.new_id(), api.new_id())
    provider.fail("/v1/payments", fault, fault)
    provider.fail(f"/v1/orders/{payment['order_id']}", fault)
    summary = run(engine, broker, provider, "razorpay")
    assert (summary.error, summary.purchases_enqueued) == (None, 1)
    assert len(queued()) == 1


@pytest.mark.parametrize(
    ("path", "faults", "said"),
    [
        ("/v1/payments", ["500"] * 3, "failed after 3 tries: HTTP 500"),
        ("/v1/payments", ["timeout"] * 3, "ReadTimeout"),
        ("/v1/payments", ["garbage"], "a body that is not JSON"),
        ("/v1/payments", ["shape"], "no list of items"),
        ("/v1/refunds", ["500"] * 3, "GET /v1/refunds failed"),
        ("/v1/disputes", ["shape"], "GET /v1/disputes answered no list"),
    ],
)
def test_an_api_down_slow_or_answering_garbage_enqueues_nothing(
    engine: Engine, broker: Celery, provider: api.StandIn, sql, path: str, faults: list[str], said: str, now: int
) -> None:
    """The first page is good, then a request fails: nothing read is enqueued or stored."""
    for i in range(apis.PAGE_SIZE + 5):
        provider.razorpay_paid(now - HOUR - i, api.new_id(), api.new_id())
    provider.fail(path, *(["pass"] if path == "/v1/payments" else []), *faults)
    with pytest.raises(ProviderApiError) as raised:
        run(engine, broker, provider, "razorpay", read_timeout=0.5)
    assert said in str(raised.value) and "razorpay" in str(raised.value)
    assert api.RAZORPAY_KEY_SECRET not in str(raised.value) and api.RAZORPAY_KEY_ID not in str(raised.value)
    assert queued() == [] and sql("SELECT count(*) FROM payment_events") == [(0,)]


def test_two_reconcilers_at_once_enqueue_each_purchase_once(
    engine: Engine, broker: Celery, provider: api.StandIn, now: int
) -> None:
    payments = [provider.razorpay_paid(now - HOUR - i, api.new_id(), api.new_id()) for i in range(20)]
    start = threading.Barrier(2)
    results: list[reconciler.Summary] = []

    def reconciler() -> None:
        start.wait()
        results.append(run(engine, broker, provider, "razorpay"))

    threads = [threading.Thread(target=reconciler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(r.purchases_enqueued for r in results) == 20
    assert sorted(task_id for _, task_id, _ in queued()) == sorted(inbox.task_id_for(p["id"]) for p in payments)


def test_a_claim_without_an_outcome_is_sent_again_after_a_period(
    engine: Engine, broker: Celery, provider: api.StandIn, now: int
) -> None:
    """Its message was lost (Redis, a purged queue): the next period's run sends it again."""
    payment = provider.razorpay_paid(now - HOUR, api.new_id(), api.new_id())
    run(engine, broker, provider, "razorpay")
    assert len(queued()) == 1  # ... and lost
    assert run(engine, broker, provider, "razorpay").actions == [], "not yet: it may be on its way"
    resent = run(engine, broker, provider, "razorpay", resend_after=0)
    assert resent.actions == [f"sent again: reconcile razorpay:{payment['id']}:paid (enqueued)"]
    assert [task_id for _, task_id, _ in queued()] == [inbox.task_id_for(payment["id"])]


def test_failures_are_warnings_naming_the_provider_never_the_keys(
    engine: Engine, broker: Celery, provider: api.StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    bad = settings_for(provider, KC_STRIPE_API_KEY="rk_test_wrong-key-also-secret")
    provider.fail("/v1/payments", "500", "500", "500")
    caplog.set_level(logging.DEBUG)
    win = reconciler.window(HOUR)
    rzp = reconciler.run_logged(engine, broker, settings_for(provider), "razorpay", win)
    stripe = reconciler.run_logged(engine, broker, bad, "stripe", win)
    assert rzp.error and "HTTP 500" in rzp.error
    assert stripe.error and "HTTP 401" in stripe.error
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("reconcile razorpay:") for w in warnings)
    assert any(w.startswith("reconcile stripe:") for w in warnings)
    text = caplog.text + repr(rzp) + repr(stripe) + repr(settings_for(provider))
    for secret in (api.RAZORPAY_KEY_ID, api.RAZORPAY_KEY_SECRET, api.STRIPE_API_KEY, "rk_test_wrong-key-also-secret"):
        assert secret not in text


def test_reconcile_command_dry_run_changes_nothing_and_a_failure_exits_non_zero(
    database_url: str, broker: Celery, provider: api.StandIn, sql, now: int
) -> None:
    provider.razorpay_paid(now - HOUR, api.new_id(), api.new_id(), payment_id="pay_dry_run")
    env = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": AMQP,
        "KC_RAZORPAY_KEY_ID": api.RAZORPAY_KEY_ID,
        "KC_RAZORPAY_KEY_SECRET": api.RAZORPAY_KEY_SECRET,
        "KC_RAZORPAY_API_URL": provider.url,
        "KC_STRIPE_API_KEY": "",
    }
    dry = kc("reconcile", "--provider", "razorpay", "--since", "24h", "--dry-run", **env)
    assert dry.returncode == 0, dry.stderr
    assert "would enqueue create_purchase pay_dry_run" in dry.stdout
    assert "1 purchase(s) would be enqueued" in dry.stdout
    assert queued() == [] and sql("SELECT count(*) FROM payment_events") == [(0,)]

    story = kc("payment", "pay_dry_run", **env)
    assert story.returncode == 0 and story.stdout.strip().splitlines()[-1] == "unknown"

    done = kc("reconcile", **env)
    assert done.returncode == 0, done.stderr
    assert "reconcile razorpay" in done.stdout and "1 purchase(s) enqueued" in done.stdout
    assert "WARNING" in done.stderr and "never came as a webhook" in done.stderr
    assert len(queued()) == 1
    story = kc("payment", "pay_dry_run", **env)
    assert "reconciliation found razorpay.payment.paid (no webhook brought it): enqueued" in story.stdout
    assert story.stdout.strip().splitlines()[-1].startswith("not granted: enqueued")

    provider.fail("/v1/payments", "500", "500", "500")
    failed = kc("reconcile", "--provider", "razorpay", **env)
    assert failed.returncode == 1
    assert "WARNING" in failed.stderr and "reconcile razorpay" in failed.stderr and "HTTP 500" in failed.stderr
    for secret in (api.RAZORPAY_KEY_ID, api.RAZORPAY_KEY_SECRET):
        assert secret not in failed.stdout + failed.stderr + done.stdout + done.stderr

    missing = kc("reconcile", "--provider", "stripe", **env)
    assert missing.returncode == 1 and "KC_STRIPE_API_KEY" in missing.stderr


def test_an_unreachable_api_is_a_failure_not_a_crash(engine: Engine, broker: Celery) -> None:
    settings = Settings.from_env(
        {"KC_RAZORPAY_KEY_ID": "k", "KC_RAZORPAY_KEY_SECRET": "s", "KC_RAZORPAY_API_URL": "http://127.0.0.1:1"}
    )
    client = reconciler.api_for(settings, "razorpay")
    client._sleep = lambda seconds: None
    with pytest.raises(ProviderApiError, match="ConnectError"):
        reconciler.run(engine, broker, client, reconciler.window(HOUR))
