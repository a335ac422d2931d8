"""Bad input, published raw to `purchases` as a careless or hostile client would: each kind
ends in purchases.dlq with a reason, the worker keeps running, and the good purchases of the
same batch are all made."""

from __future__ import annotations

import json
import pickle
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Producer

from tests.builders import purchase
from tests.faults.checker import Outcomes, Publisher, check, dead_letters, settle
from tests.harness import Workers, wait_until

GOOD = 300
DROP = object()  # a kwarg left out


@dataclass
class Raw:
    """One malformed message: its body as sent, content type and task headers."""

    kind: str
    body: bytes
    content_type: str = "application/json"
    task: str | int | None = "kc_tasks.create_purchase"  # an int: a broken client
    task_id: str = ""
    marker: str = ""

    def headers(self) -> dict[str, Any]:
        if self.task is None:
            return {}
        return {
            "lang": "py",
            "task": self.task,
            "id": self.task_id,
            "root_id": self.task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "argsrepr": "",
            "kwargsrepr": "",
            "origin": "fault-suite",
        }


def malformed() -> list[Raw]:
    """Over twenty kinds of messages that break the contract, each with a marker of its own."""
    kinds: list[Raw] = []

    def add(
        kind: str,
        body: Any,
        content_type: str = "application/json",
        task: str | int | None = "kc_tasks.create_purchase",
    ) -> None:
        marker = f"bad_{len(kinds):02d}_{uuid.uuid4().hex[:8]}"
        if callable(body):
            body = body(marker)
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        kinds.append(Raw(kind, body, content_type, task, str(uuid.uuid4()), marker))

    def kwargs(marker: str, **changes: Any) -> dict[str, Any]:
        good: dict[str, Any] = purchase(payment=f"pay_{marker}")
        good.update(changes)
        return {k: v for k, v in good.items() if v is not DROP}

    def call(**changes: Any):
        return lambda marker: [[], kwargs(marker, **changes), {}]

    add("wrong content type (text/plain)", lambda m: f"please create a purchase {m}".encode(), "text/plain")
    add("pickle", lambda m: pickle.dumps(([], kwargs(m), {})), "application/x-python-serialize")
    add("YAML", lambda m: f"- []\n- payment_id: pay_{m}\n- {{}}\n".encode(), "application/x-yaml")
    add("binary garbage", lambda m: b"\x00\xff\xfe" + m.encode() + b"\x80\x81", "application/octet-stream")
    add("invalid JSON", lambda m: b'[[], {"payment_id": "' + m.encode() + b'", ', "application/json")
    add("invalid UTF-8 in JSON", lambda m: b'[[], {"payment_id": "\xff\xfe' + m.encode() + b'"}, {}]')
    add("task name not a string", call(), task=12345)
    add("no task headers", lambda m: [[], kwargs(m), {}], task=None)
    add("unknown task name", call(), task="kc_tasks.no_such_task")
    add("positional args", lambda m: [list(kwargs(m).values()), {}, {}])
    add("args a string", lambda m: [f"pay_{m}", kwargs(m), {}])
    add("missing payment_id", call(payment_id=DROP))
    add("missing student_id", call(student_id=DROP))
    add("missing currency", call(currency=DROP))
    add("empty kwargs", lambda m: [[], {}, {}])
    add("extra kwarg", call(surprise=True))
    add("amount as a string", call(amount_cents="4999"))
    add("amount as a float", call(amount_cents=49.99))
    add("student_id not a UUID", call(student_id="student-42"))
    add("course_id an integer", call(course_id=12345))
    add("negative amount", call(amount_cents=-1))
    add("huge amount (2**63)", call(amount_cents=2**63))
    add("oversized metadata (20 KiB)", call(metadata={"blob": "x" * 20_000}))
    add("metadata not an object", call(metadata=["not", "an", "object"]))
    add("NUL in metadata", call(metadata={"note": "a\x00b"}))
    add("empty payment_id", call(payment_id=""))
    add("payment_id of 300 characters", call(payment_id="p" * 300))
    add("payment_id not a string", call(payment_id=12345))
    add("currency in lower case", call(currency="inr"))
    return kinds


def bodies_the_worker_cannot_take() -> list[Raw]:
    """Valid JSON that is not a task body [args, kwargs, embed]. Today each of these either
    stops the worker ("Unrecoverable error": Celery's Request unpacks the body before any
    kc_tasks hook sees it) or is acknowledged without a dead letter (Celery's trace raises
    InvalidTaskError outside the task body, where create_purchase cannot dead-letter it)."""
    shapes = {
        "JSON object instead of a task body": lambda m: {"payment_id": f"pay_{m}"},
        "body of two items": lambda m: [[], {"payment_id": f"pay_{m}"}],
        "body a JSON string": lambda m: f"pay_{m}",
        "body JSON null": lambda m: None,
        "kwargs null": lambda m: [[], None, {"m": m}],
        "kwargs a list": lambda m: [[], [f"pay_{m}", 1, 2], {}],
        "embed not an object": lambda m: [[], purchase(payment=f"pay_{m}"), "x"],
    }
    kinds = []
    for kind, body in shapes.items():
        marker = f"shape_{len(kinds):02d}_{uuid.uuid4().hex[:8]}"
        task_id = str(uuid.uuid4())
        kinds.append(Raw(kind, json.dumps(body(marker)).encode(), task_id=task_id, marker=marker))
    return kinds


def publish_raw(broker_url: str, messages: list[Raw]) -> None:
    options = {"confirm_publish": True} if broker_url.startswith("amqp") else {}
    with Connection(broker_url, transport_options=options) as conn:
        producer = Producer(conn.default_channel)
        for raw in messages:
            producer.publish(
                raw.body,
                exchange="",
                routing_key="purchases",
                content_type=raw.content_type,
                content_encoding="binary" if raw.content_type != "application/json" else "utf-8",
                headers=raw.headers(),
                delivery_mode=2,
            )


def letter_of(raw: Raw, letters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dead letters of one malformed message: by task id, else by its marker."""
    return [
        d
        for d in letters
        if (raw.task is not None and d.get("task_id") == raw.task_id)
        or (raw.task is None and raw.marker in json.dumps(d))
    ]


def test_malformed_messages_are_dead_lettered_and_good_ones_made(
    database_url: str, workers: Workers, broker_url: str
) -> None:
    bad = malformed()
    assert len(bad) >= 20
    worker = workers.start(database_url, broker_url, concurrency=4, KC_RETRY_BACKOFF_MAX="2")
    good = [purchase() for _ in range(GOOD)]
    publisher = Publisher(broker_url)
    started = time.monotonic()
    step = GOOD // len(bad)
    for i, raw in enumerate(bad):  # the bad ones among the good ones
        publisher.send(good[i * step : (i + 1) * step])
        publish_raw(broker_url, [raw])
    publisher.send(good[len(bad) * step :])

    outcomes = settle(publisher.history, database_url, broker_url)
    letters = dead_letters(broker_url)
    reasons: Counter[str] = Counter()
    missing, repeated, theirs = [], [], []
    for raw in bad:
        found = letter_of(raw, letters)
        if not found:
            missing.append(raw.kind)
        elif len(found) > 1:
            repeated.append(raw.kind)
        for letter in found:
            assert letter["reason"] and letter["error_message"], f"{raw.kind}: a dead letter says why: {letter}"
            reasons[letter["reason"]] += 1
        theirs += [letter["id"] for letter in found]
    # The good purchases' accounts: the bad messages' dead letters are accounted for above.
    outcomes.dead = Counter(str((d.get("kwargs") or {}).get("payment_id")) for d in letters if d["id"] not in theirs)
    verdict = check(publisher.history, outcomes, "malformed messages", broker_url, len(bad), time.monotonic() - started)
    verdict.publishes += len(bad)
    verdict.accepted += len(bad)
    verdict.dead_letters = len(letters)
    print(verdict.line(), flush=True)
    print("MALFORMED " + json.dumps({"broker": verdict.broker, "kinds": len(bad), "reasons": reasons}), flush=True)
    assert (verdict.lost, verdict.duplicated, verdict.unexpected, verdict.rows) == (0, 0, 0, GOOD), (
        f"every good purchase made once, no dead letter for one: {verdict}"
    )
    assert not missing, f"not in the DLQ: {missing}"
    assert not repeated, f"dead-lettered more than once: {repeated}"
    assert len(letters) == len(bad), "a dead letter for each bad message, and none for a good one"
    pickled = next(d for d in letters if d.get("content_type") == "application/x-python-serialize")
    assert str(pickled["raw_body"]).startswith("base64:"), "the pickle is kept as bytes, never unpickled"
    assert worker.process.poll() is None and worker.child_pids(), "the worker and its pool are still running"
    assert Outcomes.read(database_url, broker_url, with_dead_letters=False).rows.total() == GOOD


def test_json_bodies_that_are_not_task_bodies_are_dead_lettered(
    database_url: str, workers: Workers, rabbitmq_url: str
) -> None:
    """The same promise for bodies of the wrong shape: a dead letter each, the worker up, the
    good purchases around them made."""
    worker = workers.start(database_url, rabbitmq_url, concurrency=2)
    bad = bodies_the_worker_cannot_take()
    good = [purchase() for _ in range(20)]
    publisher = Publisher(rabbitmq_url)
    publisher.send(good[:10])
    publish_raw(rabbitmq_url, bad)
    publisher.send(good[10:])

    def served() -> bool:
        letters = dead_letters(rabbitmq_url)
        rows = Outcomes.read(database_url, rabbitmq_url, with_dead_letters=False).rows.total()
        return rows == len(good) and all(letter_of(raw, letters) for raw in bad)

    wait_until(served, timeout=20, interval=1)
    letters = dead_letters(rabbitmq_url)
    missing = [raw.kind for raw in bad if not letter_of(raw, letters)]
    assert worker.process.poll() is None, f"the worker stopped:\n{worker.text()[-2000:]}"
    assert not missing, f"not in the DLQ: {missing}"
    reasons = {raw.kind: [d["reason"] for d in letter_of(raw, letters)] for raw in bad}
    assert all(found == ["invalid message"] for found in reasons.values()), reasons
    assert Outcomes.read(database_url, rabbitmq_url, with_dead_letters=False).rows.total() == len(good)
