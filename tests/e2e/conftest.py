"""End-to-end fixtures: real `celery -A kc_tasks worker` processes and a client that knows
only the task's name (it does not import kc_tasks), on RabbitMQ and on Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from celery import Celery
from playwright.sync_api import Browser, sync_playwright

from tests.conftest import AMQP, REDIS, purge_amqp, purge_redis, run_sql

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


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


def stop_group(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group (a warm shutdown), SIGKILL if it outlasts `grace`."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and children, mid-task, no warm shutdown."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        stop_group(self.process)


@dataclass
class Workers:
    tmp: Path
    started: list[Worker] = field(default_factory=list)

    def start(
        self, database_url: str, broker_url: str, concurrency: int = 2, args: tuple[str, ...] = (), **env: str
    ) -> Worker:
        """Start `celery -A kc_tasks worker` and wait until it says it is ready."""
        log = self.tmp / f"worker{len(self.started)}.log"
        environment = dict(
            os.environ, DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, PYTHONUNBUFFERED="1", **env
        )
        with log.open("w") as out:
            process = subprocess.Popen(
                [
                    CELERY,
                    "-A",
                    "kc_tasks",
                    "worker",
                    "-c",
                    str(concurrency),
                    "-l",
                    "INFO",
                    "-n",
                    f"e2e{len(self.started)}-{uuid.uuid4().hex[:6]}@%h",
                    "--without-mingle",
                    "--without-gossip",
                    *args,
                ],
                cwd=ROOT,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(process, log)
        self.started.append(worker)
        deadline = time.monotonic() + 60
        while " ready." not in worker.text():
            if process.poll() is not None or time.monotonic() > deadline:
                worker.stop()
                raise AssertionError(f"worker did not start:\n{worker.text()[-3000:]}")
            time.sleep(0.2)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    pool.stop_all()


class Client:
    """The payment service's side: send_task by name, from an app that knows nothing else."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery(broker=broker_url)

    def send(self, kwargs_list: list[dict], **options: object) -> list[str]:
        ids = []
        with self.app.producer_or_acquire() as producer:
            for kwargs in kwargs_list:
                result = self.app.send_task(
                    "kc_tasks.create_purchase", kwargs=kwargs, queue="purchases", producer=producer, **options
                )
                ids.append(result.id)
        return ids


@pytest.fixture
def client(broker_url: str) -> Client:
    return Client(broker_url)


def purchase(student: str | None = None, course: str | None = None, payment: str | None = None) -> dict:
    return {
        "payment_id": payment or f"pay_{uuid.uuid4().hex}",
        "student_id": student or str(uuid.uuid4()),
        "course_id": course or str(uuid.uuid4()),
        "amount_cents": 4999,
        "currency": "INR",
    }


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def count(database_url: str, where: str = "true", params: tuple | None = None) -> int:
    return run_sql(database_url, f"SELECT count(*) FROM student_course_purchases WHERE {where}", params)[0][0]


UVICORN = str(Path(sys.executable).with_name("uvicorn"))
WEBHOOK_SECRET = "e2e-webhook-secret-of-at-least-32-bytes"
# The read API's HS256 key in every web process these tests start (unless a test sets its own).
JWT_SECRET = "e2e-jwt-secret-of-at-least-thirty-two-bytes"


def reader_headers() -> dict[str, str]:
    """A bearer token of a service that reads any student's courses (scope purchases:read)."""
    from kc_tasks.web.auth import mint

    return {"Authorization": "Bearer " + mint(JWT_SECRET, "e2e-reader", 600, "kc_tasks", scope="purchases:read")}


@dataclass
class Web:
    process: subprocess.Popen
    log: Path
    base: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_group(self.process)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_web(tmp: Path, database_url: str, broker_url: str, **env: str) -> Web:
    """The Procfile's web process: uvicorn serving kc_tasks.web.app on a free port."""
    port = free_port()
    log = tmp / f"web-{port}.log"
    environment = dict(
        os.environ,
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        KC_WEBHOOK_SECRET=WEBHOOK_SECRET,
        PORT=str(port),
    )
    environment.setdefault("KC_JWT_SECRET", JWT_SECRET)
    environment.update(env)
    with log.open("w") as out:
        process = subprocess.Popen(
            [UVICORN, "--factory", "kc_tasks.web:create_app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    web = Web(process, log, f"http://127.0.0.1:{port}")
    import httpx

    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(web.base + "/healthz", timeout=1).status_code == 200:
                return web
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            web.stop()
            raise AssertionError(f"web did not start:\n{web.text()[-3000:]}")
        time.sleep(0.2)


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


# A worker's environment in which a statement waiting for a lock longer than this fails with
# lock_not_available (55P03, libpq's PGOPTIONS): with a lock held by the test, a transient failure
# of that one task, retried, not an outage.
SHORT_LOCK_TIMEOUT = {"PGOPTIONS": "-c lock_timeout=100"}


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
