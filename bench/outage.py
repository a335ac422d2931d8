"""A long database outage with a long queue: the worker's memory while purchases pile up.

    .venv/bin/python bench/outage.py [--n 50000]

A worker reaches PostgreSQL through a TCP proxy of the benchmark's (so the outage is this run's
alone: the shared server stays up). It makes a few hundred purchases, then the proxy is cut:
the first purchase that meets the outage closes the worker's gate (kc_tasks/worker/outage.py), and
`--n` purchases are published, with publisher confirms, while the worker's resident memory
(main process and pool processes, from /proc) is sampled twice a second. Then the proxy is
restored and the queue drained. Prints one JSON object: the memory before, its largest during
the outage and after the drain, the queue while it waited (depth, consumers), and the drain.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

from celery import Celery
from common import (
    AMQP,
    DB_URL,
    PG,
    ROOT,
    TABLE,
    log,
    machine,
    purchase_kwargs,
    queue_state,
    setup,
    sql,
    teardown,
    wait_for,
)
from needs import PGREP, RABBITMQCTL, check, postgresql, rabbitmq
from workers import Settings, Worker, start_worker

sys.path.insert(0, str(ROOT))
from tests.e2e.proxy import Proxy


def rss_mib(worker: Worker) -> float:
    """Resident memory of the worker's main process and its pool processes, MiB."""
    total = 0
    for pid in [worker.process.pid, *worker.children()]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return round(total / 1024, 1)


class Sampler:
    """The worker's memory, every half second, from a thread; `during(start, end)` the samples."""

    def __init__(self, worker: Worker) -> None:
        self.worker, self.samples = worker, list[tuple[float, float]]()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), rss_mib(self.worker)))
            time.sleep(0.5)

    def during(self, start: float, end: float) -> list[float]:
        return [mib for t, mib in self.samples if start <= t <= end]

    def stop(self) -> None:
        self._stop.set()


def publish(app: Celery, n: int, rnd: random.Random) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task("kc_tasks.create_purchase", kwargs=purchase_kwargs(rnd), queue="purchases", producer=producer)


def made() -> int:
    return int(sql(f"SELECT count(*) FROM {TABLE}")[0][0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="purchases published during the outage (50000)")
    parser.add_argument("--warm", type=int, default=500, help="purchases made before the outage (500)")
    args = parser.parse_args()
    check(__file__, RABBITMQCTL, PGREP, postgresql(PG), rabbitmq())
    rnd = random.Random(29)
    setup()
    proxy = Proxy("127.0.0.1", int(DB_URL.rsplit(":", 1)[1].split("/", 1)[0]))
    proxy.restore()
    proxied = DB_URL.replace(f":{proxy.target[1]}/", f":{proxy.port}/")
    app = Celery(broker=AMQP)
    app.conf.broker_transport_options = {"confirm_publish": True}
    worker = start_worker(Settings(), db_url=proxied)
    sampler = Sampler(worker)
    try:
        publish(app, args.warm, rnd)
        wait_for("the warm-up purchases", lambda: made() == args.warm, timeout=120)
        time.sleep(2)
        before = rss_mib(worker)
        log(f"warm: {args.warm} purchases made; worker {before} MiB")

        proxy.cut()
        publish(app, 1, rnd)
        wait_for("the worker to stop consuming", lambda: queue_state(app)[1] == 0, timeout=60)
        started = time.monotonic()
        publish(app, args.n, rnd)
        published = time.monotonic()
        log(f"{args.n} purchases published in {published - started:.1f} s while PostgreSQL is away")
        time.sleep(10)
        waiting, consumers = queue_state(app)
        outage = sampler.during(started, time.monotonic())
        log(f"the queue holds {waiting}, {consumers} consumer(s); worker {min(outage)}-{max(outage)} MiB")

        proxy.restore()
        back = time.monotonic()
        wait_for("the drain", lambda: made() == args.warm + args.n + 1, timeout=3600)
        drained = time.monotonic()
        time.sleep(2)
        after = rss_mib(worker)
        drain = sampler.during(back, drained)
        figures = {
            "n": args.n,
            "rss_mib_before": before,
            "rss_mib_outage_min": min(outage),
            "rss_mib_outage_max": max(outage),
            "rss_mib_drain_max": max(drain) if drain else after,
            "rss_mib_after": after,
            "queue_during_outage": waiting,
            "consumers_during_outage": consumers,
            "publish_seconds": round(published - started, 1),
            "drain_seconds": round(drained - back, 1),
            "drain_per_second": round((args.n + 1) / (drained - back)),
            "machine": machine(),
        }
        print(json.dumps(figures, indent=2))
        return 0
    finally:
        sampler.stop()
        proxy.cut()
        worker.stop()
        teardown()


if __name__ == "__main__":
    sys.exit(main())
