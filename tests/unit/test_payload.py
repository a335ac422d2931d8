"""create_purchase's kwargs: what is accepted, and what a rejected delivery is told."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from kc_tasks.core.errors import InvalidPurchase, InvalidRevocation, PermanentError
from kc_tasks.core.payload import (
    PurchaseKwargs,
    RevocationKwargs,
    describe,
    is_task_body,
    parse_purchase,
    parse_revocation,
)

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

    assert isinstance(purchase, PurchaseKwargs)
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


def _nested_objects(levels: int) -> dict[str, Any]:
    value: Any = "v"
    for _ in range(levels):
        value = {"k": value}
    return value


def _nested_arrays(levels: int) -> dict[str, Any]:
    value: Any = "v"
    for _ in range(levels):
        value = [value]
    return {"k": value}


@pytest.mark.parametrize(
    ("metadata", "accepted"),
    [
        (_nested_objects(64), True),  # its innermost key and value 64 levels down
        (_nested_objects(65), False),
        (_nested_arrays(63), True),  # the object's level, then 63 arrays
        (_nested_arrays(64), False),
    ],
    ids=["objects-64", "objects-65", "arrays-63", "arrays-64"],
)
def test_metadata_nests_at_most_64_levels(metadata: dict[str, Any], accepted: bool) -> None:
    if accepted:
        assert parse_purchase(kwargs(metadata=metadata)).metadata == metadata
        return
    with pytest.raises(InvalidPurchase) as caught:
        parse_purchase(kwargs(metadata=metadata))
    assert str(caught.value).startswith("invalid create_purchase kwargs: metadata: must not nest deeper than 64 levels")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"student_id": "nope"},
            "student_id: must be a UUID string (got 'nope')",
        ),
        (
            {"metadata": {1: "a"}},
            "metadata: must have string keys (got {1: 'a'})",
        ),
        (
            {"metadata": {"a": "\ud800"}},
            "metadata: must be valid Unicode text (it holds a lone surrogate) (got {'a': '\\ud800'})",
        ),
        (
            {"metadata": {"a": ["x\x00"]}},
            "metadata: must not contain a NUL character (got {'a': ['x\\x00']})",
        ),
        (
            {"metadata": {"a": float("-inf")}},
            "metadata: must be plain JSON (NaN and Infinity are not) (got {'a': -inf})",
        ),
        (
            {"metadata": {"a": {1, 2}}},
            "metadata: must be plain JSON (a set is not) (got {'a': {1, 2}})",
        ),
        (
            {"surprise": True, "payment_id": MISSING},
            "payment_id: is required; surprise: is not a create_purchase kwarg",
        ),
    ],
    ids=["uuid", "key", "surrogate", "nul-in-array", "infinity", "set", "missing-and-extra"],
)
def test_a_rejected_delivery_is_told_each_rule_in_full(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidPurchase) as caught:
        parse_purchase(kwargs(**changes))
    assert str(caught.value) == "invalid create_purchase kwargs: " + message


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "payment_id: is required; reason: is required"),
        ({"payment_id": "pay_1", "reason": "refund", "x": 1}, "x: is not a revoke_purchase kwarg"),
        (
            {"payment_id": "pay\x00", "reason": "refund"},
            "payment_id: must not contain a NUL character (got 'pay\\x00')",
        ),
        (
            {"payment_id": "pay_1", "reason": "refund", "refund_id": 7},
            "refund_id: Input should be a valid string (got 7)",
        ),
    ],
    ids=["empty", "extra", "nul", "refund-id-int"],
)
def test_a_rejected_revocation_is_told_each_rule_in_full(given: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRevocation) as caught:
        parse_revocation(given)
    assert str(caught.value) == "invalid revoke_purchase kwargs: " + message
    assert isinstance(caught.value, PermanentError)


def test_a_revocation_within_the_rules_is_accepted() -> None:
    assert parse_revocation({"payment_id": "pay_1", "reason": "dispute"}) == RevocationKwargs(
        payment_id="pay_1", reason="dispute", refund_id=None
    )


def test_describe_joins_a_nested_location_with_dots_and_names_a_whole_input_kwargs() -> None:
    with pytest.raises(ValidationError) as nested:
        TypeAdapter(dict[str, list[int]]).validate_python({"items": [1, "two"]})
    assert describe(nested.value) == (
        "invalid create_purchase kwargs: items.1: Input should be a valid integer, unable to parse string as an"
        " integer (got 'two')"
    )
    with pytest.raises(ValidationError) as whole:
        TypeAdapter(dict[str, int]).validate_python([])
    assert describe(whole.value, "revoke_purchase") == (
        "invalid revoke_purchase kwargs: kwargs: Input should be a valid dictionary (got [])"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        # Its repr is 60 characters: shown whole.
        (["a" * 11, "b" * 11, "c" * 11, "d" * 11], "['aaaaaaaaaaa', 'bbbbbbbbbbb', 'ccccccccccc', 'ddddddddddd']"),
        # 61: its first 57, then "...".
        (["a" * 11, "b" * 11, "c" * 11, "d" * 12], "['aaaaaaaaaaa', 'bbbbbbbbbbb', 'ccccccccccc', 'dddddddddd..."),
    ],
    ids=["60-shown-whole", "61-cut-to-57"],
)
def test_a_value_in_a_message_is_cut_after_60_characters(value: Any, shown: str) -> None:
    with pytest.raises(InvalidPurchase) as caught:
        parse_purchase(kwargs(metadata=value))
    assert str(caught.value) == f"invalid create_purchase kwargs: metadata: must be a JSON object (got {shown})"


@pytest.mark.parametrize(
    ("body", "is_one"),
    [
        ([[], {"payment_id": "p"}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}], True),
        (((), {}, {"callbacks": [], "errbacks": [{}], "chain": [], "chord": {}}), True),
        ([[], {}, {}], True),
        ([[], {}], False),
        ([[], {}, {}, {}], False),
        ({"args": [], "kwargs": {}, "embed": {}}, False),
        ("[[], {}, {}]", False),
        (None, False),
        ([{}, {}, {}], False),
        ([[], [], {}], False),
        ([[], {}, []], False),
        ([[], {}, {"callbacks": "x"}], False),
        ([[], {}, {"errbacks": 1}], False),
        ([[], {}, {"chain": "x"}], False),
        ([[], {}, {"chord": True}], False),
    ],
)
def test_is_task_body_knows_celery_protocol_2(body: Any, is_one: bool) -> None:
    assert is_task_body(body) is is_one
