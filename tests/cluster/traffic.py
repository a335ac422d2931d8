"""Purchases and refunds that keep flowing while a test takes a broker node away: a payment
service on the contract's plain client line (publisher confirms on, so that it knows what the
broker took) and, when a web process is given, signed webhooks to it.

Each way runs in a thread of its own, one payment after the other; every fifth payment, the
refund of the payment two before it follows. What was acknowledged (a confirmed publish, a 2xx
answer) and when is recorded, to be checked against the database once the flow has stopped."""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from kc_tasks.payments.inbox import task_id_for
from tests.builders import WEBHOOK_SECRET, purchase, signed
from tests.faults.checker import BROKER_ERRORS, PUBLISH_RETRY, Publisher
from tests.harness import wait_until
from tests.services import run_sql

CREATE, REVOKE = "kc_tasks.create_purchase", "kc_tasks.revoke_purchase"
REFUND_EVERY = 5


@dataclass
class Way:
    """One way in: what it was told, per payment."""

    name: str
    sent_at: dict[str, float] = field(default_factory=dict)  # acknowledged purchases: when sent
    refunded: set[str] = field(default_factory=set)  # acknowledged refunds
    uncertain: set[str] = field(default_factory=set)  # a send that failed: the broker may have it
    refused: list[str] = field(default_factory=list)  # answers that were not 2xx (webhooks)


class Traffic:
    def __init__(self, broker_url: str, web: str | None = None, transport_options: dict | None = None) -> None:
        self.publisher = Publisher(broker_url)
        if transport_options:  # Redis behind Sentinel: the primary's name
            self.publisher.app.conf.broker_transport_options = transport_options
        self.web = web
        self.ways = {"task": Way("task")} | ({"webhook": Way("webhook")} if web else {})
        self._sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(way,), daemon=True) for way in self.ways]
        self.errors: list[BaseException] = []

    @property
    def sent(self) -> int:
        """Payments and refunds sent so far, every way together."""
        with self._lock:
            return self._sent

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def until(self, sent: int, timeout: float = 120) -> int:
        """Wait until `sent` payments and refunds have gone (the flow goes on); the count then."""
        assert wait_until(lambda: self.sent >= sent or bool(self.errors), timeout=timeout, interval=0.05), (
            f"the traffic stalled at {self.sent} of {sent}"
        )
        assert not self.errors, self.errors
        return self.sent

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
        assert not self.errors, self.errors

    def _run(self, way: str) -> None:
        try:
            payments: list[str] = []
            while not self._stop.is_set():
                kwargs = purchase()
                payments.append(kwargs["payment_id"])
                self._send(way, CREATE, kwargs)
                if len(payments) % REFUND_EVERY == 0 and len(payments) > 2:
                    self._send(way, REVOKE, {"payment_id": payments[-3], "reason": "refund"})
                time.sleep(0.01)
        except BaseException as exc:
            self.errors.append(exc)

    def _send(self, way: str, task: str, kwargs: dict) -> None:
        record, payment = self.ways[way], kwargs["payment_id"]
        at = time.time()
        ok = self._publish(task, kwargs) if way == "task" else self._post(task, kwargs, record)
        with self._lock:
            self._sent += 1
            if ok is None:
                record.uncertain.add(payment)
            elif ok and task == CREATE:
                record.sent_at[payment] = at
            elif ok:
                record.refunded.add(payment)

    def _publish(self, task: str, kwargs: dict) -> bool | None:
        try:
            sent = self.publisher.app.send_task(
                task, kwargs=kwargs, queue="purchases", retry=True, retry_policy=PUBLISH_RETRY
            )
        except BROKER_ERRORS:
            return None
        self.publisher.history.task_ids.setdefault(kwargs["payment_id"], []).append(sent.id)
        return True

    def _post(self, task: str, kwargs: dict, record: Way) -> bool | None:
        assert self.web
        kind = "payment.succeeded" if task == CREATE else "payment.refunded"
        data = kwargs if task == CREATE else {"payment_id": kwargs["payment_id"], "refund_id": f"rf_{uuid.uuid4().hex}"}
        body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": kind, "data": data}).encode()
        try:
            answer = httpx.post(
                self.web + "/webhooks/payments", content=body, headers=signed(body, WEBHOOK_SECRET), timeout=30
            )
        except httpx.TransportError as exc:
            record.refused.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        if not answer.is_success:
            record.refused.append(f"{kind}: HTTP {answer.status_code} {answer.text[:200]}")
            return False
        return True

    def acknowledged(self) -> dict[str, float]:
        """Every purchase acknowledged to its sender, by payment id: when it was sent."""
        return {p: at for way in self.ways.values() for p, at in way.sent_at.items()}

    def refunded(self) -> set[str]:
        return {p for way in self.ways.values() for p in way.refunded}

    def uncertain(self) -> set[str]:
        return {p for way in self.ways.values() for p in way.uncertain}

    def received_by(self, payment: str, worker_log: str) -> bool:
        """Whether a worker logged the purchase's delivery as received (its task id: the one the
        publisher got, or the inbox's for a webhook's)."""
        ids = [*self.publisher.history.task_ids.get(payment, []), task_id_for(payment)]
        return any(f"[{task_id}] received" in worker_log for task_id in ids)

    def refused(self) -> list[str]:
        return [answer for way in self.ways.values() for answer in way.refused]


def outcomes(database_url: str) -> dict[str, list[tuple[bool, float]]]:
    """Each payment's purchase rows: active or not, and when made (epoch seconds)."""
    found: dict[str, list[tuple[bool, float]]] = {}
    rows = run_sql(
        database_url, "SELECT payment_id, is_active, extract(epoch FROM created_at) FROM student_course_purchases"
    )
    for payment, active, made in rows:
        found.setdefault(payment, []).append((active, float(made)))
    return found


def unsettled(database_url: str, traffic: Traffic, excused: Callable[[str], bool] = lambda p: False) -> dict:
    """What is not yet as the senders were told: acknowledged purchases missing, made more than
    once or active against their refund, and inbox events still waiting to be enqueued. A
    missing purchase that `excused` names is left out."""
    rows, refunded = outcomes(database_url), traffic.refunded()
    left = run_sql(database_url, "SELECT count(*) FROM payment_events WHERE status = 'received'")[0][0]
    wrong = {
        p: rows.get(p, [])
        for p in traffic.acknowledged()
        if not (len(rows.get(p, [])) == 1 and rows[p][0][0] == (p not in refunded))
        and not (p not in rows and excused(p))
    }
    return {"inbox_received": left, "payments": wrong} if left or wrong else {}


def settled(database_url: str, traffic: Traffic, excused: Callable[[str], bool] = lambda p: False) -> bool:
    """Every acknowledged purchase made once, refunded or not as it was told, and nothing left
    in the inbox to enqueue (a missing purchase that `excused` names aside)."""
    return not unsettled(database_url, traffic, excused)


def missing(database_url: str, traffic: Traffic) -> set[str]:
    """Acknowledged purchases of which there is no row."""
    return set(traffic.acknowledged()) - set(outcomes(database_url))


def latencies(database_url: str, traffic: Traffic, stretches: dict[str, tuple[float, float]]) -> dict:
    """Publish (or webhook) to committed purchase, seconds, of the purchases sent in each
    stretch of time: how many, the median and the slowest."""
    rows = outcomes(database_url)
    figures: dict = {}
    for name, (start, end) in stretches.items():
        sent = {p: at for p, at in traffic.acknowledged().items() if start <= at < end and p in rows}
        taken = sorted(rows[p][0][1] - at for p, at in sent.items())
        figures[name] = {
            "n": len(taken),
            "median_s": round(statistics.median(taken), 3) if taken else None,
            "max_s": round(taken[-1], 3) if taken else None,
        }
    return figures
