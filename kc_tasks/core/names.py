"""The names the service's parts and its clients share, written once: tasks, queues, exchanges,
message headers, the inbox's statuses and the dead letters' reasons.

Most are the external contract (docs/reference.md): a client sends `CREATE_PURCHASE` to
`PURCHASES` by name, and an operator greps the logs and the DLQ for a reason. Changing one here
changes it for every client. This module imports nothing, so every other module may import it.
"""

from __future__ import annotations

# Tasks. The prefix is dropped where a task's name is shown to a person (logs, the payment's story).
TASK_PREFIX = "kc_tasks."
CREATE_PURCHASE = "kc_tasks.create_purchase"
REVOKE_PURCHASE = "kc_tasks.revoke_purchase"
VERIFY_PURCHASE_INDEX = "kc_tasks.verify_purchase_index"
RELAY_EVENTS = "kc_tasks.relay_events"
RELAY_INBOX = "kc_tasks.relay_inbox"
PRUNE_EVENTS = "kc_tasks.prune_events"
RECONCILE_PAYMENTS = "kc_tasks.reconcile_payments"
REDACT_INBOX = "kc_tasks.redact_inbox"
# Sent by beat through `purchases` and never run: the worker's consumer notes when it was sent
# (kc_tasks/core/metrics.py).
QUEUE_HEARTBEAT = "kc_tasks.queue_heartbeat"
# The tasks that make or revoke a purchase: what the inbox sends, what a dead letter may replay.
PURCHASE_TASKS = (CREATE_PURCHASE, REVOKE_PURCHASE)

# The one task queue; its direct exchange and routing key carry the same name.
PURCHASES = "purchases"
# Where the tasks that cannot be done are kept, explained (kc_tasks/store/dead_letters.py); published
# through the default exchange, its name the routing key.
DEAD_LETTERS = "purchases.dlq"
# The topic exchange of the purchase events; an event's type is its routing key (kc_tasks/store/events.py).
EVENTS_EXCHANGE = "kc.events"

# The purchase events' types, each its routing key on EVENTS_EXCHANGE.
PURCHASE_CREATED = "purchase.created"
DUPLICATE_PAYMENT = "purchase.duplicate_payment"
PURCHASE_REVOKED = "purchase.revoked"
# An operator made a revoked purchase active again (kc_tasks/worker/restorations.py).
PURCHASE_RESTORED = "purchase.restored"

# Message headers.
# A payment's first sight, carried to the worker: who saw it, and when (unix seconds).
SEEN_BY, SEEN_AT = "kc-seen-by", "kc-seen-at"
# When beat sent a heartbeat (unix seconds).
SENT_AT = "kc-sent-at"
# How many worker processes died under a task message (kc_tasks/worker/consumer.py).
LOST_HEADER = "kc-worker-lost"
# When a task's first attempt began (kc_tasks/worker/tasks.py).
FIRST_ATTEMPT = "kc-first-attempt"
# Marks a message of purchases.dlq as the service's own dead letter.
DEAD_LETTER_HEADER = "kc-dead-letter"

# The inbox's statuses (payment_events.status).
RECEIVED, ENQUEUED, IGNORED, UNMAPPED, INVALID = "received", "enqueued", "ignored", "unmapped", "invalid"
INBOX_STATUSES = (RECEIVED, ENQUEUED, IGNORED, UNMAPPED, INVALID)
# What becomes of an arrival whose event id is stored with another body: nothing is stored (so
# it is no status of the inbox); the web answers 409.
CONFLICT = "conflict"

# Why a dead letter died (its `reason`).
PERMANENT = "permanent error"
EXHAUSTED = "retries exhausted"
UNDECODABLE = "undecodable message"
UNKNOWN_TASK = "unknown task"
INVALID_MESSAGE = "invalid message"
WORKER_LOST = "worker lost repeatedly"
BROKER_REJECTED = "rejected to the dead-letter exchange"
UNPARSEABLE = "unparseable dead letter"
