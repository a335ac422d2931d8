"""PostgreSQL away, read-only, or failed over to its standby: the worker waits the outage out with
every task still in the broker, spends no retry, makes no dead letter, and makes everything once
PostgreSQL takes writes again, by itself. Real workers, a real web process, a real primary and
standby (tests/servers.py)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from celery import Celery

from tests.builders import event, purchase, signed
from tests.e2e.proxy import Proxy
from tests.harness import Client, Web, Workers, dead, wait_until
from tests.servers import Cluster
from tests.services import AMQP_VHOST, broker_idle, count, queued, rabbitmqctl, run_sql

WAITING = "this worker takes no task from purchases until it can"
RESUMED = "consuming purchases again"


def consumers(broker_url: str) -> int | None:
    """The consumers of `purchases` on RabbitMQ (None on Redis, which does not say)."""
    if broker_url.startswith("redis"):
        return None
    for line in rabbitmqctl("list_queues", "-p", AMQP_VHOST, "name", "consumers").splitlines():
        name, _, number = line.partition("\t")
        if name == "purchases":
            return int(number)
    return 0


def refund(payment_id: str) -> dict:
    return {"payment_id": payment_id, "reason": "refund"}


def no_retry_and_no_dead_letter(log: str) -> None:
    assert not re.search(r"retry \d+", log), "an outage spends no retry"
    assert "gave up" not in log and "dead-lettered" not in log, "an outage makes no dead letter"


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    """A way to PostgreSQL that the test can cut: refused connections, cut sessions."""
    way = Proxy("127.0.0.1", 5432)
    way.restore()
    yield way
    way.cut()


def test_an_outage_longer_than_the_retry_horizon_spends_no_retry_and_loses_nothing(
    database_url: str, workers: Workers, client: Client, broker_url: str, proxy: Proxy, webs: Callable[..., Web]
) -> None:
    """Purchases and refunds sent while PostgreSQL is unreachable, for longer than a task may be
    retried (KC_RETRY_HORIZON), wait in the broker, not in the worker, and are all made once it is
    back; the webhook answers 503 with Retry-After meanwhile."""
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    horizon = 3
    worker = workers.start(proxied, broker_url, KC_RETRY_HORIZON=str(horizon), KC_RETRY_BACKOFF_MAX="1")
    web = webs(proxied, broker_url)
    before = [purchase() for _ in range(4)]
    client.send(before)
    assert wait_until(lambda: count(database_url) == 4, timeout=30)
    assert wait_until(lambda: broker_idle(broker_url), timeout=30)

    proxy.cut()
    cut_at = time.monotonic()
    during = [purchase() for _ in range(20)]
    client.send(during[:10])
    for order in before[:2] + during[:2]:  # refunds of purchases made, and of ones still waiting
        client.app.send_task("kc_tasks.revoke_purchase", kwargs=refund(order["payment_id"]), queue="purchases")
    client.send(during[10:])
    assert wait_until(lambda: WAITING in worker.text(), timeout=30), worker.text()[-3000:]
    webhook_order = purchase()
    body = event(webhook_order)
    refused = httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body))
    assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()

    # Longer than any task may be retried: a retry spent on the outage would be dead-lettered now.
    wait_until(lambda: time.monotonic() - cut_at > horizon + 3, timeout=horizon + 10)
    assert wait_until(lambda: queued(broker_url) == 24, timeout=20), "every task waits in the broker"
    if consumers(broker_url) is not None:
        assert consumers(broker_url) == 0, "nothing is delivered to a worker that cannot write"
    assert dead(broker_url) == []

    proxy.restore()
    assert wait_until(lambda: count(database_url) == 24, timeout=60), worker.text()[-3000:]
    assert wait_until(lambda: count(database_url, "NOT is_active") == 4, timeout=30)
    assert wait_until(
        lambda: httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body)).status_code == 202
    )
    assert wait_until(lambda: count(database_url) == 25, timeout=30), "the webhook's retry is made"
    assert wait_until(lambda: broker_idle(broker_url), timeout=30)
    assert dead(broker_url) == []
    log = worker.text()
    assert RESUMED in log
    no_retry_and_no_dead_letter(log)
    # Exactly once: one row per payment, the refunded ones inactive.
    rows = dict(run_sql(database_url, "SELECT payment_id, is_active FROM student_course_purchases"))
    assert len(rows) == 25
    assert {p for p, active in rows.items() if not active} == {o["payment_id"] for o in before[:2] + during[:2]}


def test_a_read_only_window_spends_no_retry_and_loses_nothing(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """Every connection cut, then only a read-only server answering (what a worker meets while a
    standby is promoted, SQLSTATE 25006), staged on this test's own database: nothing is taken
    from the queue until PostgreSQL takes writes again, then everything is made once."""
    name = database_url.rsplit("/", 1)[1]
    client = Client(rabbitmq_url)
    worker = workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url)
    before = [purchase() for _ in range(3)]
    client.send(before)
    assert wait_until(lambda: count(database_url) == 3, timeout=30)

    def everyone_out() -> None:
        run_sql(
            database_url.rsplit("/", 1)[0] + "/postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )

    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    run_sql(admin, f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    everyone_out()
    try:
        during = [purchase() for _ in range(10)]
        client.send(during)
        client.app.send_task("kc_tasks.revoke_purchase", kwargs=refund(before[0]["payment_id"]), queue="purchases")
        assert wait_until(lambda: WAITING in worker.text(), timeout=30), worker.text()[-3000:]
        assert "read-only" in worker.text()
        body = event(purchase())
        refused = httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body))
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert wait_until(lambda: queued(rabbitmq_url) == 11 and consumers(rabbitmq_url) == 0, timeout=20)
        assert count(database_url) == 3
    finally:
        run_sql(admin, f"ALTER DATABASE {name} RESET default_transaction_read_only")
    assert wait_until(lambda: count(database_url) == 13, timeout=60), worker.text()[-3000:]
    assert wait_until(lambda: count(database_url, "NOT is_active") == 1, timeout=30)
    assert wait_until(lambda: broker_idle(rabbitmq_url), timeout=30)
    assert dead(rabbitmq_url) == []
    no_retry_and_no_dead_letter(worker.text())


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    servers = Cluster().start()
    yield servers
    servers.stop()


def test_a_failover_to_the_standby_keeps_every_acknowledged_task_once(
    cluster: Cluster, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """A primary and a synchronous standby; worker and web on the multi-host URL libpq's clients
    use. While purchases and refunds flow, the primary stops as in a crash and, a moment later,
    the standby is promoted: every task the broker acknowledged to its publisher takes effect
    exactly once, nothing is dead-lettered, and no operator does anything."""
    from kc_tasks.core.settings import normalize_database_url
    from kc_tasks.store.migrate import migrate

    url = cluster.url("kc")
    migrate(normalize_database_url(url))
    check = cluster.url("kc")  # whichever server is the primary, as the processes find it
    worker = workers.start(url, rabbitmq_url)
    web = webs(url, rabbitmq_url)
    client = Celery(broker=rabbitmq_url)
    sent_purchases: list[dict] = []
    sent_refunds: list[str] = []
    stop = threading.Event()
    problems: list[BaseException] = []

    def send() -> None:
        """Each call returns once RabbitMQ confirmed the message: acknowledged to its publisher."""
        try:
            with client.producer_or_acquire() as producer:
                while not stop.is_set():
                    order = purchase()
                    client.send_task("kc_tasks.create_purchase", kwargs=order, queue="purchases", producer=producer)
                    sent_purchases.append(order)
                    if len(sent_purchases) % 5 == 0:
                        refunded = sent_purchases[-3]["payment_id"]
                        client.send_task(
                            "kc_tasks.revoke_purchase", kwargs=refund(refunded), queue="purchases", producer=producer
                        )
                        sent_refunds.append(refunded)
                    time.sleep(0.02)
        except BaseException as exc:
            problems.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        assert wait_until(lambda: committed(check) >= 30, timeout=60), worker.text()[-3000:]
        cluster.primary.stop("immediate")
        assert wait_until(lambda: WAITING in worker.text(), timeout=30), worker.text()[-3000:]
        during = len(sent_purchases)
        assert wait_until(lambda: len(sent_purchases) >= during + 20, timeout=30), "tasks flow into the broker"
        cluster.standby.promote()
        assert wait_until(lambda: RESUMED in worker.text(), timeout=60), worker.text()[-3000:]
        after = len(sent_purchases)
        assert wait_until(lambda: len(sent_purchases) >= after + 20, timeout=30)
    finally:
        stop.set()
        sender.join(30)
    assert not problems, problems
    body = event(purchase())
    assert wait_until(
        lambda: httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body)).status_code == 202
    ), "the web takes webhooks again on the new primary"

    payments = {o["payment_id"] for o in sent_purchases}
    assert wait_until(lambda: committed(check) == len(payments) + 1, timeout=90), (
        committed(check),
        len(payments),
        worker.text()[-3000:],
    )
    assert wait_until(lambda: broker_idle(rabbitmq_url), timeout=30)
    rows = dict(run_sql(check, "SELECT payment_id, is_active FROM student_course_purchases"))
    assert payments <= set(rows), "every acknowledged purchase is made"
    assert {p for p, active in rows.items() if not active} == set(sent_refunds), "every refund applied, once"
    assert dead(rabbitmq_url) == []
    assert not cluster.standby.in_recovery()
    no_retry_and_no_dead_letter(worker.text())
    assert f"127.0.0.1:{cluster.standby.port}/kc takes writes again" in worker.text(), "the log names the new primary"


def committed(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return int(conn.execute("SELECT count(*) FROM student_course_purchases").fetchone()[0])  # type: ignore[index]
    except psycopg.OperationalError:
        return -1
