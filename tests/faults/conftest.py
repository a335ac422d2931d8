"""Fault-suite fixtures: the end-to-end ones (real workers, RabbitMQ and Redis), and the
`disruptive` marker for tests that disturb a service other test runs on this machine share."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.e2e.conftest import broker_url, rabbitmq_url, webs, workers  # noqa: F401  (fixtures)
from tests.harness import wait_until
from tests.services import PG


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "disruptive: restarts or disturbs a service shared by the whole machine (a PostgreSQL restart, "
        "RabbitMQ connections closed); part of the default run and of CI, deselect with -m 'not disruptive'",
    )


def postgresql_answers() -> bool:
    try:
        psycopg.connect(f"{PG}/postgres", connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


@pytest.fixture
def restart_postgresql() -> Iterator[Callable[[], None]]:
    """Restarts PostgreSQL when called; whatever happens, PostgreSQL answers again at the end."""

    def restart() -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert wait_until(postgresql_answers, timeout=60), "PostgreSQL did not come back"

    yield restart
    if not postgresql_answers():
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"], check=False, timeout=120)
        assert wait_until(postgresql_answers, timeout=60), "PostgreSQL did not come back"
