"""POST /checkouts/confirm under load: confirms per second, and the latency from the request to
its 200 with the course, with 32 buyers confirming at the same time.

    sudo apt-get install wrk                                   # the load generator
    .venv/bin/python bench/confirm.py [--buyers 32] [--checkouts 20] [--pause-ms 0]

Real services on this machine: a database of its own (kc_bench_confirm_*, by `kc-tasks migrate`)
and a RabbitMQ vhost of its own, both removed at the end; the Procfile's web process (uvicorn
serving kc_tasks.web.app, `WEB_CONCURRENCY` processes as the environment says, 1 unless set) and
worker (`celery -A kc_tasks worker`, one pool process per CPU); the providers' APIs served by
the tests' local stand-in (tests/provider_api_server.py), in a process of its own, answering at
once. No webhook comes: every course is granted by its confirm.

The buyers are wrk's (C, one thread and one keep-alive connection per buyer, driven by the Lua
script below): a Python client costs more CPU per request than the route it measures, and its
event loop's delays are counted as the route's. Each of the `--buyers` goes through
`--checkouts` checkouts one after the other, Razorpay and Stripe in turn, each of a new student
with a bearer token of its own (minted beforehand): it confirms it (the purchase is made while
the request waits), then confirms it again, as a reloaded success page does (the purchase is
there). With `--pause-ms`, each buyer pauses before each confirm, at random (exponential, that
mean): buyers that arrive independently, below saturation; without, every buyer confirms again
the moment it has its answer, and latency is the buyers' number over the rate (Little's law).
Before the measured run, each buyer confirms one checkout more, unmeasured: the web process
makes its threads, pools and connections on first use, and a process serves for days. Every
answer must be 200 naming the course. The first confirms give the latency to access; both
kinds count towards confirms per second. At the end, PostgreSQL must hold exactly one purchase
per payment, and no duplicate payment. Targets: p50 <= 25 ms, p99 <= 150 ms (first confirms).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
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

from kc_tasks.web.auth import mint  # noqa: E402
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


# wrk's Lua, one thread per buyer (`-t` = `-c`: its requests are one connection's, in order):
# each checkout of the buyer's file confirmed, then confirmed again; each answer timed (the
# monotonic clock, from the request's write to its answer's end) and checked (200 naming the
# course); when the last is in, the buyer's file of results is written and its thread stops.
LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } kc_timespec;
int clock_gettime(int clock, kc_timespec *ts);
]]
local ts = ffi.new("kc_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end
local buyers = 0
function setup(thread)
  thread:set("buyer", buyers)
  buyers = buyers + 1
end
function init(args)
  work, pause = args[1], tonumber(args[2])
  math.randomseed(buyer + 1)
  requests, courses, took, problems = {}, {}, {}, {}
  for line in io.lines(work .. "/buyer-" .. buyer .. ".tsv") do
    local a = line:find("\t", 1, true)
    local b = line:find("\t", a + 1, true)
    local course, token, body = line:sub(1, a - 1), line:sub(a + 1, b - 1), line:sub(b + 1)
    local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
    local formatted = wrk.format("POST", "/checkouts/confirm", headers, body)
    for _ = 1, 2 do
      requests[#requests + 1] = formatted
      courses[#courses + 1] = course
    end
  end
  sent, waiting, resent = 0, false, 0
end
-- A buyer's pause before its next confirm: exponential with mean `pause` ms, as independent
-- buyers arriving at random would leave it (none with --pause-ms 0).
function delay()
  if pause == 0 then return 0 end
  return math.floor(-pause * math.log(1 - math.random()))
end
function request()
  -- Asked again with no answer in between: the last was not written (wrk asks again when a
  -- write would block) or its connection closed. The same confirm again, timed anew.
  if waiting then
    resent = resent + 1
  else
    sent = math.min(sent + 1, #requests)
  end
  waiting, began = true, now()
  if sent == 1 then first_began = began end
  return requests[sent]
end
function response(status, headers, body)
  local ended = now()
  waiting = false
  local kind = sent % 2 == 1 and "first" or "again"
  took[#took + 1] = string.format("%s %.3f", kind, (ended - began) * 1000)
  if status ~= 200 or not body:find('"course_id":"' .. courses[sent] .. '"', 1, true) then
    problems[#problems + 1] = status .. " " .. body:sub(1, 200):gsub("\n", " ")
  end
  if sent == #requests then
    local path = work .. "/done-" .. buyer .. ".txt"
    local out = io.open(path .. ".part", "w")
    out:write(string.format("%.6f %.6f %d\n", first_began, ended, resent))
    for _, line in ipairs(took) do out:write(line .. "\n") end
    for _, problem in ipairs(problems) do out:write("problem " .. problem .. "\n") end
    out:close()
    os.rename(path .. ".part", path)
    wrk.thread:stop()
  end
end
"""


def drive(base: str, plans: list[list[dict[str, Any]]], pause_ms: int, name: str) -> dict[str, Any]:
    """wrk, one thread and connection per buyer; stopped once every buyer wrote its results."""
    work = WORK / name
    work.mkdir()
    for n, plan in enumerate(plans):
        with (work / f"buyer-{n}.tsv").open("w") as out:
            for checkout in plan:
                token = mint(JWT_SECRET, checkout["student"], 3600, "kc_tasks")
                out.write(f"{checkout['course']}\t{token}\t{json.dumps(checkout['body'])}\n")
    (work / "confirm.lua").write_text(LUA)
    buyers = len(plans)
    wrk = subprocess.Popen(
        [
            *("wrk", f"-t{buyers}", f"-c{buyers}", "-d600s", "--timeout", "30s", "-s", str(work / "confirm.lua")),
            *(base, "--", str(work), str(pause_ms)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    done = [work / f"done-{n}.txt" for n in range(buyers)]
    while not all(path.exists() for path in done) and wrk.poll() is None:
        time.sleep(0.2)
    wrk.send_signal(signal.SIGINT)
    output, _ = wrk.communicate(timeout=30)
    if not all(path.exists() for path in done):
        raise SystemExit("wrk ended before every buyer was done:\n" + output[-2000:])
    if "Socket errors" in output:
        print(output, file=sys.stderr)
    first: list[float] = []
    again: list[float] = []
    problems: list[str] = []
    began, ended, resent = float("inf"), 0.0, 0
    for path in done:
        lines = path.read_text().splitlines()
        start, end, again_sent = lines[0].split()
        start, end = float(start), float(end)
        resent += int(again_sent)
        began, ended = min(began, start), max(ended, end)
        for line in lines[1:]:
            kind, _, value = line.partition(" ")
            if kind == "problem":
                problems.append(value)
            else:
                (first if kind == "first" else again).append(float(value))
    elapsed = ended - began
    first.sort()
    every = sorted(first + again)
    return {
        "confirms": len(every),
        "seconds": round(elapsed, 2),
        "confirms_per_second": round(len(every) / elapsed, 1),
        "first_p50_ms": round(percentile(first, 50), 1),
        "first_p99_ms": round(percentile(first, 99), 1),
        "every_p50_ms": round(percentile(every, 50), 1),
        "again_p50_ms": round(percentile(sorted(again), 50), 1),
        "again_p99_ms": round(percentile(sorted(again), 99), 1),
        "problems": problems[:5],
        "problem_count": len(problems),
        "requests_sent_again": resent,
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
    parser.add_argument("--pause-ms", type=int, default=0, help="each buyer's pause before its next confirm")
    args = parser.parse_args()
    WORK.mkdir(parents=True)
    # One checkout more per buyer, confirmed first and not measured: the web process as it runs
    # for days (its threads, pools and connections made), not its first second.
    store, plans = checkouts(args.buyers, args.checkouts + 1)
    warm_up, plans = [plan[:1] for plan in plans], [plan[1:] for plan in plans]
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
                [str(BIN / "uvicorn"), "--factory", "kc_tasks.web:create_app", "--port", str(port)],
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
        warming = drive(f"http://127.0.0.1:{port}", warm_up, 0, "warm-up")
        if warming["problem_count"]:
            raise SystemExit(f"the warm-up's confirms failed: {warming['problems']}")
        load_before = os.getloadavg()[0]
        result = drive(f"http://127.0.0.1:{port}", plans, args.pause_ms, "run")
        result["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        payments = args.buyers * (args.checkouts + 1)
        made = sql("SELECT count(*), count(DISTINCT payment_id) FROM student_course_purchases")[0]
        duplicates = sql("SELECT count(*) FROM duplicate_payments")[0][0]
        result |= {
            "buyers": args.buyers,
            "pause_ms": args.pause_ms,
            "web_concurrency": int(os.environ.get("WEB_CONCURRENCY", "1")),
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
