"""The Celery tasks: thin wrappers that validate, call the work, and map errors to retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import Reject, Retry
from celery.signals import before_task_publish

from kc_tasks.celery import app, settings
from kc_tasks.core import metrics, names
from kc_tasks.core.errors import (
    DatabaseUnavailable,
    InvalidPurchase,
    InvalidRevocation,
    PermanentError,
    RetryableError,
)
from kc_tasks.core.payload import PurchaseKwargs, parse_purchase, parse_revocation
from kc_tasks.payments import inbox
from kc_tasks.store import dead_letters, events
from kc_tasks.store.index_guard import FIX_COMMAND
from kc_tasks.worker import purchases, revocations, seam
from kc_tasks.worker.consumer import KcTask
from kc_tasks.worker.outage import DatabaseOutage
from kc_tasks.worker.process import resources
from kc_tasks.worker.retry import compute_backoff, may_retry

logger = logging.getLogger(__name__)

# The message header that carries a task's first attempt (unix seconds) across its retries:
# KC_RETRY_HORIZON counts from it.
T = TypeVar("T")


class PurchaseTask(KcTask):
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        payment_id = kwargs.get("payment_id") if isinstance(kwargs, dict) else None
        logger.error(
            "%s %s gave up on payment %s after %d attempt(s): %s: %s",
            self.name.removeprefix(names.TASK_PREFIX),
            task_id,
            payment_id,
            self.request.retries + 1,
            type(exc).__name__,
            exc,
        )


@app.task(
    bind=True,
    base=PurchaseTask,
    name=names.CREATE_PURCHASE,
    max_retries=settings.max_retries,
    acks_late=True,
    reject_on_worker_lost=True,
    throws=(PermanentError, RetryableError),  # logged once by on_failure, without Celery's traceback
)
def create_purchase(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Make the purchase of one paid order; see docs/reference.md for the kwargs and the result.

    A failure that retries cannot fix, or that outlived KC_RETRY_HORIZON, is dead-lettered
    (purchases.dlq) before the message is acknowledged; while PostgreSQL is away the message
    goes back to the broker and waits (kc_tasks/worker/outage.py)."""
    return _dead_letter_on_failure(self, _make_purchase, args, kwargs)


def _dead_letter_on_failure(
    task: Task, work: Callable[[Task, tuple[Any, ...], dict[str, Any]], dict[str, Any]], args: Any, kwargs: Any
) -> dict[str, Any]:
    """Run the task's work; a failure that retries cannot fix, or that outlived
    KC_RETRY_HORIZON, is dead-lettered before the message is acknowledged."""
    try:
        return work(task, args, kwargs)
    except (Retry, DatabaseOutage):  # retried later, or given back to the broker: not a failure
        raise
    except RetryableError as exc:  # only when the retries are used up
        _dead_letter(task, exc, names.EXHAUSTED)
        raise
    except Exception as exc:
        _dead_letter(task, exc, names.PERMANENT)
        raise


def _make_purchase(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if args:
        raise InvalidPurchase(f"create_purchase takes keyword arguments only, got {len(args)} positional")
    made = seam.made_for(task.request, kwargs)  # by its batch (kc_tasks/worker/batching.py)
    if made is None:  # alone: parsed and made here
        outcome = _create_or_retry(task, parse_purchase(kwargs))
    elif isinstance(made.outcome, DatabaseUnavailable):  # its batch found PostgreSQL away
        raise DatabaseOutage(str(made.outcome))
    else:
        outcome = made.outcome
    # The outcome is committed with its events in the outbox: this process's publisher sends
    # them within moments; if it cannot, the relay does.
    if outcome.events:
        engine, _ = resources()
        events.publisher(engine, app).submit(outcome.events)
    metrics.purchase_made(task.request, outcome)  # kc_purchases_total, kc_payment_to_access_seconds
    return outcome.as_result()


def _create_or_retry(task: Task, purchase: PurchaseKwargs) -> purchases.PurchaseOutcome:
    """The purchase made as a batch of one: the way a batch makes each of its purchases."""
    engine, guard = resources()
    return _or_retry(task, purchase.payment_id, lambda: purchases.create_purchase(engine, guard, purchase))


def _or_retry(task: Task, payment_id: str, work: Callable[[], T]) -> T:
    """`work()`. PostgreSQL away: DatabaseOutage (the message goes back to the broker and the
    worker stops consuming, kc_tasks/worker/outage.py). Anything else a retry may cure: a retry."""
    try:
        try:
            return work()
        except DatabaseUnavailable:
            # A pooled connection may have died since its last use (server restart, terminated
            # backend, failover); the pool has been renewed since, so one immediate second try
            # is free. If PostgreSQL is really away, this fails at once too.
            return work()
    except DatabaseUnavailable as exc:
        raise DatabaseOutage(str(exc)) from None
    except RetryableError as exc:
        _retry(task, payment_id, exc)
        raise


def _retry(task: Task, payment_id: str, exc: RetryableError) -> None:
    """Raise Celery's Retry with backoff; return (to re-raise exc) once the next attempt would
    come later than KC_RETRY_HORIZON after the first (or KC_MAX_RETRIES are used up)."""
    request = task.request
    first = request.get(names.FIRST_ATTEMPT)
    first = float(first) if isinstance(first, int | float) else time.time()
    countdown = compute_backoff(request.retries, settings.retry_backoff_max)
    if not may_retry(request.retries, time.time() - first + countdown, settings.retry_horizon, settings.max_retries):
        return
    logger.warning(
        "%s %s payment %s: %s; retry %d in %.1f s (retried until %.0f s after the first attempt)",
        task.name.removeprefix(names.TASK_PREFIX),
        request.id,
        payment_id,
        exc,
        request.retries + 1,
        countdown,
        settings.retry_horizon,
    )
    # The retry is a new message: the headers that say when the task was first tried, and when
    # its payment was first seen (kc_tasks/core/metrics.py), go with it.
    kept = {name: request.get(name) for name in metrics.FIRST_SEEN_HEADERS if request.get(name) is not None}
    raise task.retry(exc=exc, countdown=countdown, headers={**kept, names.FIRST_ATTEMPT: first}) from None


def _dead_letter(task: Task, exc: BaseException, reason: str) -> None:
    """Publish the dead letter; if that fails, the message goes back to the queue, unacked."""
    try:
        dead_letters.publish(app, dead_letters.DeadLetter.from_failure(task.request, exc, reason))
    except Exception as error:
        logger.critical(
            "%s %s: could not dead-letter it (%s); requeueing it",
            task.name.removeprefix(names.TASK_PREFIX),
            task.request.id,
            error,
        )
        raise Reject(error, requeue=True) from error


@app.task(
    bind=True,
    base=PurchaseTask,
    name=names.REVOKE_PURCHASE,
    max_retries=settings.max_retries,
    acks_late=True,
    reject_on_worker_lost=True,
    throws=(PermanentError, RetryableError),
)
def revoke_purchase(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Make the purchase of one payment inactive (refund, dispute, manual); see docs/reference.md.
    Retried and dead-lettered as create_purchase is."""
    return _dead_letter_on_failure(self, _revoke, args, kwargs)


def _revoke(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if args:
        raise InvalidRevocation(f"revoke_purchase takes keyword arguments only, got {len(args)} positional")
    revocation = parse_revocation(kwargs)
    engine, _ = resources()
    outcome = _or_retry(task, revocation.payment_id, lambda: revocations.revoke(engine, revocation))
    if outcome.events:
        events.publisher(engine, app).submit(outcome.events)
    return outcome.as_result()


@app.task(name=names.VERIFY_PURCHASE_INDEX)
def verify_purchase_index() -> dict[str, Any]:
    """Check unique_active_purchase now; warn, with the fix, when it is not usable. Warn too
    while dead letters wait in purchases.dlq, and while paid payments grant nothing (unmapped)."""
    engine, guard = resources()
    status = guard.refresh(engine)
    if status.usable:
        logger.info("%s", status.describe())
    else:
        logger.warning("%s - purchases use the fallback method; fix: %s", status.describe(), FIX_COMMAND)
    waiting = dead_letters.depth(app)
    if waiting:
        logger.warning("%s holds %d dead letter(s); inspect with kc-tasks dlq list", names.DEAD_LETTERS, waiting)
    unmapped = inbox.unmapped_count(engine)
    if unmapped:
        logger.warning(
            "%d paid payment(s) grant nothing: their server-set notes/metadata name only one of student_id "
            "and course_id, or no UUID; inspect with kc-tasks inbox list --status unmapped",
            unmapped,
        )
    return {
        "index": "unique_active_purchase",
        "usable": status.usable,
        "reason": status.reason,
        "fix": None if status.usable else FIX_COMMAND,
        "dead_letters": waiting,
        "unmapped": unmapped,
    }


@app.task(name=names.RELAY_EVENTS)
def relay_events() -> dict[str, int]:
    """Publish the events that were committed but not published (broker down, worker killed)."""
    engine, _ = resources()
    return {"published": events.publish_pending(engine, app)}


@app.task(name=names.RELAY_INBOX)
def relay_inbox(older_than: float = inbox.RELAY_GRACE_SECONDS) -> dict[str, int]:
    """Enqueue the provider events stored while the broker was down (still `received`)."""
    engine, _ = resources()
    return {"enqueued": inbox.enqueue_received(engine, app, older_than)}


@app.task(name=names.PRUNE_EVENTS)
def prune_events() -> dict[str, int]:
    """Delete events published long ago; unpublished events are never pruned."""
    engine, _ = resources()
    return {"pruned": events.prune(engine)}


@app.task(name=names.RECONCILE_PAYMENTS)
def reconcile_payments() -> dict[str, Any]:
    """Send again the inbox events of the window that were enqueued KC_RECONCILE_INTERVAL ago and
    still have no outcome, whatever their provider; then ask each configured provider's API for
    the payments, refunds and disputes of the last KC_RECONCILE_WINDOW seconds and enqueue what
    their webhooks never brought (kc_tasks/payments/reconciler.py). A provider that fails is a warning; the
    next run tries again. The result is each provider's summary, and what was sent again."""
    from kc_tasks.payments import reconciler, redaction

    engine, _ = resources()
    win = reconciler.window(settings.reconcile_window)
    summaries: dict[str, Any] = {
        "sent_again": reconciler.resend_waiting(
            engine,
            app,
            settings.reconcile_interval,
            settings.reconcile_window,
            lambda: redaction.dead_lettered_task_ids(app),
        )
    }
    providers = reconciler.configured(settings)
    if not providers:
        logger.info("reconcile: no provider API key is set (KC_RAZORPAY_KEY_ID/SECRET, KC_STRIPE_API_KEY)")
    for provider in providers:
        summaries[provider] = reconciler.run_logged(engine, app, settings, provider, win, resend=False).as_result()
    return summaries


@app.task(name=names.REDACT_INBOX)
def redact_inbox() -> dict[str, int]:
    """Reduce the bodies of the final inbox events older than KC_INBOX_BODY_DAYS to the fields
    kc_tasks reads (kc_tasks/payments/redaction.py)."""
    from kc_tasks.payments import redaction

    engine, _ = resources()
    older_than = settings.inbox_body_days * 86400.0
    return {"redacted": redaction.redact_final(engine, older_than, lambda: redaction.dead_lettered_task_ids(app))}


@app.task(name=names.QUEUE_HEARTBEAT, send_events=False)
def queue_heartbeat() -> None:
    """beat's heartbeat through `purchases` (kc_tasks/core/metrics.py): the worker's consumer notes when
    it was sent and never runs it; a consumer that does not know it runs this, which does nothing."""


@before_task_publish.connect
def _stamp_heartbeat(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """beat's heartbeat carries the time it was sent."""
    if sender == names.QUEUE_HEARTBEAT and headers is not None:
        headers[names.SENT_AT] = time.time()
