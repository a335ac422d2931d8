"""Celery configuration, derived from the environment's Settings (kc_tasks.celery.settings).

A top-level module, as Celery lays a project out: kc_tasks/celery.py loads it with
app.config_from_object("celeryconfig"); it is installed beside the package."""

from __future__ import annotations

import os

from kombu import Exchange, Queue

from kc_tasks.celery import settings
from kc_tasks.core import names
from kc_tasks.core.metrics import HEARTBEAT_INTERVAL

broker_url = settings.broker_url
broker_connection_retry_on_startup = True

# JSON only: a pickled (or otherwise encoded) message is refused, never executed.
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

task_queues = (
    Queue(
        names.PURCHASES,
        Exchange(names.PURCHASES, type="direct"),
        routing_key=names.PURCHASES,
        queue_arguments=settings.queue_arguments,  # KC_QUEUE_TYPE
    ),
)
task_default_queue = names.PURCHASES
task_default_exchange = names.PURCHASES
task_default_routing_key = names.PURCHASES
task_routes = {names.TASK_PREFIX + "*": {"queue": names.PURCHASES}}

# Acknowledge after the outcome is durable; a worker killed mid-task gets its message back.
task_acks_late = True
task_reject_on_worker_lost = True
# Messages each pool process may hold, unacknowledged: enough that create_purchase requests
# wait together for a free process and are inserted in one statement (kc_tasks/worker/batching.py,
# PurchaseBatcher); docs/benchmark.md shows what 4 and 16 drain.
worker_prefetch_multiplier = 16
# A child process connects to PostgreSQL at start-up (connect timeout 5 s).
worker_proc_alive_timeout = 30

# Undecodable, unknown and invalid messages become dead letters (kc_tasks/worker/consumer.py).
worker_consumer = "kc_tasks.worker.consumer:Consumer"

# Flower and `celery events` see every task without remembering -E.
worker_send_task_events = True
task_send_sent_event = True

if settings.broker_url.startswith("filesystem://"):
    # `kc-tasks dev` without a broker: messages are files in one folder (development only).
    _folder = os.environ.get("KC_FILESYSTEM_BROKER_DIR", ".kc-dev/broker")
    broker_transport_options: dict[str, object] = {
        "data_folder_in": _folder,
        "data_folder_out": _folder,
        "control_folder": _folder,
    }
elif settings.uses_redis:
    # Redis redelivers a message that stays unacknowledged longer than the visibility
    # timeout. Retries wait in the worker, unacknowledged, for up to KC_RETRY_BACKOFF_MAX
    # seconds: the timeout must outlast that plus the longest task, or a retry would run twice.
    broker_transport_options = {"visibility_timeout": 2 * settings.retry_backoff_max + 3600}
    if settings.broker_url.startswith("sentinel://"):
        # Redis behind Sentinel: the primary they name (KC_REDIS_MASTER_NAME), asked again after a failover.
        broker_transport_options["master_name"] = settings.redis_master_name
else:
    # Publisher confirms: send_task and retries return only once RabbitMQ holds the message.
    broker_transport_options = {"confirm_publish": True}

# Beat period of the relay tasks, seconds (KC_RELAY_SAFETY_INTERVAL, 900 by default).
RELAY_SAFETY_INTERVAL = float(settings.relay_safety_interval)

beat_schedule = {
    "verify-purchase-index": {
        "task": names.VERIFY_PURCHASE_INDEX,
        "schedule": float(settings.index_verify_interval),
        "options": {"expires": float(settings.index_verify_interval)},
    },
    # Each worker sweeps leftovers itself every KC_EVENT_RELAY_INTERVAL seconds (kc_tasks/worker/process.py):
    # these are the safety net, while no worker runs a sweep, and few rows in Flower's list.
    "relay-events": {
        "task": names.RELAY_EVENTS,
        "schedule": RELAY_SAFETY_INTERVAL,
        "options": {"expires": RELAY_SAFETY_INTERVAL},
    },
    "relay-inbox": {
        "task": names.RELAY_INBOX,
        "schedule": RELAY_SAFETY_INTERVAL,
        "options": {"expires": RELAY_SAFETY_INTERVAL},
    },
    "reconcile-payments": {
        "task": names.RECONCILE_PAYMENTS,
        "schedule": float(settings.reconcile_interval),
        "options": {"expires": float(settings.reconcile_interval)},
    },
    "prune-events": {"task": names.PRUNE_EVENTS, "schedule": 3600.0, "options": {"expires": 3600.0}},
    # Personal data is kept no longer than KC_INBOX_BODY_DAYS (and this hour) in the inbox.
    "redact-inbox": {"task": names.REDACT_INBOX, "schedule": 3600.0, "options": {"expires": 3600.0}},
    # Through `purchases` like a purchase: how far behind the queue is, seen by the worker that
    # takes it (kc_queue_heartbeat_timestamp_seconds; never run, kc_tasks/core/metrics.py).
    "queue-heartbeat": {
        "task": names.QUEUE_HEARTBEAT,
        "schedule": HEARTBEAT_INTERVAL,
        "options": {"expires": 3600.0},
    },
}
