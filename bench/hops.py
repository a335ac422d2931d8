"""Where a webhook's time to its purchase goes: timestamps at each hop, for
`bench/webhook_to_purchase.py --hops`.

Imported by the bench's web process (its app factory) and given to its worker as the Celery
app (`celery -A hops worker`), this module wraps a few functions of kc_tasks and appends
`hop <tab> key <tab> time.time()` lines to a file per process under $KC_HOPS_DIR:

- pub0: the web's writer thread, the inbox INSERT returned (committed), publishing starts;
- pubd: every task of the batch handed to the broker's socket, confirms not yet awaited;
- arr: the worker's main process read the message (Celery's task handler is called);
- recv: Celery made it a request and gave it to the batcher;
- disp: the batcher gives it to a pool process (after a hold, if any);
- pool: the pool process starts the purchases' INSERT.

With the inbox's `received_at` (the web's INSERT began) and the purchase's `created_at` (its
statement began), `breakdown` gives the percentiles of each hop. The wrappers cost a write per
hop: the total comes out about a millisecond above a run without them.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from kc_tasks.celery import app
from kc_tasks.payments import inbox
from kc_tasks.worker import batching, purchases
from kc_tasks.worker import consumer as kc_worker

__all__ = ["app", "breakdown"]

HOPS = ("insert+commit", "publish", "broker", "celery", "hold", "to pool", "to statement")
_files: dict[int, Any] = {}


def _log(hop: str, key: str) -> None:
    out = _files.get(os.getpid())
    if out is None:
        out = _files[os.getpid()] = (Path(os.environ["KC_HOPS_DIR"]) / f"{os.getpid()}.tsv").open("a", buffering=1)
    out.write(f"{hop}\t{key}\t{time.time():.6f}\n")


def _wrap(owner: Any, name: str, before: Any) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def _published(app_: Any, sending: Any, channel: Any) -> None:
    for event, task in sending:
        _log("pub0", event.payment_id)
        _log("task", f"{task.task_id}|{event.payment_id}")


def _sending(channel: Any, tasks: Any) -> None:
    channel.hop_ids = [task.task_id for task in tasks]


def _confirming(channel: Any, *args: Any, **kwargs: Any) -> None:
    for task_id in getattr(channel, "hop_ids", ()):
        _log("pubd", task_id)


def _dispatching(batcher: Any) -> None:
    for request in list(batcher.pending)[: batching.BATCH_MAX]:
        _log("disp", request.id)


def _inserting(engine: Any, guard: Any, batch: Any) -> None:
    for purchase in batch:
        _log("pool", purchase.payment_id)


_wrap(inbox, "_enqueue_many", _published)
_wrap(inbox.TaskChannel, "send", _sending)
_wrap(inbox.TaskChannel, "confirm", _confirming)
_wrap(batching.PurchaseBatcher, "__call__", lambda batcher, request: _log("recv", request.id))
_wrap(batching.PurchaseBatcher, "_send", _dispatching)
_wrap(purchases, "_insert", _inserting)

_handler = kc_worker.Consumer.create_task_handler


def _create_task_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
    handle = _handler(self, *args, **kwargs)

    def on_task_received(message: Any) -> Any:
        _log("arr", (message.headers or {}).get("id"))
        return handle(message)

    return on_task_received


kc_worker.Consumer.create_task_handler = _create_task_handler


def breakdown(folder: Path, rows: list[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
    """p50/p90/p99 in ms of each hop, over the payments `rows` (payment id, received_at and
    created_at as epoch seconds) whose every hop was seen."""
    at: dict[str, dict[str, float]] = defaultdict(dict)
    payment_of: dict[str, str] = {}
    for path in folder.glob("*.tsv"):
        for line in path.read_text().splitlines():
            hop, key, when = line.split("\t")
            if hop == "task":
                task_id, payment_id = key.split("|")
                payment_of[task_id] = payment_id
            else:
                at[key].setdefault(hop, float(when))
    for task_id, payment_id in payment_of.items():
        at[payment_id].update(at.pop(task_id, {}))
    spans: dict[str, list[float]] = defaultdict(list)
    for payment_id, received, created in rows:
        t = at.get(payment_id, {})
        if not all(h in t for h in ("pub0", "pubd", "arr", "recv", "disp", "pool")):
            continue
        edges = (received, t["pub0"], t["pubd"], t["arr"], t["recv"], t["disp"], t["pool"], created)
        for hop, start, end in zip(HOPS, edges, edges[1:], strict=False):
            spans[hop].append(1000 * (end - start))
        spans["total"].append(1000 * (created - received))
    result = {}
    for hop, values in spans.items():
        values.sort()
        last = len(values) - 1
        result[hop] = {f"p{p}": round(values[min(last, round(p / 100 * last))], 2) for p in (50, 90, 99)}
    return result
