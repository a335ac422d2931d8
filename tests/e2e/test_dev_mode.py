"""`kc-tasks dev` for a newcomer with nothing but Python: an embedded PostgreSQL, a
filesystem broker, the four processes, and a purchase made end to end."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.e2e.conftest import ROOT, free_port, wait_until

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))


def test_dev_mode_runs_everything_without_services(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Procfile", tmp_path / "Procfile")
    web_port, flower_port = free_port(), free_port()
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
        courses = f"{base}/students/{student}/courses"
        assert wait_until(lambda: httpx.get(courses).json() != [], timeout=30), log.read_text()[-3000:]
        assert httpx.get(courses).json()[0]["payment_id"] == "pay_dev"
        assert _ok(f"http://127.0.0.1:{flower_port}/")
    finally:
        os.kill(dev.pid, signal.SIGTERM)
        try:
            dev.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
    assert dev.returncode is not None
    assert not (tmp_path / ".kc-dev" / "pgdata" / "postmaster.pid").exists(), "the embedded PostgreSQL stopped"


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
