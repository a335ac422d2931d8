"""What a user sees when things go wrong: killed workers, a flapping or unreachable database,
a dropped or INVALID index, stale replays and bad inputs. Real workers, real services."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.builders import purchase
from tests.e2e.proxy import Proxy
from tests.harness import Client, Worker, Workers, wait_until
from tests.services import AMQP_VHOST, count, hold_pairs, rabbitmqctl, run_sql

KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))
CONCURRENCY = 4
INDEX_SQL = (
    "CREATE UNIQUE INDEX CONCURRENTLY unique_active_purchase "
    "ON student_course_purchases (student_id, course_id) WHERE is_active = true"
)
RETRY_LINE = re.compile(r"retry \d+ in [\d.]+ s")
TERMINATE_WORKER_BACKENDS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'kc_tasks' "
    "AND datname = current_database() AND pid <> pg_backend_pid()"
)


# --- helpers ---------------------------------------------------------------------------------


def _succeeded(*logs: Worker) -> set[str]:
    """Ids of the tasks that some worker reports as succeeded."""
    done: set[str] = set()
    for worker in logs:
        done.update(re.findall(r"create_purchase\[([0-9a-f-]{36})\] succeeded", worker.text()))
    return done


def _wait_done(ids: list[str], *logs: Worker, timeout: float = 60.0, stall: float = 15.0) -> set[str]:
    """Wait until every task succeeded, or until none has for `stall` seconds (longer than any
    backoff here): the ids that never succeeded."""
    deadline = time.monotonic() + timeout
    missing = set(ids) - _succeeded(*logs)
    progress = time.monotonic()
    while missing and time.monotonic() < min(deadline, progress + stall):
        time.sleep(0.2)
        still = missing - _succeeded(*logs)
        if still != missing:
            missing, progress = still, time.monotonic()
    return missing


def _all_succeed(ids: list[str], worker: Worker, timeout: float = 60.0) -> None:
    missing = _wait_done(ids, worker, timeout=timeout)
    assert not missing, f"{len(missing)} tasks never succeeded, e.g. {sorted(missing)[:3]}:\n{worker.text()[-3000:]}"


def _any_made(database_url: str, payments: list[dict]) -> Callable[[], bool]:
    """Whether any of these payments has its purchase yet."""
    ids = [p["payment_id"] for p in payments]
    return lambda: count(database_url, "payment_id = ANY(%s)", (ids,)) > 0


def _rows_per_payment(database_url: str) -> dict[str, int]:
    rows = run_sql(database_url, "SELECT payment_id, count(*) FROM student_course_purchases GROUP BY 1")
    return {p: n for p, n in rows}


def _pairs_with_several_active(database_url: str) -> list[tuple]:
    return run_sql(
        database_url,
        "SELECT student_id, course_id, count(*) FROM student_course_purchases WHERE is_active "
        "GROUP BY 1, 2 HAVING count(*) > 1",
    )


def _worker_backends(database_url: str, where: str = "true") -> list[int]:
    """Server pids of the kc_tasks connections to this test's database."""
    rows = run_sql(
        database_url,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'kc_tasks' "
        f"AND datname = current_database() AND {where}",
    )
    return [r[0] for r in rows]


def _blocked_backends(database_url: str) -> list[int]:
    return _worker_backends(database_url, "wait_event_type = 'Lock'")


def _wait_all_children_stuck(database_url: str, worker: Worker) -> None:
    stuck = wait_until(lambda: len(_blocked_backends(database_url)) >= CONCURRENCY, timeout=30)
    assert stuck, f"the worker's {CONCURRENCY} processes never all waited mid-task:\n{worker.text()[-3000:]}"


def _kc_tasks(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=database_url)
    return subprocess.run([KC_TASKS, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _index_valid(database_url: str) -> bool | None:
    rows = run_sql(
        database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('unique_active_purchase')"
    )
    return rows[0][0] if rows else None


# --- 1. killed workers -----------------------------------------------------------------------


def test_worker_killed_mid_batch_loses_nothing(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    """A worker killed with tasks in flight loses none and duplicates none.

    To kill *during* the batch, and not before or after it, the test holds an uncommitted
    purchase of a few pairs in the middle of the batch: the worker's processes stop there,
    mid-INSERT, with some but not all rows committed. The held pairs are spread out, so that
    each pool process, which takes the purchases waiting for it together, meets one. Their
    server connections are then terminated too, as a crashed host's would be, so nothing of
    those tasks survives but the broker's message.

    - RabbitMQ: the whole worker (main process and children) is SIGKILLed; its connection
      drops and RabbitMQ requeues every unacknowledged message at once. Done twice: kill,
      restart, kill again (this time the dead worker's last INSERTs commit after its death,
      so the redelivered messages must find them), restart.
    - Redis: an unacknowledged message comes back only after the visibility timeout, which
      kc_tasks sets to over an hour and which the worker's environment cannot shorten. So
      only the worker's child processes are SIGKILLed: the main process sees WorkerLostError
      and, with reject_on_worker_lost, requeues the tasks they were running.
    """
    on_redis = broker_url.startswith("redis")
    rnd = random.Random(11)
    total = 600
    payments = [purchase() for _ in range(total)]
    first_stop, second_stop = payments[100:260:10], payments[400:560:10]
    blockers = {p["payment_id"] for p in first_stop + second_stop}
    keyed = [(float(i), p) for i, p in enumerate(payments)]
    # 120 payments are delivered twice, the copy a little later; never a blocker's, so that a
    # task killed mid-INSERT is saved by its own redelivery or not at all.
    for i in rnd.sample([i for i, p in enumerate(payments) if p["payment_id"] not in blockers], 120):
        keyed.append((i + rnd.uniform(0.5, 30), payments[i]))
    messages = [p for _, p in sorted(keyed, key=lambda kp: kp[0])]

    hold_first = hold_pairs(database_url, first_stop)
    hold_second = hold_pairs(database_url, second_stop) if not on_redis else None
    try:
        first = workers.start(database_url, broker_url, concurrency=CONCURRENCY, KC_RETRY_BACKOFF_MAX="2")
        ids = client.send(messages)

        _wait_all_children_stuck(database_url, first)
        done = count(database_url)
        assert 0 < done < total, f"the kill must come mid-batch, {done} of {total} rows exist"
        in_flight = _blocked_backends(database_url)
        if on_redis:
            children = first.child_pids()
            assert children
            for pid in children:
                os.kill(pid, signal.SIGKILL)
        else:
            first.kill()
        run_sql(database_url, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (in_flight,))
        hold_first.rollback()

        if hold_second is not None:
            second = workers.start(database_url, broker_url, concurrency=CONCURRENCY, KC_RETRY_BACKOFF_MAX="2")
            _wait_all_children_stuck(database_url, second)
            again = count(database_url)
            assert done < again < total, f"the second kill must come mid-batch, {again} of {total} rows exist"
            in_flight = _blocked_backends(database_url)
            second.kill()
            # The dead worker's waiting INSERTs go through now, after its death.
            hold_second.rollback()
            assert wait_until(lambda: not set(in_flight) & set(_worker_backends(database_url)), timeout=20)

        workers.start(database_url, broker_url, concurrency=CONCURRENCY, KC_RETRY_BACKOFF_MAX="2")
        never_done = _wait_done(ids, *workers.started, timeout=90)
    finally:
        hold_first.close()
        if hold_second is not None:
            hold_second.close()

    per_payment = _rows_per_payment(database_url)
    assert set(per_payment) == {p["payment_id"] for p in payments}, "every payment has its purchase"
    assert set(per_payment.values()) == {1}, "no payment has two purchases"
    assert _pairs_with_several_active(database_url) == []
    assert not never_done, f"{len(never_done)} deliveries never succeeded"
    if on_redis:
        assert "WorkerLostError" in first.text(), "the children were killed mid-task"
        assert first.process.poll() is None, "the main process survived its children"


# --- 2. a flapping database ------------------------------------------------------------------


def test_transient_database_failure_is_retried(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    """The worker reaches PostgreSQL through a proxy. Its connections are cut five times while
    a batch is processed (each met at once by a second try on a fresh connection), then
    PostgreSQL is unreachable for a while (the deliveries that meet it go back to the broker and
    the worker stops consuming until it answers). Every purchase is made once; nothing is given
    up, and no retry is spent on either."""
    proxy = Proxy("127.0.0.1", 5432)
    proxy.restore()
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    worker = workers.start(proxied, broker_url, concurrency=CONCURRENCY, KC_RETRY_BACKOFF_MAX="2")
    payments = [purchase() for _ in range(150)]
    ids: list[str] = []
    terminated = 0
    try:
        for chunk in range(5):  # the batch is sent in parts, so that each cut meets work in progress
            part = payments[chunk * 20 : (chunk + 1) * 20]
            ids += client.send(part)
            # The worker is on this part once its first purchase is committed: cut it then.
            assert wait_until(_any_made(database_url, part), timeout=30)
            terminated += sum(1 for (ok,) in run_sql(database_url, TERMINATE_WORKER_BACKENDS) if ok)
        assert terminated > 0, "the test cut no connection"
        ids += client.send(payments[100:])
        proxy.cut()
        # Unreachable until the worker has met the outage and stopped consuming.
        assert wait_until(lambda: "this worker takes no task from purchases until it can" in worker.text(), 30), (
            "a delivery that met the outage went back to the broker"
        )
        proxy.restore()
        _all_succeed(ids, worker, timeout=90)
    finally:
        proxy.cut()

    assert _rows_per_payment(database_url) == {p["payment_id"]: 1 for p in payments}
    log = worker.text()
    assert "gave up on payment" not in log
    assert not RETRY_LINE.search(log), "neither a cut connection nor an outage spends a retry"
    assert "consuming purchases again" in log
    assert "current transaction is aborted" not in log
    connections = len(_worker_backends(database_url))
    assert connections <= 2 * CONCURRENCY, f"{connections} connections: dead ones were not released"


# --- 3. and 4. the index ---------------------------------------------------------------------


def test_index_dropped_while_worker_runs(database_url: str, workers: Workers, rabbitmq_url: str) -> None:
    """A worker that trusts the index (KC_INDEX_CHECK_TTL, default 300 s) finds it gone at the
    next INSERT and finishes that same delivery by the fallback path, without a retry."""
    client = Client(rabbitmq_url)
    worker = workers.start(database_url, rabbitmq_url, concurrency=CONCURRENCY, KC_INDEX_CHECK_TTL="300")
    assert "unique_active_purchase index found" in worker.text()
    first = [purchase() for _ in range(20)]
    _all_succeed(client.send(first), worker)
    assert count(database_url) == 20

    run_sql(database_url, "DROP INDEX unique_active_purchase")
    seen = len(worker.text())
    fresh = [purchase() for _ in range(20)]
    rnd = random.Random(3)
    rivals = [purchase(p["student_id"], p["course_id"]) for p in fresh[:8] + first[5:10]]
    messages = [p for p in fresh for _ in range(3)]  # each delivered three times
    messages += rivals + first[:5]  # rival payments of both batches' pairs, replays of the first
    rnd.shuffle(messages)
    _all_succeed(client.send(messages), worker)

    log = worker.text()[seen:]
    rows = run_sql(database_url, "SELECT student_id::text, course_id::text, payment_id FROM student_course_purchases")
    held = {(s, c): [] for s, c, _ in rows}
    for s, c, payment in rows:
        held[(s, c)].append(payment)
    assert len(rows) == 40 and len(held) == 40, "one purchase per pair, rivals or not"
    for p in first:
        assert held[(p["student_id"], p["course_id"])] == [p["payment_id"]], "the first batch keeps its purchases"
    for p, rival in zip(fresh[:8], rivals[:8], strict=True):
        assert held[(p["student_id"], p["course_id"])] in ([p["payment_id"]], [rival["payment_id"]])
    for p in fresh[8:]:
        assert held[(p["student_id"], p["course_id"])] == [p["payment_id"]]
    assert run_sql(database_url, "SELECT count(*) FROM duplicate_payments")[0][0] == 13
    assert "(fallback path)" in log
    assert "unique_active_purchase index not usable" in log
    assert "retry" not in log.lower(), "the fallback happens in the same attempt"
    assert "gave up on payment" not in log
    assert "current transaction is aborted" not in log

    fixed = _kc_tasks(database_url, "ensure-index")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "unique_active_purchase index found" in fixed.stdout
    assert "deactivated" not in fixed.stdout, "the fallback let no duplicate through"
    assert _index_valid(database_url) is True


def test_index_dropped_while_a_worker_checks_it(database_url: str, workers: Workers, rabbitmq_url: str) -> None:
    """An operator drops the index while a worker process re-checks it (KC_INDEX_CHECK_TTL=0: at
    each task). The worker must see the index gone and make the purchase by the fallback path.

    The DROP is held uncommitted until the worker's check waits on its lock, so that the check
    reads the catalog before the DROP commits and plans ON CONFLICT after it: the race, made
    certain. Today the check's EXPLAIN fails (no arbiter) inside a savepoint that is then
    released, not rolled back; the task meets "current transaction is aborted", a permanent
    error, and the purchase is given up.
    """
    worker = workers.start(database_url, rabbitmq_url, KC_INDEX_CHECK_TTL="0")
    paid = purchase()
    with psycopg.connect(database_url) as operator:
        operator.execute("DROP INDEX unique_active_purchase")
        [task_id] = Client(rabbitmq_url).send([paid])
        assert wait_until(lambda: bool(_blocked_backends(database_url)), timeout=20), "the check never waited"
        operator.commit()
    finished = wait_until(lambda: task_id in _succeeded(worker) or "gave up on payment" in worker.text(), timeout=30)
    assert finished, worker.text()[-3000:]

    log = worker.text()
    assert _rows_per_payment(database_url) == {paid["payment_id"]: 1}, f"the purchase is made:\n{log[-1500:]}"
    assert "(fallback path)" in log
    assert "current transaction is aborted" not in log
    assert "gave up on payment" not in log


def test_invalid_index_counts_as_missing(database_url: str, workers: Workers, rabbitmq_url: str) -> None:
    """An index left INVALID by a failed CREATE INDEX CONCURRENTLY is listed in pg_indexes but
    stops no duplicate: the worker says so and uses the fallback; ensure-index repairs it."""
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    run_sql(database_url, "DROP INDEX unique_active_purchase")
    run_sql(
        database_url,
        "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency, "
        "created_at) VALUES (gen_random_uuid(), %s, %s, 'pay_older', 100, 'INR', now() - interval '1 hour'), "
        "(gen_random_uuid(), %s, %s, 'pay_newer', 100, 'INR', now())",
        (student, course, student, course),
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        run_sql(database_url, INDEX_SQL)
    assert _index_valid(database_url) is False, "the failed build left an INVALID index behind"

    worker = workers.start(database_url, rabbitmq_url, concurrency=CONCURRENCY)
    log = worker.text()
    assert "unique_active_purchase index not usable" in log
    assert "INVALID" in log

    client = Client(rabbitmq_url)
    paid = purchase()
    rival = purchase(paid["student_id"], paid["course_id"])
    _all_succeed(client.send([paid] * 6 + [rival] * 2), worker)
    fresh = run_sql(
        database_url,
        "SELECT payment_id, is_active FROM student_course_purchases WHERE student_id = %s AND course_id = %s",
        (paid["student_id"], paid["course_id"]),
    )
    assert len(fresh) == 1 and fresh[0][1] is True, f"one active purchase of the fresh pair, got {fresh}"

    check = _kc_tasks(database_url, "ensure-index", "--check")
    assert check.returncode != 0, check.stdout + check.stderr
    assert "INVALID" in check.stdout
    fixed = _kc_tasks(database_url, "ensure-index")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "unique_active_purchase index found" in fixed.stdout
    assert _index_valid(database_url) is True
    old_pair = run_sql(
        database_url,
        "SELECT payment_id, is_active FROM student_course_purchases WHERE student_id = %s AND course_id = %s "
        "ORDER BY created_at",
        (student, course),
    )
    assert old_pair == [("pay_older", True), ("pay_newer", False)], "the oldest stays active, none is deleted"


# --- 5. stale replays ------------------------------------------------------------------------


def test_stale_replay_of_deactivated_purchase(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    """A payment replayed after its purchase was deactivated gives no new purchase; a new
    payment of the same course does."""
    worker = workers.start(database_url, broker_url)
    p = purchase()
    q = purchase(p["student_id"], p["course_id"])
    _all_succeed(client.send([p]), worker)
    run_sql(
        database_url, "UPDATE student_course_purchases SET is_active = false WHERE payment_id = %s", (p["payment_id"],)
    )
    _all_succeed(client.send([p, p, p]), worker)
    _all_succeed(client.send([q]), worker)
    _all_succeed(client.send([p, q]), worker)

    rows = run_sql(
        database_url,
        "SELECT payment_id, is_active FROM student_course_purchases WHERE student_id = %s AND course_id = %s "
        "ORDER BY created_at",
        (p["student_id"], p["course_id"]),
    )
    assert rows == [(p["payment_id"], False), (q["payment_id"], True)]


# --- 6. bad inputs ---------------------------------------------------------------------------


def _bad_inputs() -> list[tuple[dict, str]]:
    """Kwargs that break the contract, each with the word its "gave up" line must name."""

    def good(**changes: object) -> dict:
        kwargs: dict = purchase()
        kwargs.update(changes)
        return kwargs

    no_payment = good()
    del no_payment["payment_id"]
    return [
        (no_payment, "payment_id"),
        (good(student_id="not-a-uuid"), "student_id"),
        (good(course_id=12345), "course_id"),
        (good(amount_cents=-1), "amount_cents"),
        (good(amount_cents="4999"), "amount_cents"),
        (good(currency="rupees"), "currency"),
        (good(payment_id=""), "payment_id"),
        (good(payment_id="x" * 300), "payment_id"),
        (good(metadata="not an object"), "metadata"),
        (good(metadata={"blob": "x" * 20000}), "metadata"),
        (good(surprise=True), "surprise"),
        ({}, "payment_id"),
    ]


def test_bad_inputs_fail_permanently_and_worker_keeps_serving(
    database_url: str, workers: Workers, client: Client, broker_url: str
) -> None:
    """Each delivery that breaks the contract is given up at once, with the field named; the
    good ones around them are served by the same, still running, worker."""
    worker = workers.start(database_url, broker_url, KC_RETRY_BACKOFF_MAX="2")
    good = [purchase() for _ in range(20)]
    bad = _bad_inputs()
    expected: dict[str, str] = {}
    good_ids: list[str] = []
    for i, kwargs in enumerate(good):
        good_ids += client.send([kwargs])
        if i < len(bad):
            [task_id] = client.send([bad[i][0]])
            expected[task_id] = bad[i][1]
    p = purchase()
    positional = client.app.send_task(
        "kc_tasks.create_purchase",
        args=[p["payment_id"], p["student_id"], p["course_id"], p["amount_cents"], p["currency"]],
        kwargs={},
        queue="purchases",
    )
    expected[positional.id] = "keyword arguments"

    def gave_up() -> dict[str, list[str]]:
        lines: dict[str, list[str]] = {}
        for line in worker.text().splitlines():
            found = re.search(r"create_purchase ([0-9a-f-]{36}) gave up on payment", line)
            if found:
                lines.setdefault(found.group(1), []).append(line)
        return lines

    sent = set(good_ids) | set(expected)
    # Every delivery's last word is in the log: a retry, had one been scheduled, is logged
    # before the attempt that scheduled it ends, so it would be there already.
    assert wait_until(lambda: sent <= _succeeded(worker) | set(gave_up()), timeout=30), worker.text()[-3000:]

    assert _rows_per_payment(database_url) == {g["payment_id"]: 1 for g in good}, "no row from a bad input"
    assert set(good_ids) <= _succeeded(worker), "the good purchases around the bad ones are served"
    lines = gave_up()
    assert set(lines) == set(expected), "only the bad inputs are given up"
    for task_id, field in expected.items():
        assert len(lines[task_id]) == 1, lines[task_id]
        line = lines[task_id][0]
        assert "after 1 attempt(s)" in line, line
        assert "InvalidPurchase" in line, line
        assert field in line, f"the line names {field}: {line}"
    assert not RETRY_LINE.search(worker.text())
    assert worker.process.poll() is None, "the worker is still running"
    assert worker.child_pids(), "its pool processes are still running"


# --- 7. no database at start -----------------------------------------------------------------


def test_worker_starts_while_database_is_unreachable(database_url: str, workers: Workers, rabbitmq_url: str) -> None:
    """A worker started while PostgreSQL is unreachable comes up, says so without leaking the
    password, takes no purchase from the queue while it cannot write, and makes it by itself once
    PostgreSQL answers: no retry spent, nothing dead-lettered."""
    password = "s3cret-Pw-" + uuid.uuid4().hex[:8]
    proxy = Proxy("127.0.0.1", 5432)  # not listening yet: every connection is refused
    name = database_url.rsplit("/", 1)[1]
    try:
        worker = workers.start(f"postgresql://postgres:{password}@127.0.0.1:{proxy.port}/{name}", rabbitmq_url)
        log = worker.text()
        warning = next(
            (line for line in log.splitlines() if "cannot check the unique_active_purchase index" in line), ""
        )
        assert warning, log[-3000:]
        assert "WARNING" in warning and f"127.0.0.1:{proxy.port}/{name}" in warning, warning
        assert wait_until(lambda: "this worker takes no task from purchases until it can" in worker.text(), 30)

        order = purchase()
        Client(rabbitmq_url).send([order])
        assert wait_until(lambda: queue_state(rabbitmq_url) == (1, 0, 0), timeout=10), (
            "it waits in the broker, ready, with no consumer",
            queue_state(rabbitmq_url),
        )
        proxy.restore()
        assert wait_until(lambda: count(database_url) == 1, timeout=30), worker.text()[-3000:]
        assert wait_until(lambda: queue_state(rabbitmq_url) == (0, 0, 1), timeout=10)
    finally:
        proxy.cut()
    text = worker.text()
    assert "takes writes again" in text and "consuming purchases again" in text
    assert not re.search(r"retry \d+", text) and "gave up" not in text and "dead-lettered" not in text
    assert password not in text, "no password in the log"
    assert worker.process.poll() is None


def queue_state(broker_url: str) -> tuple[int, int, int]:
    """(ready, unacknowledged, consumers) of `purchases` on RabbitMQ."""
    out = rabbitmqctl("list_queues", "-p", AMQP_VHOST, "name", "messages_ready", "messages_unacknowledged", "consumers")
    for line in out.splitlines():
        name, *numbers = line.split("\t")
        if name == "purchases":
            return (int(numbers[0]), int(numbers[1]), int(numbers[2]))
    return (0, 0, 0)
