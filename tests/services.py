"""The test run's own PostgreSQL, RabbitMQ and Redis: where they are (a database, vhost and
Redis database per run) and the small operations the tests do on them directly."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis
from kombu import Connection

PG = os.environ.get("KC_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
# Per run, so that two runs on one machine never share a queue: a vhost of its own.
RUN_ID = uuid.uuid4().hex[:8]
AMQP = os.environ.get("KC_TEST_AMQP", f"amqp://guest:guest@127.0.0.1:5672/kc_test_{RUN_ID}")
AMQP_VHOST = AMQP.rsplit("/", 1)[1] or "/"
# A Redis database per run too: per pytest-xdist worker (gw0 -> 15, gw1 -> 14, ...) when the
# suite runs in parallel, since Redis has no vhosts and the tests flush theirs.
_XDIST = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
REDIS = os.environ.get("KC_TEST_REDIS", "redis://127.0.0.1:6379/15")
if _XDIST.isdigit() and int(_XDIST):
    REDIS = f"{REDIS.rsplit('/', 1)[0]}/{int(REDIS.rsplit('/', 1)[1]) - int(_XDIST)}"
# Per run too, so that two runs on one server never share a database.
APP_DB = f"kc_app_{RUN_ID}"
TEMPLATE_DB = f"kc_template_{RUN_ID}"


def rabbitmqctl(*args: str, check: bool = True) -> str:
    """`rabbitmqctl -q ARGS...` on this machine's RabbitMQ; its output."""
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=check).stdout


def vhost_connections(vhost: str = AMQP_VHOST, column: str = "pid") -> list[str]:
    """`column` (pid, state...) of each of RabbitMQ's connections to `vhost`. `list_connections`
    lists every connection of the node whatever `-p` says: the other test processes' ones too."""
    listed = rabbitmqctl("list_connections", "vhost", column, "--no-table-headers", check=False)
    return [value for name, _, value in (line.partition("\t") for line in listed.splitlines()) if name == vhost]


def admin(sql: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def run_sql(url: str, sql: str, params: tuple | dict | None = None) -> list[tuple]:
    """Run one statement in autocommit on `url`; its rows, if any."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def purge_amqp(queues: tuple[str, ...] = ("purchases", "purchases.dlq"), url: str = AMQP) -> None:
    with Connection(url) as conn:
        for name in queues:
            try:
                conn.default_channel.queue_purge(name)
            except Exception:
                conn.close()
                conn.connect()


def purge_redis() -> None:
    redis.Redis.from_url(REDIS).flushdb()


def broker_idle(broker_url: str) -> bool:
    """Nothing left in `purchases`, ready or held unacknowledged by a worker."""
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        return client.llen("purchases") == 0 and client.hlen("unacked") == 0
    return queued(broker_url) == 0


def queued(broker_url: str, queue: str = "purchases") -> int:
    """How many messages `queue` holds (RabbitMQ: ready or unacknowledged; Redis: ready). With
    no worker consuming, every task a client was told the broker took is counted."""
    if broker_url.startswith("redis"):
        return int(redis.Redis.from_url(broker_url).llen(queue))
    out = rabbitmqctl("list_queues", "-p", AMQP_VHOST, "name", "messages", check=False)
    for line in out.splitlines():
        name, _, messages = line.partition("\t")
        if name == queue:
            return int(messages.strip())
    return 0


def take_queued() -> list[tuple[str, str, dict]]:
    """(task name, task id, kwargs) of each message waiting in purchases, taken off it."""
    found = []
    with Connection(AMQP) as conn:
        q = conn.SimpleQueue("purchases")
        while True:
            try:
                message = q.get(timeout=1)
            except q.Empty:
                return found
            found.append((message.headers["task"], message.headers["id"], json.loads(message.body)[1]))
            message.ack()


def count(database_url: str, where: str = "true", params: tuple | None = None) -> int:
    return run_sql(database_url, f"SELECT count(*) FROM student_course_purchases WHERE {where}", params)[0][0]


def purchases_of(database_url: str, payment_id: str) -> list[tuple]:
    return run_sql(
        database_url,
        "SELECT is_active, amount_cents, currency FROM student_course_purchases WHERE payment_id = %s",
        (payment_id,),
    )


def active(sql: Callable[..., list[tuple]], payment_id: str) -> list[bool]:
    return [r[0] for r in sql("SELECT is_active FROM student_course_purchases WHERE payment_id = %s", (payment_id,))]


def hold_pairs(database_url: str, pairs: list[dict]) -> psycopg.Connection:
    """An open transaction holding an uncommitted active purchase of each pair: a worker that
    inserts a purchase of one of these pairs waits, mid-task, until the transaction ends."""
    conn = psycopg.connect(database_url)
    for p in pairs:
        conn.execute(
            "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency) "
            "VALUES (gen_random_uuid(), %s, %s, %s, 1, 'INR')",
            (p["student_id"], p["course_id"], f"blocker_{uuid.uuid4().hex}"),
        )
    return conn


TERMINATE_WORKER_BACKENDS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'kc_tasks' "
    "AND datname = current_database() AND pid <> pg_backend_pid()"
)


def blocked_by(database_url: str, pid: int) -> int:
    """How many worker backends wait for a lock that backend `pid` holds."""
    return run_sql(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kc_tasks' AND %s = ANY(pg_blocking_pids(pid))",
        (pid,),
    )[0][0]


ROLES_SQL = Path(__file__).resolve().parents[1] / "kc_tasks" / "store" / "migrations" / "roles.sql"


def set_up_roles(url: str) -> None:
    """As an operator does: roles.sql as the superuser, then `kc-tasks migrate`."""
    # Imported here: tests/conftest.py imports this module before it sets DATABASE_URL.
    from kc_tasks.core.settings import normalize_database_url
    from kc_tasks.store.migrate import migrate

    run_sql(url, ROLES_SQL.read_text())
    migrate(normalize_database_url(url))
