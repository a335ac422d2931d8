"""`kc-tasks dlq policy` sets RabbitMQ's policies on the broker the URL names, through its
management API, node by node along a URL list, and never prints a password; the policy
dead-letters from a quorum queue at least once; the vhost's default queue type is checked
against KC_QUEUE_TYPE."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Message, Queue

from kc_tasks.ops import rabbitmq
from tests.cluster.rabbitmq_nodes import Cluster, DeadPort
from tests.harness import kc_quorum as kc

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("cluster")]

PASSWORD = f"pw-{uuid.uuid4().hex}"


@pytest.fixture
def operator(rabbitmq_cluster: Cluster, vhost: str) -> Iterator[str]:
    """A user of the vhost allowed to set policies, with a password to look for in the output."""
    user = f"kc-ops-{uuid.uuid4().hex[:6]}"
    node = rabbitmq_cluster.any_running()
    node.ctl("add_user", user, PASSWORD)
    node.ctl("set_user_tags", user, "policymaker", "management")
    node.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    yield user
    rabbitmq_cluster.any_running().ctl("delete_user", user, check=False)


@pytest.fixture
def dead() -> Iterator[int]:
    """The port of a node that is down."""
    port = DeadPort()
    yield port.port
    port.close()


def urls(cluster: Cluster, vhost: str, user: str, dead: int) -> str:
    """The cluster's URL list with `user`, a dead node first."""
    nodes = [dead] + [node.amqp_port for node in cluster.nodes]
    return ";".join(f"amqp://{user}:{PASSWORD}@127.0.0.1:{port}/{vhost}" for port in nodes)


def apis(cluster: Cluster, dead: int) -> str:
    """Each node's management API, a dead one first."""
    return f"http://127.0.0.1:{dead};{cluster.management_urls()}"


def wait_for_message(queue: Queue, timeout: float = 10.0) -> Message:
    deadline = time.monotonic() + timeout
    while (message := queue.get(no_ack=False)) is None:
        assert time.monotonic() < deadline, f"nothing arrived in {queue.name}"
        time.sleep(0.1)
    return message


def test_the_policies_go_to_the_broker_the_urls_name_past_a_dead_node_without_a_password(
    rabbitmq_cluster: Cluster, vhost: str, operator: str, dead: int
) -> None:
    broker = urls(rabbitmq_cluster, vhost, operator, dead)
    applied = kc(broker, "dlq", "policy", "--management-url", apis(rabbitmq_cluster, dead))
    assert applied.returncode == 0, applied.stderr
    output = applied.stdout + applied.stderr
    assert PASSWORD not in output
    assert "did not answer; asked the next node" in applied.stderr, "the dead node was tried first"
    assert f"policy kc-purchases-dlx set on vhost {vhost} through {rabbitmq_cluster.nodes[0].management_url}" in output
    assert "purchases.dlq delivery limit 2147483647" in applied.stdout, "RabbitMQ 3 refuses -1: its largest limit"
    assert f"vhost {vhost}: default queue type quorum" in applied.stdout
    assert "warning" not in output

    with rabbitmq_cluster.nodes[2].api() as api:
        policies = {p["name"]: p for p in api.get(f"/policies/{vhost}").json()}
    assert policies[rabbitmq.POLICY_NAME]["definition"] == {
        "dead-letter-exchange": "",
        "dead-letter-routing-key": "purchases.dlq",
        "dead-letter-strategy": "at-least-once",
        "overflow": "reject-publish",
        "queue-version": 2,
    }, "dead letters from a quorum queue at least once, which needs reject-publish"
    assert policies[rabbitmq.DLQ_POLICY_NAME]["definition"] == {"delivery-limit": 2**31 - 1}
    assert policies[rabbitmq.DLQ_POLICY_NAME]["priority"] == 10

    # What a consumer rejects now reaches purchases.dlq, kept with its story.
    with Connection(rabbitmq_cluster.nodes[1].url(vhost)) as conn:
        channel = conn.default_channel
        Queue("purchases.dlq", routing_key="purchases.dlq", durable=True)(channel).declare()
        purchases = Queue("purchases", routing_key="purchases", durable=True)(channel)
        purchases.declare()
        conn.Producer(channel).publish(
            {"raw": True},
            exchange="",
            routing_key="purchases",
            serializer="json",
            headers={"task": "kc_tasks.create_purchase", "id": "rejected-1"},
        )
        wait_for_message(purchases).reject(requeue=False)
    assert rabbitmq_cluster.queues(vhost)["purchases"]["type"] == "quorum"
    listed = kc(broker, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (letter["reason"], letter["task_id"]) == ("rejected to the dead-letter exchange", "rejected-1")
    assert PASSWORD not in listed.stdout + listed.stderr


def test_a_refusal_names_the_vhost_and_the_api_never_the_password(
    rabbitmq_cluster: Cluster, vhost: str, operator: str, dead: int
) -> None:
    missing = urls(rabbitmq_cluster, vhost, operator, dead).replace(f"/{vhost}", "/no_such_vhost")
    refused = kc(missing, "dlq", "policy", "--management-url", apis(rabbitmq_cluster, dead))
    assert refused.returncode == 1
    assert f"RabbitMQ at {rabbitmq_cluster.nodes[0].management_url} has no vhost 'no_such_vhost'" in refused.stderr
    assert PASSWORD not in refused.stdout + refused.stderr

    wrong = urls(rabbitmq_cluster, vhost, operator, dead).replace(PASSWORD, "not-the-password")
    refused = kc(wrong, "dlq", "policy", "--management-url", apis(rabbitmq_cluster, dead))
    assert refused.returncode == 1
    assert f"refused user '{operator}'" in refused.stderr

    nowhere = f"amqp://{operator}:{PASSWORD}@127.0.0.1:{dead}/{vhost}"
    unreachable = kc(nowhere, "dlq", "policy", "--management-url", f"http://127.0.0.1:{dead}")
    assert unreachable.returncode == 2
    assert "no RabbitMQ management API answered" in unreachable.stderr
    assert PASSWORD not in unreachable.stdout + unreachable.stderr


def test_the_vhosts_default_queue_type_is_checked_against_kc_queue_type(rabbitmq_cluster: Cluster) -> None:
    """A quorum purchases in a vhost whose default type is classic refuses the contract's plain
    clients (a warning); a classic kc_tasks in a vhost whose default is quorum cannot consume
    the queue it would declare (a failure)."""
    plain = f"kc_cluster_{uuid.uuid4().hex[:8]}"
    rabbitmq_cluster.add_vhost(plain, default_queue_type=None)
    quorum = f"kc_cluster_{uuid.uuid4().hex[:8]}"
    rabbitmq_cluster.add_vhost(quorum, default_queue_type="quorum")
    node = rabbitmq_cluster.nodes[0]
    try:
        warned = kc(node.url(plain), "dlq", "policy", "--management-url", node.management_url)
        assert warned.returncode == 0, warned.stderr
        assert f"vhost {plain}: default queue type not set (classic)" in warned.stdout
        assert "is refused (406 inequivalent arg 'x-queue-type')" in warned.stderr
        assert "--default-queue-type quorum" in warned.stderr

        failed = kc(node.url(quorum), "dlq", "policy", "--management-url", node.management_url, KC_QUEUE_TYPE="classic")
        assert failed.returncode == 1
        assert "Set KC_QUEUE_TYPE=quorum" in failed.stderr

        classic = kc(node.url(plain), "dlq", "policy", "--management-url", node.management_url, KC_QUEUE_TYPE="classic")
        assert classic.returncode == 0 and classic.stderr == "", classic.stderr
    finally:
        rabbitmq_cluster.delete_vhost(plain)
        rabbitmq_cluster.delete_vhost(quorum)
