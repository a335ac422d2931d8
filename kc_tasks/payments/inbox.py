"""The inbox: every provider event that passed its signature check, stored before it is
answered, then enqueued.

`receive` writes the raw body to payment_events, deduplicated by (provider, event_id), and
enqueues the task it asks for with a task id derived from the payment id and the kind of task
(a provider's repeats map to one task id; a purchase and a revocation never share one). The
event is then marked `enqueued`. If the broker does not answer, it stays `received` and
`enqueue_received` (beat, worker side) enqueues it once the broker answers. Statuses: see docs/reference.md.

An event id names one event: an id stored before is a repeat when its body is the same, byte for
byte (`same_event`), and a conflict otherwise: refused, logged as an error, nothing stored or
enqueued. The raw body's SHA-256 is kept beside it (`body_sha256`), so the comparison still holds
once the body is redacted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from celery import Celery
from kombu import Producer
from kombu.common import maybe_declare
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from kc_tasks.core import metrics, sending
from kc_tasks.core.confirms import ConfirmedChannel, Kept
from kc_tasks.core.errors import InvalidPurchase, InvalidRevocation
from kc_tasks.core.names import (
    CONFLICT,
    CREATE_PURCHASE,
    ENQUEUED,
    IGNORED,
    INVALID,
    PURCHASES,
    RECEIVED,
    REVOKE_PURCHASE,
    UNMAPPED,
)
from kc_tasks.core.payload import parse_purchase, parse_revocation
from kc_tasks.core.sending import task_id_for
from kc_tasks.payments import state
from kc_tasks.providers import (
    Ignored,
    Malformed,
    ProviderEvent,
    Purchase,
    RefundFailed,
    Revocation,
    Unmapped,
    recovered,
    registry,
)
from kc_tasks.store import db

logger = logging.getLogger(__name__)

PROVIDERS = registry.NAMES
# The types of the events that revoke (Revocation), every provider's: the resend sweep looks at
# these even when their payment has its purchase (kc_tasks.payments.reconciler.resend_waiting).
REVOKING_TYPES = registry.REVOKING_TYPES
# How long the web gets to enqueue what it stored before the relay does it instead, seconds.
RELAY_GRACE_SECONDS = 10
RELAY_BATCH = 200

_e = db.payment_events
_STORED = ("provider", "event_id", "type", "payment_id", "status", "body", "body_sha256")


@dataclass(frozen=True)
class Task:
    name: str
    kwargs: dict[str, Any]
    task_id: str
    # The payment's first sight (its event's provider and received_at), which travels with the
    # task in its message headers (kc_tasks/core/metrics.py, kc_payment_to_access_seconds).
    headers: dict[str, Any] | None = None


@dataclass(frozen=True)
class Receipt:
    status: str
    # False when (provider, event_id) was stored before: nothing was done again. A CONFLICT
    # receipt (that id stored with another body) is never new.
    new: bool
    task_id: str | None = None
    # Why the event is ignored, unmapped or invalid.
    why: str | None = None


def plan(event: ProviderEvent) -> tuple[str, Task | None, str | None]:
    """The status to store, the task to enqueue (if any), and why nothing is (pure)."""
    action = event.action
    if isinstance(action, Purchase):
        try:
            purchase = parse_purchase(action.kwargs)
        except InvalidPurchase as exc:
            return INVALID, None, str(exc)
        kwargs = purchase.model_dump(exclude_none=True)
        return RECEIVED, Task(CREATE_PURCHASE, kwargs, task_id_for(purchase.payment_id)), None
    if isinstance(action, Revocation):
        try:
            revocation = parse_revocation(action.kwargs)
        except InvalidRevocation as exc:
            return INVALID, None, str(exc)
        kwargs = revocation.model_dump(exclude_none=True)
        return RECEIVED, Task(REVOKE_PURCHASE, kwargs, task_id_for(revocation.payment_id, REVOKE_PURCHASE)), None
    if isinstance(action, Unmapped):
        return UNMAPPED, None, action.why
    if isinstance(action, RefundFailed):
        # No task: the purchase stays as it is; the inbox warns and counts it (`_log`), and an
        # operator decides (kc-tasks payment restore).
        return IGNORED, None, action.why
    assert isinstance(action, Ignored)
    return IGNORED, None, action.why


def parse(
    provider: str, body: bytes, event_id: str | None = None, stripe_livemode: bool | None = None
) -> ProviderEvent:
    """The provider module's reading of a body (again, for the relay and replays)."""
    entry = registry.find(provider)
    if entry is None:
        raise Malformed(f"unknown provider {provider}")
    return entry.parse(body, event_id, stripe_livemode)


def receive(engine: Engine, app: Celery, event: ProviderEvent, body: bytes, raw: bool = True) -> Receipt:
    """Store the event (once), then enqueue its task. Raises KcTasksError only when
    PostgreSQL fails: then nothing was stored and the provider must be told to retry.
    `raw`: `body` is the request's body, byte for byte (see `store_and_enqueue`)."""
    return receive_many(engine, app, [(event, body)], raw=raw)[0]


def receive_many(
    engine: Engine,
    app: Celery,
    arrivals: Sequence[tuple[ProviderEvent, bytes]],
    channel: Kept[TaskChannel] | None = None,
    raw: bool = True,
    arrived: Sequence[float | None] | None = None,
) -> list[Receipt]:
    """`receive` for many events at once, a receipt each, in order: `store_and_enqueue`,
    then `mark_enqueued`."""
    with db.autocommit(engine) as conn:
        receipts = store_and_enqueue(conn, app, arrivals, channel, raw, arrived)
        mark_enqueued(conn, enqueued(arrivals, receipts))
    return receipts


def store_and_enqueue(
    conn: sa.Connection,
    app: Celery,
    arrivals: Sequence[tuple[ProviderEvent, bytes]],
    channel: Kept[TaskChannel] | None,
    raw: bool | Sequence[bool] = True,
    arrived: Sequence[float | None] | None = None,
) -> list[Receipt]:
    """Store the events with one INSERT (autocommit `conn`), then publish their tasks with
    one wait for the broker's confirms (on `channel`, when given; else each is confirmed on
    its own); a receipt each, in order. The rows say `received` until `mark_enqueued`.

    An event whose (provider, event_id) is already stored, or comes twice in `arrivals`, is a
    repeat after its first when its body is the same (`same_event`): nothing is done for it
    again. With another body it is a CONFLICT: logged as an error, nothing stored or enqueued.
    `raw`: the bodies are requests' bodies, byte for byte, and their SHA-256 is stored with
    them; reconciliation's and a checkout confirm's are the providers' API objects, stored
    without one (one flag for all, or one per arrival). `arrived`: when each event's request
    arrived, on time.monotonic(), where it waited for something before it was handed over (a
    checkout confirm waits for the provider's API); its payment counts as first seen then
    (kc_payment_to_access_seconds), on PostgreSQL's clock: the stored `received_at` less the
    time from the arrival to this INSERT. None (or a None): first seen when stored. Raises (a
    driver error: wrap it in db.translate_errors) only when PostgreSQL fails: then nothing was
    stored."""
    plans = [plan(event) for event, _ in arrivals]
    raws = [raw] * len(arrivals) if isinstance(raw, bool) else list(raw)
    digests = [
        hashlib.sha256(body).digest() if whole else None for (_, body), whole in zip(arrivals, raws, strict=True)
    ]
    columns = _columns(arrivals, plans, digests)
    waited = _waited(arrived, len(arrivals))
    stored = {(r.provider, r.event_id): r.received_at for r in conn.exec_driver_sql(_STORE_MANY, columns)}
    earlier = _stored_before(conn, {(e.provider, e.event_id) for e, _ in arrivals} - stored.keys())
    receipts, sending = _sort_out(arrivals, plans, digests, waited, stored, earlier)
    sent = _enqueue_many(app, sending, channel)
    return [
        Receipt(ENQUEUED, True, r.task_id) if r.new and (event.provider, event.event_id) in sent else r
        for (event, _), r in zip(arrivals, receipts, strict=True)
    ]


def _columns(
    arrivals: Sequence[tuple[ProviderEvent, bytes]],
    plans: Sequence[tuple[str, Task | None, str | None]],
    digests: Sequence[bytes | None],
) -> dict[str, list[Any]]:
    """The INSERT's values, one list per column (_STORED), one row per (provider, event_id): an
    event that comes twice is stored as its first arrival."""
    # In key order: two INSERTs meeting the same events (a provider's retry racing the
    # original) then wait for each other in one order, never in a circle (a deadlock).
    rows = sorted(
        {
            (event.provider, event.event_id): (event.type, event.payment_id, status, body.decode("utf-8"), digest)
            for (event, body), (status, _, _), digest in zip(
                reversed(arrivals), reversed(plans), reversed(digests), strict=True
            )
        }.items()
    )
    columns: dict[str, list[Any]] = {"provider": [k[0] for k, _ in rows], "event_id": [k[1] for k, _ in rows]}
    columns |= {name: [values[i] for _, values in rows] for i, name in enumerate(_STORED[2:])}
    return columns


def _waited(arrived: Sequence[float | None] | None, count: int) -> list[float]:
    """How long before now each event's request arrived (0: first seen when stored); asked just
    before the INSERT, since received_at is PostgreSQL's now() once the INSERT reaches it."""
    if arrived is None:
        return [0.0] * count
    asked = time.monotonic()
    return [max(asked - at, 0.0) if at is not None else 0.0 for at in arrived]


def _sort_out(
    arrivals: Sequence[tuple[ProviderEvent, bytes]],
    plans: Sequence[tuple[str, Task | None, str | None]],
    digests: Sequence[bytes | None],
    waited: Sequence[float],
    stored: dict[tuple[str, str], datetime],
    earlier: dict[tuple[str, str], tuple[bytes, bytes | None]],
) -> tuple[list[Receipt], list[tuple[ProviderEvent, Task]]]:
    """A receipt for each arrival, in order, given what the INSERT `stored` (its received_at, by
    key) and what was stored `earlier`: a new event is logged and its task is to be sent; a
    repeat is nothing new; another body under a stored id is a CONFLICT. And the tasks to send."""
    stored = dict(stored)
    firsts: dict[tuple[str, str], tuple[bytes, bytes | None]] = {}
    receipts: list[Receipt] = []
    sending: list[tuple[ProviderEvent, Task]] = []
    for (event, body), (status, task, why), digest, early in zip(arrivals, plans, digests, waited, strict=True):
        key = (event.provider, event.event_id)
        if key not in stored:
            before = firsts.get(key) or earlier.get(key)
            if before is not None and not same_event(event.provider, event.event_id, (body, digest), before):
                receipts.append(_conflict(event))
                continue
            logger.debug("%s event %s: a repeat, already stored", event.provider, event.event_id)
            receipts.append(Receipt(status, False, task.task_id if task else None, why))
            continue
        received_at = stored.pop(key)  # a second arrival of it in this batch is a repeat
        firsts[key] = (body, digest)
        _log(event, status, why)
        receipts.append(Receipt(status, True, task.task_id if task else None, why))
        if task is not None:
            sending.append((event, seen(task, event.provider, received_at, early)))
    return receipts, sending


def same_event(
    provider: str, event_id: str, arriving: tuple[bytes, bytes | None], stored: tuple[bytes, bytes | None]
) -> bool:
    """Whether a second arrival of (provider, event_id) is the event stored under that id: each
    side its body and the SHA-256 of the raw body (None where there is none). Both raw: the same
    bytes. Otherwise (one side is a provider's API object that reconciliation stored, a rendering
    of the event and not the webhook's bytes; or the stored body predates its digest and may be
    redacted): the same type and action by today's rules, which read a redacted body as the
    original (pure)."""
    (body, digest), (stored_body, stored_digest) = arriving, stored
    if digest is not None and stored_digest is not None:
        return digest == stored_digest
    try:
        one, other = parse(provider, body, event_id), parse(provider, stored_body, event_id)
    except ValueError:  # Malformed included: a body that reads as no event is not that event
        return False
    return (one.type, one.action) == (other.type, other.action)


def _stored_before(
    conn: sa.Connection, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[bytes, bytes | None]]:
    """The body and raw-body digest already stored under each of these keys (the repeats)."""
    if not keys:
        return {}
    rows = conn.execute(
        sa.select(_e.c.provider, _e.c.event_id, _e.c.body, _e.c.body_sha256).where(
            sa.tuple_(_e.c.provider, _e.c.event_id).in_(sorted(keys))
        )
    )
    return {(r.provider, r.event_id): (r.body.encode("utf-8"), r.body_sha256) for r in rows}


def _conflict(event: ProviderEvent) -> Receipt:
    why = f"event id {event.event_id} is stored with another body: an event id names one event"
    logger.error(
        "%s event %s (%s, payment %s) refused: %s; nothing stored or enqueued. Send it under an id of its own",
        event.provider,
        event.event_id,
        event.type,
        event.payment_id,
        why,
    )
    return Receipt(CONFLICT, False, None, why)


def seen(task: Task, provider: str, received_at: datetime, before: float = 0.0) -> Task:
    """The task, with the headers that say when its payment was first seen, and by whom: when
    its event was stored, or `before` seconds earlier (its request arrived then)."""
    return replace(task, headers=metrics.first_seen_headers(provider, received_at.timestamp() - before))


def enqueued(arrivals: Sequence[tuple[ProviderEvent, bytes]], receipts: Sequence[Receipt]) -> list[tuple[str, str]]:
    """The (provider, event_id) of the events `store_and_enqueue` stored and enqueued."""
    return [
        (event.provider, event.event_id)
        for (event, _), r in zip(arrivals, receipts, strict=True)
        if r.new and r.status == ENQUEUED
    ]


def mark_enqueued(conn: sa.Connection, keys: Sequence[tuple[str, str]]) -> None:
    """Mark the stored events whose task the broker took (one UPDATE). Lost (PostgreSQL went
    away in between), they stay `received`, and the relay enqueues them again: the same task
    ids, and tasks that are idempotent."""
    if keys:
        conn.exec_driver_sql(
            _MARK_MANY, {"providers": [k[0] for k in keys], "event_ids": [k[1] for k in keys], "status": ENQUEUED}
        )


def _store_many() -> str:
    """INSERT ... ON CONFLICT (provider, event_id) DO NOTHING RETURNING (provider, event_id),
    the values as one array per column, in their order: one prepared statement serves a
    batch of any size. Compiled once, for psycopg: the hot path only binds values."""
    rows = (
        sa.func.unnest(*(sa.bindparam(name, type_=postgresql.ARRAY(_e.c[name].type)) for name in _STORED))
        .table_valued(*_STORED, with_ordinality="n")
        .render_derived(with_types=False)
        .alias("arrived")
    )
    statement = (
        pg_insert(_e)
        .from_select(list(_STORED), sa.select(*(rows.c[name] for name in _STORED)).order_by(rows.c.n))
        .on_conflict_do_nothing(index_elements=[_e.c.provider, _e.c.event_id])
        .returning(_e.c.provider, _e.c.event_id, _e.c.received_at)
    )
    return str(statement.compile(dialect=postgresql.psycopg.dialect()))


def _mark_many() -> str:
    """UPDATE payment_events SET status WHERE (provider, event_id) is one of the arrays'."""
    keys = (
        sa.func.unnest(
            sa.bindparam("providers", type_=postgresql.ARRAY(sa.Text)),
            sa.bindparam("event_ids", type_=postgresql.ARRAY(sa.Text)),
        )
        .table_valued("provider", "event_id")
        .render_derived(with_types=False)
        .alias("marked")
    )
    statement = (
        sa.update(_e)
        .where(_e.c.provider == keys.c.provider, _e.c.event_id == keys.c.event_id)
        .values(status=sa.bindparam("status", type_=_e.c.status.type))
    )
    return str(statement.compile(dialect=postgresql.psycopg.dialect()))


_STORE_MANY = _store_many()
_MARK_MANY = _mark_many()


def enqueue_received(engine: Engine, app: Celery, older_than: float = RELAY_GRACE_SECONDS) -> int:
    """Enqueue the events left `received` (broker down when they came); the number enqueued."""
    enqueued = 0
    with db.translate_errors(engine.url), engine.begin() as conn:
        rows = conn.execute(
            sa.select(_e.c.provider, _e.c.event_id, _e.c.body, _e.c.received_at)
            .where(
                _e.c.status == RECEIVED,
                _e.c.received_at <= sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than),
            )
            .order_by(_e.c.received_at)
            .limit(RELAY_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            try:
                event = parse(row.provider, row.body.encode("utf-8"), row.event_id)
            except Exception as exc:  # noqa: BLE001  (one row that no longer reads never stops the others)
                _unreadable(conn, row.provider, row.event_id, exc)
                continue
            status, task, _ = plan(event)
            if task is None:  # stored before a rule changed: keep what it is now
                _mark(conn, row.provider, [row.event_id], status)
            elif _enqueue(app, event, seen(task, row.provider, row.received_at)):
                _mark(conn, row.provider, [row.event_id], ENQUEUED)
                enqueued += 1
            else:
                break  # the broker is still down: the next run tries again
    if enqueued:
        logger.info("inbox: enqueued %d event(s) left received", enqueued)
    return enqueued


def replay(
    engine: Engine, app: Celery, provider: str, event_ids: Sequence[str], stripe_livemode: bool | None = None
) -> dict[str, str]:
    """Process stored events again, as if just received (KC_STRIPE_LIVEMODE as `stripe_livemode`);
    by event id: the status, or 'not found'."""
    done: dict[str, str] = {}
    with db.translate_errors(engine.url), engine.begin() as conn:
        rows = {
            r.event_id: r
            for r in conn.execute(
                sa.select(_e.c.event_id, _e.c.body, _e.c.received_at).where(
                    _e.c.provider == provider, _e.c.event_id.in_(event_ids)
                )
            )
        }
        for event_id in event_ids:
            row = rows.get(event_id)
            if row is None:
                done[event_id] = "not found"
                continue
            try:
                event = parse(provider, row.body.encode("utf-8"), event_id, stripe_livemode)
            except Exception as exc:  # noqa: BLE001  (reported as its status, like any other)
                done[event_id] = f"{INVALID}: {_unreadable(conn, provider, event_id, exc)}"
                continue
            status, task, why = plan(event)
            if task is not None and _enqueue(app, event, seen(task, provider, row.received_at)):
                status = ENQUEUED
            _mark(conn, provider, [event_id], status)
            done[event_id] = status if why is None else f"{status}: {why}"
    return done


@dataclass(frozen=True)
class Stored:
    provider: str
    event_id: str
    type: str
    payment_id: str | None
    status: str
    received_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "event_id": self.event_id,
            "type": self.type,
            "payment_id": self.payment_id,
            "status": self.status,
            "received_at": self.received_at.isoformat(),
        }


def listing(engine: Engine, status: str | None = None, provider: str | None = None, limit: int = 1000) -> list[Stored]:
    """The stored events, newest first."""
    query = sa.select(_e.c.provider, _e.c.event_id, _e.c.type, _e.c.payment_id, _e.c.status, _e.c.received_at)
    if status:
        query = query.where(_e.c.status == status)
    if provider:
        query = query.where(_e.c.provider == provider)
    with db.translate_errors(engine.url), engine.connect() as conn:
        rows = conn.execute(query.order_by(_e.c.received_at.desc(), _e.c.event_id).limit(limit)).all()
    return [Stored(*row) for row in rows]


def stuck_count(engine: Engine, older_than: float = RELAY_GRACE_SECONDS) -> int:
    """Events still `received` `older_than` seconds after they were stored: the broker is down,
    or nothing relays (no worker, no beat)."""
    with db.translate_errors(engine.url), engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    _e.c.status == RECEIVED,
                    _e.c.received_at <= sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than),
                )
            ).scalar_one()
        )


def unmapped_count(engine: Engine) -> int:
    """Paid payments that granted nothing: unmapped events whose payment has no purchase yet
    (a sibling event, e.g. Stripe's Checkout Session beside its PaymentIntent, may have made it)."""
    with db.translate_errors(engine.url), engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count(sa.distinct(sa.func.coalesce(_e.c.payment_id, _e.c.event_id)))).where(
                    _e.c.status == UNMAPPED, ~state.bought_where(_e.c.payment_id)
                )
            ).scalar_one()
        )


class TaskChannel(ConfirmedChannel):
    """A confirmed channel (kc_tasks.core.confirms) publishing tasks to `purchases`, in Celery's
    own message format (send_task, with this channel's producer)."""

    # A broker that does not answer: one quick second try, then the relay's turn.
    connect_retry = sending.QUICK_RETRY

    def producer_for(self, channel: Any) -> Producer:
        # Declared once per channel, not checked again before every message.
        maybe_declare(self.app.amqp.queues[PURCHASES], channel)
        return Producer(channel, auto_declare=False)

    def send(self, tasks: Sequence[Task]) -> None:
        """Returns once the broker holds every task; raises if it refused or did not answer."""
        for task in tasks:
            sending.send(
                self.app, task.name, task.kwargs, task_id=task.task_id, headers=task.headers, producer=self.producer
            )
        self.confirm(len(tasks))


def _enqueue_many(
    app: Celery, sending: Sequence[tuple[ProviderEvent, Task]], channel: Kept[TaskChannel] | None
) -> set[tuple[str, str]]:
    """Publish the tasks: the (provider, event_id) of the events whose task the broker took."""
    if channel is None:
        return {(event.provider, event.event_id) for event, task in sending if _enqueue(app, event, task)}
    if not sending:
        return set()
    try:
        channel.send(lambda c: c.send([task for _, task in sending]))
    except Exception as exc:  # noqa: BLE001  (any broker failure: the events stay received, for the relay)
        logger.warning(
            "%d event(s) (%s): broker unreachable, left for the relay: %s: %s",
            len(sending),
            ", ".join(f"{event.provider} {event.event_id}" for event, _ in sending[:3])
            + (", ..." if len(sending) > 3 else ""),
            type(exc).__name__,
            exc,
        )
        return set()
    return {(event.provider, event.event_id) for event, _ in sending}


def _enqueue(app: Celery, event: ProviderEvent, task: Task) -> bool:
    """Publish the task (confirmed on RabbitMQ); False if the broker did not take it."""
    try:
        # A broker that does not answer: one quick second try, then the relay's turn.
        sending.send(
            app, task.name, task.kwargs, task_id=task.task_id, headers=task.headers, retry_policy=sending.QUICK_RETRY
        )
    except Exception as exc:  # noqa: BLE001  (any broker failure: the event stays received, for the relay)
        logger.warning(
            "%s event %s: broker unreachable, left for the relay: %s: %s",
            event.provider,
            event.event_id,
            type(exc).__name__,
            exc,
        )
        return False
    return True


def _unreadable(conn: sa.Connection, provider: str, event_id: str, exc: Exception) -> str:
    """Mark a stored event that no longer reads as an event `invalid`, log and count it; why."""
    why = f"its stored body no longer reads as an event: {type(exc).__name__}: {exc}"
    logger.error("%s event %s is invalid, nothing enqueued: %s", provider, event_id, why)
    _mark(conn, provider, [event_id], INVALID)
    metrics.webhook(recovered.source(provider, event_id), INVALID)
    return why


def _mark(conn: sa.Connection, provider: str, event_ids: Sequence[str], status: str) -> None:
    conn.execute(sa.update(_e).where(_e.c.provider == provider, _e.c.event_id.in_(event_ids)).values(status=status))


def _log(event: ProviderEvent, status: str, why: str | None) -> None:
    if isinstance(event.action, RefundFailed):
        metrics.refund_failed(recovered.source(event.provider, event.event_id))
        logger.warning(
            "%s event %s (%s): %s: the buyer of payment %s was not paid back. If that refund revoked its "
            "purchase, the buyer paid and has no course: see kc-tasks payment %s; refund again, or give the "
            "course back with kc-tasks payment restore %s --reason TEXT",
            event.provider,
            event.event_id,
            event.type,
            why,
            event.payment_id,
            event.payment_id,
            event.payment_id,
        )
    elif status == UNMAPPED:
        logger.warning(
            "%s event %s (%s): payment %s was paid but %s, so it grants nothing; make the platform's server "
            "set both (Razorpay: the order's notes; Stripe: the Checkout Session's or PaymentIntent's metadata), "
            "and grant this one with kc-tasks enqueue --payment %s --student S --course C --amount N --currency X",
            event.provider,
            event.event_id,
            event.type,
            event.payment_id,
            why,
            event.payment_id,
        )
    elif status == INVALID:
        logger.warning(
            "%s event %s (%s) is invalid, nothing enqueued: %s", event.provider, event.event_id, event.type, why
        )
    elif status == IGNORED:
        logger.info("%s event %s (%s) ignored: %s", event.provider, event.event_id, event.type, why)
