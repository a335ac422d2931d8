"""What every measurement shares: the benchmark's own database and RabbitMQ vhost, its
targets, the purchases it sends, and the small functions they all use (SQL, waiting, percentiles).

Names are fixed per run (`kc_bench_<run id>`); `setup()` makes them, `teardown()` removes them.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery

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


# --- services -------------------------------------------------------------------------------


def sql(statement: str, params: tuple | None = None, url: str = DB_URL) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=False)


def purchases_policy(rabbitmqctl: Callable[..., None], vhost: str) -> None:
    """The purchases queue as the README deploys it: the policy `kc-tasks dlq policy` sets
    (dead letters, version 2 storage), set with this machine's rabbitmqctl: the command goes
    through the management API, which the local RabbitMQ may not run."""
    from kc_tasks.ops import rabbitmq

    definition = json.dumps(rabbitmq.POLICY)
    rabbitmqctl(
        "set_policy", "-p", vhost, "--apply-to", "queues", rabbitmq.POLICY_NAME, rabbitmq.POLICY_PATTERN, definition
    )


def setup() -> None:
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    migrate(DB_URL)
    purchases_policy(rabbitmqctl, VHOST)
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


# --- the work -------------------------------------------------------------------------------


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


def purchases_per_insert(since: Any, db_url: str = DB_URL) -> float:
    """Purchases created since `since` over the statements that created them: the rows of one
    statement share its created_at (now() of its transaction)."""
    query = f"SELECT count(*), count(DISTINCT created_at) FROM {TABLE} WHERE created_at >= %s"
    rows, inserts = sql(query, (since,), url=db_url)[0]
    return rows / inserts


def statements_per_purchase(since: Any, db_url: str = DB_URL) -> float:
    """Autocommit statements per purchase created since `since`: the INSERTs that made them
    (rows of one statement share its created_at) and the UPDATEs that marked their events
    published (one per published batch, sharing its published_at). Each is one round trip."""
    rows, inserts = sql(
        f"SELECT count(*), count(DISTINCT created_at) FROM {TABLE} WHERE created_at >= %s", (since,), url=db_url
    )[0]
    (marks,) = sql(
        "SELECT count(DISTINCT published_at) FROM event_outbox WHERE occurred_at >= %s", (since,), url=db_url
    )[0]
    return (inserts + marks) / rows


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, round(p / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]
