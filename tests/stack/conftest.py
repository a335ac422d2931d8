"""The image and the compose stack, run for real on this machine's container engine.

They run only when asked for by path (`pytest tests/stack`, `make test-stack`, `make stack`):
building images and bringing a stack up takes minutes and both cores, so the suite's own run
(`pytest` with no path, `make test`) leaves them out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import rabbitmq_url  # noqa: F401  (the end-to-end tests' fixture: RabbitMQ, empty queues)
from tests.stack.engine import IMAGE, containers

HERE = Path(__file__).resolve().parent


def asked_for(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if asked_for(config):
        return
    left_out = [item for item in items if HERE in Path(str(item.path)).parents]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]


@pytest.fixture(scope="session")
def kc_image() -> str:
    """`make image`: kc-tasks:local built (or found in the engine's cache)."""
    containers("image")
    return IMAGE
