"""KC_BATCHING=off: a real worker makes each purchase alone, by Celery's own path, as it would
if an upgrade of Celery broke the batch insert (kc_tasks/worker/batching.py)."""

from __future__ import annotations

from tests.builders import purchase
from tests.harness import Client, Workers, wait_until
from tests.services import count, run_sql


def test_with_batching_off_a_queue_that_waited_is_drained_one_purchase_at_a_time(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    orders = [purchase() for _ in range(120)]
    client.send([*orders, *orders[:20]])  # waiting for the worker, as a batch would; some twice
    worker = workers.start(database_url, broker_url, concurrency=2, KC_BATCHING="off")
    assert wait_until(lambda: count(database_url) == 120, timeout=90), "every paid order becomes a purchase"
    # xmin: the transaction that inserted the row; a batch inserts its rows in one.
    transactions = run_sql(database_url, "SELECT count(DISTINCT xmin::text) FROM student_course_purchases")[0][0]
    assert transactions == 120, f"120 purchases in {transactions} transactions: some were inserted together"
    assert "batching off (KC_BATCHING=off)" in worker.text(), "the operator sees the switch at start-up"


def test_with_batching_on_the_same_queue_is_inserted_together(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    """The measure above tells the two apart."""
    orders = [purchase() for _ in range(120)]
    client.send(orders)
    worker = workers.start(database_url, broker_url, concurrency=2)
    assert wait_until(lambda: count(database_url) == 120, timeout=90)
    transactions = run_sql(database_url, "SELECT count(DISTINCT xmin::text) FROM student_course_purchases")[0][0]
    assert transactions < 100, f"120 purchases in {transactions} transactions: they were not batched"
    assert "batching off" not in worker.text()
