"""Reconciliation's pure rules: the retry policy of the API client, what an API object asks
for, the story's verdict, the summary line."""

from __future__ import annotations

import pytest

from kc_tasks.core.settings import Settings
from kc_tasks.payments import reconciler, story
from kc_tasks.providers import NOT_A_COURSE, Ignored, Malformed, Purchase, Revocation, Unmapped, apis
from kc_tasks.providers import recovered as objects
from tests import provider_api_server as api
from tests import provider_samples as s

S, C = api.new_id(), api.new_id()


@pytest.mark.parametrize(
    ("status", "retry_after", "attempt", "wait"),
    [
        (429, "7", 1, 7.0),
        (429, "0", 3, 0.0),
        (429, None, 3, 4.0),
        (429, "soon", 1, 1.0),
        (429, "3600", 1, apis.MAX_WAIT),
        (429, "1", apis.RATE_LIMIT_TRIES, None),
        (500, None, 1, 0.5),
        (503, None, 2, 1.0),
        (502, None, apis.FAILURE_TRIES, None),
        (None, None, 1, 0.5),
        (None, None, apis.FAILURE_TRIES, None),
        (401, None, 1, None),
        (404, None, 1, None),
    ],
)
def test_retry_delay(status: int | None, retry_after: str | None, attempt: int, wait: float | None) -> None:
    assert apis.retry_delay(status, retry_after, attempt) == wait


def paid(student: str | None = S, course: str | None = C, **payment: object) -> dict:
    """A captured payment and the order the platform's server created for it."""
    found = s.razorpay_payment(**payment)  # type: ignore[arg-type]
    return {"payment": found, "order": s.razorpay_order(found, student, course)}


def refunded(amount: int | None = None) -> dict:
    payment = s.razorpay_payment()
    refund = s.razorpay_refund(payment, amount)
    payment.update(amount_refunded=refund["amount"], refund_status="full" if amount is None else "partial")
    return {"refund": refund, "payment": payment}


TAMPERED = {"student_id": api.new_id(), "course_id": api.new_id()}  # the browser's notes


@pytest.mark.parametrize(
    ("kind", "found", "expected", "why"),
    [
        ("paid", paid(), Purchase, None),
        ("paid", paid(None, None), Ignored, NOT_A_COURSE),
        ("paid", paid(None, None, notes=TAMPERED), Ignored, NOT_A_COURSE),
        ("paid", paid(S, None), Unmapped, "name student_id but not course_id"),
        ("paid", paid(S, "not-a-uuid"), Unmapped, "course_id is not a UUID"),
        ("paid", {"payment": s.razorpay_payment(), "order": None}, Ignored, "a payment without an order"),
        ("paid", {**paid(), "order": {**paid()["order"], "id": "order_other"}}, Unmapped, "is not the order"),
        ("refunded", refunded(), Revocation, None),
        ("refunded", refunded(amount=100), Ignored, "partial refund"),
        ("disputed", {"dispute": s.razorpay_dispute(s.razorpay_payment())}, Revocation, None),
        ("disputed", {"dispute": s.razorpay_dispute(s.razorpay_payment(), "won")}, Ignored, "not lost"),
    ],
)
def test_what_razorpay_objects_ask_for(kind: str, found: dict, expected: type, why: str | None) -> None:
    action = objects.action("razorpay", kind, found)
    assert isinstance(action, expected)
    if why is not None:
        assert why in action.why  # type: ignore[union-attr]


def test_the_order_decides_the_course_never_the_payments_own_notes() -> None:
    found = paid(notes=TAMPERED)
    action = objects.action("razorpay", "paid", found)
    assert isinstance(action, Purchase)
    assert (action.kwargs["student_id"], action.kwargs["course_id"]) == (S, C)


def test_a_refund_or_dispute_revokes_with_its_reason() -> None:
    refund = refunded()
    assert objects.action("razorpay", "refunded", refund) == Revocation(
        refund["payment"]["id"], "refund", refund["refund"]["id"]
    )
    dispute = s.razorpay_dispute(s.razorpay_payment(payment_id="pay_disputed"))
    assert objects.action("razorpay", "disputed", {"dispute": dispute}) == Revocation("pay_disputed", "dispute")


@pytest.mark.parametrize(
    ("eid", "stored", "expected"),
    [
        ("razorpay:pay_1:paid", {**s.razorpay_payment(notes={"student_id": S, "course_id": C})}, Ignored),
        ("razorpay:pay_1:refunded", {**s.razorpay_payment(refunded=49900)}, Revocation),
        ("stripe:pi_1:paid", s.stripe_intent("pi_1", S, C), Purchase),
        ("stripe:pi_1:refunded", s.stripe_charge("pi_1"), Revocation),
    ],
)
def test_events_stored_by_an_earlier_release_read_back(eid: str, stored: dict, expected: type) -> None:
    """Razorpay's were the payment alone: its notes no longer decide a grant."""
    assert isinstance(objects.parse(objects.body(stored), eid).action, expected)


def test_a_found_object_maps_as_its_webhook_does_and_its_event_reads_back() -> None:
    found = paid(payment_id="pay_a:b")
    made = objects.event("razorpay", "paid", found)
    assert made is not None
    event, body = made
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
    assert objects.parse(body, event.event_id) == event
    with pytest.raises(Malformed):
        objects.parse(body, "stripe:pi_1:disputed")


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
        (F(inbox_statuses=("unmapped", "ignored")), "not granted: paid, but its server-set notes/metadata do not"),
        (F(inbox_statuses=("ignored",), whys=(f"{NOT_A_COURSE}: x",)), "not granted: not a course purchase"),
        (
            F(inbox_statuses=("ignored",), whys=("an event of the other Stripe mode: a live event",)),
            "not granted: an event of the other Stripe mode (KC_STRIPE_LIVEMODE)",
        ),
        (F(active=False, revoked_reason="dispute"), "not granted: revoked (dispute)"),
        (F(inbox_statuses=("invalid",)), "not granted: its notes/metadata break"),
        (F(inbox_statuses=("ignored", "enqueued")), "not granted: enqueued, no outcome yet"),
        (F(inbox_statuses=("ignored",)), "not granted: its events were ignored"),
        (F(), "unknown"),
    ],
)
def test_verdict(facts: story.Facts, line: str) -> None:
    assert story.verdict(facts).startswith(line)


def test_summary_line_and_result() -> None:
    summary = reconciler.Summary("razorpay", "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00", seen=3)
    summary.already_fine, summary.purchases_enqueued, summary.unmapped = 1, 1, 1
    assert summary.line() == (
        "reconcile razorpay 2026-01-01T00:00:00+00:00 .. 2026-01-02T00:00:00+00:00: 3 payment(s) seen, "
        "1 already fine, 1 purchase(s) enqueued, 0 revocation(s) enqueued, 1 unmapped, 0 not paid, "
        "0 not a course purchase"
    )
    assert "actions" not in summary.as_result() and summary.as_result()["purchases_enqueued"] == 1
    assert reconciler.Summary("stripe", "a", "b").line().startswith("reconcile stripe a .. b: 0 event(s) seen")


def test_summary_line_counts_instalments_and_pending_refunds_when_there_are_some() -> None:
    summary = reconciler.Summary("razorpay", "a", "b", seen=4, part_payments=2, refunds_pending=1)
    assert summary.line().endswith(", 2 earlier instalment(s) of an order paid in parts, 1 refund(s) still pending")
    assert summary.as_result()["part_payments"] == 2


def payment_of(order: str, created: object, pid: str) -> tuple[str, dict]:
    return pid, {"id": pid, "order_id": order, "created_at": created, "status": "captured"}


@pytest.mark.parametrize(
    ("captured", "kept"),
    [
        ([payment_of("order_a", 100, "pay_1")], ["pay_1"]),
        (
            [
                payment_of("order_a", 100, "pay_1"),
                payment_of("order_a", 160, "pay_2"),
                payment_of("order_b", 90, "pay_3"),
            ],
            ["pay_2", "pay_3"],
        ),
        ([payment_of("order_a", 100, "pay_b"), payment_of("order_a", 100, "pay_a")], ["pay_b"]),
        ([payment_of("order_a", None, "pay_1"), payment_of("order_a", 5, "pay_2")], ["pay_2"]),
    ],
    ids=["alone", "the last instalment of each order", "same second: the greater id", "no created_at counts as 0"],
)
def test_of_an_order_paid_in_parts_only_its_latest_payment_is_a_candidate(
    captured: list[tuple[str, dict]], kept: list[str]
) -> None:
    assert sorted(reconciler.latest_of_each_order(dict(captured))) == kept


def test_beat_looks_back_the_reconcile_window() -> None:
    assert Settings.from_env({}).reconcile_window == 3 * 86400
    settings = Settings.from_env({"KC_RECONCILE_WINDOW": "7200"})
    win = reconciler.window(settings.reconcile_window, now=10_000)
    assert (win.since, win.until) == (10_000 - 7200, 10_000)
    assert win.holds(10_000) and win.holds(2800) and not win.holds(2799) and not win.holds("5300")
