"""Latency: enqueue to commit, with purchases offered at a steady rate.

Purchases are offered at a given rate (by default half the measured purchase rate),
published with confirms; latency = created_at of the row (now() of the one-statement
transaction that inserts and commits it) minus the time recorded just before the publish.
p50/p90/p99/max.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
import uuid
from typing import Any

from common import LOGS, QUEUE, TABLE, log, percentile, purchase_kwargs, purchases_per_insert, sql
from kombu.serialization import dumps
from workers import Bench, Worker, cpu_snapshot


def purchase_message(bench: Bench, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any], bytes, dict[str, Any]]:
    """A create_purchase message as send_task would publish it: task id, kwargs, serialized
    body and the rest of the publish arguments."""
    task_id = str(uuid.uuid4())
    message = bench.confirmed.amqp.as_task_v2(
        task_id, "kc_tasks.create_purchase", kwargs=kwargs, reply_to=bench.confirmed.thread_oid, ignore_result=None
    )
    content_type, content_encoding, body = dumps(message.body, serializer="json")
    options = {
        "headers": message.headers,
        "content_type": content_type,
        "content_encoding": content_encoding,
        "delivery_mode": 2,
        **message.properties,
    }
    return task_id, kwargs, body, options


def latency(bench: Bench, worker: Worker, rate: float, count: int, publisher: str = "prebuilt") -> dict[str, Any]:
    """Purchases offered at `rate` per second, each published with a confirm; enqueue (just
    before the publish) to commit (the row's created_at), in milliseconds.

    The payment service's publisher shares the two CPUs with the worker, so it is kept lean:
    with `prebuilt`, each message is built beforehand by Celery's own `as_task_v2` (the same
    protocol-2 message `send_task` publishes) and published with kombu, a confirm awaited for
    each. `send_task` builds and publishes each message in the loop, at about twice the CPU
    per message."""
    db = worker.db_url
    sql(f"TRUNCATE {TABLE}, duplicate_payments, event_outbox, payments", url=db)
    started = sql("SELECT now()", url=db)[0][0]
    messages = [purchase_message(bench, purchase_kwargs(bench.rnd)) for _ in range(count)]
    ids = [task_id for task_id, *_ in messages]
    task_of = {kwargs["payment_id"]: task_id for task_id, kwargs, *_ in messages}
    sent: dict[str, float] = {}
    interval = 1.0 / rate
    before = cpu_snapshot(worker)
    # The publisher keeps to its schedule: no collection pauses it, then makes it catch up
    # in a burst (a full collection of this process takes 15-25 ms).
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        start = time.time() + 0.2
        with bench.confirmed.producer_or_acquire() as producer:
            for i, (task_id, kwargs, body, options) in enumerate(messages):
                due = start + i * interval
                pause = due - time.time()
                if pause > 0:
                    time.sleep(pause)
                sent[kwargs["payment_id"]] = time.time()
                if publisher == "send_task":
                    bench.confirmed.send_task(
                        "kc_tasks.create_purchase", kwargs=kwargs, queue=QUEUE, task_id=task_id, producer=producer
                    )
                else:
                    producer.publish(body, exchange=QUEUE, routing_key=QUEUE, **options)
    finally:
        gc.enable()
        gc.unfreeze()
    offered = count / (time.time() - start)
    busy = bench.cpu.busy(start, time.time())
    bench.events.wait(ids)
    after = cpu_snapshot(worker)
    rows = sql(f"SELECT payment_id, extract(epoch FROM created_at)::float8 FROM {TABLE}", url=db)
    timeline = sorted(
        (sent[p], 1000 * (created - sent[p]), 1000 * (bench.events.received[task_of[p]] - sent[p]))
        for p, created in rows
        if p in sent
    )
    # Per purchase: sent (s from the start), latency and the worker's task-received (ms after
    # sending): where the slow ones were, and whether they were slow to reach the worker.
    timeline_file = LOGS / f"latency-{rate:.0f}.json"
    timeline_file.write_text(json.dumps([[round(v, 4) for v in (t - start, ms, r)] for t, ms, r in timeline]))
    latencies = sorted(ms for _, ms, _ in timeline)
    assert len(latencies) == count, f"{len(latencies)} purchases of {count}"
    result = {
        "settings": worker.settings.label,
        "target_rate_per_s": rate,
        "offered_rate_per_s": offered,
        "count": count,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1],
        "mean_ms": statistics.fmean(latencies),
        "machine_busy": busy,
        "publisher": publisher,
        "purchases_per_insert": purchases_per_insert(started, db),
        "cpu_ms_per_task": {k: 1000 * (after[k] - before[k]) / count for k in before},
    }
    log(
        f"  latency at {offered:.0f}/s: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"CPUs {100 * busy:.0f} % busy"
    )
    return result
