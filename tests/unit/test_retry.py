"""How long a transiently failed delivery waits before its next attempt."""

from __future__ import annotations

import math

import pytest

from kc_tasks.worker.retry import compute_backoff, may_retry


@pytest.mark.parametrize(
    ("retries", "cap", "base", "shortest", "longest"),
    [
        (0, 300, 1.0, 0.5, 1.0),
        (1, 300, 1.0, 1.0, 2.0),
        (2, 300, 1.0, 2.0, 4.0),
        (5, 300, 1.0, 16.0, 32.0),
        (8, 300, 1.0, 128.0, 256.0),
        (9, 300, 1.0, 150.0, 300.0),
        (12, 300, 1.0, 150.0, 300.0),
        (3, 300, 0.5, 2.0, 4.0),
        (3, 300, 10.0, 40.0, 80.0),
        (4, 2, 1.0, 1.0, 2.0),
        (0, 2.5, 10.0, 1.25, 2.5),
        (62, 300, 1.0, 150.0, 300.0),
        (63, 300, 1.0, 150.0, 300.0),
        (10_000, 300, 1.0, 150.0, 300.0),
        (10**18, 300, 1.0, 150.0, 300.0),
    ],
)
def test_backoff_doubles_per_retry_keeps_half_and_stops_at_the_cap(
    retries: int, cap: float, base: float, shortest: float, longest: float
) -> None:
    assert compute_backoff(retries, cap, base, rng=lambda: 0.0) == shortest
    assert compute_backoff(retries, cap, base, rng=lambda: 1.0) == longest


@pytest.mark.parametrize("retries", [0, 1, 4, 8, 9, 30, 10_000])
def test_random_backoff_lies_between_half_and_all_of_the_ceiling(retries: int) -> None:
    ceiling = min(300.0, 2.0**retries) if retries < 64 else 300.0

    waits = [compute_backoff(retries, 300) for _ in range(200)]

    assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
    assert len(set(waits)) > 1


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_backoff_never_shrinks_as_retries_grow(jitter: float) -> None:
    waits = [compute_backoff(retries, 300, rng=lambda: jitter) for retries in range(100)]

    assert waits == sorted(waits)
    assert waits[-1] == 150.0 + jitter * 150.0


def test_the_exponent_stops_growing_at_62_so_an_uncapped_delay_never_overflows() -> None:
    assert compute_backoff(62, math.inf, rng=lambda: 1.0) == 2.0**62
    assert compute_backoff(10_000, math.inf, rng=lambda: 1.0) == 2.0**62


@pytest.mark.parametrize(
    ("retries", "next_attempt_after", "horizon", "max_retries", "retried"),
    [
        pytest.param(0, 1.0, 86400, None, True, id="first-retry"),
        pytest.param(500, 86000.0, 86400, None, True, id="many-retries-inside-the-horizon"),
        pytest.param(500, 86400.0, 86400, None, True, id="exactly-at-the-horizon"),
        pytest.param(3, 86400.5, 86400, None, False, id="past-the-horizon"),
        pytest.param(7, 10.0, 86400, 8, True, id="under-the-cap"),
        pytest.param(8, 10.0, 86400, 8, False, id="at-the-cap"),
        pytest.param(0, 1.0, 86400, 0, False, id="a-cap-of-none-retries"),
        pytest.param(2, 61.0, 60, 8, False, id="the-horizon-comes-first"),
    ],
)
def test_a_transient_failure_is_retried_inside_the_horizon_and_under_the_cap(
    retries: int, next_attempt_after: float, horizon: float, max_retries: int | None, retried: bool
) -> None:
    assert may_retry(retries, next_attempt_after, horizon, max_retries) is retried
