"""Metrics on against metrics off: the drain (bench/run.py --ratio-only) and the kc webhook
(bench/webhooks.py --routes payments), in interleaved runs, with the median of each side.

    .venv/bin/python bench/metrics_ab.py [--rounds 3] [--n 5000] [--seconds 10] [--drain-only]

"On" sets KC_WORKER_METRICS_PORT (the drain's worker) or KC_WEB_METRICS_PORT (the web
process) to a free port, and scrapes it every SCRAPE_SECONDS while the run lasts, as Prometheus
would; "off" leaves them unset: nothing is kept or served. Besides the rates, each drain's
worker CPU time per purchase (main process and pool processes, from /proc): on two busy
cores the drain is bound by CPU, and CPU time per purchase moves far less with the machine's
drift between runs than a rate does. Writes bench/metrics-ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

from needs import CURL, PGREP, RABBITMQCTL, WRK, check, postgresql, rabbitmq

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RESULTS = ROOT / "bench" / "metrics-ab.json"
SCRAPE_SECONDS = 5
PG = os.environ.get("KC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scraping(port: int, stop: threading.Event) -> None:
    while not stop.wait(SCRAPE_SECONDS):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            pass  # not listening yet, or already gone


def run(argv: list[str], variable: str, on: bool, results: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("KC_WORKER_METRICS_PORT", "KC_WEB_METRICS_PORT")}
    stop = threading.Event()
    if on:
        port = free_port()
        env[variable] = str(port)
        threading.Thread(target=scraping, args=(port, stop), daemon=True).start()
    try:
        subprocess.run([PYTHON, *argv, "--results", str(results)], env=env, cwd=ROOT, check=True)
    finally:
        stop.set()
    return dict(json.loads(results.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=5000, help="purchases per drain")
    parser.add_argument("--seconds", type=int, default=10, help="wrk's seconds per webhook run")
    parser.add_argument("--drain-only", action="store_true", help="no webhook runs")
    args = parser.parse_args()
    # What bench/run.py --ratio-only and bench/webhooks.py need, before the first of them runs.
    webhook_needs = () if args.drain_only else (WRK, CURL)
    check(__file__, RABBITMQCTL, PGREP, postgresql(PG), rabbitmq(), *webhook_needs)
    work = Path(tempfile.mkdtemp(prefix="kc-metrics-ab-"))
    drains: dict[str, list[float]] = {"off": [], "on": []}
    # Purchases/s over no-op tasks/s of the same worker, same run: less of the machine's drift.
    ratios: dict[str, list[float]] = {"off": [], "on": []}
    webhooks: dict[str, list[float]] = {"off": [], "on": []}
    # The worker's CPU milliseconds per purchase (main process and pool processes).
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        # Interleaved, and the side that goes first alternates: the machine's drift hits both.
        sides = ("off", "on") if round_ % 2 == 0 else ("on", "off")
        for side in sides:
            drain = run(
                ["bench/run.py", "--ratio-only", "--n", str(args.n)],
                "KC_WORKER_METRICS_PORT",
                side == "on",
                work / f"drain-{round_}-{side}.json",
            )
            drains[side].append(drain["throughput"]["purchases_per_s"])
            ratios[side].append(drain["throughput"]["ratio"])
            cpu[side].append(round(drain["throughput"]["cpu_ms_per_task"]["purchase"]["worker"], 3))
        for side in sides if not args.drain_only else ():
            hooks = run(
                ["bench/webhooks.py", "--routes", "payments", "--rounds", "1", "--seconds", str(args.seconds)],
                "KC_WEB_METRICS_PORT",
                side == "on",
                work / f"webhooks-{round_}-{side}.json",
            )
            saturated = [r["rate"] for r in hooks["results"] if r["route"] == "payments" and not r["delay_ms"]]
            webhooks[side].append(saturated[0])
        print(json.dumps({"round": round_ + 1, "drain": drains, "cpu": cpu, "webhook": webhooks}), flush=True)
    summary = {
        name: {
            "runs": runs,
            "median_off": statistics.median(runs["off"]),
            "median_on": statistics.median(runs["on"]),
            "on_vs_off": round(statistics.median(runs["on"]) / statistics.median(runs["off"]) - 1, 4),
        }
        for name, runs in (
            ("drain_purchases_per_s", drains),
            ("drain_ratio_to_noop", ratios),
            ("drain_worker_cpu_ms_per_purchase", cpu),
            ("webhook_requests_per_s", webhooks),
        )
        if runs["off"] and runs["on"]
    }
    RESULTS.write_text(json.dumps({"rounds": args.rounds, "n": args.n, **summary}, indent=2) + "\n")
    for name, figures in summary.items():
        print(
            f"{name}: off {figures['median_off']:.2f}, on {figures['median_on']:.2f} "
            f"({100 * figures['on_vs_off']:+.1f} %), runs {figures['runs']}"
        )


if __name__ == "__main__":
    main()
