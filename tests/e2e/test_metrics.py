"""The contract's metrics as an operator reads them: a real Prometheus scraping a real web
process (two uvicorn workers) and a real worker (several pool processes), asked in PromQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.builders import event, purchase, signed
from tests.e2e.proxy import Proxy
from tests.harness import ROOT, Client, Web, Workers, free_port, stop_group, wait_until
from tests.services import broker_idle, count, queued

RULES = ROOT / "docker" / "prometheus" / "kc_tasks.rules.yml"


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def value(self, query: str) -> float | None:
        """The query's one answer now, or None while it has none."""
        answer = httpx.get(self.base + "/api/v1/query", params={"query": query}, timeout=5).json()
        results = answer["data"]["result"]
        return float(results[0]["value"][1]) if results else None

    def settles_at(self, query: str, expected: float, timeout: float = 30) -> bool:
        return wait_until(lambda: self.value(query) == expected, timeout=timeout, interval=0.5)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, int]], Prometheus]]:
    """Debian's prometheus (make test installs it), scraping the given jobs every second."""
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed: make prometheus"
    started: list[subprocess.Popen] = []

    def start(jobs: dict[str, int]) -> Prometheus:
        scrapes = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            for job, port in jobs.items()
        )
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\nscrape_configs:\n{scrapes}"
        )
        port = free_port()
        with (tmp_path / "prometheus.log").open("w") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(base + "/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(ready, timeout=30), (tmp_path / "prometheus.log").read_text()[-3000:]
        return Prometheus(base)

    yield start
    for process in started:
        stop_group(process)


def test_prometheus_sees_purchases_refunds_bad_signatures_and_dead_letters(
    database_url: str,
    workers: Workers,
    rabbitmq_url: str,
    webs: Callable[..., Web],
    prometheus: Callable[[dict[str, int]], Prometheus],
) -> None:
    web_port, worker_port = free_port(), free_port()
    workers.start(database_url, rabbitmq_url, concurrency=3, KC_WORKER_METRICS_PORT=str(worker_port))
    web = webs(database_url, rabbitmq_url, KC_WEB_METRICS_PORT=str(web_port), WEB_CONCURRENCY="2")
    prom = prometheus({"kc-web": web_port, "kc-worker": worker_port})
    # Scraped from 0 before anything happens, as in a service that has been running: an
    # increase() sees each counter's first event.
    assert prom.settles_at('sum(up{job=~"kc-web|kc-worker"})', 2)
    assert prom.settles_at("count(kc_dead_letters_total)", 6)

    paid = [purchase() for _ in range(12)]
    for data in paid:
        body = event(data)
        assert httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body)).status_code == 202
    direct = [purchase() for _ in range(3)]
    client = Client(rabbitmq_url)
    client.send(direct)
    client.send([{**purchase(), "amount_cents": -1}])  # a permanent error: a dead letter
    for data in paid[:2]:
        refund = event({"payment_id": data["payment_id"]}, type_="payment.refunded")
        assert httpx.post(web.base + "/webhooks/payments", content=refund, headers=signed(refund)).status_code == 202
    for _ in range(3):
        body = event(purchase())
        forged = httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body, "x" * 40))
        assert forged.status_code == 401
    repeat = event(paid[5])
    httpx.post(web.base + "/webhooks/payments", content=repeat, headers=signed(repeat))  # a new event, same payment
    assert wait_until(lambda: count(database_url, "NOT is_active") == 2, timeout=30)
    assert wait_until(lambda: broker_idle(rabbitmq_url))
    assert count(database_url) == 15

    assert prom.settles_at('sum(kc_purchases_total{outcome="created"})', 15), "created purchases: those sent"
    assert prom.settles_at('sum(kc_purchases_total{outcome="repeated"})', 1), "the payment sent twice"
    assert prom.settles_at("sum(kc_payment_to_access_seconds_count)", 15), "one observation per purchase made"
    assert prom.value('sum(kc_payment_to_access_seconds_count{provider="kc"})') == 12
    assert prom.value('sum(kc_payment_to_access_seconds_count{provider="task"})') == 3
    assert prom.value("histogram_quantile(0.5, sum by (le) (kc_payment_to_access_seconds_bucket))") < 10
    assert prom.settles_at('sum(kc_webhook_events_total{outcome="rejected"})', 3), "rejected: the bad signatures"
    assert prom.value('sum(kc_webhook_events_total{provider="kc", outcome="enqueued"})') == 15
    assert prom.settles_at('sum(kc_revocations_total{reason="refund"})', 2)
    assert prom.settles_at('sum(kc_dead_letters_total{task="kc_tasks.create_purchase", kind="permanent"})', 1)
    assert prom.value("kc_index_usable") == 1
    assert prom.value("kc_inbox_stuck_events") == 0
    assert prom.settles_at('count(ALERTS{alertname="KcDeadLettersWaiting"})', 1), "the dead letter is an alert"
    assert httpx.get(web.base + "/metrics").status_code == 404, "the public port serves no metrics"


def scrape(port: int) -> float | None:
    """kc_purchases_total{outcome="created"} as the worker's /metrics says it now."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    answer.raise_for_status()
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == "kc_purchases_total" and sample.labels.get("outcome") == "created":
                return sample.value
    return None


def test_counters_never_go_backwards_while_pool_processes_are_replaced(
    database_url: str, workers: Workers, rabbitmq_url: str
) -> None:
    port = free_port()
    worker = workers.start(
        database_url,
        rabbitmq_url,
        concurrency=2,
        args=("--max-tasks-per-child", "3"),
        KC_WORKER_METRICS_PORT=str(port),
        KC_BATCHING="off",
    )
    first_children = set(worker.child_pids())
    folder = next(Path(tempfile.gettempdir()).glob(f"kc-worker-metrics-{os.getuid()}-{worker.process.pid}-*"))
    # What a pool process killed between creating its file and sizing it leaves behind.
    (folder / "counter_999999999.db").touch()
    seen: list[float] = []
    failed: list[BaseException] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                value = scrape(port)
            except Exception as exc:  # reported below: every scrape must answer
                failed.append(exc)
                return
            if value is not None:
                seen.append(value)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    Client(rabbitmq_url).send([purchase() for _ in range(60)])
    assert wait_until(lambda: count(database_url) == 60, timeout=60)
    assert wait_until(lambda: scrape(port) == 60, timeout=10), "every purchase counted, dead processes' too"
    stop.set()
    watcher.join(5)

    assert failed == [], "every scrape answered, while processes came and went"
    assert not first_children & set(worker.child_pids()), "the pool processes were replaced"
    assert seen == sorted(seen), "kc_purchases_total never went backwards in a scrape"
    assert len(set(seen)) > 3, "the scrapes saw it grow"
    worker.stop()
    assert not folder.exists(), "the worker removes its metrics folder when it stops"


def test_an_outage_the_stalled_queue_and_the_periodic_tasks_are_seen(
    database_url: str,
    workers: Workers,
    rabbitmq_url: str,
    webs: Callable[..., Web],
    prometheus: Callable[[dict[str, int]], Prometheus],
) -> None:
    """PostgreSQL cut away: both processes' kc_database_up goes to 0, the worker stops consuming,
    beat's heartbeat waits in the queue (its send time stays behind); back, everything returns to
    1 and the heartbeat sent during the outage is taken. A periodic task's success is noted."""
    import kc_tasks.worker.tasks  # noqa: F401  (its before_task_publish hook stamps the heartbeat's send time)
    from kc_tasks.core.names import QUEUE_HEARTBEAT

    proxy = Proxy("127.0.0.1", 5432)
    proxy.restore()
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    web_port, worker_port = free_port(), free_port()
    try:
        workers.start(proxied, rabbitmq_url, KC_WORKER_METRICS_PORT=str(worker_port))
        webs(proxied, rabbitmq_url, KC_WEB_METRICS_PORT=str(web_port))
        prom = prometheus({"kc-web": web_port, "kc-worker": worker_port})
        client = Client(rabbitmq_url)
        assert prom.settles_at("sum(kc_database_up)", 2)
        assert prom.settles_at('sum(kc_worker_consuming{queue="purchases"})', 1)
        assert prom.value("count(kc_periodic_last_success_timestamp_seconds)") == 6, "each of beat's tasks"
        assert prom.value('kc_periodic_interval_seconds{task="kc_tasks.verify_purchase_index"}') == 300
        started = prom.value('kc_periodic_last_success_timestamp_seconds{task="kc_tasks.verify_purchase_index"}')
        client.app.send_task("kc_tasks.verify_purchase_index", queue="purchases")
        assert wait_until(
            lambda: (
                prom.value('kc_periodic_last_success_timestamp_seconds{task="kc_tasks.verify_purchase_index"}')
                > started
            ),
            timeout=30,
        )
        client.app.send_task(QUEUE_HEARTBEAT, queue="purchases")
        first = time.time()
        assert wait_until(lambda: (prom.value("max(kc_queue_heartbeat_timestamp_seconds)") or 0) >= first - 1, 30)

        proxy.cut()
        client.send([purchase()])  # the worker meets the outage and stops consuming
        assert prom.settles_at("sum(kc_database_up)", 0)
        assert prom.settles_at('sum(kc_worker_consuming{queue="purchases"})', 0)
        during = time.time()
        client.app.send_task(QUEUE_HEARTBEAT, queue="purchases")
        assert wait_until(lambda: queued(rabbitmq_url) == 2, timeout=10), "the purchase and the heartbeat wait"
        waiting = time.time()
        # A scrape made after both were in the queue still shows the heartbeat sent before the cut.
        assert wait_until(lambda: prom.value("timestamp(max(kc_queue_heartbeat_timestamp_seconds))") > waiting + 1, 30)
        assert prom.value("max(kc_queue_heartbeat_timestamp_seconds)") < during, "it waits in the queue"

        proxy.restore()
        assert prom.settles_at("sum(kc_database_up)", 2)
        assert prom.settles_at('sum(kc_worker_consuming{queue="purchases"})', 1)
        assert wait_until(lambda: prom.value("max(kc_queue_heartbeat_timestamp_seconds)") >= during - 1, timeout=30)
        assert wait_until(lambda: count(database_url) == 1, timeout=30)
    finally:
        proxy.cut()
