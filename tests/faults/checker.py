"""A Jepsen-style checker: what the client was told, against what the system ended with.

The history is the client's side: every create_purchase it published, and whether the broker
confirmed it (RabbitMQ publisher confirms; on Redis, the LPUSH returned). The final state is
the purchase rows, the refunds recorded for a second payment of a course already held
(duplicate_payments) and the dead letters (`kc-tasks dlq list --json`). Every accepted
payment must end as exactly one of them:

- lost: accepted, and neither a row, a refund nor a dead letter; or only a refund while no other
  payment of its student/course pair holds a row (a refund is the outcome of a rival payment,
  a second payment of a course already held, never of the payment that was due the purchase);
- duplicated: more than one outcome (two rows, a row and a dead letter, two dead letters...);
- unexpected: a row, refund or dead letter of a payment that was never published;
- rows_mismatch: the purchase rows are not one per student/course pair of the accepted payments
  that were not dead-lettered (a row made for nobody, or one missing that no count above saw).

A publish that raised a connection or broker error may or may not have reached the broker: its
payment is "uncertain", and any single outcome, or none, is fine for it. A publish that raised
anything else is the test's failure, not an uncertainty: it propagates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from celery import Celery

from tests.services import broker_idle, run_sql

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))
ROOT = Path(__file__).resolve().parents[2]
# A publish that meets a dropped connection is retried this long before it counts as failed.
PUBLISH_RETRY = {"max_retries": 20, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 1.0}
# What a publish may raise when the broker, or the connection to it, fails: only these make it
# uncertain (amqp's ChannelError: a channel the broker closed under the publish).
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    kombu.exceptions.OperationalError,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.ChannelError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


@dataclass
class History:
    """The client's side: payments published, and how many copies of each the broker took."""

    accepted: Counter[str] = field(default_factory=Counter)
    uncertain: set[str] = field(default_factory=set)
    publishes: int = 0
    # The task id of each accepted delivery, by payment: to find a lost one in worker logs.
    task_ids: dict[str, list[str]] = field(default_factory=dict)
    # The student/course pair of each payment (a payment with none recorded is a pair alone).
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)

    def pair(self, payment: str) -> tuple[str, str]:
        return self.pairs.get(payment, ("payment", payment))

    @property
    def published(self) -> set[str]:
        return set(self.accepted) | self.uncertain


class Publisher:
    """The payment service: send_task by name, each publish confirmed before it counts."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery(broker=broker_url)
        if broker_url.startswith("amqp"):
            self.app.conf.broker_transport_options = {"confirm_publish": True}
        self.history = History()

    def send(self, messages: Iterable[dict[str, Any]], task: str = "kc_tasks.create_purchase") -> History:
        with self.app.producer_or_acquire() as producer:
            for kwargs in messages:
                self.history.publishes += 1
                if "student_id" in kwargs and "course_id" in kwargs:
                    self.history.pairs[kwargs["payment_id"]] = (kwargs["student_id"], kwargs["course_id"])
                try:
                    sent = self.app.send_task(
                        task,
                        kwargs=kwargs,
                        queue="purchases",
                        producer=producer,
                        retry=True,
                        retry_policy=PUBLISH_RETRY,
                    )
                except BROKER_ERRORS:
                    self.history.uncertain.add(kwargs["payment_id"])
                else:
                    self.history.accepted[kwargs["payment_id"]] += 1
                    self.history.task_ids.setdefault(kwargs["payment_id"], []).append(sent.id)
        return self.history


def dead_letters(broker_url: str) -> list[dict[str, Any]]:
    """Every dead letter in purchases.dlq, read with the operators' command."""
    env = dict(os.environ, CELERY_BROKER_URL=broker_url)
    result = subprocess.run(
        [KC_TASKS, "dlq", "list", "--json"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@dataclass
class Outcomes:
    rows: Counter[str]
    refunds: Counter[str]
    dead: Counter[str]

    @classmethod
    def read(cls, database_url: str, broker_url: str, with_dead_letters: bool = True) -> Outcomes:
        rows = run_sql(database_url, "SELECT payment_id, count(*) FROM student_course_purchases GROUP BY 1")
        refunds = run_sql(database_url, "SELECT payment_id, count(*) FROM duplicate_payments GROUP BY 1")
        letters = dead_letters(broker_url) if with_dead_letters else []
        return cls(
            Counter(dict(rows)),
            Counter(dict(refunds)),
            Counter(str((d.get("kwargs") or {}).get("payment_id")) for d in letters),
        )

    def of(self, payment: str) -> int:
        return self.rows[payment] + self.refunds[payment] + self.dead[payment]


@dataclass
class Verdict:
    fault: str
    broker: str
    faults_injected: int
    publishes: int
    accepted: int
    uncertain: int
    rows: int
    refunds: int
    dead_letters: int
    lost: int
    duplicated: int
    unexpected: int
    seconds: float
    # Purchase rows that should be there: one per student/course pair of the accepted payments
    # not dead-lettered (up to `rows_expected_max` with the uncertain payments' pairs).
    rows_expected: int = 0
    rows_expected_max: int = 0
    # Of the lost: payments no worker ever received (no "Task ...[id] received" line for any
    # of their deliveries), i.e. lost by the broker before delivery. -1: not looked for.
    lost_undelivered: int = -1
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rows_mismatch(self) -> bool:
        return not self.rows_expected <= self.rows <= self.rows_expected_max

    def line(self) -> str:
        figures = {k: v for k, v in asdict(self).items() if k != "examples"}
        return "FAULTS " + json.dumps(figures)


def check(
    history: History,
    outcomes: Outcomes,
    fault: str,
    broker_url: str,
    faults_injected: int,
    seconds: float,
    worker_logs: str | None = None,
) -> Verdict:
    """The verdict of a run; given the workers' logs, the lost payments that no worker ever
    received are counted apart (lost_undelivered)."""
    accepted = set(history.accepted)
    held = {history.pair(p) for p in outcomes.rows}
    lost = sorted(
        p
        for p in accepted
        if outcomes.of(p) == 0 or (outcomes.of(p) == outcomes.refunds[p] and history.pair(p) not in held)
    )
    undelivered = (
        -1
        if worker_logs is None
        else sum(
            1
            for p in lost
            if not any(f"[{task_id}] received" in worker_logs for task_id in history.task_ids.get(p, []))
        )
    )
    duplicated = sorted(p for p in history.published if outcomes.of(p) > 1)
    seen = set(outcomes.rows) | set(outcomes.refunds) | set(outcomes.dead)
    unexpected = sorted(seen - history.published)
    due = {history.pair(p) for p in accepted if not outcomes.dead[p]}
    maybe = {history.pair(p) for p in history.uncertain - accepted if not outcomes.dead[p]}
    verdict = Verdict(
        fault=fault,
        broker="redis" if broker_url.startswith("redis") else "rabbitmq",
        faults_injected=faults_injected,
        publishes=history.publishes,
        accepted=len(accepted),
        uncertain=len(history.uncertain - accepted),
        rows=sum(outcomes.rows.values()),
        refunds=sum(outcomes.refunds.values()),
        dead_letters=sum(outcomes.dead.values()),
        lost=len(lost),
        duplicated=len(duplicated),
        unexpected=len(unexpected),
        seconds=round(seconds, 1),
        rows_expected=len(due),
        rows_expected_max=len(due | maybe),
        lost_undelivered=undelivered,
        examples={"lost": lost[:5], "duplicated": duplicated[:5], "unexpected": unexpected[:5]},
    )
    return verdict


def settle(
    history: History, database_url: str, broker_url: str, timeout: float = 120.0, stall: float = 25.0
) -> Outcomes:
    """Wait until every accepted payment has an outcome and the queue is drained, or until
    nothing changes for `stall` seconds (longer than any retry backoff here); then the final
    outcomes, dead letters included."""
    deadline = time.monotonic() + timeout
    last, progress = -1, time.monotonic()
    while time.monotonic() < min(deadline, progress + stall):
        outcomes = Outcomes.read(database_url, broker_url, with_dead_letters=False)
        done = sum(1 for p in history.accepted if outcomes.rows[p] or outcomes.refunds[p])
        if done != last:
            last, progress = done, time.monotonic()
        if done == len(history.accepted) and broker_idle(broker_url):
            break
        if done < len(history.accepted) and time.monotonic() - progress > 5 and broker_idle(broker_url):
            break  # the rest may be dead letters: the queue is empty and nothing moves
        time.sleep(0.5)
    # No wait for "late" deliveries: with the queue idle, no message is ready, unacknowledged or
    # held by a worker (a retry waits unacknowledged, a batch's requests too), and a dead letter
    # is published before its message is acknowledged: nothing is left that could still change
    # an outcome.
    return Outcomes.read(database_url, broker_url)
