"""What became of a payment: its state as the tables hold it, read in one place.

Every question "has this payment its outcome?" is answered here, for the story
(`kc-tasks payment`, /admin/payments/<id>), reconciliation, redaction and the inbox:

- `read_many` reads, for many payment ids at once, one SELECT a table: the purchase, the
  duplicate-payment record, the revocation, the operator's restorations, the `payments` row and
  the dead letters an operator purged (by payment id, or by one of the payment's task ids);
  with `with_events`, also its inbox events and the events written for it (event_outbox).
- `PaymentState` is what was read, frozen; its properties say what it means: `bought` (the
  purchase task has its outcome), `revoked` (the revocation task has), `settled`, `revocable`,
  `has_outcome(task)`.
- `bought_where` and `revoked_where` are the same two rules as SQL conditions, for the questions
  asked over the whole inbox in one statement (inbox.unmapped_count, the resend sweep).

The rows are SQLAlchemy rows: their fields are the columns of db's tables. Each part comes in
the order the table gives it: the story orders what it tells by time.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kc_tasks.core import names
from kc_tasks.core.sending import task_id_for
from kc_tasks.store import db

Row = sa.Row[Any]


@dataclass(frozen=True)
class PaymentState:
    """One payment as the tables hold it; a payment never seen has every part empty."""

    payment_id: str
    purchase: Row | None = None  # student_course_purchases
    duplicate: Row | None = None  # duplicate_payments: it made no purchase, another held the course
    revocation: Row | None = None  # revocations: standing
    restorations: tuple[Row, ...] = ()  # restorations: revocations an operator overruled
    payment: Row | None = None  # payments: first seen, and revoked_at while revoked
    purged: tuple[Row, ...] = ()  # purged_dead_letters
    # Read only with `with_events`: its inbox events (payment_events) and the events written
    # for it (event_outbox: type, occurred_at, published_at).
    events: tuple[Row, ...] = ()
    written: tuple[Row, ...] = ()

    @property
    def active(self) -> bool | None:
        """The purchase row's is_active; None: it made no purchase."""
        return None if self.purchase is None else bool(self.purchase.is_active)

    @property
    def bought(self) -> bool:
        """create_purchase has its outcome: a purchase, or a duplicate-payment record."""
        return self.purchase is not None or self.duplicate is not None

    @property
    def revoked(self) -> bool:
        """revoke_purchase has its outcome: a revocation, or one an operator overruled since
        (restored): either way, not to revoke again."""
        return self.revocation is not None or bool(self.restorations)

    @property
    def settled(self) -> bool:
        """The payment has its outcome: bought or revoked."""
        return self.bought or self.revoked

    @property
    def revocable(self) -> bool:
        """Its purchase is active and it is not revoked yet."""
        return bool(self.active) and not self.revoked

    @property
    def purged_task_ids(self) -> set[str]:
        return {row.task_id for row in self.purged}

    def has_outcome(self, task: str, task_id: str) -> bool:
        """Whether the database holds the outcome of this payment's task `task` (by name) of
        id `task_id`: what it made, or its dead letter purged. A dead letter still waiting in
        purchases.dlq is an outcome too, but it is in the broker (redaction.dead_lettered_task_ids)."""
        made = self.revoked if task == names.REVOKE_PURCHASE else self.settled
        return made or task_id in self.purged_task_ids


def read(conn: sa.Connection, payment_id: str, with_events: bool = False) -> PaymentState:
    """One payment's state."""
    return read_many(conn, [payment_id], with_events)[payment_id]


def read_many(conn: sa.Connection, payment_ids: Iterable[str], with_events: bool = False) -> dict[str, PaymentState]:
    """The state of each of these payments, by payment id (one for each, seen or not)."""
    ids = sorted(set(payment_ids))
    if not ids:
        return {}
    one: dict[str, dict[str, Row]] = {pid: {} for pid in ids}  # the tables with a row a payment at most
    for name, table in (
        ("purchase", db.purchases),
        ("duplicate", db.duplicate_payments),
        ("revocation", db.revocations),
        ("payment", db.payments),
    ):
        for row in conn.execute(_by(table, ids)):
            one[row.payment_id][name] = row
    many: dict[str, dict[str, list[Row]]] = {pid: {} for pid in ids}
    _gather(many, "restorations", conn.execute(_by(db.restorations, ids)))
    # A purged dead letter is the payment's by its payment id, or by the task id of one of its tasks.
    task_ids = {task_id_for(pid, task): pid for pid in ids for task in (names.CREATE_PURCHASE, names.REVOKE_PURCHASE)}
    purged = db.purged_dead_letters
    for row in conn.execute(
        sa.select(purged).where(sa.or_(purged.c.payment_id.in_(ids), purged.c.task_id.in_(sorted(task_ids))))
    ):
        pid = row.payment_id if row.payment_id in many else task_ids[row.task_id]
        many[pid].setdefault("purged", []).append(row)
    if with_events:
        _gather(many, "events", conn.execute(_by(db.payment_events, ids)))
        out = db.event_outbox
        about = out.c.data["payment_id"].astext
        written = sa.select(about.label("payment_id"), out.c.type, out.c.occurred_at, out.c.published_at)
        _gather(many, "written", conn.execute(written.where(about.in_(ids))))
    return {pid: PaymentState(pid, **_parts(one[pid], many[pid])) for pid in ids}


def _by(table: sa.Table, ids: Collection[str]) -> sa.Select[Any]:
    return sa.select(table).where(table.c.payment_id.in_(ids))


def _parts(one: dict[str, Row], many: dict[str, list[Row]]) -> dict[str, Any]:
    return {**one, **{name: tuple(rows) for name, rows in many.items()}}


def _gather(into: dict[str, dict[str, list[Row]]], name: str, rows: Iterable[Row]) -> None:
    for row in rows:
        into[row.payment_id].setdefault(name, []).append(row)


def bought_where(payment_id: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """`PaymentState.bought` as an SQL condition on a payment id column."""
    t, dup = db.purchases, db.duplicate_payments
    return sa.or_(sa.exists().where(t.c.payment_id == payment_id), sa.exists().where(dup.c.payment_id == payment_id))


def revoked_where(payment_id: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """`PaymentState.revoked` as an SQL condition on a payment id column."""
    rev, res = db.revocations, db.restorations
    return sa.or_(sa.exists().where(rev.c.payment_id == payment_id), sa.exists().where(res.c.payment_id == payment_id))
