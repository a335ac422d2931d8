"""Retry policy: how long to wait before the next attempt."""

from __future__ import annotations

import random
from collections.abc import Callable


def compute_backoff(retries: int, cap: float, base: float = 1.0, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2**retries).

    `retries` counts the retries already made (0 before the first retry). Half the delay is
    kept so that the wait still grows; the random half spreads workers that failed together.
    """
    ceiling = min(float(cap), base * 2.0 ** min(retries, 62))
    return ceiling / 2 + rng() * ceiling / 2


def may_retry(retries: int, next_attempt_after: float, horizon: float, max_retries: int | None) -> bool:
    """Whether a transient failure is retried: the next attempt (`next_attempt_after` seconds
    after the task's first attempt) still falls within the horizon, and `retries` (already made)
    is under the cap, when there is one."""
    if max_retries is not None and retries >= max_retries:
        return False
    return next_attempt_after <= horizon
