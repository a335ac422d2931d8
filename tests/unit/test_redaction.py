"""The redacted form of a stored body, over the providers' documented samples (pure, no
services): every personal field gone, every field kc_tasks reads still there, and the parsers
act on the redacted body as on the original."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from kc_tasks.core import names
from kc_tasks.payments import inbox, redaction
from kc_tasks.providers import Purchase, dig, recovered
from kc_tasks.providers.kept import SERVER_SET
from tests import provider_samples as s
from tests.provider_tables import KC_TABLE, RAZORPAY_TABLE, STRIPE_TABLE

STUDENT, COURSE = str(uuid.uuid4()), str(uuid.uuid4())
PI = "pi_3MtwBwLkdIwHu7ix28a3tqPa"


def razorpay_samples() -> dict[str, dict[str, Any]]:
    """One sample of each Razorpay entity kc_tasks reads, the card payment's too."""
    upi = s.razorpay_payment("pay_29QQoUBi66xm2f")
    card = s.razorpay_payment("pay_29QQoUBi66xm2g", method="card")
    refunded = dict(upi, amount_refunded=upi["amount"], refund_status="full", status="refunded")
    return {
        "payment (payment.captured)": s.razorpay_event("payment.captured", card),
        "order (order.paid, UPI)": s.razorpay_event("order.paid", upi, s.razorpay_order(upi, STUDENT, COURSE)),
        "order (order.paid, card)": s.razorpay_event("order.paid", card, s.razorpay_order(card, STUDENT, COURSE)),
        "refund (refund.processed)": s.razorpay_event("refund.processed", refunded, refund=s.razorpay_refund(upi)),
        "dispute (payment.dispute.lost)": s.razorpay_event(
            "payment.dispute.lost", upi, dispute=s.razorpay_dispute(upi)
        ),
        "order paid in part (order.paid, partial_payment)": s.razorpay_event(
            "order.paid", upi, s.razorpay_order(upi, STUDENT, COURSE, amount=3 * upi["amount"])
        ),
        "refund (refund.failed)": s.razorpay_event(
            "refund.failed", refunded, refund=s.razorpay_refund(upi, status="failed")
        ),
    }


def stripe_samples() -> dict[str, dict[str, Any]]:
    """One sample of each Stripe object that carries personal data (a Refund carries none: its
    events are read back redacted by test_every_stripe_rule_reads_the_redacted_body_as_the_original)."""
    return {
        "session (checkout.session.completed)": s.stripe_event(
            "checkout.session.completed", s.stripe_session(PI, STUDENT, COURSE)
        ),
        "PaymentIntent (payment_intent.succeeded)": s.stripe_event(
            "payment_intent.succeeded", s.stripe_intent(PI, STUDENT, COURSE)
        ),
        "charge (charge.refunded)": s.stripe_event("charge.refunded", s.stripe_charge(PI)),
        "dispute (charge.dispute.closed)": s.stripe_event("charge.dispute.closed", s.stripe_dispute(PI)),
        "session of a subscription's trial (checkout.session.completed)": s.stripe_event(
            "checkout.session.completed",
            s.stripe_session(None, STUDENT, COURSE, payment_status="no_payment_required", mode="subscription"),
        ),
    }


# What the parsers read, by provider: (path, ...) into the body.
PAYMENT = ("payload", "payment", "entity")
ORDER = ("payload", "order", "entity")
RAZORPAY_READS = [
    ("event",),
    (*PAYMENT, "id"),
    (*PAYMENT, "amount"),
    (*PAYMENT, "currency"),
    (*PAYMENT, "status"),
    (*PAYMENT, "order_id"),
    (*PAYMENT, "amount_refunded"),
    (*PAYMENT, "refund_status"),
    (*ORDER, "id"),
    (*ORDER, "status"),
    (*ORDER, "amount"),
    (*ORDER, "amount_paid"),
    (*ORDER, "notes", "student_id"),
    (*ORDER, "notes", "course_id"),
    ("payload", "refund", "entity", "id"),
    ("payload", "refund", "entity", "payment_id"),
    ("payload", "refund", "entity", "status"),
    ("payload", "dispute", "entity", "id"),
    ("payload", "dispute", "entity", "payment_id"),
    ("payload", "dispute", "entity", "status"),
]
OBJECT = ("data", "object")
STRIPE_READS = [
    ("id",),
    ("type",),
    ("livemode",),
    *(
        (*OBJECT, *field)
        for field in (
            ("id",),
            ("mode",),
            ("payment_status",),
            ("failure_reason",),
            ("payment_intent",),
            ("amount_total",),
            ("amount_received",),
            ("amount",),
            ("currency",),
            ("metadata", "student_id"),
            ("metadata", "course_id"),
            ("refunded",),
            ("status",),
        )
    ),
]


def redact(provider: str, sample: dict[str, Any], event_id: str = "evt_1") -> dict[str, Any]:
    reduced = redaction.redacted(provider, event_id, json.dumps(sample))
    for personal in s.PERSONAL:
        assert personal not in reduced, f"{personal!r} survived"
    return dict(json.loads(reduced))


def same_plan(provider: str, original: dict[str, Any], reduced: dict[str, Any], event_id: str = "evt_1") -> None:
    """The parsers give the same action on both; the task the same kwargs."""
    before = inbox.parse(provider, s.encode(original), event_id)
    after = inbox.parse(provider, s.encode(reduced), event_id)
    assert after == before
    assert inbox.plan(after) == inbox.plan(before)


def strings(value: Any) -> list[str]:
    """Every key and string of a JSON value."""
    if isinstance(value, dict):
        return [k for k in value] + [x for v in value.values() for x in strings(v)]
    if isinstance(value, list):
        return [x for v in value for x in strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("name", list(razorpay_samples()))
def test_razorpay_samples_lose_every_personal_field_and_keep_what_kc_tasks_reads(name: str) -> None:
    sample = razorpay_samples()[name]
    assert any(p in json.dumps(sample) for p in s.PERSONAL), "the sample carries personal data"
    reduced = redact("razorpay", sample)

    for path in RAZORPAY_READS:
        assert dig(reduced, *path) == dig(sample, *path), path
    for field in ("email", "contact", "vpa", "card", "upi", "notes", "description", "acquirer_data"):
        assert dig(reduced, *PAYMENT, field) is None, field
    assert "account_id" not in reduced
    same_plan("razorpay", sample, reduced)


@pytest.mark.parametrize("name", list(stripe_samples()))
def test_stripe_samples_lose_every_personal_field_and_keep_what_kc_tasks_reads(name: str) -> None:
    sample = stripe_samples()[name]
    assert any(p in json.dumps(sample) for p in s.PERSONAL), "the sample carries personal data"
    reduced = redact("stripe", sample)

    for path in STRIPE_READS:
        assert dig(reduced, *path) == dig(sample, *path), path
    gone = ("customer_details", "customer_email", "shipping_details", "shipping", "receipt_email")
    for field in (*gone, "billing_details", "payment_method_details", "evidence", "success_url"):
        assert dig(reduced, *OBJECT, field) is None, field
    same_plan("stripe", sample, reduced)


@pytest.mark.parametrize(("name", "sample", "action"), RAZORPAY_TABLE, ids=[row[0] for row in RAZORPAY_TABLE])
def test_every_razorpay_rule_reads_the_redacted_body_as_the_original(name: str, sample: Any, action: Any) -> None:
    reduced = redact("razorpay", sample)
    after = inbox.parse("razorpay", s.encode(reduced), "evt_1").action
    if isinstance(action, Purchase) and "metadata" in action.kwargs:
        # The order's other notes went to the purchase's metadata, which keeps them; the
        # redacted body does not.
        action = Purchase({k: v for k, v in action.kwargs.items() if k != "metadata"})
    assert after == action


@pytest.mark.parametrize(("name", "sample", "action"), STRIPE_TABLE, ids=[row[0] for row in STRIPE_TABLE])
def test_every_stripe_rule_reads_the_redacted_body_as_the_original(name: str, sample: Any, action: Any) -> None:
    reduced = redact("stripe", sample)
    assert inbox.parse("stripe", s.encode(reduced), "evt_1").action == action


@pytest.mark.parametrize("setting", [True, False])
def test_the_stripe_mode_still_decides_on_a_redacted_body(setting: bool) -> None:
    sample = s.stripe_event("payment_intent.succeeded", s.stripe_intent(PI, STUDENT, COURSE), livemode=True)
    reduced = redact("stripe", sample)
    assert inbox.parse("stripe", s.encode(reduced), None, setting) == inbox.parse(
        "stripe", s.encode(sample), None, setting
    )


def test_a_stripe_event_found_by_reconciliation_says_so_when_redacted() -> None:
    sample = {**stripe_samples()["session (checkout.session.completed)"], recovered.FOUND_BY: True}
    assert redact("stripe", sample)[recovered.FOUND_BY] is True


def test_reconciliations_razorpay_objects_are_redacted_by_the_same_tables() -> None:
    payment = s.razorpay_payment("pay_29QQoUBi66xm2f", method="card")
    refunded = dict(payment, amount_refunded=payment["amount"], refund_status="full", status="refunded")
    found = {
        recovered.PAID: {"payment": payment, "order": s.razorpay_order(payment, STUDENT, COURSE)},
        recovered.REFUNDED: {"refund": s.razorpay_refund(payment), "payment": refunded},
        recovered.DISPUTED: {"dispute": s.razorpay_dispute(payment)},
    }
    for kind, objects in found.items():
        made = recovered.event("razorpay", kind, objects)
        assert made is not None
        event, body = made
        reduced = redact("reconcile", json.loads(body), event.event_id)
        same_plan("reconcile", json.loads(body), reduced, event.event_id)
    # An earlier release stored a captured payment alone.
    eid = recovered.event_id("razorpay", payment["id"], recovered.PAID)
    same_plan("reconcile", payment, redact("reconcile", payment, eid), eid)


def test_an_earlier_releases_stripe_reconciliation_objects_are_redacted() -> None:
    for kind, obj in (
        (recovered.PAID, s.stripe_intent(PI, STUDENT, COURSE)),
        (recovered.REFUNDED, s.stripe_charge(PI)),
    ):
        eid = recovered.event_id("stripe", PI, kind)
        same_plan("reconcile", obj, redact("reconcile", obj, eid), eid)


@pytest.mark.parametrize(("body", "action"), KC_TABLE)
def test_kc_bodies_keep_the_task_kwargs(body: dict[str, Any], action: Any) -> None:
    same_plan("kc", body, redact("kc", body, body["id"]), body["id"])


def test_kc_metadata_is_removed_and_a_body_the_task_refuses_stays_refused() -> None:
    kwargs = {"payment_id": "p1", "student_id": STUDENT, "course_id": COURSE, "amount_cents": 100, "currency": "INR"}
    with_metadata = {"id": "e1", "type": "payment.succeeded", "data": {**kwargs, "metadata": {"email": s.EMAIL}}}
    reduced = redact("kc", with_metadata)
    assert reduced["data"] == kwargs, "the purchase row keeps the metadata; the body does not"

    for extra in ({"email": s.EMAIL}, {"metadata": s.EMAIL}):
        refused = {"id": "e2", "type": "payment.succeeded", "data": {**kwargs, **extra}}
        status, task, _ = inbox.plan(inbox.parse("kc", s.encode(redact("kc", refused)), "e2"))
        assert (status, task) == (names.INVALID, None)


@pytest.mark.parametrize(
    ("provider", "sample"),
    [("razorpay", sample) for sample in razorpay_samples().values()]
    + [("stripe", sample) for sample in stripe_samples().values()],
)
def test_redacting_twice_changes_nothing(provider: str, sample: dict[str, Any]) -> None:
    once = redaction.redacted(provider, "evt_1", json.dumps(sample))
    assert redaction.redacted(provider, "evt_1", once) == once


@pytest.mark.parametrize(
    ("value", "table", "kept"),
    [
        ({"a": 1, "b": 2}, {"a": redaction.LEAF}, {"a": 1}),
        ({"a": {"email": s.EMAIL}}, {"a": redaction.LEAF}, {"a": redaction.REDACTED}),
        ({"a": [s.EMAIL]}, {"a": redaction.LEAF}, {"a": redaction.REDACTED}),
        ({"pi": "pi_1"}, {"pi": redaction.ID}, {"pi": "pi_1"}),
        ({"pi": {"id": "pi_1", "receipt_email": s.EMAIL}}, {"pi": redaction.ID}, {"pi": {"id": "pi_1"}}),
        ({"notes": []}, {"notes": SERVER_SET}, {"notes": []}),
        ({"notes": [s.EMAIL]}, {"notes": SERVER_SET}, {"notes": []}),
        ({"notes": s.EMAIL}, {"notes": SERVER_SET}, {"notes": redaction.REDACTED}),
        ({"l": [{"id": 1, "x": 2}, {"id": 3}]}, {"l": [{"id": redaction.LEAF}]}, {"l": [{"id": 1}, {"id": 3}]}),
        ({"l": {"id": 1}}, {"l": [{"id": redaction.LEAF}]}, {"l": {}}),
    ],
)
def test_keep_follows_the_table_and_never_keeps_an_unexpected_shape(value: Any, table: Any, kept: Any) -> None:
    assert redaction.keep(value, table) == kept


def test_a_body_that_is_no_json_object_becomes_an_empty_object() -> None:
    assert redaction.redacted("razorpay", "e", "not json") == "{}"
    assert redaction.redacted("stripe", "e", "[1, 2]") == "{}"


def test_the_redacted_body_is_ascii_whatever_the_original_held() -> None:
    sample = stripe_samples()["PaymentIntent (payment_intent.succeeded)"]
    sample["data"]["object"]["id"] = "pi_\u00e9\ud800"
    assert redaction.redacted("stripe", "e", json.dumps(sample)).isascii()


def test_every_string_of_a_redacted_body_is_a_field_name_or_an_id_type_status_or_currency() -> None:
    """No free text survives: only the tables' names and the values of their leaves."""
    names = set()

    def collect(table: Any) -> None:
        if isinstance(table, dict):
            names.update(table)
            for sub in table.values():
                collect(sub)
        elif isinstance(table, list):
            collect(table[0])

    for table in redaction.KEPT.values():
        collect(table)
    for provider, sample in [("razorpay", x) for x in razorpay_samples().values()] + [
        ("stripe", x) for x in stripe_samples().values()
    ]:
        reduced = redact(provider, sample)
        values = {v for v in strings(reduced) if v not in names}
        originals = {
            v
            for v in strings(sample)
            if v.startswith(("pay_", "order_", "rfnd_", "disp_", "pi_", "ch_", "cs_", "dp_", "evt_", "re_"))
        }
        allowed = originals | {STUDENT, COURSE, "INR", "inr"} | {reduced.get("event"), reduced.get("type")}
        allowed |= {"event", "payment", "order", "refund", "dispute", "checkout.session", "payment_intent", "charge"}
        allowed |= {"captured", "refunded", "paid", "processed", "lost", "complete", "succeeded", "full"}
        allowed |= {"attempted", "failed", "refund.failed", "payment", "subscription", "no_payment_required"}
        allowed |= {"expired_or_canceled_card"}
        assert values <= allowed, values - allowed


def test_docs_security_lists_every_kept_field_of_every_table() -> None:
    """The tables in code and in docs/security.md are the same lists."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    section = page.split("### The redacted form", 1)[1]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| `")}

    def names(table: Any, prefix: str = "") -> set[str]:
        if isinstance(table, list):
            return names(table[0], prefix + "[]")
        if not isinstance(table, dict):
            return set()
        return {n for key, sub in table.items() for n in {key} | names(sub, key)}

    for key, table in redaction.KEPT.items():
        # A reconcile table is documented as the webhook's entities it holds: both rows count.
        providers = {f"`{name}`" for name in key.split()}
        documented = " ".join(line for name, line in rows.items() if name.split(" ")[0] in providers)
        missing = [
            name for name in sorted(names(table)) if f"`{name}" not in documented and f".{name}" not in documented
        ]
        assert not missing, f"docs/security.md does not list {missing} for {key}"
