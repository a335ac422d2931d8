"""Worker processes and what is observed of them: a `celery -A kc_tasks worker -E` started
with given settings, the CPU it and the services use, and every task event of the vhost.

`Bench` holds what the measurements share for a whole run: the clients (one with publisher
confirms), the event receiver, the machine's CPU sampler and the random source of payments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from common import AMQP, BIN, CPUS, DB_URL, LOGS, PACKAGE_ROOT, RUN_ID

# --- CPU accounting -------------------------------------------------------------------------


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


# --- workers and events ---------------------------------------------------------------------


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


class Bench:
    def __init__(self) -> None:
        self.client = Celery(broker=AMQP)
        self.confirmed = Celery(broker=AMQP)
        self.confirmed.conf.broker_transport_options = {"confirm_publish": True}
        self.events = Events(self.client)
        self.cpu = MachineCpu()
        self.rnd = random.Random(20240601)
