"""Integration fixtures: kc_tasks.app run by celery.contrib.pytest's in-process worker.

One worker serves the whole session (celery_session_worker): starting and stopping one per
test costs ten seconds each. Each test starts with empty tables and an empty queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.conftest import AMQP, purge_amqp, run_sql


@pytest.fixture(scope="session")
def celery_session_app(app_database: str) -> Celery:
    """The real kc_tasks app, on the test vhost and the app database."""
    from kc_tasks import app

    app.conf.broker_url = AMQP
    purge_amqp()
    return app


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    return {"perform_ping_check": False, "queues": ("purchases",), "loglevel": "INFO"}


@pytest.fixture
def celery_app(celery_session_app: Celery, celery_session_worker: Any, app_database: str) -> Iterator[Celery]:
    """The app, with its worker running, empty tables and an empty queue."""
    run_sql(app_database, "TRUNCATE student_course_purchases, duplicate_payments, event_outbox")
    purge_amqp()
    yield celery_session_app
