"""End-to-end fixtures: real `celery -A kc_tasks worker` processes and a client that knows
only the task's name (it does not import kc_tasks), on RabbitMQ and on Redis. The processes
themselves are tests/harness.py's."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.harness import (
    BIN,
    FLOWER_USER,
    ROOT,
    Client,
    Flower,
    Web,
    Workers,
    free_port,
    procfile,
    start_web,
    wait_until,
)
from tests.services import AMQP, REDIS, purge_amqp, purge_redis


@pytest.fixture(params=["rabbitmq", "redis"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each end-to-end test runs once on RabbitMQ and once on Redis, with empty queues."""
    url = AMQP if request.param == "rabbitmq" else REDIS
    purge_amqp() if request.param == "rabbitmq" else purge_redis()
    yield url
    purge_amqp() if request.param == "rabbitmq" else purge_redis()


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """RabbitMQ only, with empty queues."""
    purge_amqp()
    yield AMQP
    purge_amqp()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def client(broker_url: str) -> Client:
    return Client(broker_url)


@pytest.fixture
def webs(tmp_path: Path) -> Iterator[Callable[..., Web]]:
    """start_web(), with every process it started stopped at the end, whatever happened."""
    started: list[Web] = []

    def start(database_url: str, broker_url: str, **env: str) -> Web:
        started.append(start_web(tmp_path, database_url, broker_url, **env))
        return started[-1]

    yield start
    for web in started:
        web.stop()


# Debian's Chromium, headless, driven by Playwright (never a downloaded browser); without the
# background-networking flags it tries hosts this machine cannot reach.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def flower(tmp_path: Path, database_url: str, rabbitmq_url: str) -> Iterator[Callable[[], Flower]]:
    """start() runs the Procfile's flower line (`sh -c "exec <line>"`) on one port and one
    FLOWER_DB; every process it started is stopped at the end, whatever happened."""
    port = free_port()
    auth = (FLOWER_USER, secrets.token_hex(12))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(
        PATH=BIN + os.pathsep + env.get("PATH", ""),
        FLOWER_PORT=str(port),
        FLOWER_BASIC_AUTH=":".join(auth),
        FLOWER_DB=str(tmp_path / "flower.db"),
        CELERY_BROKER_URL=rabbitmq_url,
        DATABASE_URL=database_url,
        PYTHONUNBUFFERED="1",
    )
    started: list[Flower] = []

    def start() -> Flower:
        log = tmp_path / f"flower{len(started)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                ["sh", "-c", "exec " + procfile("flower")],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(Flower(process, log, f"http://127.0.0.1:{port}", auth))
        flower = started[-1]

        def up() -> bool:
            try:
                return flower.get("/healthcheck", auth=False).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(lambda: up() or process.poll() is not None, timeout=60) or not up():
            raise AssertionError(f"flower did not start:\n{flower.text()[-3000:]}")
        return flower

    yield start
    for flower in started:
        flower.stop()
