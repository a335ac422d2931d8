"""Shared test set-up: real PostgreSQL, RabbitMQ and Redis, never mocks of them.

A missing service fails the run at once (it is not a skip). Each test that needs a
database gets its own, copied from a migrated template (CREATE DATABASE ... TEMPLATE).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis
from kombu import Connection

from tests.servers import PgBouncer

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

# The in-process Celery app (kc_tasks.app) reads these at import: set them first.
os.environ["DATABASE_URL"] = f"{PG}/{APP_DB}"
os.environ.setdefault("KC_RETRY_BACKOFF_MAX", "2")
# Celery lets CELERY_BROKER_URL override every app's broker argument, the clients' in these
# tests included: each app here is given its broker explicitly instead.
for _name in ("CELERY_BROKER_URL", "POSTGRES_URL", "POSTGRES_HOST"):
    os.environ.pop(_name, None)

pytest_plugins = ("celery.contrib.pytest",)


def rabbitmqctl(*args: str, check: bool = True) -> str:
    """`rabbitmqctl -q ARGS...` on this machine's RabbitMQ; its output."""
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=check).stdout


def vhost_connections(vhost: str = AMQP_VHOST, column: str = "pid") -> list[str]:
    """`column` (pid, state...) of each of RabbitMQ's connections to `vhost`. `list_connections`
    lists every connection of the node whatever `-p` says: the other test processes' ones too."""
    listed = rabbitmqctl("list_connections", "vhost", column, "--no-table-headers", check=False)
    return [value for name, _, value in (line.partition("\t") for line in listed.splitlines()) if name == vhost]


def pytest_sessionstart(session: pytest.Session) -> None:
    problems = []
    try:
        psycopg.connect(f"{PG}/postgres", connect_timeout=3).close()
    except psycopg.Error as exc:
        problems.append(f"PostgreSQL at {PG}: {exc}")
    rabbitmqctl("add_vhost", AMQP_VHOST, check=False)
    rabbitmqctl("set_permissions", "-p", AMQP_VHOST, "guest", ".*", ".*", ".*", check=False)
    try:
        with Connection(AMQP, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        problems.append(f"RabbitMQ at {AMQP}: {exc}")
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        problems.append(f"Redis at {REDIS}: {exc}")
    if problems:
        pytest.exit(
            "services the tests need are down (start them; see README):\n  " + "\n  ".join(problems), returncode=3
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test run both through PgBouncer and on both brokers runs through PgBouncer on RabbitMQ
    only: the pooler stands between kc_tasks and PostgreSQL, whichever broker carries the tasks,
    and each such run costs a worker's and a web process's start."""
    left_out = [item for item in items if "-pgbouncer" in item.name and "[redis-" in item.name]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if AMQP_VHOST.startswith("kc_test_") and "KC_TEST_AMQP" not in os.environ:
        rabbitmqctl("delete_vhost", AMQP_VHOST, check=False)


def admin(sql: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def run_sql(url: str, sql: str, params: tuple | dict | None = None) -> list[tuple]:
    """Run one statement in autocommit on `url`; its rows, if any."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _migrate(url: str) -> None:
    from kc_tasks.core.settings import normalize_database_url
    from kc_tasks.store.migrate import migrate

    migrate(normalize_database_url(url))


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database with every migration applied, copied by each test that needs one."""
    _migrate(f"{PG}/{TEMPLATE_DB}")
    yield TEMPLATE_DB
    admin(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"kc_t_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield f"{PG}/{name}"
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """The URL of a database that does not exist yet."""
    name = f"kc_e_{uuid.uuid4().hex[:12]}"
    yield f"{PG}/{name}"
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def sql(database_url: str) -> Callable[..., list[tuple]]:
    return lambda statement, params=None: run_sql(database_url, statement, params)


@pytest.fixture(scope="session")
def app_database() -> Iterator[str]:
    """The database of the in-process kc_tasks.app (DATABASE_URL at import): migrated once."""
    _migrate(os.environ["DATABASE_URL"])
    yield os.environ["DATABASE_URL"]
    admin(f"DROP DATABASE IF EXISTS {APP_DB} WITH (FORCE)")


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of the test server, for this test process."""
    bouncer = PgBouncer().start()
    yield bouncer
    bouncer.stop()


@pytest.fixture(params=["direct", "pgbouncer"])
def db_route(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """How the code under test reaches a test database: directly, or through PgBouncer in
    transaction pooling mode, as managed PostgreSQL offerings put it in front. The same test runs
    once each way; the test itself checks what it sees directly."""
    if request.param == "direct":
        return lambda url: url
    return request.getfixturevalue("pgbouncer").url


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
