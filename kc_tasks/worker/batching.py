"""Batching: create_purchase requests that wait for a free pool process go to it together,
and their purchases are made in one statement; task events leave gathered (worker.py).

- `PurchaseBatcher`, in the worker's main process, stands in front of Celery's prefork pool.
- `run_batch`, in a pool process, makes a batch's purchases, then runs each request as
  Celery's tracer would run it alone, its purchase handed to it as made (kc_tasks/worker/seam.py).

One of the modules that rely on Celery's, kombu's and billiard's undocumented API (leading
underscores, the tracer's arguments, the pool's apply_async, the consumer's event flush);
tests/unit/test_celery_private_api.py names each attribute and the fence. KC_BATCHING=off
turns every one of this module's off: each request goes down Celery's own path, and task events leave Celery's way.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.app.trace import fast_trace_task, trace_task_ret
from celery.worker.request import Request
from kombu.serialization import loads as loads_message
from kombu.serialization import prepare_accept_content

from kc_tasks.celery import app, settings
from kc_tasks.core.errors import DatabaseUnavailable, InvalidPurchase, KcTasksError
from kc_tasks.core.names import CREATE_PURCHASE
from kc_tasks.core.payload import PurchaseKwargs, is_task_body, parse_purchase
from kc_tasks.worker import purchases, seam
from kc_tasks.worker.process import resources

logger = logging.getLogger(__name__)

# The most create_purchase requests one pool process takes at once.
BATCH_MAX = 32
# While every other pool process is busy, the last free one is held back this long, seconds,
# for more requests to join its batch, unless HOLD_UNTIL are waiting already.
HOLD_SECONDS = settings.batch_hold_ms / 1000
HOLD_UNTIL = 8


class PurchaseBatcher:
    """Stands between the consumer and the prefork pool for create_purchase requests.

    Celery hands a request to the pool once a pool process is free (its semaphore): until
    then, the requests that arrive wait here, and the free process gets all of them (up to
    BATCH_MAX) as one job. A lone request goes its usual way, at once if processes are idle,
    after up to KC_BATCH_HOLD_MS if it found the last free one (see _dispatch); under load,
    the batches grow by themselves. Each request keeps everything it has alone: its
    task-started and task-succeeded events, its result, its retries, its dead letter, and its
    message is acknowledged only after its own outcome is committed.

    Pools without Celery's semaphore (threads, solo) and tasks with time limits get every
    request alone, as without this."""

    def __init__(
        self,
        controller: Any,
        process_task: Callable[[Request], Any],
        run_batch: Callable[..., Any],
        call_later: Callable[..., Any] | None = None,
        hold: float = HOLD_SECONDS,
    ) -> None:
        self.controller = controller
        self.process_task = process_task
        self.run_batch = run_batch
        self.pending: deque[Request] = deque()
        self.waiting = False
        self.enabled = process_task == getattr(controller, "_process_task_sem", None)
        # Holding a free process back while the others are busy (needs the event loop's timer).
        self.call_later = call_later if hold > 0 else None
        self.hold = hold
        self.held: Any = None  # the timer entry while a free process is held back
        self.arriving = False

    def __call__(self, request: Request) -> Any:
        if not self.enabled or request.name != CREATE_PURCHASE or _has_time_limit(request):
            return self.process_task(request)
        self.pending.append(request)
        if self.held is not None and len(self.pending) >= HOLD_UNTIL:
            self._send_held()
        elif not self.waiting:
            self.waiting = True
            self.arriving = True  # _dispatch, called at once if a process is free, may hold it
            try:
                self.controller._quick_acquire(self._dispatch)
            finally:
                self.arriving = False
        return None

    def clear(self) -> None:
        """The connection is gone, and with it Celery's semaphore and the waiting requests'
        channel: they cannot be acknowledged now, and the broker delivers them again."""
        if self.held is not None:
            self.held.cancel()
            self.held = None
        self.pending.clear()
        self.waiting = False

    def _dispatch(self) -> None:
        """A pool process is free (its slot is ours): give it what is waiting. If it was free
        when a request arrived and every other process is busy, it is the last one: hold it
        back up to `hold` seconds for more requests to join it. Under load that makes the
        batches, hence the statements and commits per purchase, fewer; a request that had to
        wait for a busy process is not held back further, nor is one that finds several free."""
        if (
            self.arriving
            and self.call_later is not None
            and len(self.pending) < HOLD_UNTIL
            and self.controller.semaphore.value == 0
        ):
            self.held = self.call_later(self.hold, self._send_held)
            return
        self._send()

    def _send_held(self) -> None:
        if self.held is not None:
            self.held.cancel()
            self.held = None
            self._send()

    def _send(self) -> None:
        self.waiting = False
        batch = [self.pending.popleft() for _ in range(min(BATCH_MAX, len(self.pending)))]
        if self.pending:
            self.waiting = True
            self.controller._quick_acquire(self._dispatch)
        if len(batch) == 1:
            self.controller._process_task(batch[0])  # releases the slot if it was revoked
            return
        batch = [request for request in batch if not request.revoked()]  # revoked: acked, announced
        if not batch:
            self.controller._quick_release()
            return
        result = self.controller.pool.apply_async(
            self.run_batch,
            args=([_trace_args(request) for request in batch],),
            accept_callback=lambda pid, time_accepted: _each(batch, "on_accepted", pid, time_accepted),
            callback=lambda outcomes: _each_outcome(batch, outcomes),
            error_callback=lambda exc_info: _each(batch, "on_failure", exc_info),
            correlation_id=batch[0].id,
        )
        if result is not None:
            for request in batch:
                request._apply_result = weakref.ref(result)  # what revoke --terminate looks for


@dataclass(frozen=True)
class Raised:
    """A batch's answer for a request whose tracer raised (run_batch)."""

    exc_info: Any


def _has_time_limit(request: Request) -> bool:
    task = request.task
    return any(request.time_limits) or bool(task.time_limit or task.soft_time_limit)


def _trace_args(request: Request) -> tuple[Any, ...]:
    """What Celery's tracer takes for one request (celery.worker.request.create_request_cls)."""
    r = request
    return (r.type, r.id, r.request_dict, r.body, r.content_type, r.content_encoding)


def _each(batch: list[Request], method: str, *args: Any) -> None:
    for request in batch:
        try:
            getattr(request, method)(*args)
        except Exception:  # one request's failure must not keep the others from their ack
            logger.exception("task %s: %s failed", request.id, method)


def _each_outcome(batch: list[Request], outcomes: list[Any]) -> None:
    for request, outcome in zip(batch, outcomes, strict=True):
        try:
            if isinstance(outcome, Raised):
                request.on_failure(outcome.exc_info)
            else:
                request.on_success(outcome)
        except Exception:
            logger.exception("task %s: reporting its outcome failed", request.id)


def flush_task_events(consumer: Any) -> None:
    """Send the task events the consumer has buffered (Celery's Consumer._flush_events)."""
    consumer._flush_events()


def run_batch(jobs: list[tuple[Any, ...]]) -> list[Any]:
    """Run in a pool process: several create_purchase requests that arrived together
    (PurchaseBatcher). Their purchases are made together first (purchases.create_all, the
    way a lone task makes its own, as a batch of one); then each request runs as a task of its
    own, with its own result, retries and dead letter, taking its purchase as made
    (kc_tasks/worker/seam.py).

    Each job is what Celery's tracer takes for one request; the answer is, in order, its
    (failed, result, runtime), or Raised if the tracer itself raised: what the pool reports
    of a lone request whose tracer raised, without failing the rest of the batch."""
    trace = fast_trace_task if app.use_fast_trace_task else trace_task_ret
    accept = prepare_accept_content(app.conf.accept_content)
    bodies = [_decode(job, accept) for job in jobs]
    made = _make([(job[2], body) for job, body in zip(jobs, bodies, strict=True) if body is not None])
    outcomes: list[Any] = []
    for job, body in zip(jobs, bodies, strict=True):
        try:
            outcomes.append(trace(*job) if body is None else trace(*job[:3], body, None, None))
        except Exception:  # noqa: BLE001  (reported for this request alone, as the pool would)
            outcomes.append(Raised(ExceptionInfo()))
    if made:
        logger.debug("a batch of %d purchases made together", made)
    return outcomes


def _decode(job: tuple[Any, ...], accept: set[str]) -> tuple[Any, ...] | None:
    """The job's [args, kwargs, embed]; None if it does not decode (its task reports that)."""
    body, content_type, content_encoding = job[3:]
    try:
        decoded = loads_message(body, content_type, content_encoding, accept=accept)
    except Exception:  # noqa: BLE001  (Celery's tracer raises it again, for this request alone)
        return None
    return tuple(decoded) if is_task_body(decoded) else None


def _make(requests: list[tuple[dict[str, Any], tuple[Any, ...]]]) -> int:
    """Make the batch's purchases at once and hand each to its request (seam); how many.
    A request whose kwargs do not parse gets none (its task dead-letters it); if the batch
    fails, none does, and each task makes its own outcome, retrying as it would alone. If
    PostgreSQL is away (twice: a pooled connection may have died since its last use), each
    request gets that error, and its task gives its message back at once (kc_tasks/worker/outage.py)."""
    parsed: list[tuple[dict[str, Any], dict[str, Any], PurchaseKwargs]] = []
    for request, (args, kwargs, _) in requests:
        try:
            if not args:
                parsed.append((request, kwargs, parse_purchase(kwargs)))
        except InvalidPurchase:
            continue
    if not parsed:
        return 0
    batch = [purchase for _, _, purchase in parsed]
    try:
        engine, guard = resources()
        try:
            made = purchases.create_all(engine, guard, batch)
        except DatabaseUnavailable:
            made = purchases.create_all(engine, guard, batch)
    except DatabaseUnavailable as exc:
        for request, kwargs, purchase in parsed:
            seam.hand_made(request, seam.Made(kwargs, purchase, exc))
        return 0
    except KcTasksError as exc:  # each task tries again alone, and retries or dead-letters
        logger.debug("a batch of %d purchases went one by one: %s", len(parsed), exc)
        return 0
    except Exception:  # each request still makes its own outcome
        logger.exception("making a batch of %d purchases failed; they go one by one", len(parsed))
        return 0
    for (request, kwargs, purchase), outcome in zip(parsed, made, strict=True):
        if isinstance(outcome, purchases.PurchaseOutcome):  # else its task meets the error again, alone
            seam.hand_made(request, seam.Made(kwargs, purchase, outcome))
    return len(made)
