"""A refund that lands while the worker makes the payment's purchase, then the worker dies
or loses its database connection right after the purchase's commit. The purchase must end
inactive without any further step of that worker: a redelivery finds the purchase and
changes nothing, and nothing else would make it inactive.

Each state is reached by construction: the purchase's INSERT waits for an uncommitted
purchase of the same pair that the test holds; the refund is sent while it waits; a second
test transaction holds the refund's row, so that any step the worker would take after its
commit to look for the refund waits there; the kill or the cut comes once the purchase is
seen committed."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
import pytest

from kc_tasks.core.payload import RevocationKwargs
from kc_tasks.core.settings import normalize_database_url
from kc_tasks.store import db
from kc_tasks.worker.revocations import revoke
from tests.builders import purchase
from tests.harness import Client, Worker, Workers, wait_until
from tests.services import broker_idle, count, hold_pairs, run_sql


def kc_backends(database_url: str, where: str) -> list[int]:
    rows = run_sql(
        database_url,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'kc_tasks' "
        f"AND datname = current_database() AND {where}",
    )
    return [r[0] for r in rows]


def refund_in_background(database_url: str, payment_id: str) -> tuple[Future, Callable[[], None]]:
    engine = db.make_engine(normalize_database_url(database_url))
    pool = ThreadPoolExecutor(1)
    future = pool.submit(revoke, engine, RevocationKwargs(payment_id=payment_id, reason="refund", refund_id="rfnd_1"))

    def close() -> None:
        pool.shutdown()
        engine.dispose()

    return future, close


def kill_after_commit(worker: Worker, broker_url: str) -> None:
    """The worker dies. On Redis an unacknowledged message comes back only after the
    visibility timeout (over an hour), so there the pool process dies and the main process
    requeues its task (reject_on_worker_lost)."""
    if broker_url.startswith("redis"):
        for pid in worker.child_pids():
            os.kill(pid, signal.SIGKILL)
    else:
        worker.kill()


@pytest.mark.parametrize("after_commit", ["worker killed", "connection cut"])
def test_a_refund_during_the_purchase_keeps_it_inactive_whatever_happens_after_the_commit(
    after_commit: str, database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    order = purchase()
    pid = order["payment_id"]
    pair = hold_pairs(database_url, [order])
    refund_row = psycopg.connect(database_url)
    close = None
    try:
        worker = workers.start(database_url, broker_url, concurrency=1, KC_RETRY_BACKOFF_MAX="1")
        client.send([order])
        assert wait_until(lambda: len(kc_backends(database_url, "wait_event_type = 'Lock'")) == 1, timeout=30), (
            worker.text()[-3000:]
        )
        (inserting,) = kc_backends(database_url, "wait_event_type = 'Lock'")
        refunded, close = refund_in_background(database_url, pid)
        assert wait_until(
            lambda: refunded.done() or len(kc_backends(database_url, "wait_event_type = 'Lock'")) == 2, timeout=30
        )
        # Any step after the commit that looks for the refund waits on this row lock.
        refund_row.execute("SELECT 1 FROM revocations WHERE payment_id = %s FOR UPDATE", (pid,))
        pair.rollback()
        committed = wait_until(lambda: count(database_url, "payment_id = %s", (pid,)) == 1, timeout=30)
        assert committed, worker.text()[-3000:]
        outcome = refunded.result(timeout=30)
        # What the worker still does for this payment now waits on the refund's row: it dies
        # with the worker (as a crashed host's connections would), or its connection is cut.
        in_flight = [inserting, *kc_backends(database_url, "wait_event_type = 'Lock'")]
        if after_commit == "worker killed":
            kill_after_commit(worker, broker_url)
        run_sql(database_url, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (in_flight,))
        if after_commit == "worker killed" and not broker_url.startswith("redis"):
            worker = workers.start(database_url, broker_url, concurrency=1, KC_RETRY_BACKOFF_MAX="1")
        refund_row.rollback()
        assert wait_until(lambda: broker_idle(broker_url), timeout=60), worker.text()[-3000:]
    finally:
        pair.close()
        refund_row.close()
        if close is not None:
            close()
    assert outcome.revoked
    assert run_sql(database_url, "SELECT is_active FROM student_course_purchases WHERE payment_id = %s", (pid,)) == [
        (False,)
    ], "a refunded payment keeps no active purchase"
    assert run_sql(
        database_url,
        "SELECT count(*) FROM event_outbox WHERE type = 'purchase.revoked' AND data->>'payment_id' = %s",
        (pid,),
    ) == [(1,)]
