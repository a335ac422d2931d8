"""A course platform's server, as small as it gets: it sells one course through Razorpay or
Stripe and, when the buyer is back from checkout, asks kc_tasks to confirm the payment
(POST /checkouts/confirm, with the buyer's token) and shows the course.

    kc-tasks dev --providers                         # in one terminal: kc_tasks and the stand-in
    set -a; . .kc-dev/platform.env; set +a           # in another: this run's keys and URLs
    python examples/checkout/server.py             # then open http://127.0.0.1:8080

Settings, from the environment (README.md beside this file): KC_TASKS_URL; KC_JWT_SECRET and
KC_JWT_AUDIENCE (to sign the buyer's token); PLATFORM_STUDENT (the buyer signed in: a stand-in
for the platform's own login); RAZORPAY_KEY_ID, RAZORPAY_KEY_SECRET, RAZORPAY_API_URL,
RAZORPAY_CHECKOUT_JS; STRIPE_API_KEY, STRIPE_API_URL; PLATFORM_PORT (8080), PLATFORM_URL.
In production the provider URLs are left unset: the real APIs and Checkout's real script.
"""

from __future__ import annotations

import html
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import razorpay
import stripe

HERE = Path(__file__).parent
PORT = int(os.environ.get("PLATFORM_PORT", "8080"))
PLATFORM_URL = os.environ.get("PLATFORM_URL", f"http://127.0.0.1:{PORT}")
KC_TASKS_URL = os.environ["KC_TASKS_URL"]
STUDENT = os.environ["PLATFORM_STUDENT"]
COURSE = {"id": "3f6d1c52-6a0e-4d7b-9b43-5b2f7f0e8c11", "title": "Kannada for beginners", "amount": 49900}

razorpay_client = razorpay.Client(
    auth=(os.environ["RAZORPAY_KEY_ID"], os.environ["RAZORPAY_KEY_SECRET"]),
    base_url=os.environ.get("RAZORPAY_API_URL", "https://api.razorpay.com"),
)
CHECKOUT_JS = os.environ.get("RAZORPAY_CHECKOUT_JS", "https://checkout.razorpay.com/v1/checkout.js")
stripe_client = stripe.StripeClient(
    os.environ["STRIPE_API_KEY"], base_addresses={"api": os.environ.get("STRIPE_API_URL", "https://api.stripe.com")}
)


def buyer_token() -> str:
    """The signed-in buyer's token for kc_tasks (`sub`: the student). A real platform has it from
    its identity provider, the one kc_tasks' KC_JWT_JWKS_URL trusts."""
    claims = {"sub": STUDENT, "aud": os.environ.get("KC_JWT_AUDIENCE", "kc_tasks"), "exp": int(time.time()) + 300}
    return jwt.encode(claims, os.environ["KC_JWT_SECRET"], algorithm="HS256")


def razorpay_order() -> dict[str, Any]:
    """An order at Razorpay whose notes name the buyer and the course: kc_tasks trusts these
    (set by this server), never what the browser says."""
    order = razorpay_client.order.create(
        {
            "amount": COURSE["amount"],
            "currency": "INR",
            "receipt": f"course-{COURSE['id'][:8]}",
            "notes": {"student_id": STUDENT, "course_id": COURSE["id"]},
        }
    )
    return {
        "key": os.environ["RAZORPAY_KEY_ID"],
        "order_id": order["id"],
        "amount": order["amount"],
        "currency": order["currency"],
        "name": COURSE["title"],
    }


def stripe_session() -> dict[str, Any]:
    """A Checkout Session whose metadata names the buyer and the course; Stripe sends the buyer
    back to the success URL with the session's id in place of {CHECKOUT_SESSION_ID}."""
    session = stripe_client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": "inr",
                        "unit_amount": COURSE["amount"],
                        "product_data": {"name": COURSE["title"]},
                    },
                    "quantity": 1,
                }
            ],
            "metadata": {"student_id": STUDENT, "course_id": COURSE["id"]},
            "success_url": PLATFORM_URL + "/stripe.html?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": PLATFORM_URL + "/stripe.html",
        }
    )
    return {"url": session.url}


def confirm(checkout: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The buyer is back: kc_tasks reads the order or session from the provider and grants the
    course (200), or will shortly (202: its workers are behind); anything else is shown."""
    answer = httpx.post(
        KC_TASKS_URL + "/checkouts/confirm",
        json=checkout,
        headers={"Authorization": f"Bearer {buyer_token()}"},
        timeout=15,
    )
    if answer.status_code == 200:
        return 200, {"status": "granted", "course": COURSE}
    if answer.status_code == 202:
        return 202, {"status": "pending", "course": COURSE}
    return answer.status_code, {"status": "refused", "detail": answer.json().get("detail", answer.reason_phrase)}


def courses() -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{KC_TASKS_URL}/students/{STUDENT}/courses", headers={"Authorization": f"Bearer {buyer_token()}"}, timeout=10
    )
    answer.raise_for_status()
    return [{"id": c["course_id"]} for c in answer.json()]


PAGES = {"/": "index.html", "/razorpay.html": "razorpay.html", "/stripe.html": "stripe.html", "/course.js": "course.js"}


class Platform(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/api/courses":
            return self.send_json(200, {"courses": courses()})
        if path not in PAGES:
            return self.send_json(404, {"detail": "not found"})
        page = (HERE / PAGES[path]).read_text().replace("{{RAZORPAY_CHECKOUT_JS}}", html.escape(CHECKOUT_JS))
        kind = "text/javascript" if path.endswith(".js") else "text/html; charset=utf-8"
        self.send(200, page.encode(), kind)

    def do_POST(self) -> None:
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        except ValueError:
            return self.send_json(400, {"status": "refused", "detail": "a JSON body is expected"})
        try:
            if self.path == "/api/razorpay/orders":
                return self.send_json(200, razorpay_order())
            if self.path == "/api/stripe/sessions":
                return self.send_json(200, stripe_session())
            if self.path == "/api/razorpay/confirm":
                fields = ("razorpay_order_id", "razorpay_payment_id", "razorpay_signature")
                return self.send_json(*confirm({"provider": "razorpay", **{f: str(body.get(f, "")) for f in fields}}))
            if self.path == "/api/stripe/confirm":
                return self.send_json(*confirm({"provider": "stripe", "session_id": str(body.get("session_id", ""))}))
        except (httpx.HTTPError, razorpay.errors.BadRequestError, stripe.StripeError) as exc:
            return self.send_json(502, {"status": "refused", "detail": f"try again shortly ({type(exc).__name__})"})
        self.send_json(404, {"detail": "not found"})

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        self.send(status, json.dumps(body).encode(), "application/json")

    def send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    print(f"the platform on {PLATFORM_URL}, kc_tasks at {KC_TASKS_URL}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", PORT), Platform).serve_forever()
