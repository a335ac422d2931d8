"""create_purchase's kwargs: what is accepted, and what a rejected delivery is told."""

from __future__ import annotations

from typing import Any

import pytest

from kc_tasks.errors import InvalidPurchase, PermanentError
from kc_tasks.payload import Purchase, parse_purchase

STUDENT = "6f1c2d3e-0000-4000-8000-000000000001"
COURSE = "6f1c2d3e-0000-4000-8000-000000000002"
VALID: dict[str, Any] = {
    "payment_id": "pay_1NqX",
    "student_id": STUDENT,
    "course_id": COURSE,
    "amount_cents": 4999,
    "currency": "INR",
}
MISSING = object()


def kwargs(**changes: Any) -> dict[str, Any]:
    """The valid kwargs with some changed; a value of MISSING drops that kwarg."""
    merged = {**VALID, **changes}
    return {name: value for name, value in merged.items() if value is not MISSING}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(kwargs(), {**VALID, "metadata": None}, id="without-metadata"),
        pytest.param(
            kwargs(metadata={"coupon": "WELCOME10", "items": [1, 2.5, None, True]}),
            {**VALID, "metadata": {"coupon": "WELCOME10", "items": [1, 2.5, None, True]}},
            id="with-metadata",
        ),
        pytest.param(kwargs(metadata=None), {**VALID, "metadata": None}, id="metadata-null"),
        pytest.param(kwargs(metadata={}), {**VALID, "metadata": {}}, id="metadata-empty-object"),
        pytest.param(
            kwargs(student_id=STUDENT.upper(), course_id=COURSE.upper()),
            {**VALID, "metadata": None},
            id="upper-case-uuids-normalised",
        ),
        pytest.param(kwargs(amount_cents=0), {**VALID, "amount_cents": 0, "metadata": None}, id="amount-zero"),
        pytest.param(
            kwargs(amount_cents=2**63 - 1),
            {**VALID, "amount_cents": 2**63 - 1, "metadata": None},
            id="amount-max-bigint",
        ),
        pytest.param(kwargs(payment_id="x" * 255), {**VALID, "payment_id": "x" * 255, "metadata": None}, id="pid-255"),
        pytest.param(kwargs(payment_id="x"), {**VALID, "payment_id": "x", "metadata": None}, id="pid-1"),
        pytest.param(
            kwargs(metadata={"blob": "x" * 16_000}),
            {**VALID, "metadata": {"blob": "x" * 16_000}},
            id="metadata-just-under-16KiB",
        ),
    ],
)
def test_a_valid_purchase_is_accepted(given: dict[str, Any], expected: dict[str, Any]) -> None:
    purchase = parse_purchase(given)

    assert isinstance(purchase, Purchase)
    assert purchase.model_dump() == expected


@pytest.mark.parametrize(
    ("given", "field", "rule"),
    [
        pytest.param(kwargs(payment_id=MISSING), "payment_id", "is required", id="payment_id-missing"),
        pytest.param(kwargs(student_id="not-a-uuid"), "student_id", "must be a UUID", id="student_id-not-uuid"),
        pytest.param(kwargs(course_id=12345), "course_id", "valid string", id="course_id-int"),
        pytest.param(kwargs(course_id=None), "course_id", "valid string", id="course_id-null"),
        pytest.param(kwargs(amount_cents=-1), "amount_cents", "greater than or equal to 0", id="amount-negative"),
        pytest.param(kwargs(amount_cents="4999"), "amount_cents", "valid integer", id="amount-string"),
        pytest.param(kwargs(amount_cents=True), "amount_cents", "valid integer", id="amount-bool"),
        pytest.param(kwargs(amount_cents=2**63), "amount_cents", "less than or equal to", id="amount-too-big"),
        pytest.param(kwargs(amount_cents=1.5), "amount_cents", "valid integer", id="amount-float"),
        pytest.param(kwargs(amount_cents=5.0), "amount_cents", "valid integer", id="amount-whole-float"),
        pytest.param(kwargs(currency="rupees"), "currency", "ISO 4217", id="currency-word"),
        pytest.param(kwargs(currency="inr"), "currency", "ISO 4217", id="currency-lower-case"),
        pytest.param(kwargs(currency="IN"), "currency", "ISO 4217", id="currency-two-letters"),
        pytest.param(kwargs(payment_id=""), "payment_id", "at least 1 character", id="pid-empty"),
        pytest.param(kwargs(payment_id="x" * 256), "payment_id", "at most 255 characters", id="pid-256"),
        pytest.param(kwargs(payment_id="pay\x00_1"), "payment_id", "NUL character", id="pid-nul"),
        pytest.param(kwargs(metadata="not an object"), "metadata", "JSON object", id="metadata-string"),
        pytest.param(kwargs(metadata=["a", "b"]), "metadata", "JSON object", id="metadata-list"),
        pytest.param(kwargs(metadata={"blob": "x" * 20_000}), "metadata", "at most 16384 bytes", id="metadata-20KB"),
        pytest.param(kwargs(metadata={"note": "a\x00b"}), "metadata", "NUL character", id="metadata-nul-value"),
        pytest.param(kwargs(metadata={"k\x00": 1}), "metadata", "NUL character", id="metadata-nul-key"),
        pytest.param(kwargs(metadata={"x": float("nan")}), "metadata", "plain JSON", id="metadata-nan"),
        pytest.param(kwargs(metadata={"x": float("inf")}), "metadata", "plain JSON", id="metadata-infinity"),
        pytest.param(kwargs(metadata={"x": {1, 2}}), "metadata", "plain JSON", id="metadata-set"),
        pytest.param(kwargs(surprise=True), "surprise", "is not a create_purchase kwarg", id="extra-kwarg"),
    ],
)
def test_a_broken_rule_is_rejected_naming_field_and_rule(given: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(InvalidPurchase) as caught:
        parse_purchase(given)

    message = str(caught.value)
    assert message.startswith("invalid create_purchase kwargs: ")
    assert f"{field}: " in message
    assert rule in message
    assert isinstance(caught.value, PermanentError)


def test_empty_kwargs_list_every_missing_field() -> None:
    with pytest.raises(InvalidPurchase) as caught:
        parse_purchase({})

    message = str(caught.value)
    for field in ("payment_id", "student_id", "course_id", "amount_cents", "currency"):
        assert f"{field}: is required" in message
    assert "metadata" not in message


def test_several_broken_rules_are_all_reported_in_one_message() -> None:
    given = kwargs(student_id="nope", amount_cents=-5, currency="usd", payment_id=MISSING, coupon="X")

    with pytest.raises(InvalidPurchase) as caught:
        parse_purchase(given)

    reported = str(caught.value).removeprefix("invalid create_purchase kwargs: ").split("; ")
    assert sorted(part.split(":", 1)[0] for part in reported) == [
        "amount_cents",
        "coupon",
        "currency",
        "payment_id",
        "student_id",
    ]


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidPurchase) as caught:
        parse_purchase(kwargs(payment_id="x" * 10_000))

    assert len(str(caught.value)) < 200


def test_metadata_with_a_literal_backslash_u0000_text_is_accepted() -> None:
    metadata = {"path": "C:\\u0000\\reports"}

    assert parse_purchase(kwargs(metadata=metadata)).metadata == metadata


def test_deeply_nested_metadata_is_rejected_as_invalid() -> None:
    metadata: dict[str, Any] = {}
    inner = metadata
    for _ in range(3_000):
        inner["a"] = {}
        inner = inner["a"]

    with pytest.raises(InvalidPurchase, match="metadata"):
        parse_purchase(kwargs(metadata=metadata))
