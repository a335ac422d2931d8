"""One way to send a task: `send` names its task id, its queue, how long it keeps trying a broker
that does not answer, and returns once the broker holds it.

Every sender of create_purchase and revoke_purchase goes through it: the inbox (the web's
webhooks and confirms, the relay, reconciliation), `kc-tasks enqueue` and `kc-tasks revoke`, and
the replay of dead letters. The task id derives from the payment id and the kind of task, so a
payment sent twice, by any of them, is one task (and one purchase); a purchase and a revocation
never share one.

Publisher confirms: on RabbitMQ, Celery's producer waits for the broker's confirm
(celeryconfig's `confirm_publish`); on a ConfirmedChannel (kc_tasks.core.confirms) the caller
awaits the confirms of its whole batch at once.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from kombu import Producer

from kc_tasks.core.names import CREATE_PURCHASE, PURCHASES, REVOKE_PURCHASE

# Task ids derive from payment ids: a provider's repeated webhook maps to the same task.
# The purchase namespace is the one the webhook has always used.
PURCHASE_TASK_IDS = uuid.UUID("6f1d7c56-2b8e-4c4e-9a55-5d0f7f3c8a21")
REVOCATION_TASK_IDS = uuid.UUID("0b5e3f0a-8f61-4d3c-b0a4-3c2f9e1d7a64")

# How long a sender keeps trying a broker that does not answer (kombu's retry_policy): a few
# seconds, for a command an operator runs and waits on, and for what must reach the broker
# before its message is acknowledged (a dead letter, a redelivered copy).
RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}
# One quick second try, for a sender that must not block long and has someone to hand over to:
# the web answers the provider at once, and what the broker did not take waits in the inbox
# for the relay.
QUICK_RETRY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}


def task_id_for(payment_id: str, name: str = CREATE_PURCHASE) -> str:
    """The task id of `name` for this payment: the same every time it is asked."""
    namespace = REVOCATION_TASK_IDS if name == REVOKE_PURCHASE else PURCHASE_TASK_IDS
    return str(uuid.uuid5(namespace, payment_id))


def send(
    app: Celery,
    name: str,
    kwargs: dict[str, Any],
    *,
    task_id: str | None = None,
    headers: dict[str, Any] | None = None,
    retry_policy: dict[str, Any] = RETRY,
    producer: Producer | None = None,
) -> str:
    """Publish task `name` with `kwargs` to `purchases`; its task id.

    The task id is `task_id_for` the kwargs' payment_id unless `task_id` is given (a dead
    letter's replay keeps the id it was sent with); kwargs without a string payment_id (a replay
    of a malformed task) get a random one. With `producer` (a ConfirmedChannel's), nothing is
    retried and the caller awaits the confirms: kombu would retry on a new channel, not in
    confirm mode. Raises what the broker's client raised when it did not take the task."""
    if task_id is None:
        payment_id = kwargs.get("payment_id")
        task_id = task_id_for(payment_id, name) if isinstance(payment_id, str) else str(uuid.uuid4())
    on_channel: dict[str, Any] = (
        {"retry_policy": retry_policy} if producer is None else {"producer": producer, "retry": False, "declare": []}
    )
    app.send_task(
        name,
        kwargs=kwargs,
        queue=PURCHASES,
        task_id=task_id,
        headers=headers,
        # What Flower shows, as Celery would write it; its own saferepr costs more than the
        # rest of the message.
        argsrepr="()",
        kwargsrepr=repr(kwargs),
        **on_channel,
    )
    return task_id
