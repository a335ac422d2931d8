"""Dead letters: every purchase that cannot be made is kept in `purchases.dlq`, explained.

A dead letter is a JSON message: the original task name, args, kwargs and task id, the
error type and message, the traceback, the attempts, the time of death and the reason. It
is published with publisher confirms before the original message is acknowledged, so a
crash in between gives at worst a duplicate dead letter, never a lost purchase. The queue
has no TTL: dead letters never expire.
"""

from __future__ import annotations

import base64
import logging
import traceback
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu import Message, Queue
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from kc_tasks.celery import settings
from kc_tasks.core import metrics, sending
from kc_tasks.core.names import (
    BROKER_REJECTED,
    DEAD_LETTER_HEADER,
    DEAD_LETTERS,
    PURCHASE_TASKS,
    PURCHASES,
    UNPARSEABLE,
)
from kc_tasks.store import db

logger = logging.getLogger(__name__)

# Of the same type as `purchases` (KC_QUEUE_TYPE); never a TTL: dead letters do not expire.
DLQ = Queue(DEAD_LETTERS, routing_key=DEAD_LETTERS, durable=True, queue_arguments=settings.queue_arguments)
# What a dead letter may be: ours (JSON), or a raw message the broker dead-lettered.
# Only JSON is ever decoded; anything else is shown as raw text or base64, never unpickled.
ACCEPT = ["application/json"]


@dataclass
class DeadLetter:
    task: str | None
    task_id: str | None
    kwargs: dict[str, Any] | None
    error_type: str
    error_message: str
    reason: str
    attempts: int = 1
    args: list[Any] = field(default_factory=list)
    traceback: str | None = None
    died_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # For a message that could not be decoded: what arrived, as text or base64.
    content_type: str | None = None
    raw_body: str | None = None

    @property
    def payment_id(self) -> str | None:
        return (self.kwargs or {}).get("payment_id") if isinstance(self.kwargs, dict) else None

    def age_seconds(self, now: datetime | None = None) -> float:
        now = now or datetime.now(UTC)
        try:
            return (now - datetime.fromisoformat(self.died_at)).total_seconds()
        except (TypeError, ValueError):  # a letter that says nothing usable about its death
            return 0.0

    def age(self) -> str:
        """How long ago it died, for people: 42s, 7.5m, 3.0h, 2.1d."""
        seconds = self.age_seconds()
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size:
                return f"{seconds / size:.1f}{unit}"
        return f"{seconds:.0f}s"

    @classmethod
    def from_failure(cls, request: Any, exc: BaseException, reason: str) -> DeadLetter:
        """A task that failed: its request, its error and the traceback being handled."""
        return cls(
            task=request.task,
            task_id=request.id,
            args=list(request.args or []),
            kwargs=dict(request.kwargs or {}),
            error_type=type(exc).__name__,
            error_message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            attempts=(request.retries or 0) + 1,
            reason=reason,
        )

    @classmethod
    def from_message(cls, message: Message, reason: str, exc: BaseException | None, attempts: int = 1) -> DeadLetter:
        """A message the worker could not run: what it carried, as far as it can be read."""
        headers = message.headers or {}
        args: list[Any] = []
        kwargs: dict[str, Any] | None = None
        try:
            decoded = message.decode() if message.content_type == "application/json" else None
            if isinstance(decoded, list) and len(decoded) >= 2:
                args, kwargs = list(decoded[0] or []), decoded[1]
        except Exception:  # noqa: BLE001  (undecodable is exactly the case at hand)
            decoded = None
        raw = _raw(message)
        return cls(
            task=headers.get("task"),
            task_id=headers.get("id"),
            args=args,
            kwargs=kwargs if isinstance(kwargs, dict) else None,
            error_type=type(exc).__name__ if exc else reason,
            error_message=str(exc) if exc else reason,
            traceback="".join(traceback.format_exception(exc)) if exc else None,
            attempts=attempts,
            reason=reason,
            content_type=message.content_type,
            raw_body=raw[:65536] if kwargs is None else None,
        )

    @classmethod
    def from_dlq_message(cls, message: Message) -> DeadLetter:
        """A message in purchases.dlq: one of ours, one the broker dead-lettered itself, or,
        whatever else it holds, an unparseable one shown as its raw body."""
        try:
            return cls._from_dlq_message(message)
        except Exception as exc:  # noqa: BLE001  (a broken message must not hide the others)
            letter = cls.from_message(message, UNPARSEABLE, None)
            letter.error_type = "Unparseable"
            letter.error_message = f"{type(exc).__name__}: {str(exc)[:200]}"
            if letter.raw_body is None:
                letter.raw_body = _raw(message)
            letter.id = str(message.properties.get("message_id") or letter.id)
            return letter

    @classmethod
    def _from_dlq_message(cls, message: Message) -> DeadLetter:
        if (message.headers or {}).get(DEAD_LETTER_HEADER):
            data = message.decode()
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            letter = cls(**known)
            for name in ("id", "error_type", "error_message", "reason", "died_at"):
                if not isinstance(getattr(letter, name), str):
                    raise ValueError(f"{name} is not a string")
            datetime.fromisoformat(letter.died_at)
            if not isinstance(letter.attempts, int) or not isinstance(letter.args, list):
                raise ValueError("attempts or args of the wrong type")
            if letter.kwargs is not None and not isinstance(letter.kwargs, dict):
                raise ValueError("kwargs is not an object")
            return letter
        death = ((message.headers or {}).get("x-death") or [{}])[0]
        letter = cls.from_message(message, BROKER_REJECTED, None, attempts=int(death.get("count", 1)))
        letter.error_type = "Rejected"
        source = death.get("queue", PURCHASES)
        letter.error_message = f"RabbitMQ dead-lettered it from {source}: {death.get('reason')}"
        letter.id = message.properties.get("message_id") or (message.headers or {}).get("id") or letter.id
        when = death.get("time")
        if isinstance(when, datetime):
            letter.died_at = when.astimezone(UTC).isoformat()
        return letter


def _raw(message: Message) -> str:
    """The body as text, or as base64 when it is not UTF-8."""
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(body).decode()


def publish(app: Celery, letter: DeadLetter) -> None:
    """Publish to purchases.dlq; returns once the broker holds it (RabbitMQ confirms)."""
    with app.producer_pool.acquire(block=True, timeout=10) as producer:
        producer.publish(
            asdict(letter),
            exchange="",
            routing_key=DEAD_LETTERS,
            declare=[DLQ],
            serializer="json",
            delivery_mode=2,
            message_id=letter.id,
            headers={DEAD_LETTER_HEADER: 1},
            retry=True,
            retry_policy=sending.RETRY,
        )
    metrics.dead_lettered(letter.task, letter.reason)
    logger.info(
        "dead-lettered %s %s (payment %s) to %s: %s: %s: %s",
        letter.task,
        letter.task_id,
        letter.payment_id,
        DEAD_LETTERS,
        letter.reason,
        letter.error_type,
        letter.error_message,
    )


# The tasks whose dead letters go back to `purchases` as they were sent.
REPLAYABLE = PURCHASE_TASKS


def replay(app: Celery, letter: DeadLetter) -> str | None:
    """Send the original kwargs back to purchases, confirmed; None, or why it cannot be."""
    if letter.task not in REPLAYABLE or not isinstance(letter.kwargs, dict):
        return f"it holds no create_purchase or revoke_purchase kwargs ({letter.reason})"
    try:
        sending.send(app, letter.task, letter.kwargs, task_id=letter.task_id or None)
    except Exception as exc:  # noqa: BLE001  (reported; the dead letter stays)
        return f"the broker did not take it: {exc}"
    return None


def record_purged(engine: Engine, letters: Sequence[DeadLetter]) -> None:
    """Record that these dead letters are purged, before they are: each is its task's outcome
    (kc_tasks.payments.outcomes), so the inbox event that asked for it is final and never sent again."""
    rows = [{"task_id": dl.task_id, "task": dl.task, "payment_id": dl.payment_id} for dl in letters if dl.task_id]
    if not rows:
        return
    purged = db.purged_dead_letters
    try:
        with db.translate_errors(engine.url), engine.begin() as conn:
            conn.execute(pg_insert(purged).on_conflict_do_nothing(index_elements=[purged.c.task_id]), rows)
    finally:
        engine.dispose()


def depth(app: Celery) -> int:
    """How many dead letters wait in purchases.dlq."""
    with app.connection_for_read() as conn:
        DLQ(conn.default_channel).declare()
        return int(conn.default_channel.queue_declare(DEAD_LETTERS, passive=True).message_count)


@contextmanager
def hold(app: Celery, limit: int | None = None) -> Iterator[list[tuple[DeadLetter, Message]]]:
    """The first `limit` dead letters (all of them by default), held unacknowledged, in queue
    order. Those the caller acks leave the DLQ; the others go back in their order when the
    block ends. If this process dies meanwhile, the broker gives them back too (RabbitMQ at
    once, Redis after its visibility timeout).

    Each read counts as a delivery: a quorum purchases.dlq with a delivery limit (RabbitMQ 4
    sets 20 by default) would drop a letter read that often. `kc-tasks dlq policy` lifts the
    limit of purchases.dlq (DLQ_POLICY); with it, reading the DLQ never loses anything."""
    with app.connection_for_read() as conn:
        channel = conn.channel()
        queue = DLQ(channel)
        queue.declare()
        held: list[tuple[DeadLetter, Message]] = []
        try:
            while (limit is None or len(held) < limit) and (
                message := queue.get(no_ack=False, accept=ACCEPT)
            ) is not None:
                held.append((DeadLetter.from_dlq_message(message), message))
            yield held
        finally:
            # Requeued one by one in their order, they keep it, on RabbitMQ and on Redis.
            for _, message in held:
                if not message.acknowledged:
                    message.requeue()
            channel.close()
