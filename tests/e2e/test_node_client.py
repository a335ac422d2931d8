"""The payment service in Node.js: examples/node/enqueue.js, run by real Node with celery-node
from npm, enqueues a purchase and its revocation that the real worker carries out."""

from __future__ import annotations

import uuid

from tests.harness import Workers, node, wait_until
from tests.services import count


def test_the_node_example_enqueues_a_purchase_and_its_revocation(
    database_url: str, workers: Workers, broker_url: str
) -> None:
    workers.start(database_url, broker_url)
    student, course, payment = str(uuid.uuid4()), str(uuid.uuid4()), f"pay_node_{uuid.uuid4().hex[:12]}"
    task_id = node(broker_url, "purchase", payment, student, course, "49900", "INR")
    assert uuid.UUID(task_id)
    node(broker_url, "purchase", payment, student, course, "49900", "INR")
    assert wait_until(lambda: count(database_url, "payment_id = %s AND is_active", (payment,)) == 1, timeout=30)
    node(broker_url, "revoke", payment, "refund", "rfnd_node_1")
    assert wait_until(lambda: count(database_url, "payment_id = %s AND NOT is_active", (payment,)) == 1, timeout=30)
    assert count(database_url) == 1, "one payment, one purchase, whatever the deliveries"
