"""The kc-tasks image (`make image`) run against this machine's PostgreSQL and RabbitMQ, on the
host's network: its web process takes a signed webhook, its worker makes the purchase, both
as the image's non-root user, each checked by its healthcheck and stopped by SIGTERM."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.builders import JWT_SECRET, WEBHOOK_SECRET, event, purchase, reader_headers, signed
from tests.harness import free_port, wait_until
from tests.services import count
from tests.stack.engine import checked, engine, healthy, inspect, logs, state, stopped_cleanly

ROOT = Path(__file__).resolve().parents[2]


def procfile_line(process: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            return command.strip()
    raise AssertionError(f"the Procfile has no {process}")


@pytest.fixture
def run(kc_image: str) -> Iterator[Callable[..., str]]:
    """Start a container of the image on the host's network; each is removed at the end."""
    started: list[str] = []

    def start(*command: str, **env: str) -> str:
        name = f"kc-image-test-{uuid.uuid4().hex[:8]}"
        options = [f"--env={key}={value}" for key, value in env.items()]
        engine("run", "-d", "--name", name, "--network", "host", *options, kc_image, *command)
        started.append(name)
        return name

    yield start
    for name in started:
        engine("rm", "-f", "-t", "0", name, check=False)


def test_the_image_runs_as_its_non_root_user(kc_image: str) -> None:
    config = engine("image", "inspect", "--format", "{{.Config.User}}", kc_image).stdout.strip()
    ran = engine("run", "--rm", kc_image, "id", "-u").stdout.split()[-1]

    assert config == "kc"
    assert ran != "0", "the processes of the image run as kc, uid 10001"


def test_the_images_web_and_worker_take_a_signed_webhook_to_a_purchase(
    run: Callable[..., str], database_url: str, rabbitmq_url: str
) -> None:
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": rabbitmq_url,
        "KC_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "KC_JWT_SECRET": JWT_SECRET,
        "PORT": str(port),
    }
    # As docker/compose.yaml runs them: the Procfile's web line under `sh -c "exec ..."`, the
    # image's own command (the Procfile's worker).
    web = run("sh", "-c", f"exec {procfile_line('web')}", **env)
    worker = run(**env)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(base + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return state(web)["Status"] != "running"

    assert wait_until(answers, timeout=60) and state(web)["Status"] == "running", logs(web)
    assert healthy(worker), f"the worker's healthcheck (its ping) never passed:\n{logs(worker)}"

    data = purchase()
    body = event(data)
    posted = httpx.post(base + "/webhooks/payments", content=body, headers=signed(body))
    assert posted.status_code == 202, posted.text
    courses = f"{base}/students/{data['student_id']}/courses"
    assert wait_until(lambda: httpx.get(courses, headers=reader_headers()).json() != [], timeout=60), logs(worker)
    [course] = httpx.get(courses, headers=reader_headers()).json()
    assert (course["course_id"], course["payment_id"]) == (data["course_id"], data["payment_id"])
    assert count(database_url) == 1

    # SIGTERM, then a SIGKILL only past the grace period: both end by themselves well before.
    engine("stop", "-t", "30", web)
    engine("stop", "-t", "60", worker)
    assert stopped_cleanly(web), f"{state(web)}\n{logs(web)}"
    assert "Finished server process" in logs(web)
    assert stopped_cleanly(worker) and state(worker)["ExitCode"] == 0, f"{state(worker)}\n{logs(worker)}"
    assert "Warm shutdown" in logs(worker)
    assert WEBHOOK_SECRET not in logs(web) + logs(worker)


def test_the_images_healthcheck_fails_when_its_worker_is_not_there(
    run: Callable[..., str], database_url: str, rabbitmq_url: str
) -> None:
    """The check asks the container's own worker: a container of the image whose worker is not
    running (here, it sleeps) is not healthy, whatever else answers on the broker."""
    idle = run("sleep", "600", DATABASE_URL=database_url, CELERY_BROKER_URL=rabbitmq_url)
    check = inspect(idle)["Config"]["Healthcheck"]["Test"]

    assert "inspect ping" in shlex.join(check)
    assert state(idle)["Status"] == "running"
    assert not checked(idle), "a container with no worker in it was found healthy"
