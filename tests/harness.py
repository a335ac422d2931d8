"""The tests' harness: the processes they start as the Procfile and an operator would (`celery -A
kc_tasks worker`, uvicorn, Flower, the `kc-tasks` command, the Node.js example), the clients
that talk to them (a Celery client that knows only the task's name, a webhook sender, an
events consumer), and waiting for what they do."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from celery import Celery
from kombu import Connection, Exchange, Queue

from tests import provider_api_server as api
from tests import provider_samples as s
from tests.builders import JWT_SECRET, WEBHOOK_SECRET, reader_headers

if TYPE_CHECKING:  # kc_tasks itself is imported where it is used: its app reads DATABASE_URL at import
    from sqlalchemy.engine import Engine

    from kc_tasks.core.settings import Settings
    from kc_tasks.payments import reconciler

ROOT = Path(__file__).resolve().parents[1]


CELERY = str(Path(sys.executable).with_name("celery"))


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


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


UVICORN = str(Path(sys.executable).with_name("uvicorn"))


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


# A worker's environment in which a statement waiting for a lock longer than this fails with
# lock_not_available (55P03, libpq's PGOPTIONS): with a lock held by the test, a transient failure
# of that one task, retried, not an outage.
SHORT_LOCK_TIMEOUT = {"PGOPTIONS": "-c lock_timeout=100"}


KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))


def kc(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`kc-tasks ARGS...` without this process's DATABASE_URL or POSTGRES_* settings: `env`'s own."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "POSTGRES_"))}
    environment.update(env)
    return subprocess.run([KC_TASKS, *args], env=environment, capture_output=True, text=True, timeout=120)


def kc_on(
    broker_url: str,
    *args: str,
    database_url: str = "postgresql://postgres@127.0.0.1:5432/unused",
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`kc-tasks ARGS...` on this broker (and database, if it needs one), `stdin` on its input."""
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, DATABASE_URL=database_url)
    return subprocess.run(
        [KC_TASKS, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, input=stdin
    )


def dead(broker_url: str) -> list[dict]:
    result = kc_on(broker_url, "dlq", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def post_razorpay(
    web: Web, event: dict[str, Any], event_id: str | None = None, secret: str = s.RAZORPAY_SECRET
) -> httpx.Response:
    body = s.encode(event)
    return httpx.post(
        web.base + "/webhooks/razorpay", content=body, headers=s.razorpay_headers(body, secret, event_id), timeout=30
    )


def post_stripe(web: Web, event: dict[str, Any], secret: str = s.STRIPE_SECRET) -> httpx.Response:
    body = s.encode(event)
    return httpx.post(web.base + "/webhooks/stripe", content=body, headers=s.stripe_headers(body, secret), timeout=30)


def courses_of(web: Web, student: str) -> list[str]:
    """The course ids the read API shows a student."""
    answer = httpx.get(f"{web.base}/students/{student}/courses", headers=reader_headers(), timeout=30)
    assert answer.status_code == 200, answer.text
    return [course["course_id"] for course in answer.json()]


def kc_tasks_command(database_url: str, broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url)
    return subprocess.run([KC_TASKS, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def kc_quorum(broker_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`kc-tasks ARGS...` on this broker, KC_QUEUE_TYPE=quorum unless `env` says otherwise."""
    environment = dict(
        os.environ,
        CELERY_BROKER_URL=broker_url,
        DATABASE_URL="postgresql://postgres@127.0.0.1:5432/unused",
        KC_QUEUE_TYPE="quorum",
    )
    environment.update(env)
    return subprocess.run([KC_TASKS, *args], env=environment, capture_output=True, text=True, timeout=120, cwd=ROOT)


EXAMPLE = ROOT / "examples" / "node"


def node(broker_url: str, *args: str) -> str:
    assert shutil.which("node"), "Node.js is required (make test installs the example with npm ci)"
    assert (EXAMPLE / "node_modules" / "celery-node").is_dir(), "run `npm ci` in examples/node (make test does)"
    done = subprocess.run(
        ["node", "enqueue.js", *args],
        cwd=EXAMPLE,
        env=dict(os.environ, CELERY_BROKER_URL=broker_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


EVENTS = Exchange("kc.events", type="topic", durable=True)


# A test's own message through kc.events, never counted as an event (Consumer.caught_up).
MARKER = "test.marker"


class Consumer:
    """A downstream service: its own queue bound to kc.events, deduplicating by event id."""

    def __init__(self, broker_url: str) -> None:
        self.queue = Queue(
            f"test-events-{uuid.uuid4().hex[:8]}", EVENTS, routing_key="purchase.#", durable=False, auto_delete=False
        )
        self.received: list[dict] = []
        self.markers: set[str] = set()
        self._conn = Connection(broker_url)
        self._conn.connect()
        self.queue(self._conn.default_channel).declare()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with Connection(self._conn.as_uri(include_password=True)) as conn:
            with conn.Consumer(self.queue, callbacks=[self._on_message], accept=["json"]):
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=0.5)
                    except TimeoutError:
                        pass

    def _on_message(self, body: dict, message) -> None:  # type: ignore[no-untyped-def]
        if body.get("type") == MARKER:
            self.markers.add(body["id"])
        else:
            self.received.append(body)
        message.ack()

    def caught_up(self) -> bool:
        """Publish a marker into kc.events and wait until it arrives: the queue delivers in
        order, so every event the broker had taken before it has arrived too."""
        marker = str(uuid.uuid4())
        with Connection(self._conn.as_uri(include_password=True)) as conn:
            conn.Producer().publish(
                {"id": marker, "type": MARKER}, exchange=EVENTS, routing_key="purchase.test-marker", declare=[EVENTS]
            )
        return wait_until(lambda: marker in self.markers, timeout=10)

    def unique(self) -> dict[str, dict]:
        return {e["id"]: e for e in self.received}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.queue(self._conn.default_channel).delete()
        self._conn.release()


TASK = "kc_tasks.create_purchase"


FLOWER_USER = "kc"


BIN = str(Path(sys.executable).parent)


def procfile(kind: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == kind:
            return command.strip()
    raise AssertionError(f"the Procfile has no {kind!r} process")


@dataclass
class Flower:
    process: subprocess.Popen
    log: Path
    base: str
    auth: tuple[str, str]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, auth: bool = True) -> httpx.Response:
        return httpx.get(self.base + path, auth=self.auth if auth else None, timeout=10)

    def tasks(self) -> dict[str, dict]:
        response = self.get(f"/api/tasks?taskname={TASK}")
        assert response.status_code == 200, response.text
        return response.json()

    def seen_workers(self) -> list[str]:
        """Workers Flower has heard events from (the workers page's data)."""
        try:
            response = self.get("/workers?json=1")
        except httpx.HTTPError:
            return []
        return [w["hostname"] for w in response.json()["data"]] if response.status_code == 200 else []

    def stop(self) -> None:
        """SIGTERM to the process group: Flower saves its state (--db) on the way out."""
        stop_group(self.process)


class Seen:
    """What the worker reported through Celery's signals, keyed by task id."""

    def __init__(self) -> None:
        self.retries: list[str] = []
        self.failures: dict[str, BaseException] = {}
        self.results: dict[str, Any] = {}

    def on_retry(self, request: Any = None, **_: Any) -> None:
        self.retries.append(request.id)

    def on_failure(self, task_id: str = "", exception: BaseException | None = None, **_: Any) -> None:
        self.failures[task_id] = exception  # type: ignore[assignment]

    def on_success(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        self.results[sender.request.id] = result

    def wait(self, task_id: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while task_id not in self.results and task_id not in self.failures:
            assert time.monotonic() < deadline, f"task {task_id} did not finish"
            time.sleep(0.05)


def settings_for(provider: api.StandIn, **overrides: str) -> Settings:
    """kc_tasks' settings for the providers' APIs served by `provider`."""
    from kc_tasks.core.settings import Settings

    env = {
        "KC_RAZORPAY_KEY_ID": api.RAZORPAY_KEY_ID,
        "KC_RAZORPAY_KEY_SECRET": api.RAZORPAY_KEY_SECRET,
        "KC_STRIPE_API_KEY": api.STRIPE_API_KEY,
        "KC_RAZORPAY_API_URL": provider.url,
        "KC_STRIPE_API_URL": provider.url,
        **overrides,
    }
    return Settings.from_env(env)


def reconcile(
    engine: Engine, app: Celery, provider: api.StandIn, name: str, since: int = 24 * 3600, **options: object
) -> reconciler.Summary:
    """A reconciliation of provider `name`'s payments of the last `since` seconds, against `provider`."""
    from kc_tasks.payments import reconciler

    client = reconciler.api_for(settings_for(provider), name, read_timeout=float(options.pop("read_timeout", 5.0)))
    client._sleep = lambda seconds: None  # Retry-After: 0 and the backoff need no real wait here
    try:
        return reconciler.run(engine, app, client, reconciler.window(since), **options)  # type: ignore[arg-type]
    finally:
        client.close()
