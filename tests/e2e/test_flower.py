"""Flower as the Procfile runs it: a real worker, RabbitMQ, basic auth, Prometheus metrics,
a real headless Chromium, and task history that survives a restart (--persistent, --db)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Browser
from playwright.sync_api import Error as PlaywrightError

from tests.builders import purchase
from tests.harness import FLOWER_USER as USER
from tests.harness import ROOT, TASK, Client, Flower, Workers, wait_until
from tests.services import count


def test_flower_shows_the_purchases_behind_basic_auth_and_keeps_them_across_a_restart(
    database_url: str,
    rabbitmq_url: str,
    workers: Workers,
    flower: Callable[[], Flower],
    browser: Browser,
) -> None:
    worker = workers.start(database_url, rabbitmq_url)
    # "... INFO/MainProcess] e2e0-1a2b3c@host ready."
    name = next(line.split()[-2] for line in worker.text().splitlines() if line.rstrip().endswith(" ready."))
    web = flower()
    # Events sent before Flower listens are lost to it: wait until it hears the worker.
    assert wait_until(lambda: name in web.seen_workers(), timeout=30), web.text()[-3000:]

    data = [purchase() for _ in range(10)]
    task_ids = Client(rabbitmq_url).send(data)
    assert wait_until(lambda: count(database_url) == 10, timeout=60), worker.text()[-3000:]

    # (a) the API, with credentials: every task, its kwargs and its result
    def succeeded() -> dict[str, dict]:
        return {i: t for i, t in web.tasks().items() if t["state"] == "SUCCESS"}

    assert wait_until(lambda: len(succeeded()) == 10, timeout=30), web.tasks()
    tasks = succeeded()
    assert sorted(tasks) == sorted(task_ids)
    for task_id, kwargs in zip(task_ids, data, strict=True):
        assert kwargs["payment_id"] in tasks[task_id]["kwargs"]
        assert "purchase_id" in tasks[task_id]["result"]
        assert tasks[task_id]["name"] == TASK
    api_workers = web.get("/api/workers?refresh=1")
    assert api_workers.status_code == 200 and name in api_workers.json(), api_workers.text

    # (b) without credentials (or with a wrong password): 401, page and API alike
    for path in ("/", "/tasks", "/workers", f"/api/tasks?taskname={TASK}", "/api/workers"):
        anonymous = web.get(path, auth=False)
        assert anonymous.status_code == 401, path
        if not path.startswith("/api/"):  # the API's 401 carries no challenge: send credentials up front
            assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="flower"', path
        assert httpx.get(web.base + path, auth=(USER, "wrong"), timeout=10).status_code == 401, path
    assert data[0]["payment_id"] not in web.get(f"/api/tasks?taskname={TASK}", auth=False).text

    # (c) Prometheus: open to a scraper without credentials, like /healthcheck
    metrics = web.get("/metrics", auth=False)
    assert metrics.status_code == 200 and "flower_" in metrics.text
    assert f'flower_events_total{{task="{TASK}",type="task-succeeded",worker="{name}"}} 10.0' in metrics.text

    # (d) a real browser: the tasks page lists the purchases with their payment ids
    context = browser.new_context(
        http_credentials={"username": USER, "password": web.auth[1]}, viewport={"width": 1920, "height": 900}
    )
    page = context.new_page()
    assert page.goto(web.base + "/tasks").status == 200
    rows = page.locator("#tasks-table tbody tr", has_text=TASK)
    rows.first.wait_for()
    assert wait_until(lambda: rows.count() == 10, timeout=15), page.content()
    assert page.locator("#tasks-table tbody tr", has_text=data[0]["payment_id"]).count() == 1
    if os.environ.get("KC_SCREENSHOTS") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "docs" / "flower.png"), full_page=True)
    page.get_by_placeholder("state:FAILURE worker:celery@hostname").fill(data[3]["payment_id"])
    searched = page.locator("#tasks-table tbody tr")
    assert wait_until(lambda: searched.count() == 1 and data[3]["payment_id"] in searched.inner_text(), timeout=15)
    assert "SUCCESS" in searched.inner_text() and "purchase_id" in searched.inner_text()

    assert page.goto(web.base + "/workers").status == 200
    page.locator("body", has_text=name).wait_for()
    context.close()

    # Without credentials Chromium gets the 401 challenge, has nothing to answer it with and
    # gives up on the navigation (net::ERR_INVALID_AUTH_CREDENTIALS): the page never renders.
    anonymous = browser.new_context()
    for path in ("/tasks", "/workers"):
        page = anonymous.new_page()
        with (
            page.expect_response(web.base + path) as challenge,
            pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"),
        ):
            page.goto(web.base + path)
        assert challenge.value.status == 401, path
    anonymous.close()

    # (e) a restart with the same FLOWER_DB: the history is still there
    web.stop()
    assert web.process.returncode == 0, web.text()[-3000:]
    started = time.monotonic()
    web = flower()
    restored = web.tasks()
    assert sorted(restored) == sorted(task_ids), f"after {time.monotonic() - started:.1f} s: {restored}"
    assert all(t["state"] == "SUCCESS" and "purchase_id" in t["result"] for t in restored.values())
    assert web.get("/metrics", auth=False).status_code == 200
    assert web.get(f"/api/tasks?search={data[5]['payment_id']}").json().keys() == {task_ids[5]}
