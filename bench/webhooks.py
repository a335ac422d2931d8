"""The webhook routes under load: signed requests per second and p50/p99, beside a bare
endpoint of the same app, same run, measured with wrk.

    .venv/bin/python bench/webhooks.py [--seconds 15] [--connections 16] [--routes bare,razorpay,stripe,payments]

Real services on this machine: a database of its own (kc_bench_web_*, by `kc-tasks migrate`)
and a RabbitMQ vhost of its own (with the `purchases` policy of `kc-tasks dlq policy`), both
removed at the end. The web process is the Procfile's
(uvicorn serving kc_tasks.web.app, `WEB_CONCURRENCY` workers, default 1), with one extra route,
`POST /bare`, an async FastAPI endpoint that answers `{}`: what the same uvicorn and app serve
without any work. No worker runs: the broker keeps what the routes enqueue.

Each route is driven at saturation (`--connections`, keep-alive, 2 wrk threads), then at about
half the saturation rate (each connection waits between requests, wrk's `delay()`), and the
routes alternate within a round. Every request is a new event: Razorpay's get a fresh
`X-Razorpay-Event-Id` (the signature covers the body only); Stripe's and kc's bodies are
signed beforehand, one per request, with Stripe's library and kc's HMAC. Prints a table and
writes bench/webhooks-results-<WEB_CONCURRENCY>-worker(s).json.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import stripe
from common import purchases_policy
from needs import CURL, RABBITMQCTL, WRK, check, postgresql, rabbitmq

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = os.environ.get("KC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
RUN_ID = uuid.uuid4().hex[:8]
RUNS = itertools.count()
DB_URL = f"{PG}/kc_bench_web_{RUN_ID}"
VHOST = f"kc_bench_web_{RUN_ID}"
AMQP = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
WORK = Path(tempfile.gettempdir()) / f"kc_bench_web_{RUN_ID}"
WORKERS = os.environ.get("WEB_CONCURRENCY", "1")  # uvicorn's own variable: its worker processes
RESULTS = ROOT / "bench" / f"webhooks-results-{WORKERS}-worker{'' if WORKERS == '1' else 's'}.json"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A free port: two runs on one machine must not answer each other's requests.
PORT = _free_port()
KC_SECRET = "bench-webhook-secret-0123456789abcdef"
# At least 32 characters: the web refuses to start with a shorter Razorpay secret.
RAZORPAY_SECRET = "bench-razorpay-secret-0123456789abcdef"
STRIPE_SECRET = "whsec_bench0123456789abcdefghij"
STUDENT, COURSE = str(uuid.uuid4()), str(uuid.uuid4())

BARE_APP = """
from fastapi import FastAPI
from kc_tasks.web.app import create_app as _create


def create_app() -> FastAPI:
    app = _create()

    @app.post("/bare")
    async def bare() -> dict:
        return {}

    return app
"""

# wrk's Lua: requests from a file of "path\\theaders-json\\tbody" lines, round robin, and an
# optional wait between a connection's requests (the half-rate runs).
LUA = r"""
local lines, i, pause = {}, 0, tonumber(os.getenv("WRK_DELAY_MS") or "0")
local seq = 0
for line in io.lines(os.getenv("WRK_REQUESTS")) do lines[#lines + 1] = line end
local function split(s)
  local a = s:find("\t", 1, true); local b = s:find("\t", a + 1, true)
  return s:sub(1, a - 1), s:sub(a + 1, b - 1), s:sub(b + 1)
end
request = function()
  i = i % #lines + 1
  seq = seq + 1
  local path, headers, body = split(lines[i])
  local h = {}
  for k, v in headers:gmatch('"([^"]+)": "([^"]*)"') do h[k] = v end
  local id = h["X-Razorpay-Event-Id"]
  if id then h["X-Razorpay-Event-Id"] = id .. "-" .. tostring(seq) .. "-" .. tostring(math.random(1, 1e9)) end
  return wrk.format("POST", path, h, body)
end
delay = function() return pause end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %f %f\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def sql(statement: str, url: str = f"{PG}/postgres") -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=False)


def env() -> dict[str, str]:
    return dict(
        os.environ,
        DATABASE_URL=DB_URL,
        CELERY_BROKER_URL=AMQP,
        KC_WEBHOOK_SECRET=KC_SECRET,
        KC_RAZORPAY_WEBHOOK_SECRET=RAZORPAY_SECRET,
        KC_STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        PYTHONPATH=f"{WORK}:{ROOT}",
    )


def requests_file(route: str, n: int) -> Path:
    """One line per request: path, headers as JSON, body (bodies hold no tab or newline)."""
    path = WORK / f"{route}.requests"
    now = int(time.time())
    # A new event id and payment id for every request of every wrk run: an event id stored
    # with another body is answered 409 (the route's conflict path, not what is measured).
    run = next(RUNS)
    with path.open("w") as out:
        for i in range(n if route in ("stripe", "payments") else 1):
            i = f"{run}_{i}"
            payment = f"pay_{RUN_ID}_{route}_{i}"
            if route == "bare":
                line = ("/bare", {"Content-Type": "application/json"}, "{}")
            elif route == "razorpay":
                entity = {
                    "id": payment,
                    "entity": "payment",
                    "amount": 49900,
                    "currency": "INR",
                    "status": "captured",
                    "order_id": f"order_{RUN_ID}",
                    "notes": [],
                }
                order = {
                    "id": f"order_{RUN_ID}",
                    "entity": "order",
                    "amount": 49900,
                    "status": "paid",
                    "notes": {"student_id": STUDENT, "course_id": COURSE},
                }
                body = json.dumps(
                    {
                        "entity": "event",
                        "event": "order.paid",
                        "contains": ["payment", "order"],
                        "payload": {"payment": {"entity": entity}, "order": {"entity": order}},
                        "created_at": now,
                    }
                )
                sig = hmac.new(RAZORPAY_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
                line = (
                    "/webhooks/razorpay",
                    {
                        "Content-Type": "application/json",
                        "X-Razorpay-Signature": sig,
                        "X-Razorpay-Event-Id": f"evt_{RUN_ID}_{run}",
                    },
                    body,
                )
            elif route == "stripe":
                intent = {
                    "id": f"pi_{RUN_ID}_{i}",
                    "object": "payment_intent",
                    "amount_received": 99900,
                    "currency": "inr",
                    "status": "succeeded",
                    "metadata": {"student_id": str(uuid.uuid4()), "course_id": COURSE},
                }
                body = json.dumps(
                    {
                        "id": f"evt_{RUN_ID}_{i}",
                        "object": "event",
                        "type": "payment_intent.succeeded",
                        "data": {"object": intent},
                    }
                )
                header = stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET, now)
                line = ("/webhooks/stripe", {"Content-Type": "application/json", "Stripe-Signature": header}, body)
            else:
                data = {
                    "payment_id": payment,
                    "student_id": str(uuid.uuid4()),
                    "course_id": COURSE,
                    "amount_cents": 4999,
                    "currency": "INR",
                }
                body = json.dumps({"id": f"evt_{RUN_ID}_{i}", "type": "payment.succeeded", "data": data})
                digest = hmac.new(KC_SECRET.encode(), f"{now}.{body}".encode(), hashlib.sha256).hexdigest()
                line = (
                    "/webhooks/payments",
                    {"Content-Type": "application/json", "X-KC-Signature": f"t={now},v1={digest}"},
                    body,
                )
            out.write(f"{line[0]}\t{json.dumps(line[1])}\t{line[2]}\n")
    return path


def wrk(route: str, connections: int, seconds: int, delay_ms: float = 0) -> dict[str, Any]:
    requests = requests_file(route, 60_000)
    run = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(WORK / "bench.lua"),
            f"http://127.0.0.1:{PORT}",
        ],
        env=dict(os.environ, WRK_REQUESTS=str(requests), WRK_DELAY_MS=str(int(delay_ms))),
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", run.stdout)
    assert match, run.stdout + run.stderr
    total, bad_status, socket_errors, duration_us, p50, p99 = match.groups()
    seconds_run = int(duration_us) / 1e6
    return {
        "route": route,
        "connections": connections,
        "delay_ms": delay_ms,
        "requests": int(total),
        "non_2xx": int(bad_status),
        "socket_errors": int(socket_errors),
        "rate": round(int(total) / seconds_run, 1),
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--routes", default="bare,razorpay,stripe,payments")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where to write the figures ({RESULTS.name})")
    args = parser.parse_args()
    check(__file__, WRK, CURL, RABBITMQCTL, postgresql(PG), rabbitmq())
    routes = args.routes.split(",")
    WORK.mkdir(parents=True)
    (WORK / "bench_web.py").write_text(BARE_APP)
    (WORK / "bench.lua").write_text(LUA)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    subprocess.run([str(BIN / "kc-tasks"), "migrate"], env=env(), check=True, capture_output=True)
    purchases_policy(rabbitmqctl, VHOST)
    log = (WORK / "web.log").open("w")
    web = subprocess.Popen(
        [str(BIN / "uvicorn"), "--factory", "bench_web:create_app", "--host", "127.0.0.1", "--port", str(PORT)],
        env=env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    results: list[dict[str, Any]] = []
    try:
        for _ in range(100):
            try:
                subprocess.run(["curl", "-sf", f"http://127.0.0.1:{PORT}/healthz"], check=True, capture_output=True)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        else:
            lines = (WORK / "web.log").read_text(errors="replace").splitlines()
            why = next((line for line in reversed(lines) if "refusing to start" in line), lines[-1] if lines else "")
            sys.exit(f"bench/webhooks.py: the web process did not answer /healthz in 20 s: {why}")
        for round_ in range(args.rounds):
            for route in routes:
                full = wrk(route, args.connections, args.seconds)
                # Closed loop with a pause per connection of twice its saturated interval:
                # about half the saturation rate (the achieved rate is reported).
                pause_ms = 2 * args.connections * 1000 / full["rate"]
                half = wrk(route, args.connections, args.seconds, delay_ms=pause_ms)
                half["of_saturation"] = round(half["rate"] / full["rate"], 2)
                for r in (full, half):
                    r["round"] = round_ + 1
                    if r["non_2xx"]:
                        print(f"bench/webhooks.py: {route}: {r['non_2xx']} answers were not 2xx", file=sys.stderr)
                    results.append(r)
                    print(json.dumps(r), flush=True)
    finally:
        os.killpg(web.pid, 15)
        web.wait(20)
        rabbitmqctl("delete_vhost", VHOST)
        sql(f"DROP DATABASE IF EXISTS kc_bench_web_{RUN_ID} WITH (FORCE)")
    stored = {"web_concurrency": WORKERS, "seconds": args.seconds, "results": results}
    args.results.write_text(json.dumps(stored, indent=2) + "\n")
    bare = max((r["rate"] for r in results if r["route"] == "bare" and not r["delay_ms"]), default=0)
    print(
        f"{'route':<10} {'round':>5} {'load':>10} {'req/s':>9} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"
    )
    for r in results:
        load = "saturated" if not r["delay_ms"] else "half"
        ratio = r["rate"] / bare if bare and not r["delay_ms"] else float("nan")
        print(
            f"{r['route']:<10} {r['round']:>5} {load:>10} {r['rate']:>9.0f} {ratio:>6.3f} {r['p50_ms']:>8.1f} "
            f"{r['p99_ms']:>8.1f} {r['non_2xx']:>8}"
        )


if __name__ == "__main__":
    main()
