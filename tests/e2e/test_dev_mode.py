"""`kc-tasks dev` for a newcomer with nothing but Python: an embedded PostgreSQL, a
filesystem broker, the four processes, and a purchase made end to end; with --providers, a
Razorpay order and a Stripe Checkout Session created, paid and confirmed at the stand-in of the
providers' APIs, no account at either."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import razorpay

from tests.harness import ROOT, free_port, wait_until
from tests.services import run_sql

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))


def test_dev_mode_runs_everything_without_services(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Procfile", tmp_path / "Procfile")
    web_port, flower_port, providers_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "KC_WEBHOOK_SECRET")}
    env["PYTHONUNBUFFERED"] = "1"
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        dev = subprocess.Popen(
            [
                KC_TASKS,
                "dev",
                "--embedded-db",
                "--filesystem-broker",
                "--port",
                str(web_port),
                "--flower-port",
                str(flower_port),
                "--providers",
                "--providers-port",
                str(providers_port),
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{web_port}"
    try:
        assert wait_until(lambda: _ok(base + "/healthz") and " ready." in log.read_text(), timeout=90), log.read_text()[
            -3000:
        ]
        text = log.read_text()
        assert "DEVELOPMENT MODE" in text
        assert "an embedded one runs in" in text and "filesystem transport stands in" in text
        assert "Flower's live view and remote control do not work with it" in text
        assert f"webhook on {base}/webhooks/payments" in text
        secret = (tmp_path / ".kc-dev" / "webhook-secret").read_text().strip()
        assert secret not in text, "the secret is in a file, not in the log"

        student, course = str(uuid.uuid4()), str(uuid.uuid4())
        body = json.dumps(
            {
                "id": "evt_dev",
                "type": "payment.succeeded",
                "data": {
                    "payment_id": "pay_dev",
                    "student_id": student,
                    "course_id": course,
                    "amount_cents": 100,
                    "currency": "INR",
                },
            }
        ).encode()
        t = int(time.time())
        signature = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        posted = httpx.post(
            base + "/webhooks/payments",
            content=body,
            headers={"Content-Type": "application/json", "X-KC-Signature": f"t={t},v1={signature}"},
        )
        assert posted.status_code == 202
        # The credentials it prints: a token of the example student, Flower's, the page's.
        text = log.read_text()
        token = re.search(r"Authorization: Bearer ([\w.-]+)", text).group(1)
        example = re.search(r"courses of the example student ([0-9a-f-]{36})", text).group(1)
        mine = httpx.get(f"{base}/students/{example}/courses", headers={"Authorization": f"Bearer {token}"})
        assert mine.status_code == 200 and mine.json() == []
        assert (
            httpx.get(f"{base}/students/{student}/courses", headers={"Authorization": f"Bearer {token}"}).status_code
            == 403
        )
        jwt_secret = (tmp_path / ".kc-dev" / "jwt-secret").read_text().strip()
        minted = subprocess.run(
            [KC_TASKS, "token", "--student", student],
            env=dict(env, KC_JWT_SECRET=jwt_secret),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        courses = f"{base}/students/{student}/courses"
        headers = {"Authorization": f"Bearer {minted}"}
        assert wait_until(lambda: httpx.get(courses, headers=headers).json() != [], timeout=30), text[-3000:]
        assert httpx.get(courses, headers=headers).json()[0]["course_id"] == course
        flower_user, flower_password = re.search(r"Flower: +user (\S+) +password (\S+)", text).groups()
        admin_user, admin_password = re.search(r"dead letters: user (\S+) +password (\S+)", text).groups()
        flower = f"http://127.0.0.1:{flower_port}"
        assert _ok(flower + "/healthcheck")
        for path in ("/", "/api/workers"):
            anonymous = httpx.get(flower + path, timeout=5, headers={"Origin": "http://evil.example"})
            assert anonymous.status_code == 401, path
            assert anonymous.headers.get("access-control-allow-origin") != "*"
        assert httpx.get(flower + "/", auth=(flower_user, flower_password), timeout=5).status_code == 200
        page = httpx.get(f"{base}/admin/dead-letters", auth=(admin_user, admin_password), timeout=10)
        assert page.status_code == 200, "the page it advertises is served"
        assert httpx.get(f"{base}/admin/dead-letters", timeout=10).status_code == 401
        _assert_prometheus_scrapes_the_processes(text)
        pgdata = tmp_path / ".kc-dev" / "pgdata"
        _assert_the_checkout_story_runs_offline(tmp_path, text, base, student, headers, pgdata)
    finally:
        os.kill(dev.pid, signal.SIGTERM)
        try:
            dev.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
    assert dev.returncode is not None
    assert not (tmp_path / ".kc-dev" / "pgdata" / "postmaster.pid").exists(), "the embedded PostgreSQL stopped"


def _assert_the_checkout_story_runs_offline(
    folder: Path, text: str, base: str, student: str, headers: dict[str, str], pgdata: Path
) -> None:
    """With --providers: the platform's server creates a Razorpay order and a Stripe Checkout
    Session at the stand-in, with the keys it wrote for the example platform; the buyer pays;
    the buyer's return is confirmed and the course is the student's. The stand-in's webhooks
    come too, and are repeats: one purchase each."""
    assert re.search(r"Razorpay's and Stripe's APIs stand in on http://127\.0\.0\.1:\d+", text)
    platform = dict(
        line.split("=", 1) for line in (folder / ".kc-dev" / "platform.env").read_text().splitlines() if "=" in line
    )
    assert platform["KC_TASKS_URL"] == base
    for secret in ("RAZORPAY_KEY_SECRET", "STRIPE_API_KEY", "KC_JWT_SECRET"):
        assert platform[secret] not in text, f"{secret} is in a file, not in the log"
    courses = f"{base}/students/{student}/courses"
    confirm = f"{base}/checkouts/confirm"

    razorpay_course = str(uuid.uuid4())
    order = httpx.post(
        platform["RAZORPAY_API_URL"] + "/v1/orders",
        json={"amount": 49900, "currency": "INR", "notes": {"student_id": student, "course_id": razorpay_course}},
        auth=(platform["RAZORPAY_KEY_ID"], platform["RAZORPAY_KEY_SECRET"]),
    )
    assert order.status_code == 200 and order.json()["status"] == "created", order.text
    paid = httpx.post(
        f"{platform['RAZORPAY_API_URL']}/dev/razorpay/orders/{order.json()['id']}/pay",
        params={"key_id": platform["RAZORPAY_KEY_ID"]},
    )
    assert paid.status_code == 200, paid.text
    handler = paid.json()
    assert handler["razorpay_order_id"] == order.json()["id"]
    # Signed as Razorpay signs Checkout's response: its library says so.
    message = f"{handler['razorpay_order_id']}|{handler['razorpay_payment_id']}"
    assert razorpay.Utility().verify_signature(message, handler["razorpay_signature"], platform["RAZORPAY_KEY_SECRET"])
    answer = httpx.post(confirm, json={"provider": "razorpay", **handler}, headers=headers, timeout=30)
    # 200 once the worker made it within KC_CONFIRM_WAIT_MS; the filesystem broker may be slower.
    assert answer.status_code in (200, 202), answer.text

    stripe_course = str(uuid.uuid4())
    session = httpx.post(
        platform["STRIPE_API_URL"] + "/v1/checkout/sessions",
        data={
            "mode": "payment",
            "success_url": "http://platform.example/success?session_id={CHECKOUT_SESSION_ID}",
            "line_items[0][price_data][currency]": "inr",
            "line_items[0][price_data][unit_amount]": "99900",
            "line_items[0][price_data][product_data][name]": "A course",
            "line_items[0][quantity]": "1",
            "metadata[student_id]": student,
            "metadata[course_id]": stripe_course,
        },
        headers={"Authorization": f"Bearer {platform['STRIPE_API_KEY']}"},
    )
    assert session.status_code == 200 and session.json()["status"] == "open", session.text
    assert httpx.get(session.json()["url"]).status_code == 200, "the hosted page the buyer is sent to"
    returned = httpx.post(session.json()["url"])
    assert returned.status_code == 303
    session_id = session.json()["id"]
    assert returned.headers["Location"] == f"http://platform.example/success?session_id={session_id}"
    answer = httpx.post(confirm, json={"provider": "stripe", "session_id": session_id}, headers=headers, timeout=30)
    assert answer.status_code in (200, 202), answer.text

    def bought() -> set[str]:
        return {c["course_id"] for c in httpx.get(courses, headers=headers).json()}

    assert wait_until(lambda: {razorpay_course, stripe_course} <= bought(), timeout=60), bought()
    database = f"postgresql://postgres@/kc_tasks?host={pgdata}"

    def stored(course: str) -> list[tuple]:
        return run_sql(
            database,
            "SELECT e.event_id LIKE 'confirm:%%' FROM payment_events e JOIN student_course_purchases p "
            "ON p.payment_id = e.payment_id WHERE p.course_id = %s ORDER BY 1",
            (course,),
        )

    for course in (razorpay_course, stripe_course):
        # The confirm's event and the webhook's, of one payment: one purchase.
        assert wait_until(lambda course=course: stored(course) == [(False,), (True,)], timeout=30), stored(course)
        held = run_sql(database, "SELECT count(*) FROM student_course_purchases WHERE course_id = %s", (course,))
        assert held == [(1,)]
    assert run_sql(database, "SELECT count(*) FROM duplicate_payments") == [(0,)]


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _assert_prometheus_scrapes_the_processes(text: str) -> None:
    """With Prometheus installed (make test installs it), it runs beside the processes and
    says where; the web's and the worker's metrics are among its healthy targets."""
    if shutil.which("prometheus") is None:
        assert "install Prometheus (make prometheus) to graph them" in text
        return
    prometheus = re.search(r"Prometheus on (http://127\.0\.0\.1:\d+)", text).group(1)

    def healthy() -> set[str]:
        try:
            targets = httpx.get(prometheus + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError):
            return set()
        return {t["labels"]["job"] for t in targets if t["health"] == "up"}

    assert wait_until(lambda: {"kc-web", "kc-worker", "flower"} <= healthy(), timeout=30), healthy()
