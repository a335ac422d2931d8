"""Throughput: how fast a worker drains a full queue of purchases, against no-op tasks.

N tasks are published to `purchases` while the worker's consumer is cancelled, then the
consumer is added back and the queue drained. The rate is N over the time from the first
task-received to the last task-succeeded event (as contract-check's drain_rate), for N
purchases (distinct payments, empty table) and N `celery.accumulate` no-op tasks, same worker.
Best of two rounds each. The settings sweep measures the same ratio, N/2 tasks, for a few
pool / concurrency / prefetch settings.

Live (`bench/run.py --ratio-only --live`): the consumer stays on and this process publishes
the N tasks with send_task as fast as it can while the worker drains them, the publisher
sharing the two CPUs with the worker, PostgreSQL and RabbitMQ, as a payment service on the
same machine would.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from common import (
    BIN,
    CPUS,
    LOGS,
    QUEUE,
    TABLE,
    log,
    purchase_kwargs,
    purchases_per_insert,
    purge,
    queue_state,
    sql,
    statements_per_purchase,
    wait_for,
)
from needs import PY_SPY
from workers import Bench, Settings, Stuck, Worker, cpu_snapshot, start_worker


@dataclass
class Drain:
    kind: str
    n: int
    rate: float
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)
    machine_busy: float = float("nan")  # share of both CPUs busy during the drain
    # Purchases per transaction that created any (rows sharing a created_at, now() of the
    # transaction): above 1, the worker inserted queued purchases together.
    purchases_per_insert: float = float("nan")
    # PostgreSQL round trips per purchase in the drain (common.statements_per_purchase).
    round_trips_per_purchase: float = float("nan")


def drain(bench: Bench, worker: Worker, kind: str, n: int, truncate: bool = True, live: bool = False) -> Drain:
    """Fill `purchases` with n tasks while the worker does not consume it, then let it
    drain them: n over first task-received to last task-succeeded. `live`: publish them while
    the worker consumes."""
    control = bench.client.control
    if not live:
        reply = control.cancel_consumer(QUEUE, destination=[worker.name], reply=True, timeout=10)
        if not reply:
            raise Stuck(f"{worker.name} did not answer cancel_consumer")
        wait_for("the worker to stop consuming", lambda: queue_state(bench.client)[1] == 0)  # the reply comes first
    db = worker.db_url
    if kind == "purchase" and truncate:
        sql(f"TRUNCATE {TABLE}, duplicate_payments, event_outbox, payments", url=db)
    # Each drain starts right after a checkpoint, so that none pays for one the others did
    # not (the first change to a page after a checkpoint writes the whole page to the WAL).
    sql("CHECKPOINT")
    rows_before = sql(f"SELECT count(*) FROM {TABLE}", url=db)[0][0] if kind == "purchase" else 0
    if live:  # measured from the first publish; a backlog drain, from the consumer's start (below)
        started, before = sql("SELECT now()", url=db)[0][0], cpu_snapshot(worker)
    ids = []
    with bench.client.producer_or_acquire() as producer:
        for i in range(n):
            task_id = str(uuid.uuid4())
            ids.append(task_id)
            if kind == "noop":
                bench.client.send_task("celery.accumulate", args=(i,), queue=QUEUE, task_id=task_id, producer=producer)
            else:
                bench.client.send_task(
                    "kc_tasks.create_purchase",
                    kwargs=purchase_kwargs(bench.rnd),
                    queue=QUEUE,
                    task_id=task_id,
                    producer=producer,
                )
    if not live:
        wait_for(f"{n} tasks in {QUEUE}", lambda: queue_state(bench.client)[0] == n)
        started = sql("SELECT now()", url=db)[0][0]
        before = cpu_snapshot(worker)
        control.add_consumer(
            QUEUE, exchange=QUEUE, exchange_type="direct", routing_key=QUEUE, destination=[worker.name], reply=True
        )
    bench.events.wait(ids)
    after = cpu_snapshot(worker)
    if kind == "purchase":
        made = sql(f"SELECT count(*) FROM {TABLE}", url=db)[0][0] - rows_before
        assert made == n, f"{made} purchases made of {n}"
    drain = Drain(
        kind,
        n,
        bench.events.rate(ids),
        {k: 1000 * (after[k] - before[k]) / n for k in before},
        bench.cpu.busy(*bench.events.span(ids)),
    )
    if kind == "purchase":
        drain.purchases_per_insert = purchases_per_insert(started, db)
        drain.round_trips_per_purchase = statements_per_purchase(started, db)
    cpus = f"CPUs {100 * drain.machine_busy:.0f} % busy"
    log(f"  {worker.settings.label}: {n} {kind} tasks at {drain.rate:.0f}/s, {cpus}")
    return drain


def ratio(
    bench: Bench, worker: Worker, n: int, rounds: int, truncate: bool = True, live: bool = False
) -> dict[str, Any]:
    runs: dict[str, list[Drain]] = {"noop": [], "purchase": []}
    for _ in range(rounds):
        for kind in ("noop", "purchase"):
            runs[kind].append(drain(bench, worker, kind, n, truncate=truncate, live=live))
    best = {kind: max(drains, key=lambda d: d.rate) for kind, drains in runs.items()}
    return {
        "settings": asdict(worker.settings),
        "label": worker.settings.label,
        "n": n,
        "live": live,
        "noop_per_s": best["noop"].rate,
        "purchases_per_s": best["purchase"].rate,
        "ratio": best["purchase"].rate / best["noop"].rate,
        "cpu_ms_per_task": {kind: d.cpu_ms_per_task for kind, d in best.items()},
        "machine_busy": {kind: d.machine_busy for kind, d in best.items()},
        "purchases_per_insert": best["purchase"].purchases_per_insert,
        "round_trips_per_purchase": best["purchase"].round_trips_per_purchase,
        "all_rates": {kind: [round(d.rate, 1) for d in drains] for kind, drains in runs.items()},
    }


SWEEP = [
    Settings("prefork", CPUS, 16),
    Settings("prefork", 2 * CPUS, 16),
    Settings("prefork", 4 * CPUS, 16),
    Settings("prefork", CPUS, 4),
    Settings("prefork", CPUS, 8),
    Settings("prefork", CPUS, 32),
    Settings("threads", 2 * CPUS, 16),
    Settings("threads", 4 * CPUS, 16),
]
QUICK_SWEEP = [Settings("prefork", CPUS, 4), Settings("prefork", CPUS, 16)]


def sweep(bench: Bench, settings_list: list[Settings], n: int) -> list[dict[str, Any]]:
    """The ratio for each of `settings_list`, one round of n tasks on a worker of its own. A
    worker that hangs is recorded as hung, with a py-spy dump of it in the run's logs."""
    results: list[dict[str, Any]] = []
    for settings in settings_list:
        log(f"sweep: {settings.label}")
        worker = start_worker(settings)
        try:
            results.append(ratio(bench, worker, n, rounds=1))
        except Stuck as exc:
            results.append({"label": settings.label, "settings": asdict(settings), "hung": str(exc)})
            if PY_SPY.met():
                log(f"  {settings.label}: the worker hung: {exc}; py-spy dump in {LOGS}")
                dump = subprocess.run(
                    [str(BIN / "py-spy"), "dump", "--pid", str(worker.process.pid)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                (LOGS / f"hung-{settings.pool}-{settings.concurrency}.txt").write_text(dump.stdout + dump.stderr)
            else:
                log(f"  {settings.label}: the worker hung: {exc}; no py-spy dump of it ({PY_SPY.how})")
            worker.stop(timeout=3)
            purge(bench.client)  # what the hung worker left, so that the next one starts clean
        finally:
            worker.stop()
    return results
