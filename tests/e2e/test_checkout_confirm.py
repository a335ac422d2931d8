"""POST /checkouts/confirm end to end: a real web process (uvicorn) and real workers, the
providers' APIs served by the local stand-in (tests/provider_api_server.py). The course is
granted on the buyer's return, by the webhook's rules, through the inbox: the webhook that
comes before or after it is a repeat, one purchase, one payment."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kc_tasks.payments.inbox import task_id_for
from kc_tasks.web.auth import mint
from tests import provider_api_server as api
from tests import provider_samples as s
from tests.builders import JWT_SECRET, SECRETS
from tests.harness import Web, Worker, Workers, free_port, post_razorpay, post_stripe, wait_until
from tests.services import run_sql


@pytest.fixture
def provider() -> Iterator[api.StandIn]:
    with api.serve() as served:
        yield served


def keys(provider: api.StandIn, **extra: str) -> dict[str, str]:
    return {
        "KC_RAZORPAY_KEY_ID": api.RAZORPAY_KEY_ID,
        "KC_RAZORPAY_KEY_SECRET": api.RAZORPAY_KEY_SECRET,
        "KC_RAZORPAY_API_URL": provider.url,
        "KC_STRIPE_API_KEY": api.STRIPE_API_KEY,
        "KC_STRIPE_API_URL": provider.url,
        **SECRETS,
        **extra,
    }


def token(student: str, scope: str = "") -> str:
    return mint(JWT_SECRET, student, 600, "kc_tasks", scope=scope)


def checkout_signature(order_id: str, payment_id: str, secret: str = api.RAZORPAY_KEY_SECRET) -> str:
    """What Razorpay Checkout hands the browser: HMAC-SHA256 of "<order_id>|<payment_id>"."""
    return hmac.new(secret.encode(), f"{order_id}|{payment_id}".encode(), hashlib.sha256).hexdigest()


def razorpay_body(order: dict[str, Any], payment: dict[str, Any], signature: str | None = None) -> dict[str, str]:
    return {
        "provider": "razorpay",
        "razorpay_order_id": order["id"],
        "razorpay_payment_id": payment["id"],
        "razorpay_signature": signature or checkout_signature(order["id"], payment["id"]),
    }


def confirm(web: Web, body: Any, bearer: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return httpx.post(web.base + "/checkouts/confirm", json=body, headers=headers, timeout=30)


def purchases(database_url: str, student: str) -> list[tuple]:
    return run_sql(
        database_url,
        "SELECT id::text, course_id::text, payment_id, amount_cents, is_active FROM student_course_purchases "
        "WHERE student_id = %s",
        (student,),
    )


def duplicates(database_url: str) -> int:
    return run_sql(database_url, "SELECT count(*) FROM duplicate_payments")[0][0]


def succeeded(worker: Worker, payment_id: str) -> int:
    """How many create_purchase runs of this payment's task the worker reports done."""
    return len(re.findall(rf"create_purchase\[{task_id_for(payment_id)}\] succeeded", worker.text()))


def stored(database_url: str, payment_id: str) -> list[tuple]:
    return run_sql(
        database_url,
        "SELECT provider, event_id, type, status FROM payment_events WHERE payment_id = %s ORDER BY received_at",
        (payment_id,),
    )


def test_a_razorpay_checkout_confirmed_before_its_webhook_is_granted_and_the_webhook_is_a_repeat(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    student, course = api.new_id(), api.new_id()
    order = provider.razorpay_order_for(student, course)
    order["notes"]["coupon"] = "DIWALI"
    payment = provider.razorpay_pay(order)
    worker = workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **keys(provider))

    answer = confirm(web, razorpay_body(order, payment), token(student))
    assert answer.status_code == 200, answer.text
    granted = answer.json()
    assert granted["status"] == "granted"
    assert (granted["payment_id"], granted["course_id"]) == (payment["id"], course)
    held = purchases(database_url, student)
    assert held == [(granted["purchase_id"], course, payment["id"], 49900, True)]
    metadata = run_sql(database_url, "SELECT metadata FROM student_course_purchases WHERE student_id = %s", (student,))
    assert metadata == [({"coupon": "DIWALI"},)], "the order's other notes, as the webhook would give them"
    # Marked enqueued by the intake's marker, a moment after the answer.
    confirmed = [("razorpay", f"confirm:{payment['id']}", "order.paid", "enqueued")]
    assert wait_until(lambda: stored(database_url, payment["id"]) == confirmed)

    # The webhook comes later: stored, enqueued under the same task id, a repeat.
    webhook = post_razorpay(web, s.razorpay_event("order.paid", payment, order), "evt_late_" + uuid.uuid4().hex[:8])
    assert webhook.status_code == 200 and webhook.json()["task_id"] == task_id_for(payment["id"])
    assert wait_until(lambda: succeeded(worker, payment["id"]) == 2)
    assert purchases(database_url, student) == held
    assert duplicates(database_url) == 0

    # The buyer reloads the success page: the same answer, nothing stored or enqueued again.
    again = confirm(web, razorpay_body(order, payment), token(student))
    assert again.status_code == 200 and again.json() == granted
    assert len(stored(database_url, payment["id"])) == 2


def test_a_stripe_checkout_whose_webhook_came_first_is_granted_at_once(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    student, course, intent = api.new_id(), api.new_id(), s.new_intent()
    session = provider.stripe_checkout(s.stripe_session(intent, student, course))
    worker = workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **keys(provider))
    webhook = post_stripe(web, s.stripe_event("checkout.session.completed", session))
    assert webhook.status_code == 200
    assert wait_until(lambda: succeeded(worker, intent) == 1)
    held = purchases(database_url, student)

    answer = confirm(web, {"provider": "stripe", "session_id": session["id"]}, token(student))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "granted", "purchase_id": held[0][0], "payment_id": intent, "course_id": course}
    assert wait_until(lambda: succeeded(worker, intent) == 2)
    assert purchases(database_url, student) == held and duplicates(database_url) == 0


def test_checkouts_whose_webhook_never_comes_are_granted_free_ones_under_the_session_id(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    student = api.new_id()
    paid_course, free_course, intent = api.new_id(), api.new_id(), s.new_intent()
    paid = provider.stripe_checkout(s.stripe_session(intent, student, paid_course))
    free = provider.stripe_checkout(
        s.stripe_session(None, student, free_course, payment_status="no_payment_required", amount_total=0)
    )
    workers.start(database_url, rabbitmq_url)
    # The platform's server confirms for its buyer (scope purchases:confirm); no webhook secret set.
    web = webs(database_url, rabbitmq_url, **{k: v for k, v in keys(provider).items() if "WEBHOOK" not in k})
    platform = token("platform-server", scope="purchases:confirm")

    first = confirm(web, {"provider": "stripe", "session_id": paid["id"]}, platform)
    second = confirm(web, {"provider": "stripe", "session_id": free["id"]}, platform)
    assert first.status_code == 200 and first.json()["payment_id"] == intent, first.text
    assert second.status_code == 200 and second.json()["payment_id"] == free["id"], second.text
    assert sorted(p[1:4] for p in purchases(database_url, student)) == sorted(
        [(paid_course, intent, 99900), (free_course, free["id"], 0)]
    )
    confirmed = [("stripe", f"confirm:{free['id']}", "checkout.session.completed", "enqueued")]
    assert wait_until(lambda: stored(database_url, free["id"]) == confirmed)


def test_concurrent_confirms_of_one_payment_make_one_purchase(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    student, course = api.new_id(), api.new_id()
    order = provider.razorpay_order_for(student, course)
    payment = provider.razorpay_pay(order)
    workers.start(database_url, rabbitmq_url, concurrency=4)
    web = webs(database_url, rabbitmq_url, **keys(provider))
    body, bearer = razorpay_body(order, payment), token(student)
    barrier = threading.Barrier(8)
    answers: list[httpx.Response] = []

    def buyer_tab() -> None:
        barrier.wait()
        answers.append(confirm(web, body, bearer))

    tabs = [threading.Thread(target=buyer_tab) for _ in range(8)]
    for tab in tabs:
        tab.start()
    for tab in tabs:
        tab.join()
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    assert len({a.json()["purchase_id"] for a in answers}) == 1
    assert len(purchases(database_url, student)) == 1 and duplicates(database_url) == 0
    assert len(stored(database_url, payment["id"])) == 1


def test_an_unpaid_a_part_paid_and_an_authorized_only_order_are_not_paid_until_they_are(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    student, course = api.new_id(), api.new_id()
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **keys(provider))
    bearer = token(student)

    authorized_order = provider.razorpay_order_for(student, api.new_id())
    authorized = provider.razorpay_pay(authorized_order, status="authorized")
    answer = confirm(web, razorpay_body(authorized_order, authorized), bearer)
    assert answer.status_code == 409 and answer.json()["status"] == "not_paid"
    assert "authorized, not captured" in answer.json()["detail"]

    # An order paid in two parts: the first part confirmed is not paid in full.
    order = provider.razorpay_order_for(student, course, amount=2 * 49900)
    order["partial_payment"] = True
    first = provider.razorpay_pay(order, amount=49900)
    answer = confirm(web, razorpay_body(order, first), bearer)
    assert answer.status_code == 409 and answer.json()["status"] == "not_paid"
    assert "not paid in full" in answer.json()["detail"]
    assert stored(database_url, first["id"]) == [] and purchases(database_url, student) == []

    # The second part pays it: granted under the last part, the payment order.paid carries,
    # for the order's whole amount, whichever part's return is confirmed.
    last = provider.razorpay_pay(order, amount=49900)
    answer = confirm(web, razorpay_body(order, first), bearer)
    assert answer.status_code == 200, answer.text
    assert answer.json()["payment_id"] == last["id"]
    assert [p[1:] for p in purchases(database_url, student)] == [(course, last["id"], 2 * 49900, True)]
    again = confirm(web, razorpay_body(order, last), bearer)
    assert again.status_code == 200 and again.json() == answer.json()


def test_what_is_refused(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    student, course = api.new_id(), api.new_id()
    order = provider.razorpay_order_for(student, course)
    payment = provider.razorpay_pay(order)
    session = provider.stripe_checkout(s.stripe_session(s.new_intent(), student, api.new_id()))
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **keys(provider))
    mine = token(student)

    # No token, a bad one; a token of another student, and one that only reads (purchases:read).
    assert confirm(web, razorpay_body(order, payment), None).status_code == 401
    assert confirm(web, razorpay_body(order, payment), mine + "x").status_code == 401
    other = confirm(web, razorpay_body(order, payment), token(api.new_id()))
    assert other.status_code == 403
    reader = confirm(web, {"provider": "stripe", "session_id": session["id"]}, token("reader", "purchases:read"))
    assert reader.status_code == 403
    # A tampered signature: another payment's, or signed with another secret.
    other_payment = "pay_" + uuid.uuid4().hex[:14]
    tampered = razorpay_body(order, payment, checkout_signature(order["id"], other_payment))
    assert confirm(web, tampered, mine).status_code == 422
    forged = razorpay_body(order, payment, checkout_signature(order["id"], payment["id"], "a-guessed-secret"))
    answer = confirm(web, forged, mine)
    assert answer.status_code == 422 and "signature" in answer.json()["detail"]
    # Malformed bodies.
    for body in (
        {},
        {"provider": "paypal"},
        {"provider": "stripe"},
        {"provider": "stripe", "session_id": "../v1/charges"},
        {**razorpay_body(order, payment), "razorpay_signature": "not-hex"},
        ["provider", "stripe"],
    ):
        assert confirm(web, body, token(api.new_id())).status_code == 422, body
    not_json = httpx.post(
        web.base + "/checkouts/confirm",
        content=b"{",
        headers={"Authorization": f"Bearer {token(api.new_id())}"},
        timeout=30,
    )
    assert not_json.status_code == 422
    # Unknown order and session.
    unknown = razorpay_body({"id": "order_unknown0000"}, {"id": "pay_unknown0000"})
    assert confirm(web, unknown, token(api.new_id())).status_code == 404
    assert confirm(web, {"provider": "stripe", "session_id": "cs_test_unknown"}, token(api.new_id())).status_code == 404
    # A session that is not a course purchase, one still open.
    no_course = provider.stripe_checkout(s.stripe_session(s.new_intent(), None, None))
    answer = confirm(web, {"provider": "stripe", "session_id": no_course["id"]}, token("platform", "purchases:confirm"))
    assert answer.status_code == 404 and "not a course purchase" in answer.json()["detail"]
    still_open = provider.stripe_checkout({**s.stripe_session(None, student, course, paid=False), "status": "open"})
    answer = confirm(web, {"provider": "stripe", "session_id": still_open["id"]}, mine)
    assert answer.status_code == 409 and answer.json()["status"] == "not_paid"

    assert purchases(database_url, student) == []
    assert run_sql(database_url, "SELECT count(*) FROM payment_events")[0][0] == 0


def test_the_provider_api_down_is_503_with_retry_after_and_the_webhook_still_grants(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    student, course = api.new_id(), api.new_id()
    order = provider.razorpay_order_for(student, course)
    payment = provider.razorpay_pay(order)
    workers.start(database_url, rabbitmq_url)
    web = webs(database_url, rabbitmq_url, **keys(provider))
    provider.fail(f"/v1/orders/{order['id']}", "500")
    answer = confirm(web, razorpay_body(order, payment), token(student))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert "razorpay's API is unreachable" in answer.json()["detail"]

    # An API that does not answer at all: the same.
    down = webs(database_url, rabbitmq_url, **keys(provider, KC_RAZORPAY_API_URL="http://127.0.0.1:9"))
    answer = confirm(down, razorpay_body(order, payment), token(student))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert api.RAZORPAY_KEY_SECRET not in down.text() + web.text()

    webhook = post_razorpay(web, s.razorpay_event("order.paid", payment, order), "evt_" + uuid.uuid4().hex[:8])
    assert webhook.status_code == 200
    assert wait_until(lambda: len(purchases(database_url, student)) == 1)
    answer = confirm(web, razorpay_body(order, payment), token(student))
    assert answer.status_code == 200


def test_a_purchase_not_made_in_time_is_pending_with_its_task_and_a_provider_without_key_is_off(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    """No worker runs, and the web waits for nothing (KC_CONFIRM_WAIT_MS=0): the answer is 202 with
    the task id; once a worker made the purchase, a web that waits answers 200."""
    student, course, intent = api.new_id(), api.new_id(), s.new_intent()
    session = provider.stripe_checkout(s.stripe_session(intent, student, course))
    env = {k: v for k, v in keys(provider).items() if not k.startswith("KC_RAZORPAY")}
    web = webs(database_url, rabbitmq_url, KC_CONFIRM_WAIT_MS="0", **env)
    answer = confirm(web, {"provider": "stripe", "session_id": session["id"]}, token(student))
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"status": "pending", "task_id": task_id_for(intent)}

    order = provider.razorpay_order_for(student, course)
    off = confirm(web, razorpay_body(order, provider.razorpay_pay(order)), token(student))
    assert off.status_code == 404 and "off" in off.json()["detail"]

    workers.start(database_url, rabbitmq_url)
    assert wait_until(lambda: len(purchases(database_url, student)) == 1)
    waiting = webs(database_url, rabbitmq_url, **env)
    assert confirm(waiting, {"provider": "stripe", "session_id": session["id"]}, token(student)).status_code == 200

    nothing = webs(database_url, rabbitmq_url)
    assert confirm(nothing, {"provider": "stripe", "session_id": session["id"]}, token(student)).status_code == 404


def test_a_token_over_its_rate_limit_is_429_with_retry_after(
    database_url: str, rabbitmq_url: str, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    student = api.new_id()
    web = webs(database_url, rabbitmq_url, **keys(provider))
    body = {"provider": "stripe", "session_id": "cs_test_unknown"}
    answers = [confirm(web, body, token(student)) for _ in range(20)]
    # A burst of 10, then one every 2 s: 20 requests in a row cannot all pass.
    assert [a.status_code for a in answers[:10]] == [404] * 10
    limited = [a for a in answers[10:] if a.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1
    assert "too many" in limited[0].json()["detail"]
    assert confirm(web, body, token(api.new_id())).status_code == 404, "another token has its own"


def test_metrics_count_each_answer_and_the_time_to_access(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    student, course = api.new_id(), api.new_id()
    order = provider.razorpay_order_for(student, course)
    payment = provider.razorpay_pay(order)
    worker_port = str(free_port())
    workers.start(database_url, rabbitmq_url, KC_WORKER_METRICS_PORT=worker_port)
    web_port = str(free_port())
    web = webs(database_url, rabbitmq_url, KC_WEB_METRICS_PORT=web_port, **keys(provider))
    assert confirm(web, razorpay_body(order, payment), token(student)).status_code == 200
    assert confirm(web, razorpay_body(order, payment), token(api.new_id())).status_code == 403
    unpaid = provider.razorpay_order_for(student, api.new_id())
    assert (
        confirm(web, razorpay_body(unpaid, provider.razorpay_pay(unpaid, "authorized")), token(student)).status_code
        == 409
    )

    def series(port: str) -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    text = series(web_port)
    for outcome, counted in (("granted", 1), ("refused", 1), ("not_paid", 1), ("pending", 0), ("unavailable", 0)):
        assert sample(text, "kc_confirms_total", provider="razorpay", outcome=outcome) == counted, outcome
    assert sample(text, "kc_confirms_total", provider="stripe", outcome="granted") == 0
    # From the confirm's arrival to the purchase's commit, by the worker that made it.
    made = sample(series(worker_port), "kc_payment_to_access_seconds_count", provider="razorpay")
    assert made == 1


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return None


class HeldApi:
    """The providers' API stand-in behind a gate the test opens: each request waits at the gate
    (`asked` is set once one is there), then is passed on to the stand-in and its answer back."""

    def __init__(self, target: str) -> None:
        self.asked, self.opened = threading.Event(), threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                gate.asked.set()
                gate.opened.wait(60)
                headers = {k: v for k, v in self.headers.items() if k.lower() == "authorization"}
                answer = httpx.get(target + self.path, headers=headers, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HeldApi:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.opened.set()
        self._server.shutdown()
        self._server.server_close()


def test_the_time_to_access_of_a_confirmed_purchase_counts_from_the_confirms_arrival(
    database_url: str, rabbitmq_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> None:
    """kc_payment_to_access_seconds counts a confirm's purchase from the request's arrival, not
    from its event's storing: the time Stripe took to answer (held here by the test) is in it."""
    student, course, intent = api.new_id(), api.new_id(), s.new_intent()
    session = provider.stripe_checkout(s.stripe_session(intent, student, course))
    worker_port = str(free_port())
    workers.start(database_url, rabbitmq_url, KC_WORKER_METRICS_PORT=worker_port)
    answers: list[httpx.Response] = []
    with HeldApi(provider.url) as stripe_api:
        web = webs(database_url, rabbitmq_url, **keys(provider, KC_STRIPE_API_URL=stripe_api.url))
        body, bearer = {"provider": "stripe", "session_id": session["id"]}, token(student)
        buyer = threading.Thread(target=lambda: answers.append(confirm(web, body, bearer)))
        buyer.start()
        assert stripe_api.asked.wait(30), "the confirm never asked Stripe"
        # The confirm has arrived and waits for Stripe: nothing stored or granted meanwhile.
        held_from = time.monotonic()
        assert stored(database_url, intent) == [] and purchases(database_url, student) == []
        held_for = time.monotonic() - held_from
        stripe_api.opened.set()
        buyer.join(60)
    assert answers and answers[0].status_code == 200, answers
    metrics = httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=10).text
    assert sample(metrics, "kc_payment_to_access_seconds_count", provider="stripe") == 1
    observed = sample(metrics, "kc_payment_to_access_seconds_sum", provider="stripe")
    assert observed is not None
    # From the event's storing to the purchase's commit, both on PostgreSQL's clock: what the
    # histogram counted before; the confirm's own wait for Stripe comes on top of it.
    [(received_at, committed)] = run_sql(
        database_url,
        "SELECT e.received_at, p.created_at FROM payment_events e JOIN student_course_purchases p "
        "ON p.payment_id = e.payment_id WHERE e.payment_id = %s",
        (intent,),
    )
    from_storing = (committed - received_at).total_seconds()
    assert observed - from_storing >= held_for > 0
