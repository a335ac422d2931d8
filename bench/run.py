"""The kc_tasks benchmark: throughput, latency, cost per purchase and growth, in one command.

    .venv/bin/python bench/run.py [--n 5000] [--concurrency CPUS] [--pool prefork] [--prefetch 16] [--quick]

Everything runs against real services on this machine: a database of its own (kc_bench_*,
made by `kc-tasks migrate`), a RabbitMQ vhost of its own, and real `celery -A kc_tasks
worker -E` processes. Both are removed at the end. Prints a table, writes bench/results.json
and docs/benchmark.png. Not part of the test suite: nothing here passes or fails a build.

What each measures, and how, is said at the top of its module:

- drains.py: throughput, purchases against no-op tasks, and the settings sweep;
- latency.py: enqueue to commit at a steady offered rate;
- cost.py: round trips, statements and index queries per purchase;
- growth.py: the purchase rate with a million rows in the table;
- report.py: the table and the chart;
- common.py, workers.py: the database, vhost, workers and task events they share.

To measure another version of kc_tasks, put its directory first on PYTHONPATH: the workers
then run there (docs/benchmark.md shows how).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    AMQP,
    CHART,
    CPUS,
    DB,
    DB_URL,
    GROWTH_TARGET,
    LOGS,
    P99_TARGET_MS,
    PG,
    RATIO_TARGET,
    RESULTS,
    VHOST,
    code_state,
    log,
    machine,
    setup,
    teardown,
)
from cost import cost_per_purchase
from drains import QUICK_SWEEP, SWEEP, ratio, sweep
from growth import measure_growth
from latency import latency
from needs import MATPLOTLIB, PGREP, RABBITMQCTL, check, postgresql, rabbitmq
from report import busy, chart, table
from workers import Bench, Settings, Worker, start_worker


def measure_alone(settings: Settings, path: Path, name: str, measure: Callable[[Bench, Worker], Any]) -> Any:
    """One measurement on a worker of its own, written to `path` with the code's state: for
    comparing two versions of kc_tasks."""
    setup()
    try:
        bench = Bench()
        worker = start_worker(settings)
        try:
            results = {"kc_tasks": code_state(), name: measure(bench, worker)}
        finally:
            worker.stop()
    finally:
        teardown()
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results[name]


def ratio_only(settings: Settings, n: int, path: Path, live: bool = False) -> int:
    """The throughput measurement alone."""
    main = measure_alone(
        settings, path, "throughput", lambda bench, worker: ratio(bench, worker, n, rounds=2, live=live)
    )
    print(
        f"{main['label']}, N={n}{', live' if live else ''}: "
        f"purchases {main['purchases_per_s']:.0f}/s, no-op {main['noop_per_s']:.0f}/s, "
        f"ratio {main['ratio']:.2f}; CPUs busy (purchases / no-op): {busy(main)}; "
        f"purchases per INSERT {main['purchases_per_insert']:.1f}; "
        f"round trips per purchase {main['round_trips_per_purchase']:.2f}; "
        f"all rates {main['all_rates']}; wrote {path}"
    )
    return 0


def latency_only(settings: Settings, rate: float, n: int, path: Path, publisher: str) -> int:
    """The latency measurement alone, at a rate given: two versions at the same offered load."""
    lat = measure_alone(settings, path, "latency", lambda bench, worker: latency(bench, worker, rate, n, publisher))
    print(
        f"{settings.label}, {n} purchases at {lat['offered_rate_per_s']:.0f}/s: p50 {lat['p50_ms']:.1f} ms, "
        f"p90 {lat['p90_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms; "
        f"CPUs {100 * lat['machine_busy']:.0f} % busy; {lat['purchases_per_insert']:.2f} purchases per INSERT; "
        f"CPU ms per purchase "
        f"{ {k: round(v, 2) for k, v in lat['cpu_ms_per_task'].items()} }; wrote {path}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="tasks per throughput measurement (default 5000)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CPUS,
        help=f"worker -c of the main measurements (default: one per CPU, {CPUS}, as `celery -A kc_tasks worker`)",
    )
    parser.add_argument("--pool", default="prefork", help="worker -P of the main measurements")
    parser.add_argument("--prefetch", type=int, default=16, help="worker --prefetch-multiplier (kc_tasks' default: 16)")
    parser.add_argument("--seed-rows", type=int, default=1_000_000, help="existing purchases for the growth test")
    parser.add_argument("--no-sweep", action="store_true", help="skip the settings sweep")
    parser.add_argument("--quick", action="store_true", help="N=1000, 100k seeded rows, a short sweep: a smoke run")
    parser.add_argument("--replot", action="store_true", help="only redraw the chart and table from results.json")
    parser.add_argument(
        "--ratio-only",
        action="store_true",
        help="only the throughput ratio (best of 2 rounds): to compare two versions; no chart",
    )
    parser.add_argument(
        "--latency-only",
        type=float,
        metavar="RATE",
        help="only the latency, --n purchases offered at RATE per second: to compare two versions at one load",
    )
    parser.add_argument(
        "--publisher",
        choices=("prebuilt", "send_task"),
        default="prebuilt",
        help="how the latency run publishes: messages built beforehand (default), or send_task in the loop",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="with --ratio-only: publish the tasks while the worker drains them (drains.py)",
    )
    parser.add_argument("--results", type=Path, help=f"where to write the figures (default {RESULTS.name})")
    parser.add_argument("--chart", type=Path, default=CHART, help="where to draw the chart (docs/benchmark.png)")
    args = parser.parse_args()
    # The chart is drawn at the end of a full run, and alone by --replot.
    chart_needs = () if args.ratio_only or args.latency_only else (MATPLOTLIB,)
    if args.replot:
        check(__file__, *chart_needs)
        results = json.loads((args.results or RESULTS).read_text())
        chart(results, args.chart)
        print(table(results))
        return 0
    check(__file__, RABBITMQCTL, PGREP, postgresql(PG), rabbitmq(), *chart_needs)
    if args.quick:
        args.n, args.seed_rows = min(args.n, 1000), min(args.seed_rows, 100_000)
    main_settings = Settings(args.pool, args.concurrency, args.prefetch)
    os.environ.update(DATABASE_URL=DB_URL, CELERY_BROKER_URL=AMQP)
    if args.ratio_only:
        return ratio_only(main_settings, args.n, args.results or LOGS / "results.json", args.live)
    if args.latency_only:
        path = args.results or LOGS / "results.json"
        return latency_only(main_settings, args.latency_only, args.n, path, args.publisher)
    args.results = args.results or RESULTS

    started = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "kc_tasks": code_state(),
    }
    setup()
    log(f"database {DB}, vhost {VHOST}, logs in {LOGS}")
    try:
        results["machine"] = machine()
        bench = Bench()
        settings_list = [] if args.no_sweep else QUICK_SWEEP if args.quick else SWEEP
        results["sweep"] = sweep(bench, settings_list, max(500, args.n // 2))

        log(f"throughput: {main_settings.label}, N={args.n}, best of 2 rounds")
        worker = start_worker(main_settings)
        try:
            results["throughput"] = ratio(bench, worker, args.n, rounds=2)
            rate = results["throughput"]["purchases_per_s"] / 2
            count = int(min(args.n, max(1000, rate * 20)))
            log(f"latency: {count} purchases offered at {rate:.0f}/s")
            results["latency"] = latency(bench, worker, rate, count, args.publisher)

            results["growth"] = measure_growth(bench, worker, main_settings, args.seed_rows, args.n)
        finally:
            worker.stop()

        log("cost per purchase: in-process task runs with a protocol trace")
        results["cost"] = cost_per_purchase(200)
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        results["seconds"] = round(time.monotonic() - started)
        results["finished_at"] = time.strftime("%Y-%m-%d %H:%M")
        results["targets"] = {
            "ratio": results["throughput"]["ratio"] >= RATIO_TARGET,
            "p99": results["latency"]["p99_ms"] < P99_TARGET_MS,
            "index_queries": results["cost"]["index_queries_per_task"] == 0,
            "growth": abs(results["growth"]["change"]) <= GROWTH_TARGET,
        }
    finally:
        teardown()
    args.results.write_text(json.dumps(results, indent=2, default=str) + "\n")
    chart(results, args.chart)
    print()
    print(table(results))
    print(f"\ntargets met: {results['targets']}")
    print(f"{results['seconds']} s; wrote {args.results} and {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
