"""`make stack`: docker/compose.yaml up on this machine's engine (Grafana's profile left out),
every service healthy, a signed webhook through the stack's web made into a course that the
read API shows, Prometheus scraping every kc_tasks target with the alert rules loaded, then
every process stopped by SIGTERM within its grace period, and the stack taken down.

The tests run in file order on one stack; the last stops it."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import yaml

from kc_tasks.web.auth import mint
from tests.builders import purchase
from tests.harness import wait_until
from tests.stack.compose import Stack, dependencies, one_shot
from tests.stack.engine import ROOT, engine, exited, healthy, logs, state, stopped_cleanly

RULES = ROOT / "docker" / "prometheus" / "kc_tasks.rules.yml"
SCRAPE = ROOT / "docker" / "prometheus" / "prometheus.yml"


@pytest.fixture(scope="module")
def stack(kc_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"))
    try:
        stack.up()
    except AssertionError as exc:
        stack.down()
        raise AssertionError(f"{exc}\n{stack.logs()}") from None
    yield stack
    stack.down()
    leftover = engine("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={stack.project}").stdout
    assert not leftover.split(), "down removed every container"


def test_every_service_is_healthy_and_every_one_shot_done(stack: Stack) -> None:
    for name, spec in stack.services.items():
        container = stack.container(name)
        if one_shot(spec):
            assert exited(container) == 0, f"{name}:\n{logs(container)}"
        elif spec.get("healthcheck", {}).get("disable") or not checks(stack, name):
            assert state(container)["Status"] == "running", f"{name}:\n{logs(container)}"
        else:
            # As the engine judges it: a check that fails is run again (compose's `retries`)
            # before the container counts as unhealthy; a worker just ready may miss one ping.
            assert healthy(container, timeout=120), f"{name}'s healthcheck fails:\n{logs(container)}"
    assert "grafana" not in stack.services, "Grafana (no stand-in) is left out by its profile"
    assert dependencies(stack.services["web"])["migrate"] == "service_completed_successfully"


def checks(stack: Stack, name: str) -> bool:
    """Whether the service's container has a healthcheck (its own, or the image's)."""
    return bool((engine_config(stack, name).get("Healthcheck") or {}).get("Test"))


def engine_config(stack: Stack, name: str) -> dict:
    [info] = json.loads(engine("inspect", "--type", "container", stack.container(name)).stdout)
    return info["Config"]


def test_a_signed_webhook_through_the_stacks_web_becomes_a_course_the_read_api_shows(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.port('WEB_HOST_PORT')}"
    data = purchase()
    body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": "payment.succeeded", "data": data}).encode()
    t = int(time.time())
    digest = hmac.new(stack.env["KC_WEBHOOK_SECRET"].encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()

    posted = httpx.post(
        base + "/webhooks/payments",
        content=body,
        headers={"Content-Type": "application/json", "X-KC-Signature": f"t={t},v1={digest}"},
    )
    assert posted.status_code == 202, posted.text

    token = mint(stack.env["KC_JWT_SECRET"], "stack-test", 600, "kc_tasks", scope="purchases:read")
    courses = f"{base}/students/{data['student_id']}/courses"

    def listed() -> list[dict]:
        answer = httpx.get(courses, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        return list(answer.json())

    assert wait_until(lambda: listed() != [], timeout=60), stack.logs()
    [course] = listed()
    assert (course["course_id"], course["payment_id"]) == (data["course_id"], data["payment_id"])
    assert httpx.get(courses).status_code == 401, "the read API wants its bearer token"


def test_prometheus_scrapes_every_kc_tasks_target_and_loads_the_alert_rules(stack: Stack) -> None:
    api = f"http://127.0.0.1:{stack.port('PROMETHEUS_HOST_PORT')}/api/v1"
    jobs = {job["job_name"] for job in yaml.safe_load(SCRAPE.read_text())["scrape_configs"]}
    assert {"kc-web", "kc-worker", "flower", "rabbitmq", "rabbitmq-queues"} <= jobs

    def targets() -> dict[str, list[str]]:
        active = httpx.get(f"{api}/targets").json()["data"]["activeTargets"]
        health: dict[str, list[str]] = {}
        for target in active:
            health.setdefault(target["labels"]["job"], []).append(target["health"])
        return health

    # One scrape of each (every 15 s): each job has a target found and answering.
    assert wait_until(lambda: all(targets().get(job) == ["up"] for job in jobs), timeout=90), targets()

    groups = httpx.get(f"{api}/rules").json()["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    written = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert loaded == written, "Prometheus evaluates every alert rule of docker/prometheus/"
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"])

    # The web process's own metrics, scraped from inside the compose network.
    web_up = httpx.get(f"{api}/query", params={"query": 'up{job="kc-web"}'}).json()["data"]["result"]
    assert [sample["value"][1] for sample in web_up] == ["1"]


def test_every_process_stops_by_sigterm_within_its_grace_period(stack: Stack) -> None:
    """`stop` sends SIGTERM and waits each service's stop_grace_period (the worker's 60 s: a
    warm shutdown) before a SIGKILL: each ends by itself, none is killed."""
    stack.compose("stop")
    for name, spec in stack.services.items():
        if one_shot(spec):
            continue
        container = stack.container(name)
        assert stopped_cleanly(container), f"{name}: {state(container)}\n{logs(container)}"
    assert "Warm shutdown" in logs(stack.container("worker"))
    assert "Finished server process" in logs(stack.container("web"))
