"""What became of an inbox event's task: the question redaction and the resend sweep both ask.

An `enqueued` event asked for one task (its body says which: `task_of`). That task has its
outcome once the database holds it (`done`): for create_purchase, the payment's purchase,
duplicate-payment record, revocation or restoration; for revoke_purchase, its revocation or
restoration; for either, a dead letter an operator purged (`purged_dead_letters`). A dead letter
still waiting in purchases.dlq is an outcome too, but it is in the broker: the callers read it
(kc_tasks.payments.redaction.dead_lettered_task_ids) only when the database leaves a task undecided.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from kc_tasks.core import names
from kc_tasks.payments import inbox
from kc_tasks.store import db


def task_of(provider: str, event_id: str, body: str) -> inbox.Task | None:
    """The task a stored event asks for, as today's rules read its body; None when it asks for
    none, or no longer reads as an event (nothing it asked for can be waiting)."""
    try:
        return inbox.plan(inbox.parse(provider, body.encode("utf-8"), event_id))[1]
    except ValueError:  # Malformed included
        return None


def done(conn: sa.Connection, tasks: Collection[inbox.Task]) -> set[str]:
    """The ids of those tasks whose outcome the database holds."""
    if not tasks:
        return set()
    payment_ids = sorted({task.kwargs["payment_id"] for task in tasks})
    t, dup, rev, res = db.purchases, db.duplicate_payments, db.revocations, db.restorations
    bought = _ids(conn, t.c.payment_id, payment_ids) | _ids(conn, dup.c.payment_id, payment_ids)
    revoked = _ids(conn, rev.c.payment_id, payment_ids) | _ids(conn, res.c.payment_id, payment_ids)
    purged = _ids(conn, db.purged_dead_letters.c.task_id, sorted({task.task_id for task in tasks}))
    finished = set()
    for task in tasks:
        payment_id = task.kwargs["payment_id"]
        settled = revoked if task.name == names.REVOKE_PURCHASE else bought | revoked
        if payment_id in settled or task.task_id in purged:
            finished.add(task.task_id)
    return finished


def _ids(conn: sa.Connection, column: Any, values: list[str]) -> set[str]:
    return set(conn.execute(sa.select(column).where(column.in_(values))).scalars())
