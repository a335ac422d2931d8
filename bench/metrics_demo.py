"""A few minutes of traffic for the metrics, and the screenshot of docs/metrics.md.

    .venv/bin/python bench/metrics_demo.py [--seconds 180] [--shot docs/metrics.png]

Real services on this machine: a database and a RabbitMQ vhost of its own (removed at the
end), the web process (two uvicorn workers) and a worker with their metrics ports, and Debian's
Prometheus (make prometheus) scraping them every 2 s with docker/prometheus/kc_tasks.rules.yml.
The traffic: signed payments through POST /webhooks/payments at a varying rate, some delivered
twice, refunds of some, a burst of forged signatures, and a few invalid tasks sent directly
(dead letters). Then Debian's Chromium, driven by Playwright, photographs Prometheus's graphs.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx
import psycopg
from celery import Celery
from needs import CHROMIUM, PLAYWRIGHT, PROMETHEUS, RABBITMQCTL, check, postgresql, rabbitmq

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = os.environ.get("KC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
RUN_ID = uuid.uuid4().hex[:8]
DB_URL = f"{PG}/kc_demo_{RUN_ID}"
VHOST = f"kc_demo_{RUN_ID}"
AMQP = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
SECRET = "demo-webhook-secret-0123456789abcdef0123"
PANELS = [
    ("sum by (outcome) (rate(kc_webhook_events_total[30s]))", "webhooks/s by outcome"),
    ("sum by (outcome) (rate(kc_purchases_total[30s]))", "purchases/s by outcome"),
    (
        "histogram_quantile(0.95, sum by (le) (rate(kc_payment_to_access_seconds_bucket[30s])))",
        "payment to access, p95 (s)",
    ),
    ("sum by (kind) (kc_dead_letters_total) or sum(kc_revocations_total)", "dead letters and revocations"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    t = int(time.time())
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-KC-Signature": f"t={t},v1={digest}"}


def payment_event(payment: str, type_: str = "payment.succeeded") -> bytes:
    data: dict[str, object] = {"payment_id": payment}
    if type_ == "payment.succeeded":
        data.update(student_id=str(uuid.uuid4()), course_id=str(uuid.uuid4()), amount_cents=4999, currency="INR")
    return json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": type_, "data": data}).encode()


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer")


def traffic(base: str, seconds: int) -> None:
    rnd = random.Random(23)
    client = Celery(broker=AMQP)
    paid: list[str] = []
    start_at = time.monotonic()
    with httpx.Client(base_url=base, timeout=10) as http:
        while (elapsed := time.monotonic() - start_at) < seconds:
            # A rate that rises and falls, a forged burst at 40 % of the run, dead letters at 70 %.
            rate = 20 + 60 * abs(((elapsed / seconds) * 4) % 2 - 1)
            for _ in range(int(rate)):
                payment = f"pay_demo_{uuid.uuid4().hex[:12]}"
                body = payment_event(payment)
                http.post("/webhooks/payments", content=body, headers=signed(body))
                paid.append(payment)
                if rnd.random() < 0.05:  # the provider delivers it again
                    again = payment_event(payment)
                    http.post("/webhooks/payments", content=again, headers=signed(again))
                if rnd.random() < 0.03:
                    refund = payment_event(rnd.choice(paid), "payment.refunded")
                    http.post("/webhooks/payments", content=refund, headers=signed(refund))
            if 0.4 * seconds <= elapsed < 0.4 * seconds + 10:
                for _ in range(8):
                    forged = payment_event(f"pay_forged_{uuid.uuid4().hex[:8]}")
                    http.post("/webhooks/payments", content=forged, headers=signed(forged, "x" * 40))
            if 0.7 * seconds <= elapsed < 0.7 * seconds + 5:
                client.send_task(
                    "kc_tasks.create_purchase",
                    kwargs={"payment_id": "x", "student_id": "not-a-uuid", "course_id": "c", "amount_cents": 1},
                    queue="purchases",
                )
            time.sleep(max(0.0, 1 - (time.monotonic() - start_at - elapsed)))


def photograph(prometheus: str, shot: Path) -> None:
    from playwright.sync_api import sync_playwright

    params: dict[str, str] = {}
    for i, (expr, _) in enumerate(PANELS):
        params |= {f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": "4m", f"g{i}.stacked": "0"}
    url = f"{prometheus}/graph?{urllib.parse.urlencode(params)}"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--headless=new", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--shot", type=Path, default=ROOT / "docs" / "metrics.png")
    args = parser.parse_args()
    check(__file__, RABBITMQCTL, PROMETHEUS, CHROMIUM, PLAYWRIGHT, postgresql(PG), rabbitmq())
    work = Path(tempfile.mkdtemp(prefix="kc-metrics-demo-"))
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", VHOST], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"], check=True)
    web_port, web_metrics, worker_metrics, prom_port = free_port(), free_port(), free_port(), free_port()
    env = dict(
        os.environ,
        DATABASE_URL=DB_URL,
        CELERY_BROKER_URL=AMQP,
        KC_WEBHOOK_SECRET=SECRET,
        KC_WEB_METRICS_PORT=str(web_metrics),
        KC_WORKER_METRICS_PORT=str(worker_metrics),
        WEB_CONCURRENCY="2",
    )
    processes: list[subprocess.Popen] = []
    try:
        subprocess.run([str(BIN / "kc-tasks"), "migrate"], env=env, check=True, capture_output=True)
        config = work / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n"
            f"rule_files:\n  - {ROOT / 'docker' / 'prometheus' / 'kc_tasks.rules.yml'}\n"
            "scrape_configs:\n"
            f"  - job_name: kc-web\n    static_configs:\n      - targets: ['127.0.0.1:{web_metrics}']\n"
            f"  - job_name: kc-worker\n    static_configs:\n      - targets: ['127.0.0.1:{worker_metrics}']\n"
        )
        processes.append(
            start(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                ],
                env,
                work / "prometheus.log",
            )
        )
        processes.append(start([str(BIN / "celery"), "-A", "kc_tasks", "worker", "-c", "2"], env, work / "worker.log"))
        processes.append(
            start(
                [str(BIN / "uvicorn"), "--factory", "kc_tasks.web:create_app", "--port", str(web_port)],
                env,
                work / "web.log",
            )
        )
        prometheus = f"http://127.0.0.1:{prom_port}"
        wait_for(f"http://127.0.0.1:{web_port}/healthz")
        wait_for(f"{prometheus}/-/ready")
        time.sleep(5)  # scraped from zero first
        traffic(f"http://127.0.0.1:{web_port}", args.seconds)
        time.sleep(10)
        photograph(prometheus, args.shot)
        print(f"wrote {args.shot}; logs in {work}")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", VHOST], capture_output=True)
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS kc_demo_{RUN_ID} WITH (FORCE)")


if __name__ == "__main__":
    main()
