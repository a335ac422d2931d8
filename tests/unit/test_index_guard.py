"""How long a worker trusts its last index check, what it tells the operator, and which index passes."""

from __future__ import annotations

import logging

import pytest

from kc_tasks.store.index_guard import IndexGuard, IndexStatus, _definition_problem

USABLE = IndexStatus(True, "valid, unique, and inferred by ON CONFLICT")
MISSING = IndexStatus(False, "it does not exist")
LOGGER = "kc_tasks.store.index_guard"


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_no_status_before_the_first_check() -> None:
    assert IndexGuard(ttl=300, clock=FakeClock()).cached is None


@pytest.mark.parametrize(
    ("ttl", "elapsed", "fresh"),
    [
        (300, 0.0, True),
        (300, 1.0, True),
        (300, 299.9, True),
        (300, 300.0, False),
        (300, 301.0, False),
        (300, 86_400.0, False),
        (0.5, 0.4, True),
        (0.5, 0.5, False),
        (0, 0.0, False),
        (0, 10.0, False),
    ],
)
def test_a_check_is_trusted_for_ttl_seconds(ttl: float, elapsed: float, fresh: bool) -> None:
    clock = FakeClock()
    guard = IndexGuard(ttl=ttl, clock=clock)

    guard.record(USABLE)
    clock.now += elapsed

    assert guard.cached == (USABLE if fresh else None)


def test_a_new_check_restarts_the_ttl_and_replaces_the_status() -> None:
    clock = FakeClock()
    guard = IndexGuard(ttl=300, clock=clock)
    guard.record(USABLE)

    clock.now += 250
    guard.record(MISSING)
    clock.now += 250

    assert guard.cached == MISSING


def test_losing_the_index_warns_with_the_fallback_and_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    guard = IndexGuard(ttl=300, clock=FakeClock())
    guard.record(USABLE)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        guard.record(MISSING)

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "unique_active_purchase index not usable: it does not exist" in record.getMessage()
    assert "will use fallback method" in record.getMessage()
    assert "kc-tasks ensure-index" in record.getMessage()


def test_getting_the_index_back_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    guard = IndexGuard(ttl=300, clock=FakeClock())
    guard.record(MISSING)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        guard.record(USABLE)

    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "unique_active_purchase index found" in record.getMessage()
    assert "fallback" not in record.getMessage()


def test_a_flip_after_the_cache_went_stale_is_still_reported(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    guard = IndexGuard(ttl=300, clock=clock)
    guard.record(USABLE)
    clock.now += 10_000

    with caplog.at_level(logging.INFO, logger=LOGGER):
        guard.record(MISSING)

    assert [r.levelno for r in caplog.records] == [logging.WARNING]


@pytest.mark.parametrize("status", [USABLE, MISSING])
def test_an_unchanged_status_logs_nothing(status: IndexStatus, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    guard = IndexGuard(ttl=300, clock=clock)
    guard.record(status)

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(5):
            clock.now += 301
            guard.record(status)

    assert caplog.records == []


GOOD_INDEX: dict[str, object] = {
    "is_unique": True,
    "is_valid": True,
    "is_ready": True,
    "is_immediate": True,
    "has_expressions": False,
    "table_name": "student_course_purchases",
    "predicate": "(is_active = true)",
    "columns": ["student_id", "course_id"],
}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({}, None, id="valid"),
        pytest.param({"columns": ["course_id", "student_id"]}, None, id="valid-columns-in-other-order"),
        pytest.param({"is_valid": False}, "INVALID", id="invalid"),
        pytest.param({"is_ready": False}, "INVALID", id="not-ready"),
        pytest.param({"is_unique": False}, "not unique", id="not-unique"),
        pytest.param({"columns": ["student_id"]}, "covers ['student_id']", id="one-column"),
        pytest.param({"columns": ["student_id", "course_id", "is_active"]}, "covers", id="three-columns"),
        pytest.param({"columns": ["student_id", "payment_id"]}, "covers", id="wrong-column"),
        pytest.param({"has_expressions": True}, "covers", id="expression-index"),
        pytest.param({"predicate": "(is_active IS TRUE)"}, "predicate is '(is_active IS TRUE)'", id="is-true"),
        pytest.param({"predicate": "(is_active = false)"}, "predicate", id="inactive-predicate"),
        pytest.param({"predicate": None}, "predicate is None", id="not-partial"),
        pytest.param({"is_immediate": False}, "deferrable", id="deferrable"),
        pytest.param({"table_name": "other_purchases"}, "on table other_purchases", id="other-table"),
    ],
)
def test_definition_problem_says_what_is_wrong_with_the_index(changes: dict[str, object], problem: str | None) -> None:
    found = _definition_problem({**GOOD_INDEX, **changes})

    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
