"""A three-node RabbitMQ cluster on quorum queues loses the node that leads `purchases` (killed,
as a crash or a power cut takes it), and gets it back, while purchases and refunds flow: from a
payment service on the contract's plain line and through the web process's webhooks, to a real
worker, all on the cluster's URL list.

Every task acknowledged to its sender takes effect once, nothing is dead-lettered, and the web
process answers 2xx throughout. A message past the delivery limit while a node is down still
reaches purchases.dlq. Each run prints a `CLUSTER {...}` line: how long purchases took from
publish to commit, before, during and after the loss (docs/operating.md, Scaling out)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest
from kombu import Connection, Producer, Queue

from kc_tasks.ops import rabbitmq
from tests.builders import purchase
from tests.cluster.rabbitmq_nodes import Cluster
from tests.cluster.traffic import Traffic, latencies, outcomes, settled
from tests.harness import Web, Workers, wait_until
from tests.harness import kc_quorum as kc

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("cluster")]

# How many payments and refunds go (all ways together) in each stretch: before the leader is
# killed, once it is down, once it is back.
STRETCH = 60


def test_the_node_leading_purchases_killed_and_started_again_loses_and_doubles_nothing(
    rabbitmq_cluster: Cluster, vhost: str, database_url: str, workers: Workers, webs: Callable[..., Web]
) -> None:
    urls = rabbitmq_cluster.url_list(vhost)
    policy = kc(urls, "dlq", "policy", "--management-url", rabbitmq_cluster.management_urls())
    assert policy.returncode == 0 and policy.stderr == "", policy.stderr
    quorum = {"KC_QUEUE_TYPE": "quorum", "KC_EVENT_RELAY_INTERVAL": "1"}
    worker = workers.start(database_url, urls, **quorum)
    web = webs(database_url, urls, **quorum)
    assert rabbitmq_cluster.queues(vhost)["purchases"]["type"] == "quorum"
    leader = rabbitmq_cluster.leader(vhost, "purchases")
    traffic = Traffic(urls, web.base)
    traffic.start()
    try:
        traffic.until(STRETCH)
        killed = time.time()
        leader.kill()  # SIGKILL: a crash, a power cut; returns once the node is gone
        down = traffic.until(traffic.sent + STRETCH)
        starting = time.time()
        leader.start()
        leader.await_started()
        back = time.time()
        traffic.until(traffic.sent + STRETCH)
    finally:
        traffic.stop()
        if not leader.running:
            leader.start()
            leader.await_started()
    assert down > STRETCH, "payments and refunds were sent while the node was down"

    acknowledged, refunded = traffic.acknowledged(), traffic.refunded()

    def drained() -> bool:
        return settled(database_url, traffic) and rabbitmq_cluster.messages(vhost, "purchases") == 0

    assert wait_until(drained, timeout=120), worker.text()[-3000:]
    rows = outcomes(database_url)
    assert traffic.refused() == [], "the web process answered every webhook 2xx through the loss"
    assert {p: len(r) for p, r in rows.items() if len(r) != 1} == {}, "one purchase per payment"
    assert set(rows) <= set(acknowledged) | traffic.uncertain(), "no purchase nobody sent"
    assert all(rows[p][0][0] == (p not in refunded) for p in acknowledged), "refunds applied, and only those"
    listed = kc(urls, "dlq", "list", "--json")
    assert listed.returncode == 0 and listed.stdout == "", "nothing dead-lettered"
    assert rabbitmq_cluster.messages(vhost, "purchases.dlq") == 0
    assert httpx.get(web.base + "/readyz", timeout=10).status_code == 200

    stretches = {
        "before": (0.0, killed),
        "down": (killed, starting),
        "starting": (starting, back),
        "after": (back, float("inf")),
    }
    figures = {"payments": len(acknowledged), "refunds": len(refunded), "uncertain": len(traffic.uncertain())}
    figures |= latencies(database_url, traffic, stretches)
    figures |= {"down_s": round(starting - killed, 1), "start_s": round(back - starting, 1)}
    print("CLUSTER " + json.dumps(figures), flush=True)


def test_a_message_past_the_delivery_limit_reaches_the_dlq_while_a_node_is_down(
    rabbitmq_cluster: Cluster, vhost: str
) -> None:
    """RabbitMQ 4 gives quorum queues a delivery limit of 20; RabbitMQ 3.10 none, so the test
    adds one to kc_tasks' own policy. The message is dead-lettered by the broker itself, at
    least once, while the node that led both queues is down (killed)."""
    first = rabbitmq_cluster.nodes[0]
    urls = rabbitmq_cluster.url_list(vhost)
    assert kc(urls, "dlq", "policy", "--management-url", rabbitmq_cluster.management_urls()).returncode == 0
    limited = {
        "pattern": rabbitmq.POLICY_PATTERN,
        "apply-to": "queues",
        "definition": {**rabbitmq.POLICY, "delivery-limit": 1},
    }
    with first.api() as api:
        assert api.put(f"/policies/{vhost}/{rabbitmq.POLICY_NAME}", json=limited).is_success
    with Connection(first.url(vhost)) as conn:  # both queues led by the first node
        for name in ("purchases", "purchases.dlq"):
            Queue(name, routing_key=name, durable=True)(conn.default_channel).declare()
    assert {rabbitmq_cluster.leader(vhost, q).name for q in ("purchases", "purchases.dlq")} == {first.name}
    first.kill()
    try:
        poison = purchase()
        with Connection(urls, transport_options={"confirm_publish": True}) as conn:
            channel = conn.default_channel
            Producer(channel).publish(
                [[], poison, {}],
                exchange="",
                routing_key="purchases",
                serializer="json",
                headers={"task": "kc_tasks.create_purchase", "id": "past-the-limit"},
            )
            purchases = Queue("purchases", routing_key="purchases", durable=True)(channel)
            deliveries, deadline = 0, time.monotonic() + 60
            while rabbitmq_cluster.messages(vhost, "purchases.dlq") == 0:
                assert deliveries < 10 and time.monotonic() < deadline, "the delivery limit did not take it away"
                message = purchases.get(no_ack=False)
                if message is None:
                    time.sleep(0.1)
                    continue
                deliveries += 1
                message.requeue()  # what a consumer that keeps failing on it does
        assert rabbitmq_cluster.messages(vhost, "purchases") == 0
        assert deliveries == 2, "delivered once, then once more: the limit"
        listed = kc(urls, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (letter["task_id"], letter["reason"]) == ("past-the-limit", "rejected to the dead-letter exchange")
        assert letter["error_message"] == "RabbitMQ dead-lettered it from purchases: delivery_limit"
        assert letter["kwargs"] == poison
    finally:
        first.start()
        first.await_started()
