"""The Celery tasks: thin wrappers that validate, call the work, and map errors to retries."""

from __future__ import annotations

import gc
import logging
import os
import threading
from dataclasses import replace
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.app.trace import fast_trace_task, trace_task_ret
from celery.concurrency import get_implementation
from celery.exceptions import Reject, Retry
from celery.signals import worker_init, worker_process_init, worker_ready
from kombu.serialization import loads as loads_message
from kombu.serialization import prepare_accept_content
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from kc_tasks import db, dead_letters, events, inbox, purchases, revocations
from kc_tasks.celery import app
from kc_tasks.celeryconfig import settings
from kc_tasks.errors import (
    DatabaseUnavailable,
    InvalidPurchase,
    InvalidRevocation,
    KcTasksError,
    PermanentError,
    RetryableError,
)
from kc_tasks.index_guard import FIX_COMMAND, IndexGuard
from kc_tasks.payload import Purchase, parse_purchase, parse_revocation
from kc_tasks.retry import compute_backoff
from kc_tasks.settings import describe_database
from kc_tasks.worker import KcTask, Raised, is_task_body

logger = logging.getLogger(__name__)

_process: dict[int, tuple[Engine, IndexGuard]] = {}
_process_lock = threading.Lock()
# Tasks that run at the same time in one process: one in a prefork or solo pool, the
# concurrency in a threads pool.
_tasks_per_process = 1


@worker_init.connect
def _count_tasks_per_process(sender: Any = None, **_: Any) -> None:
    global _tasks_per_process
    if get_implementation(sender.pool_cls).__module__ == "celery.concurrency.thread":  # -P threads
        concurrency = sender.concurrency
        _tasks_per_process = concurrency if isinstance(concurrency, int) and concurrency > 0 else os.cpu_count() or 1


def resources() -> tuple[Engine, IndexGuard]:
    """This process's engine and index guard, made after the fork, never inherited."""
    pid = os.getpid()
    if pid in _process:
        return _process[pid]
    with _process_lock:  # a threads pool's first tasks arrive together
        if pid not in _process:
            for engine, _ in _process.values():
                engine.dispose(close=False)  # the parent's connections are not ours to use or close
            _process.clear()
            # A connection per task running at once and one for the event publisher, kept; one
            # more per task for the index check it makes, holding its own, if the index broke.
            tasks = _tasks_per_process
            engine = db.make_engine(settings.database_url, pool_size=tasks + 1, max_overflow=tasks)
            _process[pid] = (engine, IndexGuard(settings.index_check_ttl))
        return _process[pid]


@worker_process_init.connect
def _seed_index_cache(**_: Any) -> None:
    engine, guard = resources()
    try:
        status = guard.refresh(engine)
    except KcTasksError as exc:
        logger.debug("worker process %d: index check failed: %s", os.getpid(), exc)
        return
    logger.debug("worker process %d: %s", os.getpid(), status.describe())


@worker_init.connect
@worker_process_init.connect
@worker_ready.connect
def _freeze_start_up_objects(**_: Any) -> None:
    """Moves what start-up made (modules, Celery's and SQLAlchemy's objects) out of the
    garbage collector's sight: they live as long as the process. A full collection then
    looks at what tasks made only; over all of it, it stalled the consumer for 30-80 ms,
    every purchase received meanwhile waiting. Before the fork, it also keeps the pool
    processes from touching, hence copying, the pages they share with the main process."""
    gc.freeze()


@worker_ready.connect
def _report_index(**_: Any) -> None:
    """One start-up line for the operator: is unique_active_purchase usable?"""
    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        status = IndexGuard(0).refresh(engine)
    except KcTasksError as exc:
        logger.warning(
            "cannot check the unique_active_purchase index: PostgreSQL at %s: %s; "
            "purchases will be retried until it answers",
            describe_database(settings.database_url),
            exc,
        )
        return
    finally:
        engine.dispose()
    if status.usable:
        logger.info("%s", status.describe())
    else:
        logger.warning("%s - will use fallback method; fix: %s", status.describe(), FIX_COMMAND)


class PurchaseTask(KcTask):
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        payment_id = kwargs.get("payment_id") if isinstance(kwargs, dict) else None
        logger.error(
            "%s %s gave up on payment %s after %d attempt(s): %s: %s",
            self.name.removeprefix("kc_tasks."),
            task_id,
            payment_id,
            self.request.retries + 1,
            type(exc).__name__,
            exc,
        )


@app.task(
    bind=True,
    base=PurchaseTask,
    name="kc_tasks.create_purchase",
    max_retries=settings.max_retries,
    acks_late=True,
    reject_on_worker_lost=True,
    throws=(PermanentError, RetryableError),  # logged once by on_failure, without Celery's traceback
)
def create_purchase(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Make the purchase of one paid order; see CONTRACT.md for the kwargs and the result.

    A failure that retries cannot fix, or that outlived KC_MAX_RETRIES, is dead-lettered
    (purchases.dlq) before the message is acknowledged."""
    try:
        return _make_purchase(self, args, kwargs)
    except Retry:
        raise
    except RetryableError as exc:  # only when the retries are used up
        _dead_letter(self, exc, dead_letters.EXHAUSTED)
        raise
    except Exception as exc:
        _dead_letter(self, exc, dead_letters.PERMANENT)
        raise


def _make_purchase(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if args:
        raise InvalidPurchase(f"create_purchase takes keyword arguments only, got {len(args)} positional")
    purchase = parse_purchase(kwargs)
    outcome = _take_prepared(task.request.id, purchase)
    if outcome is None:
        outcome = _create_or_retry(task, purchase)
        if outcome.created:
            outcome = _settle(task, purchase.payment_id, outcome)
    # The outcome is committed with its events in the outbox: this process's publisher sends
    # them within moments; if it cannot, the relay does.
    if outcome.events:
        engine, _ = resources()
        events.publisher(engine, app).submit(outcome.events)
    return outcome.as_result()


def _create_or_retry(task: Task, purchase: Purchase) -> purchases.Outcome:
    engine, guard = resources()
    try:
        return _create(engine, guard, purchase)
    except RetryableError as exc:
        _retry(task, purchase.payment_id, exc)
        raise


def _settle(task: Task, payment_id: str, outcome: purchases.Outcome) -> purchases.Outcome:
    """A purchase just made whose payment was revoked meanwhile becomes inactive now (see
    revocations.py). The purchase is committed: a retry finds it and settles again."""
    engine, _ = resources()
    try:
        revoked = revocations.settle_created(engine, [payment_id])
    except RetryableError as exc:
        _retry(task, payment_id, exc)
        raise
    return replace(outcome, events=outcome.events + revoked) if revoked else outcome


def _retry(task: Task, payment_id: str, exc: RetryableError) -> None:
    """Raise Celery's Retry with backoff; return (to re-raise exc) once the retries are used up."""
    if task.request.retries >= task.max_retries:
        return
    countdown = compute_backoff(task.request.retries, settings.retry_backoff_max)
    logger.warning(
        "%s %s payment %s: %s; retry %d of %d in %.1f s",
        task.name.removeprefix("kc_tasks."),
        task.request.id,
        payment_id,
        exc,
        task.request.retries + 1,
        task.max_retries,
        countdown,
    )
    raise task.retry(exc=exc, countdown=countdown) from None


# Outcomes of a batch's purchases, inserted together before its tasks run, by task id.
_prepared: dict[str, tuple[Purchase, purchases.Outcome]] = {}


def run_batch(jobs: list[tuple[Any, ...]]) -> list[Any]:
    """Run in a pool process: several create_purchase requests that arrived together
    (kc_tasks.worker.PurchaseBatcher). Their new purchases are inserted in one statement
    first; then each request runs as a task of its own, with its own result, retries and
    dead letter, and finds its outcome ready or makes it as a lone task would.

    Each job is what Celery's tracer takes for one request; the answer is, in order, its
    (failed, result, runtime), or Raised if the tracer itself raised: what the pool reports
    of a lone request whose tracer raised, without failing the rest of the batch."""
    trace = fast_trace_task if app.use_fast_trace_task else trace_task_ret
    accept = prepare_accept_content(app.conf.accept_content)
    bodies = [_decode(job, accept) for job in jobs]
    try:
        _prepare([(job[1], body) for job, body in zip(jobs, bodies, strict=True) if body is not None])
        outcomes: list[Any] = []
        for job, body in zip(jobs, bodies, strict=True):
            try:
                outcomes.append(trace(*job) if body is None else trace(*job[:3], body, None, None))
            except Exception:  # noqa: BLE001  (reported for this request alone, as the pool would)
                outcomes.append(Raised(ExceptionInfo()))
        return outcomes
    finally:
        _prepared.clear()


def _decode(job: tuple[Any, ...], accept: set[str]) -> tuple[Any, ...] | None:
    """The job's [args, kwargs, embed]; None if it does not decode (its task reports that)."""
    body, content_type, content_encoding = job[3:]
    try:
        decoded = loads_message(body, content_type, content_encoding, accept=accept)
    except Exception:  # noqa: BLE001  (Celery's tracer raises it again, for this request alone)
        return None
    return tuple(decoded) if is_task_body(decoded) else None


def _prepare(requests: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Insert the batch's new purchases at once: the first request of each payment and each
    student/course pair; the others, and any the statement did not create, go their own way."""
    chosen: dict[str, Purchase] = {}
    payments: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for task_id, (args, kwargs, _) in requests:
        try:
            purchase = parse_purchase(kwargs)
        except InvalidPurchase:
            continue
        pair = (purchase.student_id, purchase.course_id)
        if args or task_id in chosen or purchase.payment_id in payments or pair in pairs:
            continue
        chosen[task_id] = purchase
        payments.add(purchase.payment_id)
        pairs.add(pair)
    if len(chosen) < 2:
        return
    try:
        engine, guard = resources()
        created = purchases.create_many(engine, guard, list(chosen.values()))
    except KcTasksError as exc:  # each request tries again alone, and retries or dead-letters
        logger.debug("a batch of %d purchases went one by one: %s", len(chosen), exc)
        return
    except Exception:  # only an optimisation failed: each request still makes its own outcome
        logger.exception("inserting a batch of %d purchases failed; they go one by one", len(chosen))
        return
    try:
        revoked = {e.data["payment_id"]: e for e in revocations.settle_created(engine, list(created))}
    except KcTasksError as exc:  # each request settles its own purchase again when it runs
        logger.debug("settling a batch of %d purchases failed: %s", len(created), exc)
        return
    for task_id, purchase in chosen.items():
        outcome = created.get(purchase.payment_id)
        if outcome is not None:
            if purchase.payment_id in revoked:
                outcome = replace(outcome, events=(*outcome.events, revoked[purchase.payment_id]))
            _prepared[task_id] = (purchase, outcome)


def _take_prepared(task_id: str | None, purchase: Purchase) -> purchases.Outcome | None:
    """The outcome made for this request by its batch, once (a task id can come twice)."""
    prepared = _prepared.get(task_id) if task_id else None
    if task_id is None or prepared is None or prepared[0] != purchase:
        return None
    del _prepared[task_id]
    return prepared[1]


def _dead_letter(task: Task, exc: BaseException, reason: str) -> None:
    """Publish the dead letter; if that fails, the message goes back to the queue, unacked."""
    try:
        dead_letters.publish(app, dead_letters.DeadLetter.from_failure(task.request, exc, reason))
    except Exception as error:
        logger.critical(
            "%s %s: could not dead-letter it (%s); requeueing it",
            task.name.removeprefix("kc_tasks."),
            task.request.id,
            error,
        )
        raise Reject(error, requeue=True) from error


def _create(engine: Engine, guard: IndexGuard, purchase: Purchase) -> purchases.Outcome:
    try:
        return purchases.create_purchase(engine, guard, purchase)
    except DatabaseUnavailable:
        # A pooled connection may have died since its last use (server restart, terminated
        # backend); the pool has been renewed since, so one immediate second try is free.
        # If the server is really down, this fails at once too and the task retries later.
        return purchases.create_purchase(engine, guard, purchase)


@app.task(
    bind=True,
    base=PurchaseTask,
    name="kc_tasks.revoke_purchase",
    max_retries=settings.max_retries,
    acks_late=True,
    reject_on_worker_lost=True,
    throws=(PermanentError, RetryableError),
)
def revoke_purchase(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Make the purchase of one payment inactive (refund, dispute, manual); see CONTRACT.md.
    Retried and dead-lettered as create_purchase is."""
    try:
        return _revoke(self, args, kwargs)
    except Retry:
        raise
    except RetryableError as exc:  # only when the retries are used up
        _dead_letter(self, exc, dead_letters.EXHAUSTED)
        raise
    except Exception as exc:
        _dead_letter(self, exc, dead_letters.PERMANENT)
        raise


def _revoke(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if args:
        raise InvalidRevocation(f"revoke_purchase takes keyword arguments only, got {len(args)} positional")
    revocation = parse_revocation(kwargs)
    engine, _ = resources()
    try:
        try:
            outcome = revocations.revoke(engine, revocation)
        except DatabaseUnavailable:  # a pooled connection died since its last use: once more, at once
            outcome = revocations.revoke(engine, revocation)
    except RetryableError as exc:
        _retry(task, revocation.payment_id, exc)
        raise
    if outcome.events:
        events.publisher(engine, app).submit(outcome.events)
    return outcome.as_result()


@app.task(name="kc_tasks.verify_purchase_index")
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
        logger.warning("%s holds %d dead letter(s); inspect with kc-tasks dlq list", dead_letters.DLQ, waiting)
    unmapped = inbox.unmapped_count(engine)
    if unmapped:
        logger.warning(
            "%d paid payment(s) grant nothing: their notes/metadata lack student_id or course_id; "
            "inspect with kc-tasks inbox list --status unmapped",
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


@app.task(name="kc_tasks.relay_events")
def relay_events() -> dict[str, int]:
    """Publish the events that were committed but not published (broker down, worker killed)."""
    engine, _ = resources()
    return {"published": events.relay(engine, app)}


@app.task(name="kc_tasks.relay_inbox")
def relay_inbox(older_than: float = inbox.RELAY_GRACE_SECONDS) -> dict[str, int]:
    """Enqueue the provider events stored while the broker was down (still `received`)."""
    engine, _ = resources()
    return {"enqueued": inbox.relay(engine, app, older_than)}


@app.task(name="kc_tasks.prune_events")
def prune_events() -> dict[str, int]:
    """Delete events published long ago; unpublished events are never pruned."""
    engine, _ = resources()
    return {"pruned": events.prune(engine)}


@app.task(name="kc_tasks.reconcile_payments")
def reconcile_payments() -> dict[str, Any]:
    """Ask each configured provider's API for the payments of the last 2 x KC_RECONCILE_INTERVAL
    + 1 h and enqueue what their webhooks never brought (kc_tasks/reconcile.py). A provider that
    fails is a warning; the next run tries again. The result is each provider's summary."""
    from kc_tasks import reconcile

    engine, _ = resources()
    win = reconcile.window(reconcile.beat_lookback(settings))
    summaries: dict[str, Any] = {}
    providers = reconcile.configured(settings)
    if not providers:
        logger.info("reconcile: no provider API key is set (KC_RAZORPAY_KEY_ID/SECRET, KC_STRIPE_API_KEY)")
    for provider in providers:
        summaries[provider] = reconcile.run_logged(engine, app, settings, provider, win).as_result()
    return summaries
