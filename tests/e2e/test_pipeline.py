"""A real worker turns tasks sent by name into exactly one purchase each, on both brokers."""

from __future__ import annotations

import random
import time
import uuid

from tests.conftest import run_sql
from tests.e2e.conftest import Client, Workers, count, purchase, wait_until


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
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    worker = workers.start(database_url, broker_url, concurrency=4)
    pairs, messages = _storm(pairs=40, repeats=3, rivals=10)
    client.send(messages)
    assert wait_until(lambda: count(database_url) >= 40 and len(_active_per_pair(database_url)) == 40)
    wait_until(lambda: run_sql(database_url, "SELECT count(*) FROM duplicate_payments")[0][0] == 10, timeout=20)
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
    assert wait_until(lambda: len(_active_per_pair(database_url)) == 40)
    wait_until(lambda: run_sql(database_url, "SELECT count(*) FROM duplicate_payments")[0][0] == 10, timeout=20)
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
    assert count(database_url) == 1500
    assert wait_until(
        lambda: run_sql(database_url, "SELECT count(*) FROM event_outbox WHERE published_at IS NULL")[0][0] == 0,
        timeout=30,
    ), "every purchase.created event is published"
    assert "Traceback" not in worker.text()
