"""Where a worker's time goes while it drains purchases: py-spy over the main process and its
pool, summarised per process and per kc_tasks / Celery step.

    .venv/bin/python bench/profile_worker.py [--n 4000] [--kind purchase|noop]

Needs py-spy (the `bench` extra). Uses the benchmark's database, vhost and worker set-up
(bench/common.py, bench/workers.py); prints the summary and keeps the raw stacks (one
collapsed stack per line) in the run's log directory. py-spy counts a thread waiting inside
C code (psycopg waiting for the server, a pool process waiting for its next job) as busy:
read the shares as where the time goes, and bench/run.py's CPU figures (from /proc) as what
it costs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import drains
from common import BIN, CPUS, LOGS, PG, setup, teardown
from drains import Drain
from needs import PGREP, PY_SPY, RABBITMQCTL, check, postgresql, rabbitmq
from workers import Bench, Settings, start_worker

RATE = 250  # py-spy samples per second and per thread
# The step a sample belongs to: the first of these frames found in its stack.
STEPS = [
    ("parse_purchase", "validate kwargs (pydantic)"),
    ("_with_index", "INSERT ... ON CONFLICT (SQLAlchemy, psycopg, wait for server)"),
    ("_with_locks", "fallback path"),
    ("kc_tasks/store/events.py", "publish purchase.created + mark published"),
    ("EventDispatcher", "Celery task events (-E)"),
    ("send_event", "Celery task events (-E)"),
    ("logging/__init__.py", "logging"),
    ("basic_ack", "ack"),
    ("on_result_readable", "results from the pool"),
    ("_write_job", "send job to the pool"),
    ("send_job", "send job to the pool"),
    ("_receive_callback", "receive, decode, make request"),
    ("trace_task", "Celery trace (other)"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description="py-spy profile of a worker draining tasks")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--kind", default="purchase", choices=["purchase", "noop"])
    parser.add_argument("--concurrency", type=int, default=CPUS)
    args = parser.parse_args()
    check(__file__, PY_SPY, RABBITMQCTL, PGREP, postgresql(PG), rabbitmq())
    setup()
    try:
        bench = Bench()
        worker = start_worker(Settings("prefork", args.concurrency, 16))
        try:
            drains.drain(bench, worker, args.kind, 500)  # warm
            raw = LOGS / f"profile-{args.kind}.txt"
            spy = subprocess.Popen(
                [
                    str(BIN / "py-spy"),
                    "record",
                    "--pid",
                    str(worker.process.pid),
                    "--subprocesses",
                    "--threads",
                    "--format",
                    "raw",
                    "--rate",
                    "250",
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            threading.Event().wait(1.5)
            drain = drains.drain(bench, worker, args.kind, args.n)
            seconds = args.n / drain.rate
            spy.send_signal(2)
            spy.wait(30)
        finally:
            worker.stop()
    finally:
        teardown()
    summarise(raw, drain, seconds)
    return 0


def summarise(raw: Path, drain: Drain, seconds: float) -> None:
    """On-CPU samples per process role and step; busy = share of one core."""
    by_role: Counter[str] = Counter()
    by_step: dict[str, Counter[str]] = {}
    children: set[str] = set()
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        frames = stack.split(";")
        is_child = len(frames) > 1 and frames[1].startswith("process ")
        if is_child:
            children.add(frames[1].split(":", 1)[0])
        thread = next((f for f in frames if f.startswith("thread ")), "")
        role = "pool child" if is_child else "main process"
        if "kc-events" in thread or "Publisher._run" in stack:
            role += ", events thread"
        by_role[role] += int(samples)
        step = next((name for frame, name in STEPS if frame in stack), "other")
        by_step.setdefault(role, Counter())[step] += int(samples)
    print(f"{drain.n} {drain.kind} tasks at {drain.rate:.0f}/s; CPU ms per task: {drain.cpu_ms_per_task}")
    for role, samples in by_role.most_common():
        count = len(children) if role.startswith("pool child") else 1
        busy = samples / (RATE * seconds * count)
        print(f"{role:<34} busy {100 * busy:5.1f} % of a core (each of {count})")
        for step, n in by_step[role].most_common(8):
            print(f"    {step:<62} {100 * n / samples:5.1f} %")
    print(f"raw stacks: {raw}")


if __name__ == "__main__":
    sys.exit(main())
