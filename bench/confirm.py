"""POST /checkouts/confirm under load: confirms per second, and the latency from the request to
its 200 with the course, with 32 buyers confirming at the same time.

    .venv/bin/python bench/confirm.py [--buyers 32] [--checkouts 20]

Real services on this machine: a database of its own (kc_bench_confirm_*, by `kc-tasks migrate`)
and a RabbitMQ vhost of its own, both removed at the end; the Procfile's web process (uvicorn
serving kc_tasks.web) and worker (`celery -A kc_tasks worker`, one pool process per CPU); the
providers' APIs served by the tests' local stand-in (tests/provider_api_server.py), in a
process of its own, answering at once. No webhook comes: every course is granted by its confirm.

Each of the `--buyers` concurrent buyers (an asyncio task) goes through `--checkouts` checkouts
one after the other, Razorpay and Stripe in turn, each of a new student with a bearer token of
its own: it confirms it (the purchase is made while the request waits), then confirms it again,
as a reloaded success page does (the purchase is there: answered at once). Every answer must be
200 naming the course. The first confirms give the latency to access; both kinds count towards
confirms per second. At the end, PostgreSQL must hold exactly one purchase per payment, and no duplicate payment.
Targets: p50 <= 25 ms, p99 <= 150 ms (first confirms).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import percentile, purchases_policy  # noqa: E402

from kc_tasks.auth import mint  # noqa: E402
from tests import provider_api_server as api  # noqa: E402
from tests import provider_samples as s  # noqa: E402

BIN = Path(sys.executable).parent
PG = os.environ.get("KC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
RUN_ID = uuid.uuid4().hex[:8]
DB_URL = f"{PG}/kc_bench_confirm_{RUN_ID}"
VHOST = f"kc_bench_confirm_{RUN_ID}"
AMQP = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
WORK = Path(tempfile.gettempdir()) / f"kc_bench_confirm_{RUN_ID}"
JWT_SECRET = "bench-jwt-secret-of-at-least-thirty-two-bytes"
P50_TARGET_MS, P99_TARGET_MS = 25.0, 150.0

# The stand-in, in a process of its own: the checkouts of `checkouts.json`, served until stdin closes.
STANDIN = """
import json, sys, time
from tests import provider_api_server as api
data = json.load(open(sys.argv[1]))
with api.serve() as provider:
    provider.razorpay_orders.update(data["orders"])
    provider.razorpay_payments.extend(data["payments"])
    provider.stripe_sessions.update(data["sessions"])
    print(provider.url, flush=True)
    sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=False)


def sql(statement: str, url: str = DB_URL) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def checkouts(buyers: int, each: int) -> tuple[dict[str, Any], list[list[dict[str, Any]]]]:
    """What the providers hold (paid orders and sessions), and each buyer's confirm bodies."""
    store: dict[str, Any] = {"orders": {}, "payments": [], "sessions": {}}
    plans: list[list[dict[str, Any]]] = []
    for _ in range(buyers):
        plan = []
        for n in range(each):
            student, course = str(uuid.uuid4()), str(uuid.uuid4())
            if n % 2 == 0:
                payment = s.razorpay_payment()
                order = s.razorpay_order(payment, student, course)
                store["orders"][order["id"]] = order
                store["payments"].append(payment)
                signature = hmac.new(
                    api.RAZORPAY_KEY_SECRET.encode(), f"{order['id']}|{payment['id']}".encode(), hashlib.sha256
                ).hexdigest()
                body = {
                    "provider": "razorpay",
                    "razorpay_order_id": order["id"],
                    "razorpay_payment_id": payment["id"],
                    "razorpay_signature": signature,
                }
            else:
                session = s.stripe_session(s.new_intent(), student, course)
                store["sessions"][session["id"]] = session
                body = {"provider": "stripe", "session_id": session["id"]}
            plan.append({"student": student, "course": course, "body": body})
        plans.append(plan)
    return store, plans


async def buyer(
    client: httpx.AsyncClient, plan: list[dict[str, Any]], start: asyncio.Event, first: list[float], all_: list[float]
) -> list[str]:
    """Confirm each checkout, then again; the problems seen (none, if every answer is right)."""
    problems = []
    await start.wait()
    for checkout in plan:
        headers = {"Authorization": "Bearer " + mint(JWT_SECRET, checkout["student"], 3600, "kc_tasks")}
        for attempt in (0, 1):
            began = time.perf_counter()
            answer = await client.post("/checkouts/confirm", json=checkout["body"], headers=headers)
            took = (time.perf_counter() - began) * 1000
            all_.append(took)
            if attempt == 0:
                first.append(took)
            if answer.status_code != 200 or answer.json().get("course_id") != checkout["course"]:
                problems.append(f"{answer.status_code} {answer.text[:200]}")
    return problems


async def drive(base: str, plans: list[list[dict[str, Any]]]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=len(plans), max_keepalive_connections=len(plans))
    first: list[float] = []
    all_: list[float] = []
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        start = asyncio.Event()
        tasks = [asyncio.create_task(buyer(client, plan, start, first, all_)) for plan in plans]
        began = time.perf_counter()
        start.set()
        problems = [p for found in await asyncio.gather(*tasks) for p in found]
        elapsed = time.perf_counter() - began
    first.sort()
    return {
        "confirms": len(all_),
        "seconds": round(elapsed, 2),
        "confirms_per_second": round(len(all_) / elapsed, 1),
        "first_p50_ms": round(percentile(first, 50), 1),
        "first_p99_ms": round(percentile(first, 99), 1),
        "repeat_p50_ms": round(percentile(sorted(all_), 50), 1),
        "problems": problems[:5],
        "problem_count": len(problems),
    }


def wait_http(url: str, process: subprocess.Popen[Any], log: Path) -> None:
    for _ in range(150):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit(f"not started: {url}\n{log.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buyers", type=int, default=32)
    parser.add_argument("--checkouts", type=int, default=20, help="per buyer, Razorpay and Stripe in turn")
    args = parser.parse_args()
    WORK.mkdir(parents=True)
    store, plans = checkouts(args.buyers, args.checkouts)
    (WORK / "checkouts.json").write_text(json.dumps(store))
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    processes: list[subprocess.Popen[Any]] = []
    try:
        standin = subprocess.Popen(
            [sys.executable, "-c", STANDIN, str(WORK / "checkouts.json")],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(standin)
        assert standin.stdout is not None
        provider_url = standin.stdout.readline().strip()
        port = free_port()
        env = dict(
            os.environ,
            DATABASE_URL=DB_URL,
            CELERY_BROKER_URL=AMQP,
            KC_WEBHOOK_SECRET="bench-webhook-secret-of-at-least-32-bytes",
            KC_JWT_SECRET=JWT_SECRET,
            KC_RAZORPAY_KEY_ID=api.RAZORPAY_KEY_ID,
            KC_RAZORPAY_KEY_SECRET=api.RAZORPAY_KEY_SECRET,
            KC_RAZORPAY_API_URL=provider_url,
            KC_STRIPE_API_KEY=api.STRIPE_API_KEY,
            KC_STRIPE_API_URL=provider_url,
        )
        subprocess.run([str(BIN / "kc-tasks"), "migrate"], env=env, check=True, capture_output=True, cwd=ROOT)
        purchases_policy(rabbitmqctl, VHOST)
        for name, command in (
            ("worker", [str(BIN / "celery"), "-A", "kc_tasks", "worker", "--loglevel", "INFO"]),
            (
                "web",
                [str(BIN / "uvicorn"), "--factory", "kc_tasks.web:create_app", "--port", str(port), "--no-access-log"],
            ),
        ):
            log = WORK / f"{name}.log"
            processes.append(
                subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        wait_http(f"http://127.0.0.1:{port}/readyz", processes[-1], WORK / "web.log")
        for _ in range(300):
            if " ready." in (WORK / "worker.log").read_text(errors="replace"):
                break
            time.sleep(0.2)
        else:
            raise SystemExit("the worker did not start:\n" + (WORK / "worker.log").read_text()[-2000:])
        result = asyncio.run(drive(f"http://127.0.0.1:{port}", plans))
        payments = args.buyers * args.checkouts
        made = sql("SELECT count(*), count(DISTINCT payment_id) FROM student_course_purchases")[0]
        duplicates = sql("SELECT count(*) FROM duplicate_payments")[0][0]
        result |= {
            "buyers": args.buyers,
            "payments": payments,
            "purchases": made[0],
            "distinct_payments": made[1],
            "duplicate_payments": duplicates,
            "one_purchase_each": made == (payments, payments) and duplicates == 0,
            "p50_target_ms": P50_TARGET_MS,
            "p99_target_ms": P99_TARGET_MS,
        }
        print(json.dumps(result, indent=2))
    finally:
        for process in reversed(processes):
            if process is processes[0]:
                process.communicate(timeout=10)
            else:
                os.killpg(process.pid, 15)
                process.wait(30)
        rabbitmqctl("delete_vhost", VHOST)
        sql(f"DROP DATABASE IF EXISTS kc_bench_confirm_{RUN_ID} WITH (FORCE)", f"{PG}/postgres")


if __name__ == "__main__":
    main()
