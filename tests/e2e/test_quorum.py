"""KC_QUEUE_TYPE=quorum on RabbitMQ: replicated queues, retries with backoff still delivered."""

from __future__ import annotations

import re
import uuid

from celery import Celery
from kombu import Exchange, Queue

from tests.conftest import rabbitmqctl
from tests.e2e.conftest import Workers, count, purchase, wait_until
from tests.e2e.proxy import Proxy


def test_quorum_queues_serve_purchases_and_their_retries(
    database_url: str, workers: Workers, rabbitmq_url: str
) -> None:
    vhost = f"kc_quorum_{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    broker = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    proxy = Proxy("127.0.0.1", 5432)
    proxy.restore()
    try:
        worker = workers.start(
            database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"),
            broker,
            KC_QUEUE_TYPE="quorum",
            KC_RETRY_BACKOFF_MAX="2",
        )
        queues = rabbitmqctl("list_queues", "-p", vhost, "name", "type")
        assert "purchases\tquorum" in queues
        # A client of a quorum queue declares it as such (or the vhost's default type is quorum).
        client = Celery(broker=broker)
        queue = Queue(
            "purchases",
            Exchange("purchases", type="direct"),
            routing_key="purchases",
            queue_arguments={"x-queue-type": "quorum"},
        )
        orders = [purchase() for _ in range(20)]
        for order in orders[:10]:
            client.send_task("kc_tasks.create_purchase", kwargs=order, queue=queue)
        assert wait_until(lambda: count(database_url) == 10, timeout=30)
        proxy.cut()  # PostgreSQL unreachable: the next purchases wait in the quorum queue
        for order in orders[10:]:
            client.send_task("kc_tasks.create_purchase", kwargs=order, queue=queue)
        assert wait_until(lambda: "this worker takes no task from purchases until it can" in worker.text(), 30)
        proxy.restore()
        assert wait_until(lambda: count(database_url) == 20, timeout=60), worker.text()[-3000:]
        assert "gave up" not in worker.text() and not re.search(r"retry \d+", worker.text())
    finally:
        proxy.cut()
        rabbitmqctl("delete_vhost", vhost, check=False)
