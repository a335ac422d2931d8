"""Reconciliation's pure rules: the retry policy of the API client, what an API object asks
for, the story's verdict, the summary line."""

from __future__ import annotations

import pytest

from kc_tasks import provider_api, reconcile, story
from kc_tasks.providers import Ignored, Purchase, Revocation, Unmapped
from kc_tasks.providers import reconcile as objects
from tests import provider_api_server as api

S, C = api.new_id(), api.new_id()


@pytest.mark.parametrize(
    ("status", "retry_after", "attempt", "wait"),
    [
        (429, "7", 1, 7.0),
        (429, "0", 3, 0.0),
        (429, None, 3, 4.0),
        (429, "soon", 1, 1.0),
        (429, "3600", 1, provider_api.MAX_WAIT),
        (429, "1", provider_api.RATE_LIMIT_TRIES, None),
        (500, None, 1, 0.5),
        (503, None, 2, 1.0),
        (502, None, provider_api.FAILURE_TRIES, None),
        (None, None, 1, 0.5),
        (None, None, provider_api.FAILURE_TRIES, None),
        (401, None, 1, None),
        (404, None, 1, None),
    ],
)
def test_retry_delay(status: int | None, retry_after: str | None, attempt: int, wait: float | None) -> None:
    assert provider_api.retry_delay(status, retry_after, attempt) == wait


def kind_of(action: object) -> str:
    return type(action).__name__


@pytest.mark.parametrize(
    ("provider", "kind", "obj", "expected"),
    [
        ("razorpay", "paid", api.razorpay_payment(1, S, C), Purchase),
        ("razorpay", "paid", api.razorpay_payment(1), Unmapped),
        ("razorpay", "paid", api.razorpay_payment(1, S, C, status="failed"), Ignored),
        ("razorpay", "paid", api.razorpay_payment(1, S, C, refunded=49900), Ignored),
        ("razorpay", "refunded", api.razorpay_payment(1, S, C, refunded=49900), Revocation),
        ("razorpay", "refunded", api.razorpay_payment(1, S, C, refunded=100), Ignored),
        ("razorpay", "refunded", api.razorpay_payment(1, S, C), Ignored),
        ("stripe", "paid", api.stripe_intent(1, S, C), Purchase),
        ("stripe", "paid", api.stripe_intent(1), Unmapped),
        ("stripe", "paid", api.stripe_intent(1, S, C, status="processing"), Ignored),
        ("stripe", "refunded", api.stripe_charge(api.stripe_intent(1)), Revocation),
        ("stripe", "refunded", api.stripe_charge(api.stripe_intent(1), refunded=False), Ignored),
    ],
)
def test_what_an_api_object_asks_for(provider: str, kind: str, obj: dict, expected: type) -> None:
    assert isinstance(objects.action(provider, kind, obj), expected)


def test_a_paid_object_maps_as_its_webhook_does_and_its_event_reads_back() -> None:
    payment = api.razorpay_payment(1, S, C, payment_id="pay_a:b")
    event = objects.event("razorpay", "paid", payment)
    assert event is not None
    assert (event.provider, event.event_id, event.type) == (
        "reconcile",
        "razorpay:pay_a:b:paid",
        "razorpay.payment.paid",
    )
    assert isinstance(event.action, Purchase)
    assert event.action.kwargs == {
        "payment_id": "pay_a:b",
        "student_id": S,
        "course_id": C,
        "amount_cents": 49900,
        "currency": "INR",
    }
    assert objects.parse(objects.body(payment), event.event_id) == event
    intent = api.stripe_intent(1, S, C)
    stripe_event = objects.event("stripe", "paid", intent)
    assert stripe_event is not None and stripe_event.action.kwargs["currency"] == "INR"  # type: ignore[union-attr]


F = story.Facts


@pytest.mark.parametrize(
    ("facts", "line"),
    [
        (F(active=True, inbox_statuses=("enqueued",)), "granted"),
        (F(active=False, revoked_reason="refund"), "not granted: revoked (refund)"),
        (F(active=False), "not granted: the purchase is inactive"),
        (F(held_by="pay_1"), "not granted: duplicate payment; the student already holds the course by payment pay_1"),
        (F(revoked_reason="refund"), "not granted: revoked (refund) before any purchase was made"),
        (F(dead_letter="InvalidPurchase: bad", inbox_statuses=("enqueued",)), "not granted: dead-lettered"),
        (F(inbox_statuses=("unmapped", "ignored")), "not granted: paid, but its notes/metadata lack"),
        (F(inbox_statuses=("invalid",)), "not granted: its notes/metadata break"),
        (F(inbox_statuses=("ignored", "enqueued")), "not granted: enqueued, no outcome yet"),
        (F(inbox_statuses=("ignored",)), "not granted: its events were ignored"),
        (F(), "unknown"),
    ],
)
def test_verdict(facts: story.Facts, line: str) -> None:
    assert story.verdict(facts).startswith(line)


def test_summary_line_and_result() -> None:
    summary = reconcile.Summary("stripe", "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00", seen=3)
    summary.already_fine, summary.purchases_enqueued, summary.unmapped = 1, 1, 1
    assert summary.line() == (
        "reconcile stripe 2026-01-01T00:00:00+00:00 .. 2026-01-02T00:00:00+00:00: 3 payment(s) seen, 1 already fine, "
        "1 purchase(s) enqueued, 0 revocation(s) enqueued, 1 unmapped, 0 not paid"
    )
    assert "actions" not in summary.as_result() and summary.as_result()["purchases_enqueued"] == 1


def test_the_beat_window_covers_two_periods_and_an_hour() -> None:
    from kc_tasks.settings import Settings

    settings = Settings.from_env({"KC_RECONCILE_INTERVAL": "600"})
    assert reconcile.beat_lookback(settings) == 2 * 600 + 3600
    win = reconcile.window(reconcile.beat_lookback(settings), now=10_000)
    assert (win.since, win.until) == (10_000 - 4800, 10_000)
    assert win.holds(10_000) and win.holds(5200) and not win.holds(5199) and not win.holds("5300")
