"""Reconciliation: what a webhook should have brought is acted on even when it never came.

`run` reads one provider's API over a window (provider_api), reads what it finds by the
webhook's own rules (providers), and hands what kc_tasks has no outcome for to the inbox:

- Razorpay: captured payments of the window (their order fetched only for a payment with no
  outcome yet, since only the order's notes name the course), processed refunds and lost
  disputes of the window by their own time, whenever the payment was made. Each is stored as
  a `reconcile` event (`razorpay:<payment_id>:<paid|refunded|disputed>`): its insert is the
  claim, so a second run, or a second reconciler at the same time, enqueues nothing again.
- Stripe: its Events API, the provider's own log of the webhook's events. Each goes through
  the Stripe webhook's rules into the inbox under its own event id: one whose webhook came is
  already there and does nothing; a missed one is handled exactly as if delivered.

An order paid in parts (Razorpay's `partial_payment`) has a captured payment per instalment:
only the latest of them can complete it, as `order.paid` says, so only it is a candidate, and
it grants once the order is paid in full; an order not paid in full is fetched again on later
runs, never stored. A refund listed `pending` is kept in `pending_refunds` and fetched again
(GET /v1/refunds/{id}, at most PENDING_REFUND_CHECKS a run) until it is final, even after it
leaves the window.

A stored event whose payment still has no outcome after `resend_after` seconds (its message was
lost, e.g. by Redis) is sent again; beat's task does that for the whole inbox first, whatever
the provider, kc_tasks' own webhook included (`resend_waiting`).

The lists are read in full before anything is enqueued, so a failing list enqueues nothing;
Razorpay's orders and refunded payments are fetched one by one as their events are handed over,
so one that fails stops the run there (raising ProviderApiError) with what was handed over
before it kept, and the next run goes on.

Disputes are listed over DISPUTE_LOOKBACK at least: Razorpay lists a dispute by the time it was
opened, and one is often lost weeks later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from kc_tasks.core import metrics, names
from kc_tasks.core.errors import KcTasksError
from kc_tasks.core.settings import Settings
from kc_tasks.payments import inbox, outcomes, state
from kc_tasks.providers import (
    DISPUTE,
    NOT_A_COURSE,
    Ignored,
    Malformed,
    ProviderEvent,
    Purchase,
    Revocation,
    apis,
    razorpay,
    recovered,
    registry,
    stripe,
    text,
)
from kc_tasks.store import db

logger = logging.getLogger(__name__)

# The providers reconciled: the registry's, each read by its READERS entry.
PROVIDERS = registry.RECONCILED
# One object of a provider's API, as JSON.
Obj = dict[str, Any]
# What reconciliation finds that no webhook had brought (Summary.found).
PAYMENT, REFUND, DISPUTE_FOUND = "payment", "refund", "dispute"
# How far back disputes are listed, at least, seconds: a chargeback can take months to close.
DISPUTE_LOOKBACK = 120 * 86400
# Razorpay refunds still pending fetched again per run, at most: the ones checked longest ago.
PENDING_REFUND_CHECKS = 50
# Inbox events looked at per run by the resend sweep, at most.
RESEND_BATCH = 200


@dataclass
class Summary:
    provider: str
    since: str
    until: str
    dry_run: bool = False
    # Payments (Razorpay) or events (Stripe) read from the API.
    seen: int = 0
    already_fine: int = 0
    purchases_enqueued: int = 0
    revocations_enqueued: int = 0
    # Paid payments whose server-set data names no course: payments for other products.
    not_course: int = 0
    unmapped: int = 0
    not_paid: int = 0
    invalid: int = 0
    # Stored, but the broker did not take them: the inbox relay enqueues them.
    left_for_relay: int = 0
    # Razorpay: earlier instalments of an order paid in parts (its last one makes the purchase).
    part_payments: int = 0
    # Razorpay: refunds still pending, fetched again by later runs until they are final.
    refunds_pending: int = 0
    # What no webhook had brought, by kind (payment, refund, dispute).
    found: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    # What was (or, with --dry-run, would be) done, one line each.
    actions: list[str] = field(default_factory=list)

    def line(self) -> str:
        would = "would be " if self.dry_run else ""
        read = "payment(s)" if self.provider == razorpay.NAME else "event(s)"
        text = (
            f"reconcile {self.provider} {self.since} .. {self.until}: {self.seen} {read} seen, "
            f"{self.already_fine} already fine, {self.purchases_enqueued} purchase(s) {would}enqueued, "
            f"{self.revocations_enqueued} revocation(s) {would}enqueued, {self.unmapped} unmapped, "
            f"{self.not_paid} not paid, {self.not_course} not a course purchase"
        )
        if self.invalid:
            text += f", {self.invalid} invalid"
        if self.left_for_relay:
            text += f", {self.left_for_relay} left for the inbox relay (broker unreachable)"
        if self.part_payments:
            text += f", {self.part_payments} earlier instalment(s) of an order paid in parts"
        if self.refunds_pending:
            text += f", {self.refunds_pending} refund(s) still pending"
        if self.error:
            text += f"; FAILED: {self.error}"
        return text

    def as_result(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "actions"}

    def count(self, event: ProviderEvent, status: str, why: str | None) -> None:
        """Count what was done (or would be) with one event that no webhook had brought."""
        action, pid = event.action, event.payment_id
        if status in (names.ENQUEUED, names.RECEIVED):
            kind = "create_purchase" if isinstance(action, Purchase) else "revoke_purchase"
            if isinstance(action, Purchase):
                self.purchases_enqueued += 1
                found = PAYMENT
            else:
                assert isinstance(action, Revocation)
                self.revocations_enqueued += 1
                found = DISPUTE_FOUND if action.reason == DISPUTE else REFUND
            self.found[found] = self.found.get(found, 0) + 1
            if status == names.RECEIVED and not self.dry_run:
                self.left_for_relay += 1
                self.actions.append(f"stored, left for the relay: {kind} {pid}")
            else:
                self.actions.append(f"{'would enqueue' if self.dry_run else 'enqueued'} {kind} {pid}")
        elif status == names.UNMAPPED:
            self.unmapped += 1
            self.actions.append(f"unmapped: {pid}: {why}")
        elif status == names.INVALID:
            self.invalid += 1
            self.actions.append(f"invalid: {pid}: {why}")
        elif why and why.startswith(NOT_A_COURSE):
            self.not_course += 1
        elif isinstance(action, Ignored) and why and "not paid" in why:
            self.not_paid += 1


def configured(settings: Settings) -> tuple[str, ...]:
    """The providers whose API keys are set."""
    return tuple(provider for provider in PROVIDERS if _access(provider).configured(settings))


def window(seconds: float, now: float | None = None) -> apis.Window:
    until = int(time.time() if now is None else now)
    return apis.Window(until - int(seconds), until)


def api_for(
    settings: Settings,
    provider: str,
    read_timeout: float = apis.READ_TIMEOUT,
    retry: apis.Retry = apis.retry_delay,
) -> apis.Api:
    """The provider's API with its key (its registry entry says how); `retry` says how long to
    wait before another try."""
    return _access(provider).open(settings, read_timeout, retry)


def _access(provider: str) -> registry.ApiAccess:
    entry = registry.find(provider)
    if entry is None or entry.api is None:
        raise KeyError(f"{provider}: no API of a provider to read")
    return entry.api


@dataclass(frozen=True)
class Known:
    """What kc_tasks already holds for some payments and events."""

    payments: dict[str, state.PaymentState]
    # (provider, event id) -> (status, received_at) of the events already stored
    stored: dict[tuple[str, str], tuple[str, datetime]]

    def of(self, payment_id: str | None) -> state.PaymentState:
        return self.payments.get(payment_id or "") or state.PaymentState(payment_id or "")

    def settled(self, payment_id: str | None) -> bool:
        """The payment has its outcome: a purchase, a duplicate record or a revocation."""
        return self.of(payment_id).settled

    def revoked(self, payment_id: str | None) -> bool:
        """Revoked, or restored by an operator after a revocation: either way, not to revoke again."""
        return self.of(payment_id).revoked

    def revocable(self, payment_id: str | None) -> bool:
        """The payment's purchase is active and not revoked yet."""
        return self.of(payment_id).revocable


def known(engine: Engine, payment_ids: list[str], keys: list[tuple[str, str]]) -> Known:
    e = db.payment_events
    stored: dict[tuple[str, str], tuple[str, datetime]] = {}
    with db.translate_errors(engine.url), engine.connect() as conn:
        payments = state.read_many(conn, payment_ids)
        for provider in sorted({p for p, _ in keys}):
            ids = [eid for p, eid in keys if p == provider]
            for row in conn.execute(
                sa.select(e.c.event_id, e.c.status, e.c.received_at).where(
                    e.c.provider == provider, e.c.event_id.in_(ids)
                )
            ):
                stored[(provider, row.event_id)] = (row.status, row.received_at)
    return Known(payments, stored)


def run(
    engine: Engine,
    app: Celery,
    api: apis.Api,
    win: apis.Window,
    dry_run: bool = False,
    resend_after: float | None = 900,
    stripe_livemode: bool | None = None,
) -> Summary:
    """Reconcile one provider over the window; raises ProviderApiError (nothing enqueued) or a
    database error. With dry_run, changes nothing and says what it would do. `resend_after`
    None: what is stored is never sent again here (beat's task sent it with `resend_waiting`)."""
    summary = Summary(api.provider, _iso(win.since), _iso(win.until), dry_run)
    READERS[api.provider].read(engine, app, api, win, summary, resend_after, stripe_livemode)
    return summary


def _razorpay(
    engine: Engine,
    app: Celery,
    api: apis.Api,
    win: apis.Window,
    summary: Summary,
    resend_after: float | None,
) -> None:
    payments, refunds, disputes = _razorpay_lists(api, win)
    captured = {pid: p for p in payments if razorpay.paid(p) and (pid := text(p.get("id")))}
    paid = latest_of_each_order(captured)
    summary.part_payments = len(captured) - len(paid)
    # One refund a payment: the processed ones, by refund time (and those seen pending before,
    # processed since); lost disputes. A captured payment is not fully refunded (that one's
    # status is `refunded`): it may make its purchase.
    refunds += _pending_refunds(engine, api, refunds, summary)
    refunded = {pid: r for r in refunds if r.get("status") == "processed" and (pid := text(r.get("payment_id")))}
    lost = {pid: d for d in disputes if d.get("status") == "lost" and (pid := text(d.get("payment_id")))}
    _count_no_candidates(payments, captured, summary)
    ids = sorted(({text(p.get("id")) or "" for p in payments} | set(refunded) | set(lost)) - {""})
    summary.seen = len(ids)
    found = {recovered.PAID: paid, recovered.REFUNDED: refunded, recovered.DISPUTED: lost}
    have = known(engine, ids, [_razorpay_key(pid, kind) for kind, pids in found.items() for pid in pids])
    fine = set(paid) | set(refunded) | set(lost)
    for pid, kind, obj in _razorpay_todo(have, found):
        if _razorpay_act(engine, app, api, summary, have, resend_after, (pid, kind, obj)):
            fine.discard(pid)
    summary.already_fine = len(fine)
    if not summary.dry_run:
        _forget_final_refunds(engine, refunds)


def _razorpay_lists(api: apis.Api, win: apis.Window) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """The window's payments, refunds and disputes (those over DISPUTE_LOOKBACK at least), each
    list read in full."""
    payments = list(apis.razorpay_list(api, "/v1/payments", win))
    refunds = list(apis.razorpay_list(api, "/v1/refunds", win))
    disputes_since = min(win.since, win.until - DISPUTE_LOOKBACK)
    disputes = list(apis.razorpay_list(api, "/v1/disputes", apis.Window(disputes_since, win.until)))
    return payments, refunds, disputes


def _count_no_candidates(payments: list[Obj], captured: Collection[str], summary: Summary) -> None:
    """Count the payments that can make no purchase (a fully refunded one is counted by its refund)."""
    for p in payments:
        pid = text(p.get("id"))
        if pid and pid not in captured and p.get("status") != "refunded":
            if p.get("status") == "captured":
                summary.not_course += 1  # captured without an order: nothing server-set names a course
            else:
                summary.not_paid += 1


def _razorpay_key(payment_id: str, kind: str) -> tuple[str, str]:
    """The inbox key of what reconciliation found of a Razorpay payment."""
    return (recovered.NAME, recovered.event_id(razorpay.NAME, payment_id, kind))


def _razorpay_todo(have: Known, found: dict[str, dict[str, Obj]]) -> list[tuple[str, str, Obj]]:
    """What has no outcome yet, (payment id, kind, object): a paid payment that is not settled, a
    refund or lost dispute of a payment whose purchase is active and not revoked."""
    return [
        (pid, kind, obj)
        for kind, objs in found.items()
        for pid, obj in objs.items()
        if (not have.settled(pid) if kind == recovered.PAID else have.revocable(pid))
    ]


def _razorpay_act(
    engine: Engine,
    app: Celery,
    api: apis.Api,
    summary: Summary,
    have: Known,
    resend_after: float | None,
    todo: tuple[str, str, Obj],
) -> bool:
    """Act on one payment, refund or dispute with no outcome: send its stored event again when
    stale, or fetch what it needs and hand it over; False when it was fine after all (stored and
    not stale, a partial refund, or a webhook stored it first)."""
    pid, kind, obj = todo
    key = _razorpay_key(pid, kind)
    if key in have.stored:
        return resend_after is not None and _resend_if_stale(engine, app, summary, key, have.stored[key], resend_after)
    # Fetched only now: for a payment, refund or dispute that has no outcome and no claim yet.
    if kind == recovered.PAID:
        found = {"payment": obj, "order": apis.razorpay_entity(api, "orders", str(obj["order_id"]))}
    elif kind == recovered.REFUNDED:
        found = {"refund": obj, "payment": apis.razorpay_entity(api, "payments", pid)}
    else:
        found = {"dispute": obj}
    made = recovered.event(razorpay.NAME, kind, found)
    if made is None:
        return False
    event, body = made
    if isinstance(event.action, Ignored) and kind != recovered.PAID:
        return False  # a partial refund: a later, full one is listed by its own time
    if isinstance(event.action, Ignored) and event.action.why.startswith(razorpay.PART_PAID):
        # Not stored: the next run fetches the order again, until its last instalment.
        summary.not_paid += 1
        summary.actions.append(f"not paid in full yet: {pid}: {event.action.why}")
        return True
    return _hand_over(engine, app, summary, event, body)


def latest_of_each_order(captured: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Of the captured payments, by id, the latest of each order (by `created_at`, then id): an
    order paid in parts is completed by its last instalment, the payment its `order.paid`
    carries; the earlier ones never make a purchase of their own (pure)."""
    latest: dict[str, tuple[Any, str]] = {}
    for pid, payment in captured.items():
        created = payment.get("created_at") if isinstance(payment.get("created_at"), int) else 0
        order = str(payment.get("order_id"))
        if order not in latest or (created, pid) > latest[order]:
            latest[order] = (created, pid)
    keep = {pid for _, pid in latest.values()}
    return {pid: payment for pid, payment in captured.items() if pid in keep}


def _pending_refunds(
    engine: Engine, api: apis.Api, listed: list[dict[str, Any]], summary: Summary
) -> list[dict[str, Any]]:
    """Remember the refunds of the listing that are still pending; fetch again those seen pending
    by earlier runs and not listed now (PENDING_REFUND_CHECKS at most, checked longest ago first):
    what they are now, to be read with the listing."""
    p = db.pending_refunds
    waiting = {
        rid: pid
        for r in listed
        if r.get("status") == "pending" and (rid := text(r.get("id"))) and (pid := text(r.get("payment_id")))
    }
    listed_ids = [rid for r in listed if (rid := text(r.get("id")))]
    with db.translate_errors(engine.url), engine.begin() as conn:
        if waiting and not summary.dry_run:
            conn.execute(
                pg_insert(p).on_conflict_do_nothing(index_elements=[p.c.refund_id]),
                [{"refund_id": rid, "payment_id": pid} for rid, pid in sorted(waiting.items())],
            )
        earlier = (
            conn.execute(
                sa.select(p.c.refund_id)
                .where(p.c.refund_id.not_in(listed_ids))
                .order_by(p.c.checked_at, p.c.refund_id)
                .limit(PENDING_REFUND_CHECKS)
            )
            .scalars()
            .all()
        )
    fetched = []
    for refund_id in earlier:
        refund = apis.razorpay_entity(api, "refunds", refund_id)
        fetched.append(refund)
        if refund.get("status") == "pending":
            waiting[refund_id] = str(refund.get("payment_id"))
            if not summary.dry_run:
                with db.translate_errors(engine.url), engine.begin() as conn:
                    conn.execute(sa.update(p).where(p.c.refund_id == refund_id).values(checked_at=sa.func.now()))
        else:
            summary.actions.append(f"refund {refund_id} seen pending before is {refund.get('status')} now")
    summary.refunds_pending = len(waiting)
    return fetched


def _forget_final_refunds(engine: Engine, refunds: list[dict[str, Any]]) -> None:
    """Once a run got through, the refunds it saw final leave pending_refunds."""
    final = sorted({rid for r in refunds if r.get("status") != "pending" and (rid := text(r.get("id")))})
    if final:
        p = db.pending_refunds
        with db.translate_errors(engine.url), engine.begin() as conn:
            conn.execute(sa.delete(p).where(p.c.refund_id.in_(final)))


def _stripe(
    engine: Engine,
    app: Celery,
    api: apis.Api,
    win: apis.Window,
    summary: Summary,
    resend_after: float | None,
    livemode: bool | None,
) -> None:
    arrivals: list[tuple[ProviderEvent, bytes]] = []
    # Oldest first, as they happened (Stripe lists newest first).
    for obj in reversed(list(apis.stripe_events(api, win, stripe.SUBSCRIBE))):
        body = json.dumps({**obj, recovered.FOUND_BY: True}, ensure_ascii=False).encode("utf-8")
        try:
            arrivals.append((stripe.parse(body, livemode), body))
        except Malformed as exc:
            logger.warning("reconcile stripe: an event of the Events API is not an event: %s", exc)
    summary.seen = len(arrivals)
    pids = sorted({event.payment_id for event, _ in arrivals if event.payment_id})
    have = known(engine, pids, [(stripe.NAME, event.event_id) for event, _ in arrivals])
    for event, body in arrivals:
        key = (stripe.NAME, event.event_id)
        if key in have.stored:
            action = event.action
            waiting = isinstance(action, Purchase) and not have.settled(event.payment_id)
            waiting = waiting or (isinstance(action, Revocation) and not have.revoked(event.payment_id))
            waiting = waiting and resend_after is not None
            if not (waiting and _resend_if_stale(engine, app, summary, key, have.stored[key], resend_after or 0)):
                summary.already_fine += 1
            continue
        if not _hand_over(engine, app, summary, event, body):
            summary.already_fine += 1


@dataclass(frozen=True)
class Reader:
    """How reconciliation reads one provider's API (opened as its registry entry says): the run
    over a window (engine, app, api, window, summary, resend_after, KC_STRIPE_LIVEMODE)."""

    read: Callable[[Engine, Celery, apis.Api, apis.Window, Summary, float | None, bool | None], None]


# By the registry's reconciled providers (tests/unit/test_registry.py holds them equal).
READERS: dict[str, Reader] = {
    razorpay.NAME: Reader(
        lambda engine, app, api, win, summary, resend_after, _: _razorpay(engine, app, api, win, summary, resend_after),
    ),
    stripe.NAME: Reader(_stripe),
}


def _hand_over(engine: Engine, app: Celery, summary: Summary, event: ProviderEvent, body: bytes) -> bool:
    """Store and enqueue one event no webhook brought (or, with dry_run, say what would be
    done); False when a concurrent webhook or run stored it first."""
    status, _, why = inbox.plan(event)
    if summary.dry_run:
        summary.count(event, names.ENQUEUED if status == names.RECEIVED else status, why)
        return True
    receipt = inbox.receive(engine, app, event, body, raw=False)  # a provider's API objects
    if not receipt.new:
        return False
    summary.count(event, receipt.status, receipt.why)
    if receipt.status in (names.ENQUEUED, names.RECEIVED):
        logger.warning(
            "reconcile %s: %s %s of payment %s never came as a webhook: %s",
            summary.provider,
            event.type,
            event.event_id,
            event.payment_id,
            receipt.status,
        )
    return True


def _resend_if_stale(
    engine: Engine,
    app: Celery,
    summary: Summary,
    key: tuple[str, str],
    stored: tuple[str, datetime],
    resend_after: float,
) -> bool:
    """Send a stored event again when it was enqueued `resend_after` seconds ago or more and its
    payment still has no outcome; True when it was (or, with dry_run, would be)."""
    status, at = stored
    if status not in (names.ENQUEUED, names.RECEIVED) or (datetime.now(UTC) - at).total_seconds() < resend_after:
        return False
    provider, event_id = key
    if summary.dry_run:
        summary.actions.append(f"would send again: {provider} {event_id}")
        return True
    done = inbox.replay(engine, app, provider, [event_id])[event_id]
    logger.warning(
        "reconcile: %s %s was enqueued %s but has no outcome yet: sent again (%s)", provider, event_id, at, done
    )
    summary.actions.append(f"sent again: {provider} {event_id} ({done})")
    return True


def resend_waiting(
    engine: Engine,
    app: Celery,
    older_than: float,
    within: float,
    dead_lettered: Callable[[], Collection[str]],
    batch: int = RESEND_BATCH,
) -> list[str]:
    """Send again every inbox event, of any provider, stored `older_than` seconds ago or more (and
    less than `within` seconds ago) that is `enqueued` and whose task has no outcome
    (kc_tasks.payments.outcomes: none in the database, no dead letter waiting, none purged): its message
    was lost (Redis without durable writes, say). Under its task id, as the relay does. The
    (provider, event id) of those sent again, `batch` at most, oldest first.

    The database narrows it down first: events whose payment has no revocation or restoration,
    and either no purchase or duplicate record yet or a type that may revoke."""
    e = db.payment_events
    age = sa.func.now() - e.c.received_at
    with db.translate_errors(engine.url), engine.connect() as conn:
        rows = conn.execute(
            sa.select(e.c.provider, e.c.event_id, e.c.body)
            .where(
                e.c.status == names.ENQUEUED,
                age >= sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than),
                age < sa.func.make_interval(0, 0, 0, 0, 0, 0, within),
                ~state.revoked_where(e.c.payment_id),
                sa.or_(e.c.type.in_(inbox.REVOKING_TYPES), ~state.bought_where(e.c.payment_id)),
            )
            .order_by(e.c.received_at)
            .limit(batch)
        ).all()
        tasks = {(r.provider, r.event_id): outcomes.task_of(r.provider, r.event_id, r.body) for r in rows}
        finished = outcomes.done(conn, [task for task in tasks.values() if task is not None])
    waiting = [key for key, task in tasks.items() if task is not None and task.task_id not in finished]
    if not waiting:
        return []
    try:
        dlq = set(dead_lettered())
    except Exception as exc:  # noqa: BLE001  (the broker: they wait for the next run)
        logger.warning("reconcile: dead letters not read (%s: %s); nothing sent again", type(exc).__name__, exc)
        return []
    sent = []
    for provider, event_id in waiting:
        task = tasks[(provider, event_id)]
        if task is None or task.task_id in dlq:
            continue
        done = inbox.replay(engine, app, provider, [event_id])[event_id]
        logger.warning(
            "reconcile: %s event %s was enqueued but its %s has no outcome yet: sent again (%s)",
            provider,
            event_id,
            task.name.removeprefix(names.TASK_PREFIX),
            done,
        )
        sent.append(f"{provider} {event_id}")
    return sent


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def run_logged(
    engine: Engine,
    app: Celery,
    settings: Settings,
    provider: str,
    win: apis.Window,
    dry_run: bool = False,
    read_timeout: float = apis.READ_TIMEOUT,
    resend: bool = True,
) -> Summary:
    """`run`, with its summary logged; a failing API or database is a WARNING and the
    summary's error, never an exception: the next run tries again. `resend` false: nothing
    stored is sent again (beat's task did it first, for the whole inbox)."""
    api = api_for(settings, provider, read_timeout)
    try:
        summary = run(
            engine,
            app,
            api,
            win,
            dry_run,
            resend_after=settings.reconcile_interval if resend else None,
            stripe_livemode=settings.stripe_livemode,
        )
    except KcTasksError as exc:
        summary = Summary(provider, _iso(win.since), _iso(win.until), dry_run, error=str(exc))
        logger.warning("reconcile %s: %s; the next run tries again", provider, exc)
        return summary
    finally:
        api.close()
    if not dry_run:
        metrics.reconcile_found(provider, summary.found)
    logger.info("%s", summary.line())
    return summary
