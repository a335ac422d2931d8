"""Whatever a client sends, parse_purchase gives a PurchaseKwargs within the contract or InvalidPurchase."""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from kc_tasks.core.errors import InvalidPurchase
from kc_tasks.core.payload import PurchaseKwargs, parse_purchase

KWARGS = ("payment_id", "student_id", "course_id", "amount_cents", "currency", "metadata")
REQUIRED = KWARGS[:-1]
BIGINT_MAX = 2**63 - 1
METADATA_MAX_BYTES = 16 * 1024

# Hypothesis caches under ./.hypothesis by default; keep the checkout clean.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "kc_tasks-hypothesis")
FUZZ = settings(max_examples=300, deadline=None, database=None)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
plain_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
plain_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | plain_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(plain_text, children, max_size=4),
    max_leaves=12,
)
uuids = st.uuids().map(str)
anything = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.lists(st.integers())

valid_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=255)
valid_uuids = uuids | uuids.map(str.upper)
valid_currencies = st.from_regex(r"[A-Z]{3}", fullmatch=True)
valid_metadata = st.none() | st.dictionaries(plain_text, plain_json_values, max_size=5)

VALUES: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "payment_id": (
        valid_text,
        st.just("") | st.text(min_size=256, max_size=300) | valid_text.map(lambda s: s + "\x00") | anything,
    ),
    "student_id": (valid_uuids, st.uuids().map(lambda u: u.hex) | st.text(max_size=40) | anything),
    "course_id": (valid_uuids, st.uuids().map(lambda u: u.hex) | st.text(max_size=40) | anything),
    "amount_cents": (
        st.integers(min_value=0, max_value=BIGINT_MAX),
        st.integers(max_value=-1)
        | st.integers(min_value=BIGINT_MAX + 1)
        | st.integers().map(str)
        | st.booleans()
        | st.floats()
        | anything,
    ),
    "currency": (valid_currencies, st.text(max_size=4) | st.sampled_from(["inr", "IN", "EURO"]) | anything),
    "metadata": (
        valid_metadata,
        st.dictionaries(st.text(max_size=8), json_values, max_size=5)
        | st.builds(lambda n: {"blob": "x" * n}, st.integers(min_value=16_000, max_value=17_000))
        | st.builds(lambda s: {"note": s + "\x00"}, st.text(max_size=5))
        | st.just({"x": float("nan")})
        | json_values,
    ),
}
extra_keys = st.dictionaries(
    st.text(max_size=12).filter(lambda k: k not in KWARGS) | st.integers(),
    anything,
    max_size=2,
)


@st.composite
def deliveries(draw: st.DrawFn) -> dict[Any, Any]:
    """Kwargs as a client might send them: each one valid, invalid or missing, plus extras."""
    sent: dict[Any, Any] = {}
    for name, (valid, invalid) in VALUES.items():
        roll = draw(st.integers(min_value=0, max_value=19))
        if roll < 17:
            sent[name] = draw(valid)
        elif roll < 19:
            sent[name] = draw(invalid)
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        sent.update(draw(extra_keys))
    return sent


@st.composite
def valid_deliveries(draw: st.DrawFn) -> dict[str, Any]:
    sent = {name: draw(valid) for name, (valid, _) in VALUES.items()}
    if draw(st.booleans()):
        del sent["metadata"]
    return sent


def strings_in(value: Any) -> list[str]:
    """Every string of a JSON value, object keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [*strings_in(key), *strings_in(item)]]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return []


def assert_within_contract(purchase: PurchaseKwargs, sent: dict[Any, Any]) -> None:
    assert set(sent) <= set(KWARGS)
    assert set(REQUIRED) <= set(sent)

    assert isinstance(purchase.payment_id, str)
    assert 1 <= len(purchase.payment_id) <= 255
    assert "\x00" not in purchase.payment_id
    assert purchase.payment_id == sent["payment_id"]

    for name in ("student_id", "course_id"):
        value = getattr(purchase, name)
        assert value == str(uuid.UUID(value))
        assert uuid.UUID(value) == uuid.UUID(sent[name])

    assert type(purchase.amount_cents) is int
    assert 0 <= purchase.amount_cents <= BIGINT_MAX

    assert re.fullmatch(r"[A-Z]{3}", purchase.currency)

    if purchase.metadata is not None:
        assert isinstance(purchase.metadata, dict)
        encoded = json.dumps(purchase.metadata, ensure_ascii=False, allow_nan=False)
        assert len(encoded.encode()) <= METADATA_MAX_BYTES
        assert not any("\x00" in text for text in strings_in(purchase.metadata))


@FUZZ
@given(deliveries())
def test_any_delivery_is_a_purchase_within_the_contract_or_invalid(sent: dict[Any, Any]) -> None:
    try:
        purchase = parse_purchase(sent)
    except InvalidPurchase as exc:
        assert str(exc).startswith("invalid create_purchase kwargs: ")
        return
    assert_within_contract(purchase, sent)


@FUZZ
@given(valid_deliveries())
def test_every_delivery_within_the_contract_is_accepted(sent: dict[str, Any]) -> None:
    purchase = parse_purchase(sent)

    assert_within_contract(purchase, sent)
    assert purchase.student_id == sent["student_id"].lower()
    assert purchase.course_id == sent["course_id"].lower()
    assert purchase.amount_cents == sent["amount_cents"]
    assert purchase.metadata == sent.get("metadata")
