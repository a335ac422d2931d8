"""What became of an inbox event's task: the question redaction and the resend sweep both ask.

An `enqueued` event asked for one task (its body says which: `task_of`). That task has its
outcome once the database holds it (`done`, by the payment's state: kc_tasks.payments.state):
for create_purchase, the payment's purchase, duplicate-payment record, revocation or
restoration; for revoke_purchase, its revocation or restoration; for either, a dead letter an
operator purged (`purged_dead_letters`). A dead letter
still waiting in purchases.dlq is an outcome too, but it is in the broker: the callers read it
(kc_tasks.payments.redaction.dead_lettered_task_ids) only when the database leaves a task undecided.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from kc_tasks.payments import inbox, state


def task_of(provider: str, event_id: str, body: str) -> inbox.Task | None:
    """The task a stored event asks for, as today's rules read its body; None when it asks for
    none, or no longer reads as an event (nothing it asked for can be waiting)."""
    try:
        return inbox.plan(inbox.parse(provider, body.encode("utf-8"), event_id))[1]
    except ValueError:  # Malformed included
        return None


def done(conn: sa.Connection, tasks: Collection[inbox.Task]) -> set[str]:
    """The ids of those tasks whose outcome the database holds (kc_tasks.payments.state)."""
    states = state.read_many(conn, (task.kwargs["payment_id"] for task in tasks))
    return {task.task_id for task in tasks if states[task.kwargs["payment_id"]].has_outcome(task.name, task.task_id)}
