"""Where is my course? One payment's story, as far as kc_tasks records it, in time order.

`tell` gathers every trace of a payment id: the provider events in the inbox (the webhooks'
and what reconciliation found that no webhook had brought), each with why it was ignored,
unmapped or invalid as today's rules read its stored body (whole, or redacted: the same fields
decide), and when that body was redacted; the purchase row, a duplicate-payment record, a
revocation, a refund that failed afterwards, an operator's restorations, the events written for
them (event_outbox) and dead letters carrying that payment id, waiting or purged. It ends with one
verdict line: `granted`, `not granted: <why>` or `unknown`. `verdict` is pure.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.engine import Engine

from kc_tasks.core import names
from kc_tasks.payments import inbox, state
from kc_tasks.providers import NOT_A_COURSE, REFUND_FAILED, recovered, stripe
from kc_tasks.store import db, dead_letters

logger = logging.getLogger(__name__)

GRANTED = "granted"
UNKNOWN = "unknown"
# The verdict of a payment whose refund revoked its purchase, then failed (docs/reference.md).
PAID_NO_COURSE = f"{REFUND_FAILED}: paid, no course"


@dataclass(frozen=True)
class Entry:
    at: datetime
    source: str  # inbox, reconcile, purchase, duplicate, revocation, event, dead letter
    text: str

    def as_json(self) -> dict[str, str]:
        return {"at": self.at.isoformat(), "source": self.source, "text": self.text}


@dataclass(frozen=True)
class Facts:
    """What the verdict depends on."""

    active: bool | None = None  # the purchase row's is_active; None: no row
    held_by: str | None = None  # duplicate: the payment that holds the course
    revoked_reason: str | None = None
    dead_letter: str | None = None  # the last one's error
    inbox_statuses: tuple[str, ...] = ()
    # Why the inbox's events were ignored, unmapped or invalid, as their bodies read today.
    whys: tuple[str, ...] = ()


@dataclass
class Story:
    payment_id: str
    entries: list[Entry] = field(default_factory=list)
    verdict: str = UNKNOWN
    # Parts that could not be read (the broker, for dead letters).
    unread: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"payment {self.payment_id}"]
        lines += [f"{e.at:%Y-%m-%d %H:%M:%S}  {e.source:<12} {e.text}" for e in self.entries]
        lines += [f"(not read: {part})" for part in self.unread]
        lines.append(self.verdict)
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "entries": [e.as_json() for e in self.entries],
            "unread": self.unread,
            "verdict": self.verdict,
        }


def verdict(facts: Facts) -> str:
    """The one-line answer (pure)."""
    if facts.active:
        return GRANTED
    if facts.active is False:
        if facts.revoked_reason and any(why.startswith(REFUND_FAILED) for why in facts.whys):
            return (
                f"not granted: {PAID_NO_COURSE} (revoked ({facts.revoked_reason}), then the refund failed); "
                "refund again, or give the course back with kc-tasks payment restore <payment> --reason TEXT"
            )
        why = f"revoked ({facts.revoked_reason})" if facts.revoked_reason else "the purchase is inactive"
        return f"not granted: {why}"
    if facts.held_by:
        return f"not granted: duplicate payment; the student already holds the course by payment {facts.held_by}"
    if facts.revoked_reason:
        return f"not granted: revoked ({facts.revoked_reason}) before any purchase was made"
    if facts.dead_letter:
        return f"not granted: dead-lettered ({facts.dead_letter}); see kc-tasks dlq list"
    statuses = set(facts.inbox_statuses)
    if names.UNMAPPED in statuses:
        return (
            "not granted: paid, but its server-set notes/metadata do not name both student_id and course_id (unmapped)"
        )
    if names.INVALID in statuses:
        return "not granted: its notes/metadata break create_purchase's rules (invalid)"
    if statuses & {names.ENQUEUED, names.RECEIVED}:
        return "not granted: enqueued, no outcome yet (if this lasts, run kc-tasks reconcile)"
    if any(why.startswith(NOT_A_COURSE) for why in facts.whys):
        return f"not granted: {NOT_A_COURSE} (its server-set notes/metadata name no student or course)"
    if any(why.startswith(stripe.OTHER_MODE) for why in facts.whys):
        return f"not granted: {stripe.OTHER_MODE} (KC_STRIPE_LIVEMODE)"
    if statuses:
        return "not granted: its events were ignored (not paid, or a type kc_tasks does not act on)"
    return UNKNOWN


def tell(engine: Engine, app: Celery | None, payment_id: str) -> Story:
    story = Story(payment_id)
    with db.translate_errors(engine.url), engine.connect() as conn:
        now = state.read(conn, payment_id, with_events=True)
    whys = _tell_inbox(story, now.events)
    _tell_purchase(story, now)
    _tell_revocations(story, now)
    _tell_written(story, now)
    last_error = _tell_dead_letters(story, app) if app is not None else None
    story.entries = sorted(
        (Entry(entry.at.astimezone(UTC), entry.source, entry.text) for entry in story.entries), key=lambda e: e.at
    )
    story.verdict = verdict(
        Facts(
            active=now.active,
            held_by=None if now.duplicate is None else now.duplicate.held_payment_id,
            revoked_reason=None if now.revocation is None else now.revocation.reason,
            dead_letter=last_error,
            inbox_statuses=tuple(row.status for row in now.events),
            whys=tuple(whys),
        )
    )
    return story


def _tell_inbox(story: Story, received: tuple[state.Row, ...]) -> list[str]:
    """The provider events in the inbox, each with why it acts on nothing, and when its body was
    redacted; the whys, for the verdict."""
    add = story.entries.append
    whys: list[str] = []
    for row in received:
        why = (
            _why(row.provider, row.body, row.event_id, row.status)
            if row.status not in (names.ENQUEUED, names.RECEIVED)
            else None
        )
        status = row.status if why is None else f"{row.status}: {why}"
        whys += [why] if why else []
        if row.provider == recovered.NAME:
            add(
                Entry(
                    row.received_at, "reconcile", f"reconciliation found {row.type} (no webhook brought it): {status}"
                )
            )
        elif _found_by_reconciliation(row.body):
            text = f"reconciliation found {row.provider} event {row.type} (no webhook brought it): {status}"
            add(Entry(row.received_at, "reconcile", f"{text} (id {row.event_id})"))
        else:
            add(Entry(row.received_at, "inbox", f"{row.provider} event {row.type}: {status} (id {row.event_id})"))
        if row.body_redacted_at is not None:
            text = f"{row.provider} event {row.event_id}: body redacted to the fields kc_tasks reads"
            add(Entry(row.body_redacted_at, "inbox", text))
    return whys


def _tell_purchase(story: Story, now: state.PaymentState) -> None:
    """The purchase row (and when it was made inactive), or the duplicate-payment record."""
    add = story.entries.append
    bought, duplicate = now.purchase, now.duplicate
    if bought is not None:
        add(
            Entry(
                bought.created_at,
                "purchase",
                f"purchase {bought.id} created: student {bought.student_id}, course {bought.course_id}, "
                f"{bought.amount_cents} {bought.currency}",
            )
        )
        if not bought.is_active:
            add(Entry(bought.updated_at, "purchase", f"purchase {bought.id} made inactive"))
    if duplicate is not None:
        add(
            Entry(
                duplicate.created_at,
                "duplicate",
                f"duplicate payment: student {duplicate.student_id} already held course {duplicate.course_id} "
                f"by payment {duplicate.held_payment_id} (purchase {duplicate.purchase_id})",
            )
        )


def _tell_revocations(story: Story, now: state.PaymentState) -> None:
    """The revocations an operator overruled (each, and its restoration), then the standing one."""
    add = story.entries.append
    for restoration in now.restorations:
        refund = f", refund {restoration.refund_id}" if restoration.refund_id else ""
        if restoration.revoked_at is not None:
            text = f"revocation recorded: {restoration.revocation_reason}{refund} (later overruled)"
            add(Entry(restoration.revoked_at, "revocation", text))
        text = (
            f"purchase {restoration.purchase_id} restored by an operator: {restoration.reason} "
            f"(overruled the revocation: {restoration.revocation_reason}{refund})"
        )
        add(Entry(restoration.restored_at, "restoration", text))
    revoked = now.revocation
    if revoked is not None:
        refund = f", refund {revoked.refund_id}" if revoked.refund_id else ""
        add(Entry(revoked.created_at, "revocation", f"revocation recorded: {revoked.reason}{refund}"))


def _tell_written(story: Story, now: state.PaymentState) -> None:
    """The dead letters an operator purged, and the events written for the payment (event_outbox)."""
    add = story.entries.append
    for purge in now.purged:
        add(Entry(purge.purged_at, "dead letter", f"{purge.task} dead letter purged (task {purge.task_id})"))
    for event in now.written:
        published = f"published {event.published_at:%H:%M:%S}" if event.published_at else "not published yet"
        add(Entry(event.occurred_at, "event", f"{event.type} written ({published})"))


def _tell_dead_letters(story: Story, app: Celery) -> str | None:
    """The dead letters waiting in the broker that carry the payment id; the last one's error."""
    payment_id = story.payment_id
    try:
        with dead_letters.hold(app) as held:
            letters = [letter for letter, _ in held if letter.payment_id == payment_id]
    except (BrokerError, OSError) as exc:
        logger.warning("payment %s: dead letters not read, the broker is unreachable: %s", payment_id, exc)
        story.unread.append("dead letters: the broker is unreachable")
        letters = []
    last_error = None
    for letter in letters:
        last_error = f"{letter.error_type}: {letter.error_message}"
        story.entries.append(
            Entry(
                datetime.fromisoformat(letter.died_at),
                "dead letter",
                f"{letter.task} dead-lettered ({letter.reason}, {letter.attempts} attempt(s)): {last_error} "
                f"[dead letter {letter.id}]",
            )
        )
    return last_error


def _found_by_reconciliation(body: str) -> bool:
    try:
        return json.loads(body).get(recovered.FOUND_BY) is True
    except (ValueError, AttributeError):
        return False


def _why(provider: str, body: str, event_id: str, status: str) -> str | None:
    """Why a stored event acts on nothing, as today's rules read its body (or why it reads as no
    event at all).

    A Stripe event stored `ignored` that acts when read without a mode was kept out by
    KC_STRIPE_LIVEMODE: it is read again as an endpoint of the other mode read it."""
    try:
        why = inbox.plan(inbox.parse(provider, body.encode("utf-8"), event_id))[2]
        if why is None and provider == stripe.NAME and status == names.IGNORED:
            other_mode = json.loads(body).get("livemode") is not True
            why = inbox.plan(inbox.parse(provider, body.encode("utf-8"), event_id, other_mode))[2]
        return why
    except ValueError as exc:  # Malformed included
        return f"its stored body no longer reads as an event: {exc}"
