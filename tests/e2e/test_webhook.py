"""From a signed HTTP call to a committed purchase, through real uvicorn and a real worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
from celery import Celery

from kc_tasks.core.sending import task_id_for
from tests.builders import WEBHOOK_SECRET, event, purchase, reader_headers, signed
from tests.e2e.proxy import Proxy
from tests.harness import Web, Workers, wait_until
from tests.services import AMQP, broker_idle, count, queued, run_sql


def test_a_signed_payment_becomes_a_course_the_student_sees(
    database_url: str, workers: Workers, broker_url: str, webs: Callable[..., Web], db_route: Callable[[str], str]
) -> None:
    workers.start(db_route(database_url), broker_url)
    web = webs(db_route(database_url), broker_url)
    data = purchase()
    body = event(data)
    posted = httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body))
    assert posted.status_code == 202
    task_id = posted.json()["task_id"]
    courses_url = f"{web.base}/students/{data['student_id']}/courses"
    assert wait_until(lambda: httpx.get(courses_url, headers=reader_headers()).json() != [], timeout=20)
    [course] = httpx.get(courses_url, headers=reader_headers()).json()
    assert course["course_id"] == data["course_id"] and course["payment_id"] == data["payment_id"]
    assert wait_until(lambda: broker_idle(broker_url))
    workers.stop_all()
    # A provider's retry of the same event: answered from the inbox, not enqueued again. The
    # answer comes after the broker confirmed whatever was sent, so with no worker left to
    # take it, a second task would be in the queue now.
    replay = httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body))
    assert replay.status_code == 202 and replay.json()["task_id"] == task_id, "the same payment maps to one task id"
    assert queued(broker_url) == 0, "the repeat was enqueued again"
    assert run_sql(database_url, "SELECT type, status FROM payment_events") == [("payment.succeeded", "enqueued")]
    assert count(database_url) == 1
    log = web.text()
    assert WEBHOOK_SECRET not in log and signed(body)["X-KC-Signature"].split("v1=")[1] not in log


def test_bad_requests_are_refused_with_the_right_status(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    web = webs(database_url, rabbitmq_url)
    url = web.base + "/webhooks/payments"
    data = purchase()
    body = event(data)

    def post(content: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=content, headers=headers)

    tampered = body.replace(b"4999", b"0001")
    assert post(tampered, signed(body)).status_code == 401
    assert post(body, {"Content-Type": "application/json"}).status_code == 401
    assert post(body, signed(body, secret="not the secret")).status_code == 401
    assert post(body, signed(body, t=int(time.time()) - 301)).status_code == 401
    assert post(body, signed(body, t=int(time.time()) + 600)).status_code == 401
    garbage = b"{not json"
    assert post(garbage, {"Content-Type": "application/json"}).status_code == 401, "unsigned: not even parsed"
    assert post(garbage, signed(garbage)).status_code == 422
    missing = event({k: v for k, v in data.items() if k != "course_id"})
    refused = post(missing, signed(missing))
    assert refused.status_code == 422 and "course_id" in refused.json()["detail"]
    wrong = event(dict(data, amount_cents=-5))
    assert "amount_cents" in post(wrong, signed(wrong)).json()["detail"]
    big = event(dict(data, metadata={"x": "y" * 70_000}))
    assert post(big, signed(big)).status_code == 413
    other = event(data, type_="payment.created")
    ignored = post(other, signed(other))
    assert ignored.status_code == 200 and ignored.json() == {"status": "ignored", "type": "payment.created"}
    assert httpx.get(f"{web.base}/students/not-a-uuid/courses").status_code == 422
    assert httpx.get(web.base + "/readyz").json() == {"ready": True, "database": "ok", "broker": "ok"}
    # No worker runs here: what a refused request left behind would still be in the inbox or
    # the queue. Only the verified, well-formed event of another type is stored, and ignored.
    assert queued(rabbitmq_url) == 0, "a refused request was enqueued"
    assert run_sql(database_url, "SELECT type, status FROM payment_events") == [("payment.created", "ignored")]


def test_a_broker_outage_is_answered_from_the_inbox_and_loses_nothing(
    database_url: str, workers: Workers, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    proxy = Proxy("127.0.0.1", 5672)
    proxy.restore()
    vhost = AMQP.rsplit("/", 1)[1]
    web = webs(database_url, f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}")
    sent: list[tuple[dict, int]] = []
    for i in range(30):
        if i == 10:
            proxy.cut()
        if i == 20:
            proxy.restore()
        data = purchase()
        body = event(data)
        status = httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body), timeout=30).status_code
        sent.append((data, status))
    statuses = [s for _, s in sent]
    assert statuses[:10] == [202] * 10
    assert set(statuses[10:20]) == {202}, "stored in the inbox, enqueued by the relay once the broker answers"
    assert httpx.get(web.base + "/readyz").status_code == 200
    workers.start(database_url, rabbitmq_url)
    Celery(broker=rabbitmq_url).send_task("kc_tasks.relay_inbox", kwargs={"older_than": 0}, queue="purchases")
    accepted = [d for d, _ in sent]
    assert wait_until(lambda: count(database_url) == len(accepted), timeout=30)
    assert wait_until(lambda: broker_idle(rabbitmq_url)), "nothing more was queued"
    assert count(database_url) == len(accepted), "each accepted payment once"
    assert statuses[20:] == [202] * 10, "the web process reconnects by itself"
    proxy.cut()


def test_the_web_process_refuses_to_start_without_a_secret(database_url: str, tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.harness import ROOT, UVICORN

    env = {k: v for k, v in os.environ.items() if k != "KC_WEBHOOK_SECRET"}
    env["DATABASE_URL"] = database_url
    result = subprocess.run(
        [UVICORN, "--factory", "kc_tasks.web:create_app", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "refusing to start: KC_WEBHOOK_SECRET is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_signed_refund_revokes_the_purchase(
    database_url: str, workers: Workers, broker_url: str, webs: Callable[..., Web], db_route: Callable[[str], str]
) -> None:
    workers.start(db_route(database_url), broker_url)
    web = webs(db_route(database_url), broker_url)
    data = purchase()
    body = event(data)
    assert httpx.post(web.base + "/webhooks/payments", content=body, headers=signed(body)).status_code == 202
    assert wait_until(lambda: count(database_url, "is_active") == 1, timeout=20)
    refund = event({"payment_id": data["payment_id"], "refund_id": "rfnd_1"}, type_="payment.refunded")
    revoked = httpx.post(web.base + "/webhooks/payments", content=refund, headers=signed(refund))
    assert revoked.status_code == 202 and revoked.json()["task_id"] != task_id_for(data["payment_id"])
    assert wait_until(lambda: count(database_url, "NOT is_active") == 1, timeout=20)
    # The web marks what it enqueued moments after answering (many events in one UPDATE).
    assert wait_until(
        lambda: (
            run_sql(database_url, "SELECT provider, type, status FROM payment_events ORDER BY received_at")
            == [("kc", "payment.succeeded", "enqueued"), ("kc", "payment.refunded", "enqueued")]
        )
    )
