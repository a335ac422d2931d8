"""Integration fixtures: kc_tasks.app run by celery.contrib.pytest's in-process worker.

One worker serves the whole session (celery_session_worker): starting and stopping one per
test costs ten seconds each. It has a RabbitMQ vhost of its own, so that it never takes the
messages of the end-to-end tests' workers. Each test starts with empty tables and an empty queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.signals import task_failure, task_retry, task_success
from sqlalchemy.engine import Engine

from kc_tasks.core.settings import normalize_database_url
from kc_tasks.store import db, roles
from kc_tasks.store.index_guard import IndexGuard
from tests.harness import Seen
from tests.services import AMQP, AMQP_VHOST, admin, purge_amqp, rabbitmqctl, run_sql, set_up_roles

APP_VHOST = f"{AMQP_VHOST}_app"
APP_AMQP = AMQP.rsplit("/", 1)[0] + "/" + APP_VHOST


@pytest.fixture(scope="session")
def celery_session_app(app_database: str) -> Iterator[Celery]:
    """The real kc_tasks app, on a vhost of its own and the app database."""
    from kc_tasks import app

    rabbitmqctl("add_vhost", APP_VHOST, check=False)
    rabbitmqctl("set_permissions", "-p", APP_VHOST, "guest", ".*", ".*", ".*", check=False)
    app.conf.broker_url = APP_AMQP
    purge_amqp(url=APP_AMQP)
    yield app
    rabbitmqctl("delete_vhost", APP_VHOST, check=False)


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    # The in-thread worker stops at the session's end: Celery gives it 10 s, which a loaded
    # machine (the suite runs on two cores beside PostgreSQL and RabbitMQ) can overrun.
    return {"perform_ping_check": False, "queues": ("purchases",), "loglevel": "INFO", "shutdown_timeout": 60.0}


@pytest.fixture
def celery_app(celery_session_app: Celery, celery_session_worker: Any, app_database: str) -> Iterator[Celery]:
    """The app, with its worker running, empty tables and an empty queue."""
    run_sql(
        app_database,
        "TRUNCATE student_course_purchases, duplicate_payments, event_outbox, revocations, payment_events",
    )
    purge_amqp(url=APP_AMQP)
    yield celery_session_app


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on this test's own database, a few connections for concurrent work."""
    engine = db.make_engine(normalize_database_url(database_url), pool_size=4)
    yield engine
    engine.dispose()


@pytest.fixture
def broker() -> Iterator[Celery]:
    """A client of the test vhost's RabbitMQ, with purchases and its DLQ empty before and after."""
    purge_amqp()
    app = Celery(broker=AMQP)
    yield app
    purge_amqp()


@pytest.fixture
def seen() -> Iterator[Seen]:
    s = Seen()
    task_retry.connect(s.on_retry, weak=False)
    task_failure.connect(s.on_failure, weak=False)
    task_success.connect(s.on_success, weak=False)
    yield s
    task_retry.disconnect(s.on_retry)
    task_failure.disconnect(s.on_failure)
    task_success.disconnect(s.on_success)


@pytest.fixture
def guard() -> IndexGuard:
    return IndexGuard(ttl=300)


@pytest.fixture
def login(database_url: str) -> Iterator[Callable[..., str]]:
    """login(group, url=the test database) -> that URL as a new login role in the group."""
    made: list[str] = []

    def make(group: str, url: str = database_url) -> str:
        name = f"kc_t_{group.removeprefix('kc_')}_{uuid.uuid4().hex[:8]}"
        admin(f"CREATE ROLE {name} LOGIN IN ROLE {group}")
        if group == roles.OWNER:
            admin(f"ALTER ROLE {name} SET role = '{roles.OWNER}'")  # what it creates is kc_owner's
        made.append(name)
        return url.replace("postgres@", f"{name}@", 1)

    yield make
    for name in made:
        admin(f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
def roles_db(database_url: str) -> str:
    set_up_roles(database_url)
    return database_url
