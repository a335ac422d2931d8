"""Nothing waits forever: an inbox event of kc_tasks' own webhook whose message the broker lost
(Redis without durable writes) is sent again by beat's reconciliation, under its task id; an
event whose dead letter an operator purged is final, so it is never sent again and its body is
redacted in time. Real web process, real worker, the `kc-tasks` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from celery import Celery
from kombu import Connection, Producer, Queue

from kc_tasks.payments.inbox import task_id_for
from tests.builders import event, purchase, signed
from tests.harness import ROOT, Web, Workers, wait_until
from tests.services import REDIS, count, purge_amqp, purge_redis, queued, run_sql

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))


def kc(database_url: str, broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url)
    return subprocess.run([KC_TASKS, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def post(web: Web, body: bytes) -> httpx.Response:
    return httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body), timeout=30)


def reconcile_result(worker_text: str) -> str:
    lines = [line for line in worker_text.splitlines() if "reconcile_payments[" in line and " succeeded " in line]
    return lines[0] if lines else ""


def test_a_kc_event_whose_message_redis_lost_is_sent_again_by_beats_reconciliation(
    database_url: str, workers: Workers, webs: Callable[..., Web]
) -> None:
    purge_redis()
    web = webs(database_url, REDIS)
    data = purchase()
    body = event(data)
    posted = post(web, body)
    assert posted.status_code == 202
    assert redis.Redis.from_url(REDIS).delete("purchases") == 1, "the message, lost before any worker took it"
    # KC_RECONCILE_INTERVAL (900 s) later, it still has no outcome.
    run_sql(database_url, "UPDATE payment_events SET received_at = now() - interval '1 hour'")
    worker = workers.start(database_url, REDIS)

    Celery(broker=REDIS).send_task("kc_tasks.reconcile_payments", queue="purchases")

    assert wait_until(lambda: count(database_url, "payment_id = %s", (data["payment_id"],)) == 1), worker.text()[-3000:]
    assert wait_until(lambda: bool(reconcile_result(worker.text())))
    assert f"'sent_again': ['kc {json.loads(body)['id']}']" in reconcile_result(worker.text())
    assert "sent again" in worker.text() and "its create_purchase has no outcome yet" in worker.text()
    lines = [line for line in worker.text().splitlines() if "create_purchase[" in line and "succeeded" in line]
    assert lines and posted.json()["task_id"] in lines[0], "under the task id the webhook answered"
    purge_redis()


def test_a_purged_dead_letter_makes_its_event_final(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """The webhook's task died permanently and its dead letter was purged by an operator: its
    event is final. Beat's reconciliation never sends it again (that would undo the purge) and the
    redaction reduces its body once KC_INBOX_BODY_DAYS have passed."""
    web = webs(database_url, rabbitmq_url)
    data = purchase()
    assert post(web, event(data)).status_code == 202
    purge_amqp(("purchases",))  # no worker ran: the task is gone, as if it had died
    letter = {
        "id": str(uuid.uuid4()),
        "task": "kc_tasks.create_purchase",
        "task_id": task_id_for(data["payment_id"]),
        "kwargs": data,
        "error_type": "DatabaseError",
        "error_message": "a failure no retry could fix",
        "reason": "permanent error",
        "attempts": 1,
        "died_at": "2026-01-01T00:00:00+00:00",
    }
    with Connection(rabbitmq_url) as conn:
        Queue("purchases.dlq", routing_key="purchases.dlq")(conn.default_channel).declare()
        Producer(conn.default_channel).publish(
            letter, routing_key="purchases.dlq", serializer="json", headers={"kc-dead-letter": 1}
        )
    purged = kc(database_url, rabbitmq_url, "dlq", "purge", "--yes")
    assert purged.returncode == 0 and "purged 1 dead letter(s)" in purged.stdout, purged.stderr
    run_sql(database_url, "UPDATE payment_events SET received_at = now() - interval '1 hour'")
    worker = workers.start(database_url, rabbitmq_url)

    Celery(broker=rabbitmq_url).send_task("kc_tasks.reconcile_payments", queue="purchases")

    assert wait_until(lambda: bool(reconcile_result(worker.text()))), worker.text()[-3000:]
    assert "'sent_again': []" in reconcile_result(worker.text())
    assert wait_until(lambda: queued(rabbitmq_url) == 0)
    assert count(database_url) == 0, "the purge stands"
    run_sql(database_url, "UPDATE payment_events SET received_at = now() - interval '40 days'")
    redacted = kc(database_url, rabbitmq_url, "inbox", "redact")
    assert redacted.stdout.strip() == "redacted 1 event(s)", redacted.stdout + redacted.stderr
    told = kc(database_url, rabbitmq_url, "payment", data["payment_id"]).stdout
    assert "kc_tasks.create_purchase dead letter purged" in told
