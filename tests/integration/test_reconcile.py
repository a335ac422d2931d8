"""Reconciliation against a local server of the providers' APIs, on real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks import inbox, provider_api, reconcile
from kc_tasks.errors import ProviderApiError
from kc_tasks.settings import Settings
from tests import provider_api_server as api
from tests.conftest import AMQP
from tests.integration.test_cli import kc
from tests.integration.test_inbox import queued

NOW = int(time.time())
HOUR = 3600


@pytest.fixture
def provider() -> Iterator[api.Provider]:
    with api.serve() as served:
        yield served


def settings_for(provider: api.Provider, **overrides: str) -> Settings:
    env = {
        "KC_RAZORPAY_KEY_ID": api.RAZORPAY_KEY_ID,
        "KC_RAZORPAY_KEY_SECRET": api.RAZORPAY_KEY_SECRET,
        "KC_STRIPE_API_KEY": api.STRIPE_API_KEY,
        "KC_RAZORPAY_API_URL": provider.url,
        "KC_STRIPE_API_URL": provider.url,
        **overrides,
    }
    return Settings.from_env(env)


def run(engine: Engine, app: Celery, provider: api.Provider, name: str, **options: object) -> reconcile.Summary:
    client = reconcile.api_for(settings_for(provider), name, read_timeout=float(options.pop("read_timeout", 5.0)))
    client._sleep = lambda seconds: None  # Retry-After: 0 and the backoff need no real wait here
    try:
        return reconcile.run(engine, app, client, reconcile.window(24 * HOUR), **options)  # type: ignore[arg-type]
    finally:
        client.close()


def purchase_row(sql, payment_id: str, active: bool = True) -> None:
    sql(
        "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency, "
        "is_active) VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), %s, 49900, 'INR', %s)",
        (payment_id, active),
    )


def test_razorpay_every_page_read_only_the_missing_purchase_enqueued_once(
    engine: Engine, broker: Celery, provider: api.Provider, sql
) -> None:
    student, course = api.new_id(), api.new_id()
    missing = api.razorpay_payment(NOW - HOUR, student, course, payment_id="pay_missing_webhook")
    made = api.razorpay_payment(NOW - HOUR, api.new_id(), api.new_id(), payment_id="pay_webhook_came")
    unmapped = api.razorpay_payment(NOW - HOUR, payment_id="pay_no_notes")
    old = api.razorpay_payment(NOW - 48 * HOUR, api.new_id(), api.new_id(), payment_id="pay_out_of_window")
    failed = [api.razorpay_payment(NOW - 2 * HOUR - i, api.new_id(), api.new_id(), "failed") for i in range(130)]
    provider.razorpay_payments = [missing, made, unmapped, old, *failed]
    purchase_row(sql, "pay_webhook_came")

    summary = run(engine, broker, provider, "razorpay")

    assert [q["skip"] for q in provider.pages("/v1/payments")] == ["0", "100"], "both pages, count/skip"
    assert (summary.seen, summary.already_fine, summary.purchases_enqueued, summary.unmapped, summary.not_paid) == (
        133,
        1,
        1,
        1,
        130,
    )
    [(name, task_id, kwargs)] = queued()
    assert (name, task_id) == ("kc_tasks.create_purchase", inbox.task_id_for("pay_missing_webhook"))
    assert kwargs == {
        "payment_id": "pay_missing_webhook",
        "student_id": student,
        "course_id": course,
        "amount_cents": 49900,
        "currency": "INR",
    }
    assert sorted(sql("SELECT provider, event_id, status FROM payment_events")) == [
        ("reconcile", "razorpay:pay_missing_webhook:paid", "enqueued"),
        ("reconcile", "razorpay:pay_no_notes:paid", "unmapped"),
    ]

    again = run(engine, broker, provider, "razorpay")
    assert (again.purchases_enqueued, again.already_fine, again.unmapped) == (0, 2, 1)
    assert queued() == [], "a second run enqueues nothing again"


def test_stripe_pages_by_starting_after_and_a_refund_revokes_the_active_purchase(
    engine: Engine, broker: Celery, provider: api.Provider, sql
) -> None:
    missing = api.stripe_intent(NOW - HOUR, api.new_id(), api.new_id())
    refunded = api.stripe_intent(NOW - HOUR, api.new_id(), api.new_id())
    refunded_unbought = api.stripe_intent(NOW - HOUR, api.new_id(), api.new_id())
    unpaid = [api.stripe_intent(NOW - 2 * HOUR - i, status="requires_payment_method") for i in range(110)]
    provider.stripe_intents = [missing, refunded, refunded_unbought, *unpaid]
    provider.stripe_charges = [
        api.stripe_charge(missing, refunded=False),
        api.stripe_charge(refunded),
        api.stripe_charge(refunded_unbought),
    ]
    session_made = api.stripe_intent(NOW - HOUR)  # no metadata: its Checkout Session's made the purchase
    provider.stripe_intents.append(session_made)
    purchase_row(sql, refunded["id"])
    purchase_row(sql, session_made["id"])

    summary = run(engine, broker, provider, "stripe")

    intents = provider.pages("/v1/payment_intents")
    assert len(intents) == 2 and "starting_after" not in intents[0]
    assert intents[1]["starting_after"].startswith("pi_")
    assert (summary.purchases_enqueued, summary.revocations_enqueued, summary.not_paid) == (1, 1, 110)
    assert summary.unmapped == 0
    assert summary.already_fine == 2, "made by its session; refunded before any purchase: nothing to do"
    assert sorted((name, task_id) for name, task_id, _ in queued()) == sorted(
        [
            ("kc_tasks.create_purchase", inbox.task_id_for(missing["id"])),
            ("kc_tasks.revoke_purchase", inbox.task_id_for(refunded["id"], inbox.REVOKE_PURCHASE)),
        ]
    )
    assert run(engine, broker, provider, "stripe").revocations_enqueued == 0
    assert queued() == []


@pytest.mark.parametrize("fault", ["429", "500"])
def test_a_rate_limit_or_a_passing_failure_is_waited_out(
    engine: Engine, broker: Celery, provider: api.Provider, fault: str
) -> None:
    provider.razorpay_payments = [api.razorpay_payment(NOW - HOUR, api.new_id(), api.new_id())]
    provider.fail("/v1/payments", fault, fault)
    summary = run(engine, broker, provider, "razorpay")
    assert (summary.error, summary.purchases_enqueued) == (None, 1)
    assert len(queued()) == 1


@pytest.mark.parametrize(
    ("faults", "said"),
    [
        (["500"] * 3, "failed after 3 tries: HTTP 500"),
        (["timeout"] * 3, "ReadTimeout"),
        (["garbage"], "a body that is not JSON"),
        (["shape"], "no list of items"),
    ],
)
def test_an_api_down_slow_or_answering_garbage_enqueues_nothing(
    engine: Engine, broker: Celery, provider: api.Provider, sql, faults: list[str], said: str
) -> None:
    """The first page is good, the second fails: nothing of the first is enqueued or stored."""
    provider.razorpay_payments = [
        api.razorpay_payment(NOW - HOUR - i, api.new_id(), api.new_id()) for i in range(provider_api.PAGE_SIZE + 5)
    ]
    provider.fail("/v1/payments", "pass", *faults)  # page one is served, then the faults
    with pytest.raises(ProviderApiError) as raised:
        run(engine, broker, provider, "razorpay", read_timeout=0.5)
    assert said in str(raised.value) and "razorpay" in str(raised.value)
    assert api.RAZORPAY_KEY_SECRET not in str(raised.value) and api.RAZORPAY_KEY_ID not in str(raised.value)
    assert queued() == [] and sql("SELECT count(*) FROM payment_events") == [(0,)]


def test_two_reconcilers_at_once_enqueue_each_purchase_once(
    engine: Engine, broker: Celery, provider: api.Provider, sql
) -> None:
    payments = [api.razorpay_payment(NOW - HOUR - i, api.new_id(), api.new_id()) for i in range(20)]
    provider.razorpay_payments = payments
    start = threading.Barrier(2)
    results: list[reconcile.Summary] = []

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
    engine: Engine, broker: Celery, provider: api.Provider
) -> None:
    """Its message was lost (Redis, a purged queue): the next period's run sends it again."""
    payment = api.razorpay_payment(NOW - HOUR, api.new_id(), api.new_id())
    provider.razorpay_payments = [payment]
    run(engine, broker, provider, "razorpay")
    assert len(queued()) == 1  # ... and lost
    assert run(engine, broker, provider, "razorpay").purchases_enqueued == 0, "not yet: it may be on its way"
    resent = run(engine, broker, provider, "razorpay", resend_after=0)
    assert resent.purchases_enqueued == 1 and resent.actions == [f"sent again create_purchase {payment['id']}"]
    assert [task_id for _, task_id, _ in queued()] == [inbox.task_id_for(payment["id"])]


def test_failures_are_warnings_naming_the_provider_never_the_keys(
    engine: Engine, broker: Celery, provider: api.Provider, caplog: pytest.LogCaptureFixture
) -> None:
    bad = settings_for(provider, KC_STRIPE_API_KEY="rk_test_wrong-key-also-secret")
    provider.fail("/v1/payments", "500", "500", "500")
    caplog.set_level(logging.DEBUG)
    win = reconcile.window(HOUR)
    rzp = reconcile.run_logged(engine, broker, settings_for(provider), "razorpay", win)
    stripe = reconcile.run_logged(engine, broker, bad, "stripe", win)
    assert rzp.error and "HTTP 500" in rzp.error
    assert stripe.error and "HTTP 401" in stripe.error
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("reconcile razorpay:") for w in warnings)
    assert any(w.startswith("reconcile stripe:") for w in warnings)
    text = caplog.text + repr(rzp) + repr(stripe) + repr(settings_for(provider))
    for secret in (api.RAZORPAY_KEY_ID, api.RAZORPAY_KEY_SECRET, api.STRIPE_API_KEY, "rk_test_wrong-key-also-secret"):
        assert secret not in text


def test_reconcile_command_dry_run_changes_nothing_and_a_failure_exits_non_zero(
    database_url: str, broker: Celery, provider: api.Provider, sql
) -> None:
    payment = api.razorpay_payment(NOW - HOUR, api.new_id(), api.new_id(), payment_id="pay_dry_run")
    provider.razorpay_payments = [payment]
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
    assert len(queued()) == 1
    story = kc("payment", "pay_dry_run", **env)
    assert "reconciliation saw razorpay.payment.paid: enqueued" in story.stdout
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
    client = reconcile.api_for(settings, "razorpay")
    client._sleep = lambda seconds: None
    with pytest.raises(ProviderApiError, match="ConnectError"):
        reconcile.run(engine, broker, client, reconcile.window(HOUR))
