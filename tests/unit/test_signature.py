from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from kc_tasks.providers.signature import sign, verify

SECRET = b"whsec_test"
BODY = b'{"id":"evt_1","type":"payment.succeeded","data":{}}'
NOW = 1_800_000_000


def test_a_signature_made_with_the_secret_verifies() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY, NOW), now=NOW) is None


def test_one_of_several_v1_signatures_may_match_during_secret_rotation() -> None:
    good = sign(SECRET, BODY, NOW).split("v1=")[1]
    assert verify(SECRET, BODY, f"t={NOW},v1={'0' * 64},v1={good}", now=NOW) is None


@pytest.mark.parametrize(
    ("header", "now", "reason"),
    [
        (None, NOW, "missing X-KC-Signature header"),
        ("", NOW, "missing X-KC-Signature header"),
        ("v1=abc", NOW, "malformed"),
        (f"t={NOW}", NOW, "malformed"),
        (f"t=soon,v1={'0' * 64}", NOW, "malformed"),
        (sign(b"another secret", BODY, NOW), NOW, "does not match"),
        (sign(SECRET, BODY + b" ", NOW), NOW, "does not match"),
        (sign(SECRET, BODY, NOW - 301), NOW, "more than 300 s old"),
        (sign(SECRET, BODY, NOW + 31), NOW, "in the future"),
    ],
)
def test_a_bad_signature_is_refused_with_the_reason(header: str | None, now: int, reason: str) -> None:
    problem = verify(SECRET, BODY, header, now=now)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("skew", [-300, -1, 0, 30])
def test_timestamps_within_the_tolerance_are_accepted(skew: int) -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY, NOW + skew), now=NOW) is None


def test_the_reason_never_echoes_the_signature() -> None:
    header = sign(b"another secret", BODY, NOW)
    problem = verify(SECRET, BODY, header, now=NOW)
    assert problem is not None and header.split("v1=")[1] not in problem


@pytest.mark.parametrize(
    "header",
    [
        f"t=\u00b2,v1={'0' * 64}",  # str.isdigit() is true, int() refuses it
        f"t=\u0661\u0662,v1={'0' * 64}",  # Arabic-Indic digits: int() would accept them
        f"t={'9' * 5000},v1={'0' * 64}",  # over int()'s 4,300-digit limit
        f"t={'1' * 13},v1={'0' * 64}",
        f"t={NOW},v1={'0' * 64}," + "x" * 3000,
    ],
)
def test_a_timestamp_of_anything_but_a_few_ascii_digits_is_malformed(header: str) -> None:
    problem = verify(SECRET, BODY, header, now=NOW)
    assert problem is not None and "malformed" in problem


def test_a_non_ascii_v1_is_a_mismatch_not_an_error() -> None:
    assert verify(SECRET, BODY, f"t={NOW},v1=\u00ff\u00b2", now=NOW) == "signature does not match the body"


def test_the_signature_is_the_documented_hmac_of_timestamp_and_body() -> None:
    # hex HMAC-SHA256(secret, "<t>.<raw body>"), as a payment service computes it.
    expected = hmac.new(SECRET, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, NOW) == f"t={NOW},v1={expected}"
    assert sign(SECRET, BODY + b" ", NOW) != sign(SECRET, BODY, NOW)


def test_without_a_given_time_the_clock_is_read() -> None:
    now = int(time.time())
    assert verify(SECRET, BODY, sign(SECRET, BODY, now)) is None
    assert verify(SECRET, BODY, sign(SECRET, BODY, now - 301)) == "signature timestamp is more than 300 s old"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (f"t={NOW}", "malformed X-KC-Signature header: expected t=<unix seconds>,v1=<hex>"),
        (sign(SECRET, BODY, NOW + 31), "signature timestamp is in the future"),
        (sign(SECRET, BODY, NOW - 301), "signature timestamp is more than 300 s old"),
        (sign(b"another secret", BODY, NOW), "signature does not match the body"),
        # "=" inside a value: the key is what precedes the first "=".
        (sign(SECRET, BODY, NOW) + "=", "signature does not match the body"),
        (f"t={NOW},v1=\udc80", "signature does not match the body"),  # a lone surrogate: no error
        ("x" * 2049, "malformed X-KC-Signature header: longer than 2048 characters"),
    ],
    ids=["no-v1", "future", "stale", "other-secret", "equals-in-value", "surrogate", "too-long"],
)
def test_each_refusal_says_exactly_why(header: str, reason: str) -> None:
    assert verify(SECRET, BODY, header, now=NOW) == reason


def test_a_header_of_exactly_the_longest_length_is_read() -> None:
    good = sign(SECRET, BODY, NOW)
    header = f"{good},x={'0' * (2048 - len(good) - 3)}"
    assert len(header) == 2048
    assert verify(SECRET, BODY, header, now=NOW) is None
