"""Shared test set-up: real PostgreSQL, RabbitMQ and Redis, never mocks of them.

A missing service fails the run at once (it is not a skip). Each test that needs a
database gets its own, copied from a migrated template (CREATE DATABASE ... TEMPLATE).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis
from kombu import Connection

from tests.servers import PgBouncer
from tests.services import AMQP, AMQP_VHOST, APP_DB, PG, REDIS, TEMPLATE_DB, admin, rabbitmqctl, run_sql

# The in-process Celery app (kc_tasks.app) reads these at import: set them first.
os.environ["DATABASE_URL"] = f"{PG}/{APP_DB}"
os.environ.setdefault("KC_RETRY_BACKOFF_MAX", "2")
# Celery lets CELERY_BROKER_URL override every app's broker argument, the clients' in these
# tests included: each app here is given its broker explicitly instead.
for _name in ("CELERY_BROKER_URL", "POSTGRES_URL", "POSTGRES_HOST"):
    os.environ.pop(_name, None)

pytest_plugins = ("celery.contrib.pytest",)


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
