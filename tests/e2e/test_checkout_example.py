"""examples/checkout/ in a real browser (headless Chromium): the example platform's server sells
its course at the providers' stand-in (kc_tasks/ops/dev_providers.py), the buyer pays, comes back,
and the page shows the course that kc_tasks' POST /checkouts/confirm granted. The stand-in's
webhook comes too: one purchase, in PostgreSQL, for each provider."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from kc_tasks.ops import dev_providers
from tests.builders import JWT_SECRET
from tests.harness import ROOT, Web, Workers, free_port, stop_group, wait_until
from tests.services import run_sql

EXAMPLE = ROOT / "examples" / "checkout" / "server.py"
COURSE = "3f6d1c52-6a0e-4d7b-9b43-5b2f7f0e8c11"  # the example's one course
RAZORPAY_WEBHOOK_SECRET = "example-razorpay-webhook-secret-" + secrets.token_hex(8)
STRIPE_WEBHOOK_SECRET = "whsec_" + secrets.token_hex(16)


@pytest.fixture
def provider() -> Iterator[dev_providers.StandIn]:
    keys = dev_providers.StandIn(
        razorpay_key_id="rzp_test_" + secrets.token_hex(7),
        razorpay_key_secret=secrets.token_hex(16),
        stripe_api_key="sk_test_" + secrets.token_hex(16),
    )
    with dev_providers.serve(keys) as served:
        yield served


@contextmanager
def start_platform(tmp_path: Path, web: Web, provider: dev_providers.StandIn, student: str) -> Iterator[str]:
    """The example's server, as its README runs it, for `student`; its base URL."""
    port = free_port()
    env = dict(
        os.environ,
        KC_TASKS_URL=web.base,
        KC_JWT_SECRET=JWT_SECRET,
        PLATFORM_STUDENT=student,
        PLATFORM_PORT=str(port),
        RAZORPAY_KEY_ID=provider.razorpay_key_id,
        RAZORPAY_KEY_SECRET=provider.razorpay_key_secret,
        RAZORPAY_API_URL=provider.url,
        RAZORPAY_CHECKOUT_JS=provider.url + "/v1/checkout.js",
        STRIPE_API_KEY=provider.stripe_api_key,
        STRIPE_API_URL=provider.url,
    )
    log = tmp_path / "platform.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _answers(base), timeout=30), log.read_text()
        yield base
    finally:
        stop_group(process)


@pytest.fixture
def platform(
    tmp_path: Path,
    database_url: str,
    rabbitmq_url: str,
    workers: Workers,
    webs: Callable[..., Web],
    provider: dev_providers.StandIn,
) -> Iterator[tuple[str, str]]:
    """kc_tasks (a worker, the web process with the stand-in's keys and webhook secrets), the
    stand-in's webhooks sent to it, and the example platform for a new student: (its URL, the
    student)."""
    workers.start(database_url, rabbitmq_url)
    web = webs(
        database_url,
        rabbitmq_url,
        KC_RAZORPAY_KEY_ID=provider.razorpay_key_id,
        KC_RAZORPAY_KEY_SECRET=provider.razorpay_key_secret,
        KC_RAZORPAY_API_URL=provider.url,
        KC_STRIPE_API_KEY=provider.stripe_api_key,
        KC_STRIPE_API_URL=provider.url,
        KC_RAZORPAY_WEBHOOK_SECRET=RAZORPAY_WEBHOOK_SECRET,
        KC_STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
    )
    provider.webhooks = dev_providers.Webhooks(web.base, RAZORPAY_WEBHOOK_SECRET, STRIPE_WEBHOOK_SECRET)
    student = str(uuid.uuid4())
    with start_platform(tmp_path, web, provider, student) as base:
        yield base, student


def test_the_razorpay_page_shows_the_course_after_checkout(
    database_url: str, browser: Browser, platform: tuple[str, str], provider: dev_providers.StandIn
) -> None:
    base, student = platform
    page = browser.new_page()
    page.goto(base + "/razorpay.html")
    page.get_by_role("button", name="Buy with Razorpay").click()
    checkout = page.get_by_role("dialog", name="Razorpay Checkout (development stand-in)")
    expect(checkout).to_contain_text("Kannada for beginners: 499.00 INR")
    checkout.get_by_role("button", name="Pay").click()
    _expect_the_course(page)
    [payment] = provider.razorpay_payments
    _assert_bought_once(database_url, student, payment["id"])


def test_the_stripe_success_page_shows_the_course_after_checkout(
    database_url: str, browser: Browser, platform: tuple[str, str], provider: dev_providers.StandIn
) -> None:
    base, student = platform
    page = browser.new_page()
    page.goto(base + "/stripe.html")
    page.get_by_role("button", name="Buy with Stripe").click()
    page.wait_for_url(provider.url + "/dev/stripe/checkout/*")
    expect(page.get_by_role("heading")).to_have_text("Pay 499.00 INR")
    page.get_by_role("button", name="Pay").click()
    [session] = provider.stripe_sessions.values()
    page.wait_for_url(f"{base}/stripe.html?session_id={session['id']}")
    _expect_the_course(page)
    _assert_bought_once(database_url, student, session["payment_intent"])


def _expect_the_course(page: Page) -> None:
    expect(page.locator("#result h2")).to_have_text("Your course: Kannada for beginners", timeout=30_000)


def _assert_bought_once(database_url: str, student: str, payment_id: str) -> None:
    """The purchase, once; the confirm's event and the webhook's both stored for its payment."""

    def events() -> list[tuple]:
        sql = "SELECT event_id LIKE 'confirm:%%' FROM payment_events WHERE payment_id = %s ORDER BY 1"
        return run_sql(database_url, sql, (payment_id,))

    assert wait_until(lambda: events() == [(False,), (True,)], timeout=30), events()
    held = run_sql(
        database_url,
        "SELECT course_id::text, payment_id, is_active FROM student_course_purchases WHERE student_id = %s",
        (student,),
    )
    assert held == [(COURSE, payment_id, True)]
    assert run_sql(database_url, "SELECT count(*) FROM duplicate_payments") == [(0,)]


def _answers(base: str) -> bool:
    try:
        return httpx.get(base + "/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
