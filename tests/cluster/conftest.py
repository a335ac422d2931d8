"""Cluster fixtures: three RabbitMQ nodes of the installed server, clustered once per session,
and a Redis primary, replica and Sentinel of the installed redis-server; each the run's own,
on ports of its own, stopped at the end. Tests that stop a node start it again.

These tests run apart from the others (`cluster` marker: `make test` runs them after the
parallel suite, alone), so that the nodes start once and have the machine's two cores.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.cluster.rabbitmq_nodes import Cluster
from tests.e2e.conftest import webs, workers  # noqa: F401  (fixtures)
from tests.services import RUN_ID


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: runs against brokers of its own (three clustered RabbitMQ nodes, a Redis Sentinel) that the "
        "session starts once; make test runs these after the parallel suite, alone",
    )


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[Cluster]:
    cluster = Cluster.start(RUN_ID)
    yield cluster
    cluster.destroy()


@pytest.fixture
def vhost(rabbitmq_cluster: Cluster) -> Iterator[str]:
    """A vhost of the cluster for this test, whose default queue type is quorum: a queue
    declared without `x-queue-type` (the contract's plain client line) is a quorum queue."""
    name = f"kc_cluster_{uuid.uuid4().hex[:8]}"
    rabbitmq_cluster.add_vhost(name, default_queue_type="quorum")
    yield name
    rabbitmq_cluster.delete_vhost(name)
