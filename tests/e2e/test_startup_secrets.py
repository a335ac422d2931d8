"""The web process refuses weak secrets and an ambiguous DATABASE_URL at start-up: one line on
stderr naming the variable, never its value."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.builders import WEBHOOK_SECRET
from tests.harness import ROOT, UVICORN


def start(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "DATABASE_URL"))}
    environment.update(KC_WEBHOOK_SECRET=WEBHOOK_SECRET, DATABASE_URL="postgresql://postgres@127.0.0.1:5432/x")
    environment.update(env)
    return subprocess.run(
        [UVICORN, "--factory", "kc_tasks.web:create_app", "--port", "0"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "says", "secret"),
    [
        ({"KC_WEBHOOK_SECRET": "short-secret-9q"}, "KC_WEBHOOK_SECRET is shorter than 32 bytes", "short-secret-9q"),
        ({"KC_JWT_SECRET": "jwt-short-7x"}, "KC_JWT_SECRET is shorter than 32 bytes", "jwt-short-7x"),
        (
            {"KC_ADMIN_USER": "ops", "KC_ADMIN_PASSWORD": "pw-short-4k"},
            "KC_ADMIN_PASSWORD is shorter than 16 characters",
            "pw-short-4k",
        ),
        (
            {"DATABASE_URL": "postgresql://kc:s3cr@tpart@db.internal:5432/kc_tasks"},
            "percent-encode it",
            "tpart",
        ),
        ({"DATABASE_URL": "postgresql://kc:pa:ss@db:notaport/kc"}, "is not a valid URL", "pa:ss"),
        # Razorpay's signature has no timestamp and its dashboard takes any text: the secret is
        # the only gate on a forged order.paid.
        (
            {"KC_RAZORPAY_WEBHOOK_SECRET": "rzp-dashboard-pw-9"},
            "KC_RAZORPAY_WEBHOOK_SECRET is shorter than 32 characters; Razorpay's dashboard takes any text",
            "rzp-dashboard-pw-9",
        ),
        (
            {"KC_RAZORPAY_WEBHOOK_SECRET": "a-long-razorpay-secret-of-40-characters!, rzp-old-pw-3"},
            "python3 -c",
            "rzp-old-pw-3",
        ),
    ],
    ids=["webhook", "jwt", "admin", "at-in-password", "bad-port", "razorpay", "razorpay-rotation"],
)
def test_a_weak_secret_or_ambiguous_url_stops_the_web_process(env: dict[str, str], says: str, secret: str) -> None:
    result = start(**env)
    assert result.returncode != 0
    if "DATABASE_URL" in env:  # read when the package is imported: Celery's configuration error
        assert says in result.stderr.splitlines()[-1], result.stderr[-2000:]
    else:
        refusals = [line for line in result.stderr.splitlines() if "refusing to start" in line]
        assert len(refusals) == 1 and says in refusals[0], result.stderr[-2000:]
    assert secret not in result.stderr + result.stdout
