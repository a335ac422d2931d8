"""Reconciliation: every paid payment becomes a purchase, even when its webhook never came.

`run` reads one provider's payments of a window from its API (provider_api), reads each as
the provider's own module does (providers.reconcile), and acts only where kc_tasks has no
outcome yet: a paid, mapped payment with no purchase, duplicate record or revocation gets
`create_purchase`; a fully refunded one whose purchase is active gets `revoke_purchase`.
Each is handed to the inbox as a `reconcile` event (`<provider>:<payment_id>:<kind>`): its
insert is the claim, so a second run, or a second reconciler at the same time, enqueues
nothing again; and its enqueue is the inbox's (the same task ids as the webhooks').

A claim whose payment still has no outcome after `resend_after` seconds (its message was
lost, e.g. by Redis) is sent again. The API is read in full before anything is enqueued:
a failing API enqueues nothing and raises ProviderApiError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Engine

from kc_tasks import db, inbox, provider_api
from kc_tasks.errors import KcTasksError
from kc_tasks.providers import Event, Ignored, Purchase, Revocation, Unmapped, razorpay, reconcile, stripe
from kc_tasks.settings import Settings

logger = logging.getLogger(__name__)

PROVIDERS = (razorpay.NAME, stripe.NAME)
# The beat run looks back two periods and an hour more: a missed run or a late capture is covered.
LOOKBACK_EXTRA = 3600


@dataclass
class Summary:
    provider: str
    since: str
    until: str
    dry_run: bool = False
    seen: int = 0
    already_fine: int = 0
    purchases_enqueued: int = 0
    revocations_enqueued: int = 0
    unmapped: int = 0
    not_paid: int = 0
    invalid: int = 0
    # Stored, but the broker did not take them: the inbox relay enqueues them.
    left_for_relay: int = 0
    error: str | None = None
    # What was (or, with --dry-run, would be) done, one line each.
    actions: list[str] = field(default_factory=list)

    def line(self) -> str:
        would = "would be " if self.dry_run else ""
        text = (
            f"reconcile {self.provider} {self.since} .. {self.until}: {self.seen} payment(s) seen, "
            f"{self.already_fine} already fine, {self.purchases_enqueued} purchase(s) {would}enqueued, "
            f"{self.revocations_enqueued} revocation(s) {would}enqueued, {self.unmapped} unmapped, "
            f"{self.not_paid} not paid"
        )
        if self.invalid:
            text += f", {self.invalid} invalid"
        if self.left_for_relay:
            text += f", {self.left_for_relay} left for the inbox relay (broker unreachable)"
        if self.error:
            text += f"; FAILED: {self.error}"
        return text

    def as_result(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "actions"}


def configured(settings: Settings) -> tuple[str, ...]:
    """The providers whose API keys are set."""
    found = []
    if settings.razorpay_key_id and settings.razorpay_key_secret:
        found.append(razorpay.NAME)
    if settings.stripe_api_key:
        found.append(stripe.NAME)
    return tuple(found)


def window(seconds: float, now: float | None = None) -> provider_api.Window:
    until = int(time.time() if now is None else now)
    return provider_api.Window(until - int(seconds), until)


def beat_lookback(settings: Settings) -> int:
    return 2 * settings.reconcile_interval + LOOKBACK_EXTRA


def api_for(settings: Settings, provider: str, read_timeout: float = provider_api.READ_TIMEOUT) -> provider_api.Api:
    if provider == razorpay.NAME:
        return provider_api.Api(
            provider,
            settings.razorpay_api_url,
            auth=(settings.razorpay_key_id, settings.razorpay_key_secret),
            secrets=(settings.razorpay_key_id, settings.razorpay_key_secret),
            read_timeout=read_timeout,
        )
    return provider_api.Api(
        provider,
        settings.stripe_api_url,
        headers={"Authorization": f"Bearer {settings.stripe_api_key}"},
        secrets=(settings.stripe_api_key,),
        read_timeout=read_timeout,
    )


def fetch(api: provider_api.Api, win: provider_api.Window) -> list[tuple[Event, bytes]]:
    """The window's payments as reconcile events with their stored bodies; all pages, or
    ProviderApiError. Objects created outside the window are left alone."""
    found: list[tuple[Event, bytes]] = []

    def add(kind: str, objects: Iterable[dict[str, Any]]) -> None:
        for obj in objects:
            if not win.holds(obj.get("created_at") if api.provider == razorpay.NAME else obj.get("created")):
                continue
            event = reconcile.event(api.provider, kind, obj)
            if event is not None:
                found.append((event, reconcile.body(obj)))

    if api.provider == razorpay.NAME:
        payments = list(provider_api.razorpay_payments(api, win))
        add(reconcile.PAID, payments)
        add(reconcile.REFUNDED, payments)
    else:
        add(reconcile.PAID, list(provider_api.stripe_list(api, "/v1/payment_intents", win)))
        add(reconcile.REFUNDED, list(provider_api.stripe_list(api, "/v1/charges", win)))
    return found


@dataclass(frozen=True)
class Outcomes:
    """What kc_tasks already holds for some payments."""

    purchases: dict[str, bool]  # payment id -> is_active
    duplicates: set[str]
    revoked: set[str]
    # reconcile event id -> (status, received_at) of the claims already stored
    claims: dict[str, tuple[str, datetime]]

    def settled(self, payment_id: str) -> bool:
        return payment_id in self.purchases or payment_id in self.duplicates or payment_id in self.revoked


def outcomes(engine: Engine, payment_ids: list[str], event_ids: list[str]) -> Outcomes:
    t, dup, rev, e = db.purchases, db.duplicate_payments, db.revocations, db.payment_events
    with db.translate_errors(engine.url), engine.connect() as conn:
        bought = dict(
            conn.execute(sa.select(t.c.payment_id, t.c.is_active).where(t.c.payment_id.in_(payment_ids))).all()
        )
        duplicates = set(conn.execute(sa.select(dup.c.payment_id).where(dup.c.payment_id.in_(payment_ids))).scalars())
        revoked = set(conn.execute(sa.select(rev.c.payment_id).where(rev.c.payment_id.in_(payment_ids))).scalars())
        claims = {
            row.event_id: (row.status, row.received_at)
            for row in conn.execute(
                sa.select(e.c.event_id, e.c.status, e.c.received_at).where(
                    e.c.provider == reconcile.NAME, e.c.event_id.in_(event_ids)
                )
            )
        }
    return Outcomes(bought, duplicates, revoked, claims)


def run(
    engine: Engine,
    app: Celery,
    api: provider_api.Api,
    win: provider_api.Window,
    dry_run: bool = False,
    resend_after: float = 900,
) -> Summary:
    """Reconcile one provider over the window; raises ProviderApiError (nothing enqueued) or a
    database error. With dry_run, changes nothing and says what it would do."""
    summary = Summary(api.provider, _iso(win.since), _iso(win.until), dry_run)
    found = fetch(api, win)
    payment_ids = sorted({event.payment_id for event, _ in found if event.payment_id})
    known = outcomes(engine, payment_ids, [event.event_id for event, _ in found])
    refunded = {event.payment_id for event, _ in found if isinstance(event.action, Revocation)}
    summary.seen = len(payment_ids)
    fine = set(payment_ids)
    for event, body in found:
        pid = event.payment_id
        assert pid is not None
        action = event.action
        if isinstance(action, Unmapped):
            if known.settled(pid):  # e.g. Stripe: the Checkout Session's metadata made the purchase
                continue
            summary.unmapped += 1
            fine.discard(pid)
            summary.actions.append(f"unmapped: {pid}: its notes/metadata lack {', '.join(action.missing)}")
            if not dry_run:
                inbox.receive(engine, app, event, body)
            continue
        if isinstance(action, Ignored):
            if action.why.startswith(("payment status", "payment intent status")):
                summary.not_paid += 1
                fine.discard(pid)
            continue
        if isinstance(action, Purchase):
            if known.settled(pid) or pid in refunded:
                continue
        else:  # a revocation: only of an active purchase not revoked yet
            if not known.purchases.get(pid) or pid in known.revoked:
                continue
        fine.discard(pid)
        done = _claim(engine, app, event, body, known, dry_run, resend_after)
        if done is None:
            fine.add(pid)
            continue
        kind = "create_purchase" if isinstance(action, Purchase) else "revoke_purchase"
        if done == inbox.INVALID:
            summary.invalid += 1
            summary.actions.append(f"invalid: {pid}: its notes/metadata break create_purchase's rules")
        elif done == inbox.RECEIVED:
            summary.left_for_relay += 1
            summary.actions.append(f"stored, left for the relay: {kind} {pid}")
        else:
            if isinstance(action, Purchase):
                summary.purchases_enqueued += 1
            else:
                summary.revocations_enqueued += 1
            summary.actions.append(f"{'would enqueue' if dry_run else done} {kind} {pid}")
    summary.already_fine = len(fine)
    return summary


def _claim(
    engine: Engine,
    app: Celery,
    event: Event,
    body: bytes,
    known: Outcomes,
    dry_run: bool,
    resend_after: float,
) -> str | None:
    """Claim and enqueue one event; what was done ('enqueued', 'sent again', a status), or None
    when an earlier (or a concurrent) run has it in hand."""
    claim = known.claims.get(event.event_id)
    if claim is not None:
        status, at = claim
        stale = (datetime.now(UTC) - at).total_seconds() >= resend_after
        if status not in (inbox.ENQUEUED, inbox.RECEIVED) or not stale:
            return None
        if dry_run:
            return "would send again"
        done = inbox.replay(engine, app, reconcile.NAME, [event.event_id])[event.event_id]
        logger.warning(
            "reconcile: %s was enqueued %s but has no outcome yet: sent again (%s)", event.event_id, at, done
        )
        return "sent again" if done == inbox.ENQUEUED else done
    if dry_run:
        return inbox.ENQUEUED
    receipt = inbox.receive(engine, app, event, body)
    if not receipt.new:
        return None
    return receipt.status


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def run_logged(
    engine: Engine,
    app: Celery,
    settings: Settings,
    provider: str,
    win: provider_api.Window,
    dry_run: bool = False,
    read_timeout: float = provider_api.READ_TIMEOUT,
) -> Summary:
    """`run`, with its summary logged; a failing API or database is a WARNING and the
    summary's error, never an exception: the next run tries again."""
    api = api_for(settings, provider, read_timeout)
    try:
        summary = run(engine, app, api, win, dry_run, resend_after=settings.reconcile_interval)
    except KcTasksError as exc:
        summary = Summary(provider, _iso(win.since), _iso(win.until), dry_run, error=str(exc))
        logger.warning("reconcile %s: %s; the next run tries again", provider, exc)
        return summary
    finally:
        api.close()
    logger.info("%s", summary.line())
    return summary
