"""Worker-side hooks that keep every message accounted for.

- `Consumer`: a message the worker cannot decode, whose task it does not know, or that is
  not a valid task message becomes a dead letter with its reason (Celery would log it and
  drop it, or reject it without requeue).
- `KcRequest`: a task whose worker process died under it (SIGKILL, OOM) is redelivered at
  most `KC_WORKER_LOST_LIMIT` times, then dead-lettered, instead of looping forever.
- `Consumer` puts kc_tasks.worker.batching.PurchaseBatcher in front of the pool (unless
  KC_BATCHING=off).
- `Consumer.on_send_event_buffered`: task events (Flower's feed) leave in one message per
  10 ms instead of one per turn of the loop.
- `Consumer.on_connection_error_after_connected`: on Redis, the messages the worker held go
  back to their queue once Redis answers again (after a Sentinel failover, a restart), before
  Celery drops the lost connection, instead of crashing the worker or waiting out the
  visibility timeout.
- `Consumer.Blueprint`: Celery's consumer steps but its native delayed delivery, which
  kc_tasks never uses (`purchases` is a direct exchange) and which, on quorum queues, tried
  every broker URL of the list, a dead node's too, before consuming again after a reconnect.

If publishing the dead letter fails, the message is not acknowledged: it is rejected, and
on RabbitMQ the dead-letter exchange policy of `purchases` (kc-tasks dlq policy) keeps it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.worker import state
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.request import Request
from kombu import Message

from kc_tasks.celery import settings as _settings
from kc_tasks.core import metrics, names, sending
from kc_tasks.core.payload import is_task_body
from kc_tasks.store import dead_letters
from kc_tasks.worker.batching import PurchaseBatcher, flush_task_events, run_batch
from kc_tasks.worker.outage import DatabaseOutage, gate

logger = logging.getLogger(__name__)

# Task events (Flower's feed) are gathered this long, seconds, into one message.
EVENT_FLUSH_DELAY = 0.01
# How long a worker that lost Redis waits for it to answer again (a Sentinel failover takes its
# down-after-milliseconds, 30 s by default, and a few seconds more) to hand back what it held.
REDIS_BACK_WITHIN = 90.0
# Celery's consumer step that sets up native delayed delivery on quorum queues (Celery 5.5+).
DELAYED_DELIVERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


def dead_letter_message(app: Any, message: Message, reason: str, exc: BaseException | None, attempts: int = 1) -> None:
    """Dead-letter a message, then acknowledge it; if the dead letter cannot be published,
    reject it without acknowledging (RabbitMQ's dead-letter exchange, or a requeue on Redis)."""
    letter = dead_letters.DeadLetter.from_message(message, reason, exc, attempts=attempts)
    try:
        dead_letters.publish(app, letter)
    except Exception as error:  # noqa: BLE001  (the message must not be lost, whatever failed)
        logger.critical("could not dead-letter message %s (%s): %s; rejecting it", letter.task_id, reason, error)
        message.reject(requeue=_settings.uses_redis)
        return
    message.ack()


def hand_back(channel: Any, errors: tuple[type[BaseException], ...], within: float) -> None:
    """Once Redis answers again (tried every half second for `within` seconds), the messages
    delivered to this worker and not acknowledged back in their queue (kombu's restore). A
    message whose task is still running is handed back too: its ack then fails and it is made
    again, which changes nothing (purchases are idempotent). Waiting for Redis here also spares
    the reconnect its backoff (2 s, 4 s, 6 s...) while a failover is not over."""
    deadline = time.monotonic() + within
    while True:
        try:
            with channel.conn_or_acquire() as client:
                client.ping()
                channel.qos.restore_unacked(client)
        except errors as exc:
            if time.monotonic() > deadline:
                logger.error("Redis did not answer for %.0f s: the messages this worker held wait for its "
                             "visibility timeout (%s)", within, exc)  # fmt: skip
                return
            time.sleep(0.5)
        else:
            return


class Consumer(CeleryConsumer):
    class Blueprint(CeleryConsumer.Blueprint):
        """Celery's consumer steps without native delayed delivery. Celery starts it whenever a
        queue is a quorum queue (KC_QUEUE_TYPE=quorum), at start-up and after every reconnect,
        and it sets up exchanges on each broker URL of the list, three tries each, before the
        worker consumes: after a node was lost, ~18 s without a purchase made. kc_tasks has no
        use for it: `purchases` is a direct exchange, which that feature cannot serve, so a
        retry's countdown is held by the worker either way."""

        default_steps = [step for step in CeleryConsumer.Blueprint.default_steps if step != DELAYED_DELIVERY_STEP]

    def __init__(self, on_task_request: Callable[[Request], Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(on_task_request, *args, **kwargs)
        if self.controller is not None:
            gate.attach(self)  # closed while PostgreSQL cannot take writes (kc_tasks/worker/outage.py)
        if self.controller is not None and _settings.batching:  # KC_BATCHING=off: Celery's own path
            hub = getattr(self.controller, "hub", None)
            call_later = hub.call_later if hub is not None else None
            self.on_task_request = PurchaseBatcher(self.controller, on_task_request, run_batch, call_later)
        elif self.controller is not None:
            logger.info("batching off (KC_BATCHING=off): each purchase is made by its own task")

    _events_flush_due = False

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Redis keeps the messages a worker holds in its `unacked` hash; kombu puts them back in
        their queue when the worker's channel closes. Celery 5.7 closes it twice after a lost
        connection, the second time after kombu has let go of the connection's settings; if the
        first close could not reach Redis (a Sentinel failover, a restart) the second one fails
        with an AttributeError and the worker stops ("Unrecoverable error"). Its messages then
        wait out the visibility timeout, an hour. So on Redis they are handed back first, as soon
        as Redis answers again, and both closes find nothing left to do."""
        if _settings.uses_redis and self.task_consumer is not None:
            hand_back(self.task_consumer.channel, self.connection_errors, REDIS_BACK_WITHIN)
        super().on_connection_error_after_connected(exc)

    def on_close(self) -> None:
        super().on_close()
        self._events_flush_due = False
        if isinstance(self.on_task_request, PurchaseBatcher):
            self.on_task_request.clear()

    def on_send_event_buffered(self) -> None:
        """Celery sends the buffered task events at the loop's next turn: under load, a message
        for every task or two. Gathered for EVENT_FLUSH_DELAY, they cost the worker and the
        broker one message per interval; a full buffer (24 events) still goes at once. Flushing
        them is Celery's private API (kc_tasks.worker.batching): KC_BATCHING=off leaves Celery's way.

        With -P threads this is called from pool threads: call_soon, as Celery's own, is safe
        there; the timer is set from the loop's thread."""
        if not _settings.batching:
            super().on_send_event_buffered()
        elif self.hub is not None and not self._events_flush_due:
            self._events_flush_due = True
            self.hub.call_soon(self._gather_events)

    def _gather_events(self) -> None:
        self.hub.call_later(EVENT_FLUSH_DELAY, self._flush_gathered_events)

    def _flush_gathered_events(self) -> None:
        self._events_flush_due = False
        flush_task_events(self)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's handler, behind a check of the body's shape: a well-formed JSON body that is
        not a task body would otherwise stop the worker, or vanish without a dead letter."""
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Message) -> Any:
            headers = message.headers or {}
            if headers.get("task") == names.QUEUE_HEARTBEAT:
                # beat's heartbeat: noted when it was sent, never run (kc_tasks/core/metrics.py)
                metrics.heartbeat_received(headers.get(names.SENT_AT))
                message.ack()
                return None
            if message.content_type == "application/json" and (message.headers or {}).get("task"):
                try:
                    body = message.decode()
                except Exception:  # noqa: BLE001  (Celery's own path reports undecodable bodies)
                    return handle(message)
                if not is_task_body(body):
                    logger.error(
                        "task message %s has a body that is not [args, kwargs, embed]",
                        (message.headers or {}).get("id"),
                    )
                    dead_letter_message(self.app, message, names.INVALID_MESSAGE, None)
                    return None
            return handle(message)

        return on_task_received

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The connection of the task events (Flower's feed; its only user in Celery's
        consumer), without publisher confirms. Celery's event sender shares it between the
        main loop and, with `-P threads`, every pool thread: a thread waiting for its confirm
        could read another's and leave it waiting forever, which stopped the worker. Task
        events are monitoring notices on transient queues; tasks, retries, dead letters and
        purchase events keep their confirms."""
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False})
        )

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        logger.error("undecodable message (content type %s): %s", message.content_type, exc)
        dead_letter_message(self.app, message, names.UNDECODABLE, exc)

    def on_unknown_message(self, body: Any, message: Message) -> None:
        logger.error("a message that is not a task message arrived on %s", names.PURCHASES)
        dead_letter_message(self.app, message, names.INVALID_MESSAGE, None)

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        logger.error("unknown task %s", (message.headers or {}).get("task"))
        dead_letter_message(self.app, message, names.UNKNOWN_TASK, exc)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        logger.error("invalid task message %s: %s", (message.headers or {}).get("id"), exc)
        try:
            message.decode()  # JSON only (the consumer accepts nothing else): never unpickles
            reason = names.INVALID_MESSAGE
        except Exception:  # noqa: BLE001  (a body that does not decode, whatever the codec says)
            reason = names.UNDECODABLE
        dead_letter_message(self.app, message, reason, exc)


class KcRequest(Request):
    _lost_worker = False
    # Given back to the broker during a database outage (kc_tasks/worker/outage.py): never run here.
    given_back = False

    def acknowledge(self) -> None:
        if not self.acknowledged and self._channel_gone("ack"):
            return
        super().acknowledge()

    def _channel_gone(self, what: str) -> bool:
        """A task that ends after its worker lost the broker and reconnected cannot settle its
        message on the channel it came on: kombu closed it (on Redis it then fails with an
        AttributeError that stops the worker). The broker hands the message out again (RabbitMQ
        when the connection closed, Redis when the worker handed back what it held), and making
        it again changes nothing. True, and the message counted settled, when that is so."""
        if getattr(self.message.channel, "connection", True) is not None:
            return False
        logger.warning("task %s: cannot %s its message, the connection it came on is gone; the broker "
                       "delivers it again", self.id, what)  # fmt: skip
        self.acknowledged = True
        return True

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        from billiard.exceptions import WorkerLostError

        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        self._lost_worker = isinstance(exc, (WorkerLostError, SystemExit, KeyboardInterrupt))
        if isinstance(exc, DatabaseOutage):
            # Stop consuming first: the message given back next is then not delivered here again.
            gate.close(exc.reason)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def give_back(self) -> None:
        """Reject the message, requeued, and forget this request: it waits in the broker."""
        self.given_back = True
        self._forget()
        self.reject(requeue=True)

    def revoked(self) -> bool:
        """Celery asks this before it hands a request to the pool: a request given back is
        skipped, as a revoked one is, without a word (its message is the broker's again). A
        retry's countdown that ends later reserves it again: forgotten again."""
        if self.given_back:
            self._forget()
            return True
        return super().revoked()

    def _forget(self) -> None:
        """Out of the worker's books (celery.worker.state), leaving a later delivery of the same
        task id, which may be running, in them."""
        if state.requests.get(self.id) is self:
            del state.requests[self.id]
        for held in (state.reserved_requests, state.scheduled_requests, state.active_requests):
            held.discard(self)

    def reject(self, requeue: bool = False) -> None:
        if not self.acknowledged and self._channel_gone("reject"):
            return None
        if not (requeue and self._lost_worker) or self.acknowledged:
            return super().reject(requeue=requeue)
        message = self.message
        losses = int((message.headers or {}).get(names.LOST_HEADER, 0)) + 1
        try:
            if losses >= _settings.worker_lost_limit:
                letter = dead_letters.DeadLetter.from_message(message, names.WORKER_LOST, None, attempts=losses)
                letter.error_type = "WorkerLostError"
                letter.error_message = f"the worker process running it died {losses} times"
                dead_letters.publish(self.task.app, letter)
            else:
                self._redeliver(message, losses)
        except Exception as error:  # noqa: BLE001  (fall back to the broker's requeue: nothing lost)
            logger.critical("task %s: could not count its lost worker (%s); requeueing it", self.id, error)
            return super().reject(requeue=True)
        self.acknowledge()
        return None

    def _redeliver(self, message: Message, losses: int) -> None:
        """Publish a copy that counts the losses, then the caller acks the original."""
        logger.warning(
            "task %s: its worker process died (%d of %d); redelivering it", self.id, losses, _settings.worker_lost_limit
        )
        properties = message.properties or {}
        with self.task.app.producer_pool.acquire(block=True, timeout=10) as producer:
            producer.publish(
                message.body,
                exchange="",
                routing_key=names.PURCHASES,
                headers={**(message.headers or {}), names.LOST_HEADER: losses},
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                correlation_id=properties.get("correlation_id"),
                reply_to=properties.get("reply_to"),
                delivery_mode=2,
                retry=True,
                retry_policy=sending.RETRY,
            )


class KcTask(Task):
    """The base of every task of the app: its requests count lost workers."""

    Request = "kc_tasks.worker.consumer:KcRequest"
