"""Which database failures a delivery retries, which it gives up on, and how lockers line up."""

from __future__ import annotations

import pytest

from kc_tasks.core import errors
from kc_tasks.core.payload import PurchaseKwargs, parse_purchase
from kc_tasks.store.db import classify
from kc_tasks.worker.purchases import lock_keys

STUDENT = "6f1c2d3e-0000-4000-8000-000000000001"
COURSE = "6f1c2d3e-0000-4000-8000-000000000002"
OTHER = "6f1c2d3e-0000-4000-8000-000000000003"


@pytest.mark.parametrize(
    ("sqlstate", "disconnected", "becomes"),
    [
        pytest.param(None, False, errors.DatabaseUnavailable, id="no-sqlstate"),
        pytest.param("08006", False, errors.DatabaseUnavailable, id="connection-failure"),
        pytest.param("08001", False, errors.DatabaseUnavailable, id="cannot-connect"),
        pytest.param("57P01", False, errors.DatabaseUnavailable, id="admin-shutdown"),
        pytest.param("57P02", False, errors.DatabaseUnavailable, id="crash-shutdown"),
        pytest.param("57P03", False, errors.DatabaseUnavailable, id="cannot-connect-now"),
        pytest.param("23502", True, errors.DatabaseUnavailable, id="disconnected-wins"),
        pytest.param("40001", True, errors.DatabaseUnavailable, id="disconnected-wins-over-busy"),
        pytest.param("40001", False, errors.DatabaseBusy, id="serialization-failure"),
        pytest.param("40P01", False, errors.DatabaseBusy, id="deadlock"),
        pytest.param("55P03", False, errors.DatabaseBusy, id="lock-not-available"),
        pytest.param("25006", False, errors.DatabaseUnavailable, id="read-only-a-standby"),
        pytest.param("53100", False, errors.DatabaseUnavailable, id="disk-full"),
        pytest.param("53200", False, errors.DatabaseUnavailable, id="out-of-memory"),
        pytest.param("53300", False, errors.DatabaseUnavailable, id="too-many-connections"),
        pytest.param("08P01", False, errors.DatabaseUnavailable, id="pgbouncer-protocol-error"),
        pytest.param("53000", False, errors.DatabaseBusy, id="insufficient-resources"),
        pytest.param("57014", False, errors.DatabaseBusy, id="query-canceled"),
        pytest.param("42P10", False, errors.ConflictTargetMissing, id="no-conflict-arbiter"),
        pytest.param("23502", False, errors.DatabaseError, id="not-null-violation"),
        pytest.param("22P02", False, errors.DatabaseError, id="invalid-text-representation"),
        pytest.param("42P01", False, errors.DatabaseError, id="undefined-table"),
        pytest.param("42501", False, errors.DatabaseError, id="insufficient-privilege"),
    ],
)
def test_driver_failure_becomes_the_right_kc_tasks_error(
    sqlstate: str | None, disconnected: bool, becomes: type[errors.KcTasksError]
) -> None:
    assert classify(sqlstate, disconnected) is becomes


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (errors.DatabaseUnavailable, True),
        (errors.DatabaseBusy, True),
        (errors.DatabaseError, False),
        (errors.ConflictTargetMissing, False),
        (errors.UniqueConflict, False),
        (errors.InvalidPurchase, False),
    ],
)
def test_error_is_either_retried_or_dead_lettered_never_both(error: type[errors.KcTasksError], retried: bool) -> None:
    assert issubclass(error, errors.KcTasksError)
    assert issubclass(error, errors.RetryableError) is retried
    assert issubclass(error, errors.PermanentError) is not retried


def test_config_error_is_neither_retried_nor_a_delivery_failure() -> None:
    assert issubclass(errors.ConfigError, errors.KcTasksError)
    assert not issubclass(errors.ConfigError, errors.RetryableError | errors.PermanentError)


def purchase(
    payment_id: str = "pay_1", student_id: str = STUDENT, course_id: str = COURSE, amount: int = 100
) -> PurchaseKwargs:
    return parse_purchase(
        {
            "payment_id": payment_id,
            "student_id": student_id,
            "course_id": course_id,
            "amount_cents": amount,
            "currency": "INR",
        }
    )


@pytest.mark.parametrize(
    "subject",
    [
        purchase(),
        purchase(payment_id="x" * 255),
        purchase(payment_id="pay_é✓"),
        purchase(student_id=OTHER, course_id=OTHER),
    ],
)
def test_lock_keys_are_two_sorted_signed_64_bit_ints(subject: PurchaseKwargs) -> None:
    keys = lock_keys(subject)

    assert len(keys) == 2
    assert all(type(key) is int and -(2**63) <= key < 2**63 for key in keys)
    assert keys == sorted(keys)
    assert keys[0] != keys[1]


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        pytest.param(purchase(), purchase(), 2, id="same-delivery"),
        pytest.param(purchase(amount=100), purchase(amount=999), 2, id="same-payment-other-amount"),
        pytest.param(purchase(), purchase(student_id=STUDENT.upper()), 2, id="upper-case-uuid"),
        pytest.param(purchase(payment_id="pay_1"), purchase(payment_id="pay_2"), 1, id="rival-payment-same-pair"),
        pytest.param(purchase(), purchase(course_id=OTHER), 1, id="same-payment-other-course"),
        pytest.param(purchase(), purchase(student_id=OTHER), 1, id="same-payment-other-student"),
        pytest.param(purchase(), purchase(payment_id="pay_2", course_id=OTHER), 0, id="unrelated"),
        pytest.param(
            purchase(student_id=STUDENT, course_id=OTHER),
            purchase(student_id=OTHER, course_id=STUDENT, payment_id="pay_2"),
            0,
            id="swapped-student-and-course",
        ),
    ],
)
def test_deliveries_that_may_collide_share_a_lock_key(
    first: PurchaseKwargs, second: PurchaseKwargs, shared: int
) -> None:
    assert len(set(lock_keys(first)) & set(lock_keys(second))) == shared
