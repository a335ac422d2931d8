"""Every purchase that cannot be made lands in purchases.dlq, explained, and can be replayed."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

from celery import Celery
from kombu import Connection, Message, Producer, Queue

from kc_tasks.store import dead_letters
from tests.builders import purchase
from tests.harness import SHORT_LOCK_TIMEOUT, Client, Workers, dead, wait_until
from tests.harness import kc_on as kc
from tests.services import broker_idle, count, hold_pairs, run_sql

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))
FIELDS = {
    "id",
    "task",
    "task_id",
    "args",
    "kwargs",
    "error_type",
    "error_message",
    "traceback",
    "attempts",
    "died_at",
    "reason",
    "age_seconds",
}


def wait_for_message(queue: Queue, timeout: float = 5.0) -> Message:
    deadline = time.monotonic() + timeout
    while (message := queue.get(no_ack=False)) is None:
        assert time.monotonic() < deadline, f"nothing arrived in {queue.name}"
        time.sleep(0.1)
    return message


def test_permanent_and_exhausted_failures_are_kept_and_replayed_once(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    bad = [dict(purchase(), student_id="nope"), dict(purchase(), amount_cents=-5), dict(purchase(), surprise=1)]
    good = [purchase() for _ in range(12)]
    # Each good purchase meets an uncommitted one of its pair, held longer than the worker's lock
    # timeout: a transient failure of that task (55P03), retried, then given up.
    holder = hold_pairs(database_url, good)
    broken = workers.start(
        database_url.replace("postgres@", "postgres:pw-not-logged@"),  # trust auth: a password, unused
        broker_url,
        KC_MAX_RETRIES="1",
        KC_RETRY_BACKOFF_MAX="1",
        **SHORT_LOCK_TIMEOUT,
    )
    client.send(bad + good + good[:4])
    assert wait_until(lambda: len(dead(broker_url)) == len(bad) + 16, timeout=60), len(dead(broker_url))
    letters = dead(broker_url)
    assert all(set(letter) >= FIELDS for letter in letters)
    by_reason: dict[str, list[dict]] = {}
    for letter in letters:
        by_reason.setdefault(letter["reason"], []).append(letter)
    assert sorted(by_reason) == ["permanent error", "retries exhausted"]
    permanent = by_reason["permanent error"]
    assert {p["kwargs"]["payment_id"] for p in permanent} == {b["payment_id"] for b in bad}
    assert all(p["attempts"] == 1 and p["error_type"] == "InvalidPurchase" for p in permanent)
    assert any("student_id: must be a UUID string" in p["error_message"] for p in permanent)
    exhausted = by_reason["retries exhausted"]
    assert all(e["attempts"] == 2 and e["error_type"] == "DatabaseBusy" for e in exhausted)
    database = database_url.rsplit("/", 1)[1]
    assert all("Traceback" in e["traceback"] and f"127.0.0.1:5432/{database}" in e["error_message"] for e in exhausted)
    assert all("lock timeout" in e["error_message"] for e in exhausted)
    assert "pw-not-logged" not in broken.text() + json.dumps(letters)
    broken.stop()
    holder.rollback()
    holder.close()

    worker = workers.start(database_url, broker_url)
    replay = kc(broker_url, "dlq", "replay", "--all", database_url=database_url)
    assert replay.returncode == 0 and "replayed 19 dead letter(s) to purchases" in replay.stdout
    assert wait_until(lambda: count(database_url) == len(good), timeout=40)
    assert wait_until(lambda: len(dead(broker_url)) == 3, timeout=20)
    assert {d["reason"] for d in dead(broker_url)} == {"permanent error"}, "replayed bad ones came back, alone"
    assert count(database_url) == len(good), "every purchase exactly once, the duplicates included"
    client.app.send_task("kc_tasks.verify_purchase_index", queue="purchases")
    assert wait_until(lambda: "purchases.dlq holds 3 dead letter(s); inspect with kc-tasks dlq list" in worker.text())


def test_messages_the_worker_cannot_run_are_dead_lettered_and_work_goes_on(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    worker = workers.start(database_url, broker_url)
    good = [purchase() for _ in range(10)]
    app = client.app
    app.send_task(
        "kc_tasks.create_purchase", kwargs=purchase(payment="pay_pickled"), queue="purchases", serializer="pickle"
    )
    app.send_task("kc_tasks.no_such_task", kwargs=purchase(payment="pay_unknown"), queue="purchases")
    app.send_task("kc_tasks.create_purchase", args=list(purchase(payment="pay_positional").values()), queue="purchases")
    with Connection(broker_url) as conn:
        producer = Producer(conn.default_channel)
        producer.publish(
            b"{definitely not json",
            exchange="",
            routing_key="purchases",
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "kc_tasks.create_purchase", "id": "raw-invalid-json"},
        )
        producer.publish({"hello": "no task headers"}, exchange="", routing_key="purchases", serializer="json")
    client.send(good)
    assert wait_until(lambda: count(database_url) == len(good) and len(dead(broker_url)) == 5, timeout=40), (
        count(database_url),
        dead(broker_url),
    )
    letters = {(d["task"], d["reason"]) for d in dead(broker_url)}
    assert letters == {
        ("kc_tasks.create_purchase", "undecodable message"),
        ("kc_tasks.no_such_task", "unknown task"),
        ("kc_tasks.create_purchase", "permanent error"),
        (None, "invalid message"),
    }, letters
    pickled = next(d for d in dead(broker_url) if d["content_type"] == "application/x-python-serialize")
    assert pickled["raw_body"].startswith("base64:"), "shown, never unpickled"
    unknown = next(d for d in dead(broker_url) if d["reason"] == "unknown task")
    assert unknown["kwargs"]["payment_id"] == "pay_unknown"
    assert worker.process.poll() is None


def test_a_task_that_kills_its_worker_is_dead_lettered_after_the_limit(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    worker = workers.start(database_url, broker_url, args=("-I", "tests.e2e.poison"), KC_WORKER_LOST_LIMIT="3")
    task_id = client.app.send_task("tests.kill_my_worker", queue="purchases").id
    client.send([purchase() for _ in range(5)])
    assert wait_until(lambda: len(dead(broker_url)) == 1, timeout=60)
    [letter] = dead(broker_url)
    assert (letter["task"], letter["task_id"], letter["reason"], letter["attempts"]) == (
        "tests.kill_my_worker",
        task_id,
        "worker lost repeatedly",
        3,
    )
    assert "died 3 times" in letter["error_message"]
    assert worker.text().count("its worker process died") == 2
    assert wait_until(lambda: count(database_url) == 5)
    assert worker.process.poll() is None


def test_reading_the_dlq_keeps_its_order_and_loses_nothing(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    workers.start(database_url, broker_url)
    payments = [f"pay_bad_{i}" for i in range(6)]
    for n, payment in enumerate(payments, start=1):  # one by one, so that the DLQ order is known
        client.send([dict(purchase(payment=payment), currency="rupees")])
        assert wait_until(lambda n=n: len(dead(broker_url)) == n, timeout=20)
    first = [d["kwargs"]["payment_id"] for d in dead(broker_url)]
    assert first == payments
    assert [d["kwargs"]["payment_id"] for d in dead(broker_url)] == payments, "listing removes nothing"
    victim = dead(broker_url)[2]
    shown = kc(broker_url, "dlq", "show", victim["id"])
    assert shown.returncode == 0 and "currency: must be an ISO 4217 code" in shown.stdout
    assert "Traceback" in shown.stdout
    assert kc(broker_url, "dlq", "show", str(uuid.uuid4())).returncode == 1
    refused = kc(broker_url, "dlq", "purge")
    assert refused.returncode == 1 and "add --yes" in refused.stderr
    assert kc(broker_url, "dlq", "purge", "--older-than", "1h", "--yes").stdout.strip() == "nothing to purge"
    assert [d["kwargs"]["payment_id"] for d in dead(broker_url)] == payments
    assert kc(broker_url, "dlq", "purge", "--older-than", "soon").returncode == 2
    purged = kc(broker_url, "dlq", "purge", "--yes", database_url=database_url)
    assert purged.returncode == 0 and "purged 6 dead letter(s)" in purged.stdout
    assert dead(broker_url) == []
    recorded = run_sql(database_url, "SELECT payment_id FROM purged_dead_letters ORDER BY payment_id")
    assert recorded == [(payment,) for payment in payments], "each recorded: its task's outcome"


def test_replay_by_id_sends_back_the_named_letters_and_names_the_unknown(
    database_url: str, workers: Workers, broker_url: str
) -> None:
    """`kc-tasks dlq replay ID...`: a letter named by its id and one by its task id go back to
    purchases and are made; an id the DLQ does not hold is named and fails the command; the
    letter nobody named stays."""
    app = Celery(broker=broker_url)
    letters = [
        dead_letters.DeadLetter(
            "kc_tasks.create_purchase",
            str(uuid.uuid4()),
            purchase(),
            "DatabaseUnavailable",
            "PostgreSQL at 127.0.0.1:1 unreachable",
            "retries exhausted",
        )
        for _ in range(3)
    ]
    for letter in letters:
        dead_letters.publish(app, letter)
    unknown = str(uuid.uuid4())

    only_unknown = kc(broker_url, "dlq", "replay", unknown)
    assert only_unknown.returncode != 0
    assert f"no dead letter {unknown} in purchases.dlq" in only_unknown.stderr
    assert "replayed 0 dead letter(s)" in only_unknown.stdout
    assert [d["id"] for d in dead(broker_url)] == [x.id for x in letters], "nothing taken, the order kept"

    named = kc(broker_url, "dlq", "replay", letters[0].id, str(letters[2].task_id), unknown)
    assert named.returncode != 0, "an unknown id fails the command, after the others are replayed"
    assert f"no dead letter {unknown} in purchases.dlq" in named.stderr
    assert "replayed 2 dead letter(s) to purchases" in named.stdout
    assert [d["id"] for d in dead(broker_url)] == [letters[1].id], "the letter nobody named stays"

    workers.start(database_url, broker_url)
    made = [letters[0].kwargs, letters[2].kwargs]
    assert wait_until(lambda: count(database_url) == 2, timeout=40)
    assert wait_until(lambda: broker_idle(broker_url), timeout=40)
    stored = {p for (p,) in run_sql(database_url, "SELECT payment_id FROM student_course_purchases")}
    assert stored == {m["payment_id"] for m in made if m}
