"""A signed webhook to its purchase: the whole service on one machine, at about half the rate
it can take.

    .venv/bin/python bench/webhook_to_purchase.py [--rounds 3] [--seconds 15] [--connections 8] [--hops]

The web process (uvicorn, the Procfile's) and a worker (`celery -A kc_tasks worker`, its
defaults: a pool process per CPU, batching on) run beside PostgreSQL and RabbitMQ on the same
cores, each on a database and vhost of its own. wrk sends kc_tasks' signed webhook
(`POST /webhooks/payments`), every request a new payment. Each round first finds the
saturation rate (as many requests as the service answers), then offers about half of it (each
connection waits between requests) and measures, per purchase, from the moment the web process
stored the webhook (`payment_events.received_at`) to the commit of its purchase (`created_at`
of the row, the time of its one-statement transaction): when the course is in the read API.
Prints each round's p50, p90, p99 and max; the ranges over rounds go in docs/benchmark.md.
With --hops, the web and the worker also time each hop on the way (bench/hops.py), and each
round prints their percentiles; those wrappers add about a millisecond to the total.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import webhooks as w
from common import purchases_policy
from needs import CURL, RABBITMQCTL, WRK, check, postgresql, rabbitmq

ROUTE = "payments"


def wrk(requests: Path, connections: int, seconds: int, delay_ms: float = 0) -> dict[str, Any]:
    """One wrk thread, so that each request of the file is sent once: every one a new payment."""
    run = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(w.WORK / "bench.lua"),
            f"http://127.0.0.1:{w.PORT}",
        ],
        env=dict(os.environ, WRK_REQUESTS=str(requests), WRK_DELAY_MS=str(int(delay_ms))),
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+)", run.stdout)
    assert match, run.stdout + run.stderr
    total, bad_status, socket_errors, duration_us = (int(g) for g in match.groups())
    return {
        "requests": total,
        "non_2xx": bad_status,
        "socket_errors": socket_errors,
        "rate": total / (duration_us / 1e6),
    }


def requests_for(label: str, n: int) -> Path:
    """n requests of new payments, their ids marked with `label` (one set per run)."""
    base = w.RUN_ID
    w.RUN_ID = f"{base}_{label}"
    try:
        path = w.requests_file(ROUTE, n)
    finally:
        w.RUN_ID = base
    return path.rename(path.with_name(f"{label}.requests"))


def latencies(label: str) -> list[float]:
    """Milliseconds from the stored webhook to its purchase's commit, per payment of the run."""
    rows = w.sql(
        "SELECT extract(epoch FROM p.created_at - e.received_at) * 1000 FROM payment_events e "
        "JOIN student_course_purchases p ON p.payment_id = e.payment_id "
        f"WHERE e.provider = 'kc' AND e.payment_id LIKE 'pay_{w.RUN_ID}_{label}_%' ORDER BY 1",
        url=w.DB_URL,
    )
    return [float(r[0]) for r in rows]


def timestamps(label: str) -> list[tuple[str, float, float]]:
    """Per payment of the run: its id, when the web stored it and when its purchase began, as
    epoch seconds."""
    rows = w.sql(
        "SELECT e.payment_id, extract(epoch FROM e.received_at), extract(epoch FROM p.created_at) "
        "FROM payment_events e JOIN student_course_purchases p ON p.payment_id = e.payment_id "
        f"WHERE e.provider = 'kc' AND e.payment_id LIKE 'pay_{w.RUN_ID}_{label}_%'",
        url=w.DB_URL,
    )
    return [(str(r[0]), float(r[1]), float(r[2])) for r in rows]


def wait_drained(label: str, sent: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        (stored, made) = w.sql(
            "SELECT count(*), count(p.id) FROM payment_events e LEFT JOIN student_course_purchases p "
            f"ON p.payment_id = e.payment_id WHERE e.payment_id LIKE 'pay_{w.RUN_ID}_{label}_%'",
            url=w.DB_URL,
        )[0]
        if stored == made or time.monotonic() > deadline:
            return made
        time.sleep(0.5)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--hops", action="store_true", help="time each hop (bench/hops.py)")
    args = parser.parse_args()
    check(__file__, WRK, CURL, RABBITMQCTL, postgresql(w.PG), rabbitmq())
    w.WORK.mkdir(parents=True)
    (w.WORK / "bench_web.py").write_text(("import hops  # noqa: F401\n" if args.hops else "") + w.BARE_APP)
    hops_dir = w.WORK / "hops"
    hops_dir.mkdir()
    environment = w.env()
    if args.hops:
        path = f"{environment['PYTHONPATH']}:{Path(__file__).parent}"
        environment |= {"KC_HOPS_DIR": str(hops_dir), "PYTHONPATH": path}
    (w.WORK / "bench.lua").write_text(w.LUA)
    w.rabbitmqctl("add_vhost", w.VHOST)
    w.rabbitmqctl("set_permissions", "-p", w.VHOST, "guest", ".*", ".*", ".*")
    subprocess.run([str(w.BIN / "kc-tasks"), "migrate"], env=w.env(), check=True, capture_output=True)
    purchases_policy(w.rabbitmqctl, w.VHOST)
    logs = {name: (w.WORK / f"{name}.log").open("w") for name in ("web", "worker")}
    web = subprocess.Popen(
        [str(w.BIN / "uvicorn"), "--factory", "bench_web:create_app", "--host", "127.0.0.1", "--port", str(w.PORT)],
        env=environment,
        stdout=logs["web"],
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [
            *(str(w.BIN / "celery"), "-A", "hops" if args.hops else "kc_tasks", "worker"),
            *("-l", "WARNING", "--without-mingle", "--without-gossip"),
        ],
        cwd=w.ROOT,
        env=environment,
        stdout=logs["worker"],
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    results = []
    try:
        for _ in range(100):
            if (
                subprocess.run(["curl", "-sf", f"http://127.0.0.1:{w.PORT}/readyz"], capture_output=True).returncode
                == 0
            ):
                break
            time.sleep(0.2)
        for round_ in range(1, args.rounds + 1):
            full = wrk(requests_for(f"s{round_}", 40_000), args.connections, args.seconds)
            wait_drained(f"s{round_}", full["requests"])
            # Closed loop: each connection pauses between requests so that together they offer
            # half the saturation rate. Its period is 2c/R; what a request itself takes at
            # that load comes from a short calibration run, then the pause is the rest.
            period_ms = 2 * args.connections * 1000 / full["rate"]
            trial = wrk(requests_for(f"c{round_}", 40_000), args.connections, 5, delay_ms=period_ms)
            wait_drained(f"c{round_}", trial["requests"])
            answer_ms = args.connections * 1000 / trial["rate"] - int(period_ms)
            pause_ms = max(0.0, period_ms - answer_ms)
            half = wrk(requests_for(f"h{round_}", 40_000), args.connections, args.seconds, delay_ms=pause_ms)
            made = wait_drained(f"h{round_}", half["requests"])
            ms = latencies(f"h{round_}")
            result = {
                "round": round_,
                "saturation_per_s": round(full["rate"], 1),
                "offered_per_s": round(half["rate"], 1),
                "of_saturation": round(half["rate"] / full["rate"], 2),
                "purchases": made,
                "non_2xx": half["non_2xx"],
                "p50_ms": round(pct(ms, 50), 2),
                "p90_ms": round(pct(ms, 90), 2),
                "p99_ms": round(pct(ms, 99), 2),
                "max_ms": round(ms[-1], 2),
            }
            if args.hops:
                import hops  # the wrappers apply to this process too, harmlessly: it runs no task

                result["hops_ms"] = hops.breakdown(hops_dir, timestamps(f"h{round_}"))
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        for process in (worker, web):
            os.killpg(process.pid, 15)
            process.wait(30)
        w.rabbitmqctl("delete_vhost", w.VHOST)
        w.sql(f"DROP DATABASE IF EXISTS kc_bench_web_{w.RUN_ID} WITH (FORCE)")
    for key in ("saturation_per_s", "offered_per_s", "p50_ms", "p99_ms"):
        values = [r[key] for r in results]
        print(f"{key}: {min(values)} to {max(values)} over {len(values)} rounds")


if __name__ == "__main__":
    main()
