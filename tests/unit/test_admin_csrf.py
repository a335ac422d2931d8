"""The dead-letters page's form token: this user's, this hour or the last, nothing else."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from kc_tasks.web.admin import csrf_key, csrf_token, csrf_valid

KEY = csrf_key("admin-password", "whsec_test")
HOUR = 500_000
NOW = HOUR * 3600 + 1234.5


def test_the_token_is_an_hmac_of_user_and_hour() -> None:
    expected = hmac.new(KEY, f"ops:{HOUR}".encode(), hashlib.sha256).hexdigest()
    assert csrf_token(KEY, "ops", HOUR) == expected


def test_a_token_of_this_hour_is_valid() -> None:
    assert csrf_valid(KEY, "ops", csrf_token(KEY, "ops", HOUR), now=NOW)


def test_a_token_of_the_previous_hour_is_still_valid() -> None:
    assert csrf_valid(KEY, "ops", csrf_token(KEY, "ops", HOUR - 1), now=NOW)


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (csrf_token(KEY, "someone-else", HOUR), "another user's"),
        (csrf_token(csrf_key("another password", "whsec_test"), "ops", HOUR), "another admin password"),
        (csrf_token(csrf_key("admin-password", "another secret"), "ops", HOUR), "another webhook secret"),
        (csrf_token(KEY, "ops", HOUR - 2), "two hours old"),
        (csrf_token(KEY, "ops", HOUR + 1), "from the future"),
        ("", "empty"),
        ("ü" * 64, "not hex at all"),
    ],
)
def test_other_tokens_are_refused(token: str, why: str) -> None:
    assert not csrf_valid(KEY, "ops", token, now=NOW), why
