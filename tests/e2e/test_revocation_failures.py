"""revoke_purchase fails as create_purchase does: a bad one is dead-lettered at once, one whose
lock stays held is retried until its retries are used up, then dead-lettered, and a replay
carries it out once the lock is gone."""

from __future__ import annotations

import psycopg

from tests.builders import purchase
from tests.harness import SHORT_LOCK_TIMEOUT, Client, Workers, dead, wait_until
from tests.harness import kc_on as kc
from tests.services import broker_idle, count


def test_revocations_are_dead_lettered_and_replayed(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    worker = workers.start(database_url, broker_url)
    order = purchase()
    client.send([order])
    assert wait_until(lambda: count(database_url, "is_active") == 1, timeout=30)
    # Acknowledged, not only committed: stopped before its ack, the purchase would be delivered
    # again, to the worker below, and time out on the lock.
    assert wait_until(lambda: broker_idle(broker_url), timeout=30)
    worker.stop()

    # The payment's row stays locked: each attempt of the revocation times out on it (55P03).
    holder = psycopg.connect(database_url)
    holder.execute("SELECT 1 FROM payments WHERE payment_id = %s FOR UPDATE", (order["payment_id"],))
    workers.start(database_url, broker_url, KC_MAX_RETRIES="1", KC_RETRY_BACKOFF_MAX="1", **SHORT_LOCK_TIMEOUT)
    revoke = {"payment_id": order["payment_id"], "reason": "refund"}
    for kwargs in (revoke, {"payment_id": order["payment_id"], "reason": ""}):
        client.app.send_task("kc_tasks.revoke_purchase", kwargs=kwargs, queue="purchases")
    assert wait_until(lambda: len(dead(broker_url)) == 2, timeout=60), dead(broker_url)
    by_error = {letter["error_type"]: letter for letter in dead(broker_url)}
    assert (
        by_error["InvalidRevocation"]["attempts"] == 1 and by_error["InvalidRevocation"]["reason"] == "permanent error"
    )
    assert by_error["DatabaseBusy"]["attempts"] == 2 and by_error["DatabaseBusy"]["reason"] == "retries exhausted"
    assert "lock timeout" in by_error["DatabaseBusy"]["error_message"]
    assert all(letter["task"] == "kc_tasks.revoke_purchase" for letter in dead(broker_url))
    assert count(database_url, "is_active") == 1, "nothing revoked meanwhile"
    workers.stop_all()
    holder.rollback()
    holder.close()

    workers.start(database_url, broker_url)
    replay = kc(broker_url, "dlq", "replay", "--all", database_url=database_url)
    assert replay.returncode == 0 and "replayed 2 dead letter(s) to purchases" in replay.stdout
    assert wait_until(lambda: count(database_url, "NOT is_active") == 1, timeout=40)
    assert wait_until(lambda: [d["error_type"] for d in dead(broker_url)] == ["InvalidRevocation"], timeout=30)


def test_a_transient_failure_is_retried_until_the_horizon_then_dead_lettered(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    """KC_RETRY_HORIZON bounds retries by time, from the task's first attempt (a header carries
    it from retry to retry): with no KC_MAX_RETRIES, a purchase whose pair stays locked is retried
    with backoff, each retry's log line naming the horizon, then dead-lettered."""
    from tests.services import hold_pairs

    order = purchase()
    holder = hold_pairs(database_url, [order])
    try:
        worker = workers.start(
            database_url, broker_url, KC_RETRY_HORIZON="4", KC_RETRY_BACKOFF_MAX="1", **SHORT_LOCK_TIMEOUT
        )
        [task_id] = client.send([order])
        assert wait_until(lambda: len(dead(broker_url)) == 1, timeout=60), worker.text()[-3000:]
    finally:
        holder.rollback()
        holder.close()
    [letter] = dead(broker_url)
    assert letter["task_id"] == task_id and letter["reason"] == "retries exhausted"
    assert letter["error_type"] == "DatabaseBusy"
    assert letter["attempts"] >= 2, "retried: no count limits it (KC_MAX_RETRIES is unset), the horizon ended it"
    retried = [line for line in worker.text().splitlines() if f"{task_id} payment" in line and " retry " in line]
    assert len(retried) == letter["attempts"] - 1
    assert all("retried until 4 s after the first attempt" in line for line in retried)
    assert count(database_url) == 0
