"""What an operator sees: log lines with task and payment ids, JSON logs, no secrets, and a
warm shutdown on SIGTERM that finishes the tasks in progress."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable

import httpx
import psycopg

from tests.builders import purchase
from tests.harness import Client, Web, Workers, wait_until
from tests.services import count, hold_pairs


def test_json_logs_carry_the_task_and_payment_ids_and_no_secret(
    database_url: str, workers: Workers, rabbitmq_url: str
) -> None:
    db_password = f"pg-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE kc_log_test LOGIN SUPERUSER PASSWORD '{db_password}'")
    try:
        url = database_url.replace("postgres@", f"kc_log_test:{db_password}@")
        worker = workers.start(
            url, rabbitmq_url, args=("-l", "INFO"), KC_LOG_FORMAT="json", KC_WEBHOOK_SECRET="whsec-not-for-logs"
        )
        orders = [purchase() for _ in range(5)] + [dict(purchase(), currency="bad")]
        ids = Client(rabbitmq_url).send(orders)
        assert wait_until(lambda: count(database_url) == 5 and "gave up" in worker.text(), timeout=30)
        worker.stop()
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS kc_log_test")
    lines = [json.loads(line) for line in worker.text().splitlines() if line.startswith("{")]
    assert lines, "the worker logs JSON lines"
    assert all({"time", "level", "logger", "process", "message"} <= set(line) for line in lines)
    in_tasks = [line for line in lines if line["process"].startswith("ForkPoolWorker")]
    by_task = {line["task_id"]: line["payment_id"] for line in in_tasks}
    assert by_task == {task_id: order["payment_id"] for task_id, order in zip(ids, orders, strict=True)}
    assert all("task_id" in line for line in in_tasks), "every line a task writes names its task"
    log = worker.text()
    assert db_password not in log and "whsec-not-for-logs" not in log and "guest:guest" not in log


def test_the_web_process_logs_json_lines_too_uvicorn_s_own_included(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web]
) -> None:
    """With KC_LOG_FORMAT=json every line the web process writes is a JSON object: kc_tasks'
    own, and uvicorn's (start, every request's access line, shutdown), which a log shipper
    reading JSON would otherwise drop or choke on."""
    web = webs(database_url, rabbitmq_url, KC_LOG_FORMAT="json")
    assert httpx.get(web.base + "/healthz").status_code == 200
    unsigned = httpx.post(web.base + "/webhooks/payments", content=b"{}")
    assert unsigned.status_code == 401
    assert wait_until(lambda: "/webhooks/payments" in web.text())
    web.stop()

    text = web.text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # raises on a line of text
    assert all({"time", "level", "logger", "process", "message"} <= set(line) for line in lines), text
    access = [line["message"] for line in lines if line["logger"] == "uvicorn.access"]
    assert any('"GET /healthz HTTP/1.1" 200' in m for m in access), access
    assert any('"POST /webhooks/payments HTTP/1.1" 401' in m for m in access), access
    assert any(line["logger"] == "uvicorn.error" and "Started server process" in line["message"] for line in lines)


def test_sigterm_lets_the_tasks_in_progress_finish(database_url: str, workers: Workers, rabbitmq_url: str) -> None:
    """Tasks wait on a row lock held by the test when SIGTERM arrives; the lock is released a
    moment later. A warm shutdown finishes them, acknowledges them and exits cleanly."""
    worker = workers.start(database_url, rabbitmq_url, concurrency=2)
    blocked = [purchase() for _ in range(2)]
    holder = hold_pairs(database_url, blocked)
    try:
        Client(rabbitmq_url).send(blocked)
        assert wait_until(lambda: "received" in worker.text() and worker.text().count("received") == 2)
        assert wait_until(lambda: _waiting_on_locks(database_url) == 2, timeout=20)
        os.kill(worker.process.pid, signal.SIGTERM)  # to the main process, as docker stop or honcho do
        assert wait_until(lambda: "Warm shutdown" in worker.text(), timeout=10)
        assert worker.process.poll() is None, "it waits for the tasks in progress"
    finally:
        holder.rollback()
        holder.close()
    assert worker.process.wait(30) == 0
    assert count(database_url) == 2
    assert worker.text().count("succeeded") == 2
    with Client(rabbitmq_url).app.connection_for_read() as conn:
        assert conn.default_channel.queue_declare("purchases", passive=True).message_count == 0, "nothing left"


def _waiting_on_locks(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kc_tasks' "
            "AND datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]
