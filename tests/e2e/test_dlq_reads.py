"""Reading the dead letters never loses one: a quorum purchases.dlq read 25 times through the
real dead-letters page and `kc-tasks dlq list`, on a RabbitMQ whose quorum queues have
RabbitMQ 4's default delivery limit of 20, with the policy `kc-tasks dlq policy` gives the DLQ.
A malformed message among them is shown as unparseable and breaks neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from kombu import Connection, Producer, Queue

from kc_tasks.ops import rabbitmq
from tests.harness import ROOT, Web
from tests.services import rabbitmqctl

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))
ADMIN = ("kc-admin", "admin-password-of-16-bytes-or-more")
READS = 25
# RabbitMQ 4 gives every quorum queue a delivery limit of 20 unless a policy or argument says
# otherwise; on the RabbitMQ 3 of the tests, a vhost-wide policy of priority 0 does the same.
RABBITMQ_4_DEFAULT = '{"delivery-limit": 20}'


@pytest.fixture
def quorum_vhost() -> Iterator[str]:
    vhost = f"kc_dlq_{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "rabbitmq-4-default", ".*", RABBITMQ_4_DEFAULT)
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    rabbitmqctl("delete_vhost", vhost, check=False)


def kc(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, KC_QUEUE_TYPE="quorum")
    return subprocess.run([KC_TASKS, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def letter(payment: str) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "task": "kc_tasks.create_purchase",
        "task_id": str(uuid.uuid4()),
        "kwargs": {"payment_id": payment},
        "error_type": "InvalidPurchase",
        "error_message": "student_id: is required",
        "reason": "permanent error",
        "attempts": 1,
        "died_at": "2026-01-01T00:00:00+00:00",
    }


def fill(broker_url: str) -> None:
    """Three dead letters and three broken messages, in a quorum purchases.dlq."""
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        Queue("purchases.dlq", routing_key="purchases.dlq", queue_arguments={"x-queue-type": "quorum"})(
            channel
        ).declare()
        producer = Producer(channel)
        for i in range(3):
            producer.publish(
                letter(f"pay_dlq_{i}"), routing_key="purchases.dlq", serializer="json", headers={"kc-dead-letter": 1}
            )
        for body, content_type in (
            (b"{not json", "application/json"),  # ours by its header, but not JSON
            (b'{"id": 5, "died_at": "yesterday"}', "application/json"),  # JSON, not a dead letter
            (b"\x80\x04K\x01.", "application/x-python-serialize"),  # a pickle: never unpickled
        ):
            producer.publish(
                body,
                routing_key="purchases.dlq",
                content_type=content_type,
                content_encoding="binary",
                headers={"kc-dead-letter": 1},
            )


def queue_depth(broker_url: str) -> int:
    vhost = broker_url.rsplit("/", 1)[1]
    for line in rabbitmqctl("list_queues", "-p", vhost, "name", "messages", "--no-table-headers").splitlines():
        name, _, messages = line.partition("\t")
        if name == "purchases.dlq":
            return int(messages)
    raise AssertionError("no purchases.dlq")


def test_reading_a_quorum_dlq_25_times_keeps_every_letter(
    quorum_vhost: str, database_url: str, webs: Callable[..., Web]
) -> None:
    fill(quorum_vhost)
    # The DLQ's policy as `kc-tasks dlq policy` sets it on RabbitMQ 3 (tests/cluster/test_policy.py:
    # the command sets it through the management API, which this machine's RabbitMQ does not run).
    rabbitmqctl(
        "set_policy", "-p", quorum_vhost.rsplit("/", 1)[1], "--apply-to", "queues",
        "--priority", str(rabbitmq.DLQ_POLICY_PRIORITY), rabbitmq.DLQ_POLICY_NAME, rabbitmq.DLQ_POLICY_PATTERN,
        json.dumps(rabbitmq.DLQ_POLICIES[-1]),
    )  # fmt: skip
    web = webs(database_url, quorum_vhost, KC_QUEUE_TYPE="quorum", KC_ADMIN_USER=ADMIN[0], KC_ADMIN_PASSWORD=ADMIN[1])
    for _ in range(READS):
        page = httpx.get(web.base + "/admin/dead-letters", auth=ADMIN, timeout=30)
        assert page.status_code == 200, page.text[:300]
        assert "6 dead letters" in page.text
        assert "unparseable" in page.text
        listed = kc(quorum_vhost, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(listed.stdout.splitlines()) == 6
    letters = [json.loads(line) for line in kc(quorum_vhost, "dlq", "list", "--json").stdout.splitlines()]
    assert sorted(d["kwargs"]["payment_id"] for d in letters if d["kwargs"]) == ["pay_dlq_0", "pay_dlq_1", "pay_dlq_2"]
    assert sum(d["reason"] == "unparseable dead letter" for d in letters) == 3
    assert queue_depth(quorum_vhost) == 6, "no read dropped a letter"
    shown = kc(quorum_vhost, "dlq", "show", letters[0]["id"])
    assert shown.returncode == 0, shown.stderr
