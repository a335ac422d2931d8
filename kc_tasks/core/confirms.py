"""Many messages, one wait: a channel of its own broker connection, in confirm mode on
RabbitMQ, on which a batch is published whole before its confirms are awaited, once.

kombu's `confirm_publish` waits after every message: a broker round trip and a wake-up per
message. Here the caller publishes its batch on `channel`, then calls `confirm(n)`. On Redis
the publish itself is the round trip and there is nothing to await. Used by one thread at a
time; after any failure the channel is closed and a new one opened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from celery import Celery
from kombu import Producer

logger = logging.getLogger(__name__)

# How long a batch waits for RabbitMQ's publisher confirms, seconds.
CONFIRM_TIMEOUT = 10

C = TypeVar("C", bound="ConfirmedChannel")


class ConfirmedChannel:
    """Each kind of channel says how it connects and what it publishes with."""

    # kombu's ensure_connection arguments: how long opening one may try.
    connect_retry: dict[str, Any]

    def __init__(self, app: Celery) -> None:
        self.app = app
        # Without kombu's confirm_publish, which would wait after every message.
        self.connection = app.connection_for_write(transport_options={"confirm_publish": False})
        try:
            self.connection.ensure_connection(**self.connect_retry)
            self.channel = self.connection.channel()
            self.confirms = self.connection.transport.driver_type == "amqp"
            self._sent = self._confirmed = 0
            self._refused: int | None = None
            if self.confirms:
                self.channel.confirm_select()
                self.channel.events["basic_ack"].add(self._on_ack)
                self.channel.events["basic_nack"].add(self._on_nack)
            self.producer = self.producer_for(self.channel)
        except BaseException:
            self.connection.release()
            raise

    def producer_for(self, channel: Any) -> Producer:
        """The producer publishing on `channel`, what it publishes to declared once."""
        raise NotImplementedError

    def confirm(self, published: int, timeout: float = CONFIRM_TIMEOUT) -> None:
        """Returns once the broker holds the `published` messages just sent on `channel`;
        raises if it refused one (basic.nack) or did not answer in time."""
        self._sent += published
        if not self.confirms:
            return
        deadline = time.monotonic() + timeout
        while self._confirmed < self._sent and self._refused is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"RabbitMQ confirmed {self._confirmed} of {self._sent} messages in time")
            self.connection.drain_events(timeout=left)
        if self._refused is not None:
            raise RuntimeError(f"RabbitMQ refused delivery tag {self._refused} (basic.nack)")

    def close(self) -> None:
        self.connection.release()

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        # Tags count up from 1 on this channel; a `multiple` ack confirms every tag up to it.
        self._confirmed = max(self._confirmed, delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._refused = delivery_tag


class Kept(Generic[C]):
    """A confirmed channel opened on first use and kept between batches. A batch that fails
    on it (the broker restarted, or closed an idle connection) is sent once more on a new
    one: publishing twice is harmless, consumers and tasks are idempotent."""

    def __init__(self, open_channel: Callable[[], C]) -> None:
        self._open = open_channel
        self._channel: C | None = None

    @property
    def current(self) -> C | None:
        """The channel kept open, if any."""
        return self._channel

    def send(self, publish: Callable[[C], None]) -> None:
        """`publish(channel)`; raises what the second attempt raised."""
        for attempt in (1, 2):
            try:
                if self._channel is None:
                    self._channel = self._open()
                publish(self._channel)
                return
            except Exception:
                self.drop()
                if attempt == 2:
                    raise

    def drop(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                channel.close()
            except Exception:  # it is broken already; a new one replaces it
                logger.debug("closing a broken channel failed", exc_info=True)
