"""The kc_tasks benchmark: throughput, latency, cost per purchase and growth, in one command.

    .venv/bin/python bench/run.py [--n 5000] [--concurrency CPUS] [--pool prefork] [--prefetch 16] [--quick]

Everything runs against real services on this machine: a database of its own (kc_bench_*,
made by `kc-tasks migrate`), a RabbitMQ vhost of its own, and real `celery -A kc_tasks
worker -E` processes. Both are removed at the end. Prints a table, writes bench/results.json
and docs/benchmark.png. Not part of the test suite: nothing here passes or fails a build.

- Throughput: N tasks are published to `purchases` while the worker's consumer is cancelled,
  then the consumer is added back and the queue drained. The rate is N over the time from the
  first task-received to the last task-succeeded event (as contract-check's drain_rate), for N
  purchases (distinct payments, empty table) and N `celery.accumulate` no-op tasks, same
  worker. Best of two rounds each.
- Settings sweep: the same ratio, N/2 tasks, for a few pool / concurrency / prefetch settings.
- Latency: purchases offered at half the measured purchase rate, published with confirms;
  latency = created_at of the row (now() of the one-statement transaction that inserts and
  commits it) minus the time recorded just before send_task. p50/p90/p99/max.
- Cost per purchase: the task run in-process (`create_purchase.apply`) against the bench
  database and vhost, with libpq's protocol trace counting round trips (a simple Query or an
  extended-protocol Sync sent by the client, each one waiting for the server) and a
  SQLAlchemy before_cursor_execute hook counting statements and index-verification queries.
- Growth: a second database with 1,000,000 purchases (generate_series, VACUUM ANALYZE) and a
  worker of its own; purchase drains on the empty and the grown table in turns, three each,
  best of each compared.

To measure another version of kc_tasks, put its directory first on PYTHONPATH: the workers
then run there (docs/benchmark.md shows how).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery
from kombu.serialization import dumps

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = os.environ.get("KC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
RUN_ID = uuid.uuid4().hex[:8]
DB = f"kc_bench_{RUN_ID}"
DB_URL = f"{PG}/{DB}"
# The growth measurement's second database: the same schema with a million purchases.
GROWN_DB = f"{DB}_grown"
GROWN_DB_URL = f"{PG}/{GROWN_DB}"
VHOST = f"kc_bench_{RUN_ID}"
AMQP = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
LOGS = Path(tempfile.gettempdir()) / f"kc_bench_{RUN_ID}"
RESULTS = ROOT / "bench" / "results.json"
CHART = ROOT / "docs" / "benchmark.png"
QUEUE = "purchases"
TABLE = "student_course_purchases"
RATIO_TARGET = 0.8
P99_TARGET_MS = 25.0
GROWTH_TARGET = 0.10
GROWTH_ROUNDS = 3
# `celery -A kc_tasks worker` (the Procfile's) runs one pool process per CPU.
CPUS = os.cpu_count() or 1


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- services --------------------------------------------------------------------------------


def sql(statement: str, params: tuple | None = None, url: str = DB_URL) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=False)


def setup() -> None:
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    env = migrate(DB_URL)
    # The purchases queue as the README deploys it: dead-letter policy, version 2 storage.
    subprocess.run([str(BIN / "kc-tasks"), "dlq", "policy"], env=env, check=True, capture_output=True, cwd=PACKAGE_ROOT)
    LOGS.mkdir(exist_ok=True)


def migrate(db_url: str) -> dict[str, str]:
    """`kc-tasks migrate` for a database of the benchmark's; the environment it ran in."""
    env = dict(os.environ, DATABASE_URL=db_url, CELERY_BROKER_URL=AMQP)
    subprocess.run([str(BIN / "kc-tasks"), "migrate"], env=env, check=True, capture_output=True, cwd=PACKAGE_ROOT)
    return env


def teardown() -> None:
    rabbitmqctl("delete_vhost", VHOST)
    for db in (DB, GROWN_DB):
        sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", url=f"{PG}/postgres")


def machine() -> dict[str, Any]:
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    rabbit = subprocess.run(["rabbitmqctl", "-q", "version"], capture_output=True, text=True, check=False)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": sql("SHOW server_version", url=f"{PG}/postgres")[0][0],
        "rabbitmq": rabbit.stdout.strip(),
        "loadavg_at_start": os.getloadavg(),
    }


def package_root() -> Path:
    """The directory kc_tasks is imported from: this checkout, or another one on PYTHONPATH
    (to measure an older version). Workers run there, since `celery -A` puts the current
    directory first on sys.path."""
    out = subprocess.run(
        [sys.executable, "-c", "import kc_tasks; print(kc_tasks.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    ).stdout.strip()
    return Path(out).resolve().parents[1]


PACKAGE_ROOT = package_root()


def code_state() -> dict[str, Any]:
    """The commit measured, and the files of kc_tasks that differ from it (a dirty tree)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    if PACKAGE_ROOT != ROOT:
        return {"imported_from": str(PACKAGE_ROOT)}
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": git("status", "--porcelain", "kc_tasks").splitlines(),
    }


# --- CPU accounting --------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def cpu_snapshot(worker: Worker) -> dict[str, float]:
    """CPU seconds used so far by the worker (main + children; and its main process alone),
    PostgreSQL and RabbitMQ, and this process (its event receiver). PostgreSQL's figure counts
    every backend on the server, other test runs' included."""
    return {
        "worker": sum(_cpu_seconds(p) for p in [worker.process.pid, *worker.children()]),
        "worker_main": _cpu_seconds(worker.process.pid),
        "postgresql": sum(_cpu_seconds(p) for p in _pids("^postgres")),
        "rabbitmq": sum(_cpu_seconds(p) for p in _pids("beam.smp")),
        "bench": _cpu_seconds(os.getpid()),
    }


class MachineCpu:
    """How busy the machine's CPUs were over a span of time: /proc/stat, sampled every 50 ms
    by a thread. A drain that keeps them near 100 % is bound by CPU; one that leaves them idle
    is bound by waiting (round trips, the worker's main loop)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            self.samples.append((time.time(), sum(ticks), ticks[3] + ticks[4]))  # all, idle + iowait
            time.sleep(0.05)

    def busy(self, start: float, end: float) -> float:
        span = [s for s in self.samples if start <= s[0] <= end]
        if len(span) < 2 or span[-1][1] == span[0][1]:
            return float("nan")
        return 1 - (span[-1][2] - span[0][2]) / (span[-1][1] - span[0][1])


# --- workers and events ----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    pool: str = "prefork"
    concurrency: int = CPUS
    prefetch: int = 16

    @property
    def label(self) -> str:
        return f"{self.pool} c={self.concurrency} prefetch={self.prefetch}"


@dataclass
class Worker:
    settings: Settings
    name: str
    process: subprocess.Popen
    log: Path
    db_url: str = DB_URL

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_worker(settings: Settings, index_ttl: int = 300, db_url: str = DB_URL) -> Worker:
    name = f"bench{len(list(LOGS.glob('worker*.log')))}_{RUN_ID}@bench"
    log_path = LOGS / f"worker{len(list(LOGS.glob('worker*.log')))}.log"
    env = dict(os.environ, DATABASE_URL=db_url, CELERY_BROKER_URL=AMQP, KC_INDEX_CHECK_TTL=str(index_ttl))
    argv = [
        str(BIN / "celery"),
        "-A",
        "kc_tasks",
        "worker",
        "-E",
        "-l",
        "INFO",
        "-n",
        name,
        "-P",
        settings.pool,
        "-c",
        str(settings.concurrency),
        "--prefetch-multiplier",
        str(settings.prefetch),
        "--without-mingle",
        "--without-gossip",
    ]
    with log_path.open("w") as out:
        process = subprocess.Popen(
            argv, cwd=PACKAGE_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    worker = Worker(settings, name, process, log_path, db_url)
    deadline = time.monotonic() + 60
    while " ready." not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise SystemExit(f"worker did not start; see {log_path}")
        time.sleep(0.2)
    return worker


class Stuck(Exception):
    """Raised when a worker stops finishing tasks."""


class Events:
    """Every task event of the vhost, collected by one receiver thread for the whole run."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.received: dict[str, float] = {}
        self.succeeded: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._ready = threading.Event()
        threading.Thread(target=self._listen, daemon=True).start()
        if not self._ready.wait(10):
            raise SystemExit("the event receiver did not start")

    def _listen(self) -> None:
        handlers = {
            "task-received": lambda ev: self.received.setdefault(ev["uuid"], ev["timestamp"]),
            "task-succeeded": lambda ev: self.succeeded.__setitem__(ev["uuid"], ev["timestamp"]),
            "task-failed": lambda ev: self.failed.__setitem__(ev["uuid"], ev.get("exception", "")),
        }
        with self.app.connection_for_read() as conn:
            receiver = self.app.events.Receiver(conn, handlers=handlers)
            receiver.on_consume_ready = lambda *args, **kwargs: self._ready.set()
            try:
                receiver.capture(limit=None, timeout=None, wakeup=False)  # until the vhost goes
            except Exception:
                pass

    def wait(self, ids: Iterable[str], stall: float = 20.0) -> None:
        """Until every task finished; Stuck if none finished for `stall` seconds."""
        ids = set(ids)
        done, progress = -1, time.monotonic()
        while done < len(ids):
            now_done = sum(1 for i in ids if i in self.succeeded or i in self.failed)
            if now_done != done:
                done, progress = now_done, time.monotonic()
            elif time.monotonic() - progress > stall:
                raise Stuck(f"only {done}/{len(ids)} tasks finished; none in the last {stall:.0f} s")
            time.sleep(0.1)
        failed = [self.failed[i] for i in ids if i in self.failed]
        if failed:
            raise SystemExit(f"{len(failed)} tasks failed, e.g. {failed[0]}")

    def span(self, ids: Iterable[str]) -> tuple[float, float]:
        """First task-received to last task-succeeded, worker timestamps (this machine's clock)."""
        ids = list(ids)
        return min(self.received[i] for i in ids), max(self.succeeded[i] for i in ids)

    def rate(self, ids: Iterable[str]) -> float:
        ids = list(ids)
        first, last = self.span(ids)
        return len(ids) / (last - first)


# --- the work --------------------------------------------------------------------------------


def random_uuid(rnd: random.Random) -> str:
    return str(uuid.UUID(int=rnd.getrandbits(128), version=4))


def purchase_kwargs(rnd: random.Random) -> dict[str, Any]:
    return {
        "payment_id": f"pay_bench_{rnd.getrandbits(64):016x}",
        "student_id": random_uuid(rnd),
        "course_id": random_uuid(rnd),
        "amount_cents": 4999,
        "currency": "INR",
    }


def queue_state(app: Celery) -> tuple[int, int]:
    """Messages ready in `purchases`, and its consumers."""
    with app.connection_for_read() as conn:
        declared = conn.default_channel.queue_declare(QUEUE, passive=True)
        return int(declared.message_count), int(declared.consumer_count)


def purge(app: Celery) -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Drain:
    kind: str
    n: int
    rate: float
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)
    machine_busy: float = float("nan")  # share of both CPUs busy during the drain
    # Purchases per transaction that created any (rows sharing a created_at, now() of the
    # transaction): above 1, the worker inserted queued purchases together.
    purchases_per_insert: float = float("nan")


class Bench:
    def __init__(self) -> None:
        self.client = Celery(broker=AMQP)
        self.confirmed = Celery(broker=AMQP)
        self.confirmed.conf.broker_transport_options = {"confirm_publish": True}
        self.events = Events(self.client)
        self.cpu = MachineCpu()
        self.rnd = random.Random(20240601)

    def drain(self, worker: Worker, kind: str, n: int, truncate: bool = True) -> Drain:
        """Fill `purchases` with n tasks while the worker does not consume it, then let it
        drain them: n over first task-received to last task-succeeded."""
        control = self.client.control
        reply = control.cancel_consumer(QUEUE, destination=[worker.name], reply=True, timeout=10)
        if not reply:
            raise Stuck(f"{worker.name} did not answer cancel_consumer")
        wait_for("the worker to stop consuming", lambda: queue_state(self.client)[1] == 0)  # the reply comes first
        db = worker.db_url
        if kind == "purchase" and truncate:
            sql(f"TRUNCATE {TABLE}, duplicate_payments, event_outbox", url=db)
        # Each drain starts right after a checkpoint, so that none pays for one the others did
        # not (the first change to a page after a checkpoint writes the whole page to the WAL).
        sql("CHECKPOINT")
        rows_before = sql(f"SELECT count(*) FROM {TABLE}", url=db)[0][0] if kind == "purchase" else 0
        ids = []
        with self.client.producer_or_acquire() as producer:
            for i in range(n):
                task_id = str(uuid.uuid4())
                ids.append(task_id)
                if kind == "noop":
                    self.client.send_task(
                        "celery.accumulate", args=(i,), queue=QUEUE, task_id=task_id, producer=producer
                    )
                else:
                    self.client.send_task(
                        "kc_tasks.create_purchase",
                        kwargs=purchase_kwargs(self.rnd),
                        queue=QUEUE,
                        task_id=task_id,
                        producer=producer,
                    )
        wait_for(f"{n} tasks in {QUEUE}", lambda: queue_state(self.client)[0] == n)
        started = sql("SELECT now()", url=db)[0][0]
        before = cpu_snapshot(worker)
        control.add_consumer(
            QUEUE, exchange=QUEUE, exchange_type="direct", routing_key=QUEUE, destination=[worker.name], reply=True
        )
        self.events.wait(ids)
        after = cpu_snapshot(worker)
        if kind == "purchase":
            made = sql(f"SELECT count(*) FROM {TABLE}", url=db)[0][0] - rows_before
            assert made == n, f"{made} purchases made of {n}"
        drain = Drain(
            kind,
            n,
            self.events.rate(ids),
            {k: 1000 * (after[k] - before[k]) / n for k in before},
            self.cpu.busy(*self.events.span(ids)),
        )
        if kind == "purchase":
            drain.purchases_per_insert = purchases_per_insert(started, db)
        cpus = f"CPUs {100 * drain.machine_busy:.0f} % busy"
        log(f"  {worker.settings.label}: {n} {kind} tasks at {drain.rate:.0f}/s, {cpus}")
        return drain

    def ratio(self, worker: Worker, n: int, rounds: int, truncate: bool = True) -> dict[str, Any]:
        runs: dict[str, list[Drain]] = {"noop": [], "purchase": []}
        for _ in range(rounds):
            for kind in ("noop", "purchase"):
                runs[kind].append(self.drain(worker, kind, n, truncate=truncate))
        best = {kind: max(drains, key=lambda d: d.rate) for kind, drains in runs.items()}
        return {
            "settings": asdict(worker.settings),
            "label": worker.settings.label,
            "n": n,
            "noop_per_s": best["noop"].rate,
            "purchases_per_s": best["purchase"].rate,
            "ratio": best["purchase"].rate / best["noop"].rate,
            "cpu_ms_per_task": {kind: d.cpu_ms_per_task for kind, d in best.items()},
            "machine_busy": {kind: d.machine_busy for kind, d in best.items()},
            "purchases_per_insert": best["purchase"].purchases_per_insert,
            "all_rates": {kind: [round(d.rate, 1) for d in drains] for kind, drains in runs.items()},
        }

    def growth(self, empty: Worker, grown: Worker, n: int, rounds: int) -> dict[str, float | list[float]]:
        """Purchase drains on an empty table and on one with many rows, in turns (E G E G ...),
        each on a worker of its own database: both see the same moments of a machine whose
        speed drifts. The other worker's consumer is cancelled during each drain."""
        rates: dict[str, list[float]] = {"empty": [], "grown": []}
        for _ in range(rounds):
            for kind, worker, other in (("empty", empty, grown), ("grown", grown, empty)):
                if not self.client.control.cancel_consumer(QUEUE, destination=[other.name], reply=True, timeout=10):
                    raise Stuck(f"{other.name} did not answer cancel_consumer")
                rates[kind].append(self.drain(worker, "purchase", n, truncate=kind == "empty").rate)
        best = {kind: max(values) for kind, values in rates.items()}
        return {
            "purchases_per_s": best["grown"],
            "empty_purchases_per_s": best["empty"],
            "change": best["grown"] / best["empty"] - 1,
            "all_rates": {kind: [round(r, 1) for r in values] for kind, values in rates.items()},
        }

    def purchase_message(self, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any], bytes, dict[str, Any]]:
        """A create_purchase message as send_task would publish it: task id, kwargs, serialized
        body and the rest of the publish arguments."""
        task_id = str(uuid.uuid4())
        message = self.confirmed.amqp.as_task_v2(
            task_id, "kc_tasks.create_purchase", kwargs=kwargs, reply_to=self.confirmed.thread_oid, ignore_result=None
        )
        content_type, content_encoding, body = dumps(message.body, serializer="json")
        options = {
            "headers": message.headers,
            "content_type": content_type,
            "content_encoding": content_encoding,
            "delivery_mode": 2,
            **message.properties,
        }
        return task_id, kwargs, body, options

    def latency(self, worker: Worker, rate: float, count: int, publisher: str = "prebuilt") -> dict[str, Any]:
        """Purchases offered at `rate` per second, each published with a confirm; enqueue (just
        before the publish) to commit (the row's created_at), in milliseconds.

        The payment service's publisher shares the two CPUs with the worker, so it is kept lean:
        with `prebuilt`, each message is built beforehand by Celery's own `as_task_v2` (the same
        protocol-2 message `send_task` publishes) and published with kombu, a confirm awaited for
        each. `send_task` builds and publishes each message in the loop, at about twice the CPU
        per message."""
        db = worker.db_url
        sql(f"TRUNCATE {TABLE}, duplicate_payments, event_outbox", url=db)
        started = sql("SELECT now()", url=db)[0][0]
        messages = [self.purchase_message(purchase_kwargs(self.rnd)) for _ in range(count)]
        ids = [task_id for task_id, *_ in messages]
        task_of = {kwargs["payment_id"]: task_id for task_id, kwargs, *_ in messages}
        sent: dict[str, float] = {}
        interval = 1.0 / rate
        before = cpu_snapshot(worker)
        # The publisher keeps to its schedule: no collection pauses it, then makes it catch up
        # in a burst (a full collection of this process takes 15-25 ms).
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            start = time.time() + 0.2
            with self.confirmed.producer_or_acquire() as producer:
                for i, (task_id, kwargs, body, options) in enumerate(messages):
                    due = start + i * interval
                    pause = due - time.time()
                    if pause > 0:
                        time.sleep(pause)
                    sent[kwargs["payment_id"]] = time.time()
                    if publisher == "send_task":
                        self.confirmed.send_task(
                            "kc_tasks.create_purchase", kwargs=kwargs, queue=QUEUE, task_id=task_id, producer=producer
                        )
                    else:
                        producer.publish(body, exchange=QUEUE, routing_key=QUEUE, **options)
        finally:
            gc.enable()
            gc.unfreeze()
        offered = count / (time.time() - start)
        busy = self.cpu.busy(start, time.time())
        self.events.wait(ids)
        after = cpu_snapshot(worker)
        rows = sql(f"SELECT payment_id, extract(epoch FROM created_at)::float8 FROM {TABLE}", url=db)
        timeline = sorted(
            (sent[p], 1000 * (created - sent[p]), 1000 * (self.events.received[task_of[p]] - sent[p]))
            for p, created in rows
            if p in sent
        )
        # Per purchase: sent (s from the start), latency and the worker's task-received (ms after
        # sending): where the slow ones were, and whether they were slow to reach the worker.
        timeline_file = LOGS / f"latency-{rate:.0f}.json"
        timeline_file.write_text(json.dumps([[round(v, 4) for v in (t - start, ms, r)] for t, ms, r in timeline]))
        latencies = sorted(ms for _, ms, _ in timeline)
        assert len(latencies) == count, f"{len(latencies)} purchases of {count}"
        result = {
            "settings": worker.settings.label,
            "target_rate_per_s": rate,
            "offered_rate_per_s": offered,
            "count": count,
            "p50_ms": percentile(latencies, 50),
            "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99),
            "max_ms": latencies[-1],
            "mean_ms": statistics.fmean(latencies),
            "machine_busy": busy,
            "publisher": publisher,
            "purchases_per_insert": purchases_per_insert(started, db),
            "cpu_ms_per_task": {k: 1000 * (after[k] - before[k]) / count for k in before},
        }
        log(
            f"  latency at {offered:.0f}/s: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
            f"CPUs {100 * busy:.0f} % busy"
        )
        return result


def purchases_per_insert(since: Any, db_url: str = DB_URL) -> float:
    """Purchases created since `since` over the statements that created them: the rows of one
    statement share its created_at (now() of its transaction)."""
    query = f"SELECT count(*), count(DISTINCT created_at) FROM {TABLE} WHERE created_at >= %s"
    rows, inserts = sql(query, (since,), url=db_url)[0]
    return rows / inserts


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, round(p / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# --- cost per purchase -----------------------------------------------------------------------


def cost_per_purchase(count: int) -> dict[str, Any]:
    """Run the task body in this process, against the bench database and vhost, counting what
    reaches PostgreSQL. Round trips from libpq's own protocol trace: each simple Query or
    extended-protocol Sync the client sends waits for the server's answer."""
    os.environ.update(DATABASE_URL=DB_URL, CELERY_BROKER_URL=AMQP)
    import sqlalchemy as sa

    from kc_tasks import events, purchases
    from kc_tasks.tasks import create_purchase, resources

    engine, _ = resources()
    trace = LOGS / "libpq-trace.txt"
    trace_file = trace.open("w")
    statements: list[str] = []

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        from psycopg import pq

        dbapi_connection.pgconn.trace(trace_file.fileno())
        dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    rnd = random.Random(7)
    create_purchase.apply(kwargs=purchase_kwargs(rnd)).get()  # warm: connections, index check, broker

    # Where the time goes, measured around the functions the task calls (summed over every
    # thread of this process: an event publisher thread, if kc_tasks has one, included).
    steps = [(purchases, "create_purchase"), (events.EventChannel, "publish"), (events, "mark_published")]
    steps = [(module, name) for module, name in steps if hasattr(module, name)]
    spent = dict.fromkeys((name for _, name in steps), 0.0)
    originals = [getattr(module, name) for module, name in steps]

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return wrapper

    for (module, name), original in zip(steps, originals, strict=True):
        setattr(module, name, timed(name, original))
    try:
        create_purchase.apply(kwargs=purchase_kwargs(rnd)).get()  # connect, with the trace on
        time.sleep(0.5)  # events published in the background, if they are, are out
        trace_file.flush()
        offset = trace.stat().st_size
        statements.clear()
        spent.update(dict.fromkeys(spent, 0.0))
        t0 = time.perf_counter()
        results = [create_purchase.apply(kwargs=purchase_kwargs(rnd)).get() for _ in range(count)]
        elapsed = time.perf_counter() - t0
        time.sleep(0.5)
    finally:
        for (module, name), original in zip(steps, originals, strict=True):
            setattr(module, name, original)
        trace_file.close()
    assert all(r["created"] for r in results), "every purchase is new"
    with trace.open() as f:
        f.seek(offset)
        sent = [line.rstrip("\n").split("\t") for line in f if line.startswith("F\t")]
    round_trips = sum(1 for parts in sent if parts[2] in ("Query", "Sync"))
    index_queries = [s for s in statements if re.search(r"pg_index|to_regclass|EXPLAIN", s)]
    simple = [parts[3].strip() for parts in sent if parts[2] == "Query"]
    return {
        "method": "in-process create_purchase.apply() x N; libpq trace (Query + Sync messages) and "
        "SQLAlchemy before_cursor_execute",
        "purchases": count,
        "round_trips_per_purchase": round_trips / count,
        "statements_per_purchase": len(statements) / count,
        "index_queries_per_task": len(index_queries) / count,
        "simple_queries_seen": sorted(set(simple)),
        "statements_seen": sorted({re.sub(r"\s+", " ", s)[:90] for s in statements}),
        "wall_ms_per_task": 1000 * elapsed / count,
        "wall_ms_per_task_by_step": {k: 1000 * v / count for k, v in spent.items()},
    }


# --- growth ----------------------------------------------------------------------------------


def seed_purchases(rows: int, db_url: str) -> float:
    t0 = time.monotonic()
    sql(
        f"INSERT INTO {TABLE} (id, student_id, course_id, payment_id, amount_cents, currency, is_active, "
        "created_at, updated_at) SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), "
        "'pay_seed_' || g, 4999, 'INR', g %% 10 <> 0, now() - interval '30 days', now() - interval '30 days' "
        "FROM generate_series(1, %s) AS g",
        (rows,),
        url=db_url,
    )
    sql(f"VACUUM ANALYZE {TABLE}", url=db_url)
    return time.monotonic() - t0


# --- report ----------------------------------------------------------------------------------


def busy(measure: dict[str, Any]) -> str:
    shares = measure.get("machine_busy", {})
    return " / ".join(f"{100 * shares[k]:.0f} %" for k in ("purchase", "noop")) if shares else "-"


def table(results: dict[str, Any]) -> str:
    main, lat, cost, growth = results["throughput"], results["latency"], results["cost"], results["growth"]
    rows = [
        ("purchases/s (empty table)", f"{main['purchases_per_s']:.0f}", ""),
        ("no-op tasks/s", f"{main['noop_per_s']:.0f}", ""),
        ("ratio purchases / no-op", f"{main['ratio']:.2f}", f">= {RATIO_TARGET}"),
        ("CPUs busy: purchases / no-op", busy(main), "(both cores; 100 % = CPU-bound)"),
        ("purchases per INSERT in the drain", f"{main['purchases_per_insert']:.1f}", "(queued ones go together)"),
        ("offered rate for latency", f"{lat['offered_rate_per_s']:.0f}/s", "half the purchase rate"),
        ("enqueue-to-commit p50", f"{lat['p50_ms']:.1f} ms", ""),
        ("enqueue-to-commit p99", f"{lat['p99_ms']:.1f} ms", f"< {P99_TARGET_MS:.0f} ms"),
        ("PostgreSQL round trips / purchase", f"{cost['round_trips_per_purchase']:.2f}", ""),
        ("SQL statements / purchase", f"{cost['statements_per_purchase']:.2f}", ""),
        ("index queries / task (cache fresh)", f"{cost['index_queries_per_task']:.2f}", "0"),
        (f"purchases/s with {growth['seeded_rows']:,} rows", f"{growth['purchases_per_s']:.0f}", "(drains in turns"),
        ("purchases/s, empty table", f"{growth['empty_purchases_per_s']:.0f}", " with these)"),
        ("growth: purchase rate change", f"{100 * growth['change']:+.1f} %", f"within ±{100 * GROWTH_TARGET:.0f} %"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"worker: {main['label']}, N={main['n']}", f"{'measure':<{width}}  {'value':>12}  target"]
    lines += [f"{name:<{width}}  {value:>12}  {target}" for name, value, target in rows]
    lines += ["", "settings sweep (N each):"]
    for s in results["sweep"]:
        if "hung" in s:
            lines.append(f"  {s['label']:<28} HUNG: {s['hung']}")
            continue
        lines.append(
            f"  {s['label']:<28} purchases {s['purchases_per_s']:6.0f}/s  no-op {s['noop_per_s']:6.0f}/s  "
            f"ratio {s['ratio']:.2f}"
        )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path = CHART) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.6, 1]})
    main, growth = results["throughput"], results["growth"]
    labels = [s["label"].replace(" c=", "\nc=").replace(" prefetch=", " pf=") for s in results["sweep"]]
    x = range(len(labels))
    width = 0.38
    noop = [s.get("noop_per_s", 0) for s in results["sweep"]]
    made = [s.get("purchases_per_s", 0) for s in results["sweep"]]
    left.bar([i - width / 2 for i in x], noop, width, label="no-op tasks/s")
    left.bar([i + width / 2 for i in x], made, width, label="purchases/s")
    for i, s in enumerate(results["sweep"]):
        note = "hung" if "hung" in s else f"{s['ratio']:.2f}"
        left.text(i + width / 2, made[i], note, ha="center", va="bottom", fontsize=8)
    n = len(labels)
    left.bar(n + 0.5 - width / 2, main["noop_per_s"], width, color="C0")
    left.bar(n + 0.5 + width / 2, main["purchases_per_s"], width, color="C1")
    note = {"ha": "center", "va": "bottom", "fontsize": 8}
    left.text(n + 0.5 + width / 2, main["purchases_per_s"], f"{main['ratio']:.2f}", **note)
    rows = f"{growth['seeded_rows'] / 1e6:g}M rows"
    left.bar(n + 1.5 - width / 2, growth["empty_purchases_per_s"], width, color="C1", alpha=0.6)
    left.bar(n + 1.5 + width / 2, growth["purchases_per_s"], width, color="C1")
    left.text(n + 1.5 + width / 2, growth["purchases_per_s"], f"{100 * growth['change']:+.1f} %", **note)
    labels += ["main\nempty", f"growth: empty\n| {rows}"]
    left.set_xticks([*x, n + 0.5, n + 1.5], labels, fontsize=7)
    left.set_ylabel("tasks per second")
    left.set_title(f"Throughput (over the bars: purchases / no-op; main: {main['label']})", fontsize=10)
    left.legend(fontsize=8)

    lat = results["latency"]
    names = ["p50", "p90", "p99", "max"]
    values = [lat[f"{k}_ms"] for k in names]
    right.bar(names, values, color=["C2", "C2", "C3", "C7"])
    for i, v in enumerate(values):
        right.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    right.axhline(P99_TARGET_MS, color="C3", linestyle="--", linewidth=1, label=f"p99 target {P99_TARGET_MS:.0f} ms")
    right.set_ylabel("enqueue to commit, ms")
    right.set_title(f"Latency at {lat['offered_rate_per_s']:.0f} purchases/s offered")
    right.legend(fontsize=8)
    fig.suptitle(f"kc_tasks benchmark, {results['machine']['nproc']} cores, {results['finished_at']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)


# --- main ------------------------------------------------------------------------------------


SWEEP = [
    Settings("prefork", CPUS, 16),
    Settings("prefork", 2 * CPUS, 16),
    Settings("prefork", 4 * CPUS, 16),
    Settings("prefork", CPUS, 4),
    Settings("prefork", CPUS, 8),
    Settings("prefork", CPUS, 32),
    Settings("threads", 2 * CPUS, 16),
    Settings("threads", 4 * CPUS, 16),
]
QUICK_SWEEP = [Settings("prefork", CPUS, 4), Settings("prefork", CPUS, 16)]


def measure_alone(settings: Settings, path: Path, name: str, measure: Callable[[Bench, Worker], Any]) -> Any:
    """One measurement on a worker of its own, written to `path` with the code's state: for
    comparing two versions of kc_tasks."""
    setup()
    try:
        bench = Bench()
        worker = start_worker(settings)
        try:
            results = {"kc_tasks": code_state(), name: measure(bench, worker)}
        finally:
            worker.stop()
    finally:
        teardown()
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results[name]


def ratio_only(settings: Settings, n: int, path: Path) -> int:
    """The throughput measurement alone."""
    main = measure_alone(settings, path, "throughput", lambda bench, worker: bench.ratio(worker, n, rounds=2))
    print(
        f"{main['label']}, N={n}: purchases {main['purchases_per_s']:.0f}/s, no-op {main['noop_per_s']:.0f}/s, "
        f"ratio {main['ratio']:.2f}; CPUs busy (purchases / no-op): {busy(main)}; "
        f"purchases per INSERT {main['purchases_per_insert']:.1f}; "
        f"all rates {main['all_rates']}; wrote {path}"
    )
    return 0


def latency_only(settings: Settings, rate: float, n: int, path: Path, publisher: str) -> int:
    """The latency measurement alone, at a rate given: two versions at the same offered load."""
    lat = measure_alone(settings, path, "latency", lambda bench, worker: bench.latency(worker, rate, n, publisher))
    print(
        f"{settings.label}, {n} purchases at {lat['offered_rate_per_s']:.0f}/s: p50 {lat['p50_ms']:.1f} ms, "
        f"p90 {lat['p90_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms; "
        f"CPUs {100 * lat['machine_busy']:.0f} % busy; {lat['purchases_per_insert']:.2f} purchases per INSERT; "
        f"CPU ms per purchase "
        f"{ {k: round(v, 2) for k, v in lat['cpu_ms_per_task'].items()} }; wrote {path}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="tasks per throughput measurement (default 5000)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CPUS,
        help=f"worker -c of the main measurements (default: one per CPU, {CPUS}, as `celery -A kc_tasks worker`)",
    )
    parser.add_argument("--pool", default="prefork", help="worker -P of the main measurements")
    parser.add_argument("--prefetch", type=int, default=16, help="worker --prefetch-multiplier (kc_tasks' default: 16)")
    parser.add_argument("--seed-rows", type=int, default=1_000_000, help="existing purchases for the growth test")
    parser.add_argument("--no-sweep", action="store_true", help="skip the settings sweep")
    parser.add_argument("--quick", action="store_true", help="N=1000, 100k seeded rows, a short sweep: a smoke run")
    parser.add_argument("--replot", action="store_true", help="only redraw the chart and table from results.json")
    parser.add_argument(
        "--ratio-only",
        action="store_true",
        help="only the throughput ratio (best of 2 rounds): to compare two versions; no chart",
    )
    parser.add_argument(
        "--latency-only",
        type=float,
        metavar="RATE",
        help="only the latency, --n purchases offered at RATE per second: to compare two versions at one load",
    )
    parser.add_argument(
        "--publisher",
        choices=("prebuilt", "send_task"),
        default="prebuilt",
        help="how the latency run publishes: messages built beforehand (default), or send_task in the loop",
    )
    parser.add_argument("--results", type=Path, help=f"where to write the figures (default {RESULTS.name})")
    parser.add_argument("--chart", type=Path, default=CHART, help="where to draw the chart (docs/benchmark.png)")
    args = parser.parse_args()
    if args.replot:
        results = json.loads((args.results or RESULTS).read_text())
        chart(results, args.chart)
        print(table(results))
        return 0
    if args.quick:
        args.n, args.seed_rows = min(args.n, 1000), min(args.seed_rows, 100_000)
    main_settings = Settings(args.pool, args.concurrency, args.prefetch)
    os.environ.update(DATABASE_URL=DB_URL, CELERY_BROKER_URL=AMQP)
    if args.ratio_only:
        return ratio_only(main_settings, args.n, args.results or LOGS / "results.json")
    if args.latency_only:
        path = args.results or LOGS / "results.json"
        return latency_only(main_settings, args.latency_only, args.n, path, args.publisher)
    args.results = args.results or RESULTS

    started = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "kc_tasks": code_state(),
    }
    setup()
    log(f"database {DB}, vhost {VHOST}, logs in {LOGS}")
    try:
        results["machine"] = machine()
        bench = Bench()
        results["sweep"] = []
        sweep_n = max(500, args.n // 2)
        for settings in [] if args.no_sweep else QUICK_SWEEP if args.quick else SWEEP:
            log(f"sweep: {settings.label}")
            worker = start_worker(settings)
            try:
                results["sweep"].append(bench.ratio(worker, sweep_n, rounds=1))
            except Stuck as exc:
                log(f"  {settings.label}: the worker hung: {exc}; py-spy dump in {LOGS}")
                results["sweep"].append({"label": settings.label, "settings": asdict(settings), "hung": str(exc)})
                dump = subprocess.run(
                    [str(BIN / "py-spy"), "dump", "--pid", str(worker.process.pid)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                (LOGS / f"hung-{settings.pool}-{settings.concurrency}.txt").write_text(dump.stdout + dump.stderr)
                worker.stop(timeout=3)
                purge(bench.client)  # what the hung worker left, so that the next one starts clean
            finally:
                worker.stop()

        log(f"throughput: {main_settings.label}, N={args.n}, best of 2 rounds")
        worker = start_worker(main_settings)
        try:
            results["throughput"] = bench.ratio(worker, args.n, rounds=2)
            rate = results["throughput"]["purchases_per_s"] / 2
            count = int(min(args.n, max(1000, rate * 20)))
            log(f"latency: {count} purchases offered at {rate:.0f}/s")
            results["latency"] = bench.latency(worker, rate, count, args.publisher)

            log(f"growth: a second database, {args.seed_rows:,} purchases")
            migrate(GROWN_DB_URL)
            seconds = seed_purchases(args.seed_rows, GROWN_DB_URL)
            log(f"  seeded in {seconds:.0f} s; drains in turns, empty and grown, best of {GROWTH_ROUNDS}")
            grown_worker = start_worker(main_settings, db_url=GROWN_DB_URL)
            try:
                results["growth"] = {
                    "seeded_rows": args.seed_rows,
                    "seed_seconds": seconds,
                    **bench.growth(worker, grown_worker, args.n, rounds=GROWTH_ROUNDS),
                    "table_size": sql(f"SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))", url=GROWN_DB_URL)[0][
                        0
                    ],
                }
            finally:
                grown_worker.stop()
        finally:
            worker.stop()

        log("cost per purchase: in-process task runs with a protocol trace")
        results["cost"] = cost_per_purchase(200)
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        results["seconds"] = round(time.monotonic() - started)
        results["finished_at"] = time.strftime("%Y-%m-%d %H:%M")
        results["targets"] = {
            "ratio": results["throughput"]["ratio"] >= RATIO_TARGET,
            "p99": results["latency"]["p99_ms"] < P99_TARGET_MS,
            "index_queries": results["cost"]["index_queries_per_task"] == 0,
            "growth": abs(results["growth"]["change"]) <= GROWTH_TARGET,
        }
    finally:
        teardown()
    args.results.write_text(json.dumps(results, indent=2, default=str) + "\n")
    chart(results, args.chart)
    print()
    print(table(results))
    print(f"\ntargets met: {results['targets']}")
    print(f"{results['seconds']} s; wrote {args.results} and {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
