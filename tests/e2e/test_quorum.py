"""KC_QUEUE_TYPE=quorum on RabbitMQ: replicated queues in a vhost whose default queue type is
quorum, served to the contract's plain client line; retries with backoff still delivered."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from celery import Celery

from tests.builders import purchase
from tests.e2e.proxy import Proxy
from tests.harness import ROOT, Workers, wait_until
from tests.services import count, rabbitmqctl

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))


def test_quorum_queues_serve_the_plain_client_line_purchases_and_their_retries(
    database_url: str, workers: Workers, rabbitmq_url: str
) -> None:
    vhost = f"kc_quorum_{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost, "--default-queue-type", "quorum")
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
        # The contract's line, as a payment service writes it: no queue type anywhere.
        client = Celery(broker=broker)
        orders = [purchase() for _ in range(20)]
        for order in orders[:10]:
            client.send_task("kc_tasks.create_purchase", kwargs=order, queue="purchases")
        assert wait_until(lambda: count(database_url) == 10, timeout=30)
        proxy.cut()  # PostgreSQL unreachable: the next purchases wait in the quorum queue
        for order in orders[10:19]:
            client.send_task("kc_tasks.create_purchase", kwargs=order, queue="purchases")
        last = orders[19]
        by_hand = subprocess.run(
            [
                KC_TASKS,
                "enqueue",
                "--payment",
                last["payment_id"],
                "--amount",
                "4999",
                "--currency",
                "INR",
                "--student",
                last["student_id"],
                "--course",
                last["course_id"],
            ],
            env=dict(os.environ, CELERY_BROKER_URL=broker, KC_QUEUE_TYPE="quorum"),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert by_hand.returncode == 0, by_hand.stderr
        assert wait_until(lambda: "this worker takes no task from purchases until it can" in worker.text(), 30)
        proxy.restore()
        assert wait_until(lambda: count(database_url) == 20, timeout=60), worker.text()[-3000:]
        assert "gave up" not in worker.text() and not re.search(r"retry \d+", worker.text())
        # kc_tasks has no use for Celery's native delayed delivery (a direct exchange cannot
        # serve it): none of its exchanges or queues, and no set-up to wait for on a reconnect.
        exchanges = rabbitmqctl("list_exchanges", "-p", vhost, "name")
        assert "celery_delayed" not in exchanges + rabbitmqctl("list_queues", "-p", vhost, "name")
        assert "kombu.transport.native_delayed_delivery" not in worker.text(), "the set-up's warnings at start"
    finally:
        proxy.cut()
        rabbitmqctl("delete_vhost", vhost, check=False)
