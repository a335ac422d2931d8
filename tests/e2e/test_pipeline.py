"""A real worker turns tasks sent by name into exactly one purchase each, on both brokers."""

from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery
from celery.events.event import get_exchange
from kombu import Queue

from kc_tasks.core.sending import task_id_for
from tests.builders import purchase
from tests.harness import Client, Workers, wait_until
from tests.services import broker_idle, count, run_sql


def _storm(pairs: int, repeats: int, rivals: int) -> tuple[list[tuple[str, str]], list[dict]]:
    """Each pair: one payment delivered `repeats` times, back to back so that workers race;
    the first `rivals` pairs also get a second, different payment delivered twice."""
    rnd = random.Random(7)
    ps = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(pairs)]
    messages: list[dict] = []
    for i, (student, course) in enumerate(ps):
        messages += [purchase(student, course, payment=f"pay_main_{i}")] * repeats
        if i < rivals:
            messages += [purchase(student, course, payment=f"pay_rival_{i}")] * 2
    rnd.shuffle(messages)
    return ps, messages


def _active_per_pair(database_url: str) -> dict[tuple[str, str], int]:
    rows = run_sql(
        database_url,
        "SELECT student_id::text, course_id::text, count(*) FROM student_course_purchases "
        "WHERE is_active GROUP BY 1, 2",
    )
    return {(s, c): n for s, c, n in rows}


def test_duplicate_deliveries_make_one_purchase_per_pair(
    database_url: str, workers: Workers, client: Client, broker_url: str, db_route: Callable[[str], str]
) -> None:
    worker = workers.start(db_route(database_url), broker_url, concurrency=4)
    pairs, messages = _storm(pairs=40, repeats=3, rivals=10)
    client.send(messages)
    assert wait_until(lambda: broker_idle(broker_url)), "every delivery, the last duplicate included, was worked"
    active = _active_per_pair(database_url)
    assert set(active) == set(pairs)
    assert set(active.values()) == {1}, "a student holds one active purchase of a course"
    assert count(database_url) == 40, "rival payments make no second purchase"
    _assert_each_rival_pair_split(database_url, 10)
    assert "fallback path" not in worker.text(), "with the index, every insert is a single ON CONFLICT"


def _assert_each_rival_pair_split(database_url: str, rivals: int) -> None:
    """Whichever payment of a contested pair came first holds the course; the other is recorded
    as a duplicate payment (to be refunded), never as a second purchase."""
    held = {r[0] for r in run_sql(database_url, "SELECT payment_id FROM student_course_purchases")}
    dupes = {r[0] for r in run_sql(database_url, "SELECT payment_id FROM duplicate_payments")}
    assert len(dupes) == rivals
    for i in range(rivals):
        main, rival = f"pay_main_{i}", f"pay_rival_{i}"
        assert (main in held and rival in dupes) or (rival in held and main in dupes), (i, held, dupes)


def test_without_the_index_the_fallback_still_makes_one_purchase_per_pair(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    run_sql(database_url, "DROP INDEX unique_active_purchase")
    worker = workers.start(database_url, broker_url, concurrency=4)
    assert (
        "unique_active_purchase index not usable: it does not exist - will use fallback method; "
        "fix: kc-tasks ensure-index" in worker.text()
    )
    _pairs, messages = _storm(pairs=40, repeats=4, rivals=10)
    client.send(messages)
    assert wait_until(lambda: broker_idle(broker_url)), "every delivery, the last duplicate included, was worked"
    active = _active_per_pair(database_url)
    assert set(active.values()) == {1}
    assert count(database_url) == 40
    _assert_each_rival_pair_split(database_url, 10)
    assert "current transaction is aborted" not in worker.text()
    assert "no unique or exclusion constraint" not in worker.text()


def test_a_threads_pool_worker_drains_a_storm_with_task_events_on(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    """`-P threads`: task events are on (Flower), and eight threads send them at once. With a
    confirm awaited after each event, one thread read another's confirm and both waited
    forever: the worker stopped within a few hundred tasks."""
    worker = workers.start(database_url, broker_url, concurrency=8, args=("-P", "threads"))
    payments = [purchase() for _ in range(1500)]
    client.send(payments + payments[:300])  # 300 of them delivered twice
    made, progress = 0, time.monotonic()
    while made < 1500:
        assert time.monotonic() - progress < 20, f"the worker stopped: {made} of 1500 purchases made in 20 s"
        time.sleep(0.25)
        if (now := count(database_url)) > made:
            made, progress = now, time.monotonic()
    assert wait_until(lambda: broker_idle(broker_url)), "the 300 second deliveries were worked too"
    assert count(database_url) == 1500
    assert wait_until(
        lambda: run_sql(database_url, "SELECT count(*) FROM event_outbox WHERE published_at IS NULL")[0][0] == 0,
        timeout=30,
    ), "every purchase.created event is published"
    assert "Traceback" not in worker.text()


class TaskEvents:
    """What Flower sees: the task-succeeded and task-failed events of every task, by id."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery(broker=broker_url)
        self.results: dict[str, dict] = {}
        self.failed: set[str] = set()
        self.receiver: Any = None
        self.listening = threading.Event()
        threading.Thread(target=self._listen, daemon=True).start()
        # Listening once an event sent now comes back: from then on no worker's event is missed.
        with self.app.events.default_dispatcher(hostname="kc-test-probe") as dispatcher:
            deadline = time.monotonic() + 10
            while not self.listening.is_set():
                assert time.monotonic() < deadline, "the event receiver never heard its own probe"
                dispatcher.send("kc-test-probe")
                self.listening.wait(0.2)

    def _listen(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(
                connection,
                handlers={
                    "task-succeeded": lambda e: self.results.__setitem__(e["uuid"], ast.literal_eval(e["result"])),
                    "task-failed": lambda e: self.failed.add(e["uuid"]),
                    "kc-test-probe": lambda e: self.listening.set(),
                },
            )
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        self.receiver.should_stop = True


def test_queued_deliveries_are_inserted_together_and_each_reports_its_own_outcome(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    """A queue that waited for the worker drains in batches, one statement per batch; each
    delivery still ends alone: its own result, exactly one `created: true` per payment, its
    own failure for a bad one, and a rival payment recorded for a refund."""
    held = purchase()
    client.send([held])
    events = TaskEvents(broker_url)
    try:
        first = workers.start(database_url, broker_url, concurrency=1)
        assert wait_until(lambda: count(database_url) == 1)
        first.stop()
        new = [purchase() for _ in range(300)]
        rival = purchase(held["student_id"], held["course_id"])
        bad = [dict(purchase(), currency="rupees") for _ in range(5)]
        sent = [*new, *new, held, rival, *bad]  # every new payment delivered twice
        random.Random(11).shuffle(sent)
        ids = client.send(sent)
        worker = workers.start(database_url, broker_url, concurrency=2)
        assert wait_until(lambda: len(events.results) + len(events.failed) >= len(sent) + 1, timeout=90)
    finally:
        events.stop()
    assert count(database_url) == 301
    stored = dict(run_sql(database_url, "SELECT payment_id, id::text FROM student_course_purchases"))
    statements = run_sql(database_url, "SELECT count(DISTINCT created_at) FROM student_course_purchases")[0][0]
    assert statements <= 225, f"300 new purchases in {statements} transactions: they were not batched"
    outcomes: dict[str, list[dict]] = {}
    for task_id, kwargs in zip(ids, sent, strict=True):
        if kwargs["currency"] == "rupees":
            assert task_id in events.failed and task_id not in events.results
        else:
            outcomes.setdefault(kwargs["payment_id"], []).append(events.results[task_id])
    for p in new:
        assert sorted(r["created"] for r in outcomes[p["payment_id"]]) == [False, True], p["payment_id"]
        assert {r["purchase_id"] for r in outcomes[p["payment_id"]]} == {stored[p["payment_id"]]}
    assert outcomes[held["payment_id"]] == [{"purchase_id": stored[held["payment_id"]], "created": False}]
    assert outcomes[rival["payment_id"]] == [{"purchase_id": stored[held["payment_id"]], "created": False}]
    assert run_sql(database_url, "SELECT payment_id FROM duplicate_payments") == [(rival["payment_id"],)]
    assert "Traceback" not in worker.text()


class EventMessages:
    """The task events the workers send, as messages: how many messages carried how many
    events, and when each task's task-succeeded arrived."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery(broker=broker_url)
        self.messages = 0
        self.events = 0
        self.succeeded: dict[str, float] = {}
        self.ready = threading.Event()
        self.stopped = False
        threading.Thread(target=self._listen, daemon=True).start()
        assert self.ready.wait(10)

    def _on_message(self, body: Any, message: Any) -> None:
        events = body if isinstance(body, list) else [body]
        self.messages += 1
        self.events += len(events)
        for event in events:
            if event["type"] == "task-succeeded":
                self.succeeded[event["uuid"]] = time.monotonic()
        message.ack()

    def _listen(self) -> None:
        with self.app.connection_for_read() as connection:
            exchange = get_exchange(connection, name="celeryev")
            queue = Queue(f"test-events-{uuid.uuid4().hex}", exchange, routing_key="task.#", auto_delete=True)
            with connection.Consumer(queue, callbacks=[self._on_message], accept=["json"]):
                self.ready.set()
                while not self.stopped:
                    try:
                        connection.drain_events(timeout=0.5)
                    except TimeoutError:
                        pass


def test_task_events_are_gathered_into_few_messages_and_a_lone_tasks_events_are_not_held(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    """Flower's feed costs the worker and the broker one message per interval, not one or more
    per task; every task's events still arrive, a lone task's within moments."""
    feed = EventMessages(broker_url)
    try:
        workers.start(database_url, broker_url, concurrency=2)
        ids = client.send([purchase() for _ in range(300)])
        assert wait_until(lambda: set(ids) <= set(feed.succeeded), timeout=60)
        assert feed.events >= 3 * 300, "task-received, task-started and task-succeeded of each"
        assert feed.messages <= feed.events / 4, f"{feed.events} events in {feed.messages} messages"

        time.sleep(0.5)
        sent = time.monotonic()
        (lone,) = client.send([purchase()])
        assert wait_until(lambda: lone in feed.succeeded, timeout=10)
        assert feed.succeeded[lone] - sent < 1.0, "a lone task's events waited for others to fill a message"
    finally:
        feed.stopped = True


def test_kc_tasks_enqueue_twice_for_one_payment_is_one_task_and_one_purchase(
    database_url: str, workers: Workers, rabbitmq_url: str
) -> None:
    """An operator who grants a payment by hand, twice, or beside its webhook, sends one task:
    the same task id each time, the one the webhook gives that payment."""
    kc_tasks = str(Path(sys.executable).with_name("kc-tasks"))
    worker = workers.start(database_url, rabbitmq_url)
    grant = purchase(payment=f"pay_cli_{uuid.uuid4().hex}")
    args = ["enqueue", "--payment", grant["payment_id"], "--student", grant["student_id"], "--course"]
    args += [grant["course_id"], "--amount", str(grant["amount_cents"]), "--currency", grant["currency"]]
    env = dict(os.environ, DATABASE_URL=database_url, CELERY_BROKER_URL=rabbitmq_url)
    sent = [subprocess.run([kc_tasks, *args], env=env, capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [result.returncode for result in sent] == [0, 0], [result.stderr for result in sent]
    task_ids = [result.stdout.strip() for result in sent]
    assert task_ids == [task_id_for(grant["payment_id"])] * 2
    assert wait_until(lambda: worker.text().count(f"create_purchase[{task_ids[0]}] succeeded") == 2)
    assert count(database_url, "payment_id = %s", (grant["payment_id"],)) == 1
