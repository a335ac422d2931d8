"""The dead-letters page: real uvicorn, a real worker, RabbitMQ, and a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Browser

from tests.builders import purchase, reader_headers
from tests.harness import ROOT, SHORT_LOCK_TIMEOUT, Client, Web, Workers, wait_until
from tests.services import count, hold_pairs

USER, PASSWORD = "ops", "correct horse battery staple"
ADMIN = {"KC_ADMIN_USER": USER, "KC_ADMIN_PASSWORD": PASSWORD}
PAGE = "/admin/dead-letters"
SCRIPT = "<script>window.__pwned=1</script>"
KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))


def dead_letters(broker_url: str, database_url: str) -> list[dict]:
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, DATABASE_URL=database_url)
    result = subprocess.run(
        [KC_TASKS, "dlq", "list", "--json"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def form_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "the page carries a form token"
    return match.group(1)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_the_page_asks_for_credentials_and_is_off_without_them(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    web = webs(database_url, rabbitmq_url, **ADMIN)
    anonymous = httpx.get(web.base + PAGE)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="kc_tasks dead letters"'
    assert httpx.get(web.base + PAGE, auth=(USER, "wrong")).status_code == 401
    assert httpx.get(web.base + PAGE, auth=("root", PASSWORD)).status_code == 401
    assert httpx.post(web.base + PAGE + "/replay-all").status_code == 401
    page = httpx.get(web.base + PAGE, auth=(USER, PASSWORD))
    assert page.status_code == 200 and "0 dead letters in purchases.dlq" in page.text
    assert page.headers["Content-Security-Policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"
    # Failed sign-ins are logged, the user name quoted so that it cannot forge a line.
    forged = httpx.get(web.base + PAGE, headers={"Authorization": "Basic " + _b64("ops\nFAKE admin ok:x")})
    assert forged.status_code == 401
    assert "admin: failed sign-in as 'ops" in web.text()
    assert "\nFAKE admin ok" not in web.text()
    assert PAGE not in httpx.get(web.base + "/openapi.json").text, "the page is not in the API schema"

    off = webs(database_url, rabbitmq_url)
    assert httpx.get(off.base + PAGE, auth=(USER, PASSWORD)).status_code == 404
    assert httpx.post(off.base + PAGE + "/replay-all", auth=(USER, PASSWORD)).status_code == 404


def test_a_post_needs_a_token_and_the_same_origin(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    web = webs(database_url, rabbitmq_url, **ADMIN)
    token = form_token(httpx.get(web.base + PAGE + "?replayed=0", auth=(USER, PASSWORD)).text)
    url = web.base + PAGE + "/replay-all"

    def post(data: dict[str, str], **headers: str) -> httpx.Response:
        return httpx.post(url, data=data, headers=headers, auth=(USER, PASSWORD))

    assert post({}).status_code == 403
    assert post({"csrf": "0" * 64}).status_code == 403
    assert post({"csrf": token}, Origin="http://evil.example").status_code == 403
    assert post({"csrf": token}, Origin="null").status_code == 403
    assert post({"csrf": token}, Referer="http://evil.example/admin/dead-letters").status_code == 403
    done = post({"csrf": token}, Origin=web.base, Referer=web.base + PAGE)
    assert done.status_code == 303 and done.headers["Location"] == PAGE + "?replayed=0&failed=0"


def test_an_operator_inspects_and_replays_a_dead_letter_in_a_browser(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web], browser: Browser
) -> None:
    data = dict(purchase(), metadata={"note": SCRIPT})
    holder = hold_pairs(database_url, [data])  # its pair's lock outlasts the lock timeout: given up
    broken = workers.start(database_url, rabbitmq_url, KC_MAX_RETRIES="0", **SHORT_LOCK_TIMEOUT)
    [task_id] = Client(rabbitmq_url).send([data])
    assert wait_until(lambda: [d["task_id"] for d in dead_letters(rabbitmq_url, database_url)] == [task_id], 60)
    broken.stop()
    holder.rollback()
    holder.close()
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **ADMIN)

    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    page = context.new_page()
    page.goto(web.base + PAGE)
    row = page.locator("tbody tr", has_text=task_id)
    assert page.locator("#count").inner_text() == "1 dead letter in purchases.dlq"
    assert "retries exhausted" in row.inner_text() and data["payment_id"] in row.inner_text()
    assert "DatabaseBusy" in row.inner_text()
    if os.environ.get("KC_SCREENSHOTS") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "docs" / "dead-letters-page.png"), full_page=True)

    row.get_by_role("link", name=task_id).click()
    page.wait_for_url(re.compile(r"/admin/dead-letters/[0-9a-f-]{36}$"))
    assert SCRIPT in page.locator("#kwargs").inner_text(), "the payload is shown as text"
    assert "Traceback" in page.locator("#traceback").inner_text()
    assert page.evaluate("typeof window.__pwned") == "undefined", "and never run"
    assert page.locator("script").count() == 0

    page.go_back()
    page.locator("tbody tr", has_text=task_id).get_by_role("button", name="Replay").click()
    page.wait_for_url(re.compile(r"\?replayed=1&failed=0$"))
    assert page.locator(".flash").inner_text() == "replayed 1"
    assert wait_until(lambda: count(database_url) == 1, timeout=30), "the replayed purchase is made"
    courses = httpx.get(f"{web.base}/students/{data['student_id']}/courses", headers=reader_headers()).json()
    assert [c["payment_id"] for c in courses] == [data["payment_id"]]
    page.reload()
    assert page.locator("#count").inner_text() == "0 dead letters in purchases.dlq"
    assert page.locator("tbody tr").count() == 0
    assert dead_letters(rabbitmq_url, database_url) == []
    context.close()
