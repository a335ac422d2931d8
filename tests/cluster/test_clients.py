"""The payment service's lines, as README gives them, against quorum queues on the cluster's URL
list with its first node down: Python's plain `send_task(..., queue="purchases")` and the Node
example (celery-node's `createClient(broker, backend, "purchases")`). Neither declares a queue
type: the vhost's default type, quorum, makes their declaration of `purchases` the worker's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from tests.builders import purchase
from tests.cluster.rabbitmq_nodes import Cluster, DeadPort
from tests.harness import Workers, node, wait_until
from tests.services import count

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("cluster")]


@pytest.fixture
def urls(rabbitmq_cluster: Cluster, vhost: str) -> Iterator[str]:
    """The cluster's URL list, a node that is down first."""
    dead = DeadPort()
    yield f"amqp://guest:guest@127.0.0.1:{dead.port}/{vhost};{rabbitmq_cluster.url_list(vhost)}"
    dead.close()


def test_the_contracts_plain_lines_reach_quorum_queues_past_a_dead_node(
    rabbitmq_cluster: Cluster, vhost: str, urls: str, database_url: str, workers: Workers
) -> None:
    # The clients first: they declare purchases themselves, before any worker has.
    python = purchase()
    Celery(broker=urls).send_task("kc_tasks.create_purchase", kwargs=python, queue="purchases")
    payment, student, course = f"pay_node_{uuid.uuid4().hex[:12]}", str(uuid.uuid4()), str(uuid.uuid4())
    task_id = node(urls, "purchase", payment, student, course, "49900", "INR")
    assert uuid.UUID(task_id)
    assert rabbitmq_cluster.queues(vhost)["purchases"]["type"] == "quorum"

    workers.start(database_url, urls, KC_QUEUE_TYPE="quorum")
    assert wait_until(lambda: count(database_url) == 2, timeout=30)
    node(urls, "revoke", payment, "refund", "rfnd_node_1")
    assert wait_until(lambda: count(database_url, "payment_id = %s AND NOT is_active", (payment,)) == 1, timeout=30)
    assert count(database_url, "payment_id = %s AND is_active", (python["payment_id"],)) == 1
