"""Fault-suite fixtures: the end-to-end ones (real workers, RabbitMQ and Redis), and the
`disruptive` marker for tests that disturb a service other test runs on this machine share."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import broker_url, rabbitmq_url, workers  # noqa: F401  (fixtures)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "disruptive: restarts or disturbs a service shared by the whole machine (a PostgreSQL restart, "
        "RabbitMQ connections closed); part of the default run and of CI, deselect with -m 'not disruptive'",
    )
