"""The seam: what the worker hands a task beside its message, through Celery's request dict.

A task gets its message's args and kwargs and, as `task.request`, a Context built from the
request dict that the worker's Request holds (`Request.request_dict`) and Celery's tracer
takes. Celery has no documented way to hand a task anything else, and two things must reach
create_purchase that its message does not carry:

- `hand_made` / `made_for`: the purchase a batch (kc_tasks/worker/batching.py) already parsed
  and made for this request, in the pool process, just before the tracer runs the task. The
  task takes it as it is: it neither parses its kwargs again nor makes the purchase again.
- `stamp_arrival`: when a create_purchase that did not come through the inbox reached the
  worker (main process, Celery's task_received signal), for kc_payment_to_access_seconds
  (kc_tasks/core/metrics.py); a retry carries it on in its headers (kc_tasks/worker/tasks.py).

This module is the only one that writes into a request dict; reading it back is reading
`task.request`, which is Celery's public API. tests/unit/test_seam.py tests the seam as
one, and tests/unit/test_celery_private_api.py fences it with the other modules that use
Celery's undocumented API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kc_tasks.core.errors import DatabaseUnavailable
from kc_tasks.core.metrics import TASK
from kc_tasks.core.names import CREATE_PURCHASE, SEEN_AT, SEEN_BY
from kc_tasks.core.payload import PurchaseKwargs
from kc_tasks.worker.purchases import PurchaseOutcome

# The key of the request dict under which a batch hands a request its purchase, made.
MADE = "kc_made_in_batch"


@dataclass(frozen=True)
class Made:
    """A purchase its batch made for one request: the kwargs it was parsed from, the parsed
    purchase, and what became of it, or the outage the batch met (the task gives its message
    back, kc_tasks/worker/outage.py)."""

    kwargs: dict[str, Any]
    purchase: PurchaseKwargs
    outcome: PurchaseOutcome | DatabaseUnavailable


def hand_made(request_dict: dict[str, Any], made: Made) -> None:
    """Batch side (pool process): the request dict the tracer will make the task's request of."""
    request_dict[MADE] = made


def made_for(task_request: Any, kwargs: dict[str, Any]) -> Made | None:
    """Task side: what its batch made for this task, if these kwargs are the ones it parsed;
    None when the task runs alone, or when its batch made nothing for it."""
    made = getattr(task_request, MADE, None)
    if isinstance(made, Made) and made.kwargs == kwargs:
        return made
    return None


def stamp_arrival(request: Any = None, **_: Any) -> None:
    """Celery's task_received handler (worker main process): a create_purchase that did not come
    through the inbox (no first-seen headers) is first seen now."""
    if request is not None and request.name == CREATE_PURCHASE:
        headers = request.request_dict
        if SEEN_AT not in headers:
            headers[SEEN_BY], headers[SEEN_AT] = TASK, time.time()
