"""Mixed traffic under faults, judged against a model of every payment (tests/faults/model.py).

The traffic (tests/faults/traffic.py): payments through kc_tasks' webhook, Razorpay's, Stripe's,
create_purchase and revoke_purchase tasks sent by name, and the providers' APIs read by two
`kc-tasks reconcile` runs (one mid-run, one at the end); repeated deliveries, refunds and lost
disputes (some before their captures), rivals. It goes out a slice at a time (a fifth of the
timeline); the middle three slices each meet the test's fault at a state reached by
construction:

- worker faults (pool processes SIGKILLed, PostgreSQL connections terminated, RabbitMQ
  connections closed, PostgreSQL restarted): one direct purchase of the slice is held mid-task
  (`hold_pairs`: its INSERT waits on the test's uncommitted row of its student/course pair);
  the fault comes once PostgreSQL shows a worker backend waiting on that lock;
- the web process SIGKILLed mid-request: one webhook event of the slice is held (the test's
  uncommitted inbox row of the same provider and event id); the web's INSERT waits on it, and
  the web is killed once PostgreSQL shows it waiting. Its requests get connection errors; the
  providers retry them until answered 2xx by a new web process. The killed web's statement
  commits once the hold is gone, so its events stay `received`: the workers' inbox relay
  enqueues them.

Then the checker waits (with a deadline) until the model holds, the queue is drained and no
inbox event is left `received`, and judges: nothing lost, wrongly active, doubled,
dead-lettered or unexpected, rows one per non-rival payment, uncertain publishes within their
bound. Each test prints one `MIXED {...}` line (docs/faults.md quotes them).

The batches are smaller than test_faults.py's (152 payments, about 185 deliveries): every
webhook is an HTTP request through a uvicorn process sharing the machine's cores with the
workers, and each test stays well under a minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
import pytest
from kombu import Connection, Queue

from tests import provider_api_server as api
from tests import provider_samples as s
from tests.faults.checker import KC_TASKS, Publisher
from tests.faults.model import Final, Judgement, judge
from tests.faults.traffic import CREATE, SLICES, Delivery, Webhooks, build
from tests.harness import ROOT, Web, Worker, Workers, wait_until
from tests.servers import PgBouncer
from tests.services import (
    AMQP,
    AMQP_VHOST,
    TERMINATE_WORKER_BACKENDS,
    blocked_by,
    broker_idle,
    hold_pairs,
    rabbitmqctl,
    run_sql,
    vhost_connections,
)

PER_WAY = 30
CONCURRENCY = 4
FAULTY_SLICES = (1, 2, 3)
# Publishes in flight at once: the publisher waits for each one's confirm before the next.
IN_FLIGHT_PUBLISHES = 1
SETTLE_DEADLINE = 150.0


@pytest.fixture
def provider() -> Iterator[api.StandIn]:
    with api.serve() as served:
        yield served


class MixedRun:
    """One run of the mixed traffic: the web process, a worker, the providers and the payment
    service sending it, and the faults injected so far."""

    def __init__(
        self,
        fault: str,
        database_url: str,
        broker_url: str,
        workers: Workers,
        webs: Callable[..., Web],
        provider: api.StandIn,
        seed: int,
        route: Callable[[str], str] = str,
    ) -> None:
        self.fault, self.database_url, self.broker_url = fault, database_url, broker_url
        # How the web process and the worker reach the database (the judge reads it directly).
        self.route = route
        self.workers, self.webs, self.provider = workers, webs, provider
        self.traffic = build(provider, seed, PER_WAY)
        self.worker = self.start_worker()
        self.web = self.start_web()
        self.webhooks = Webhooks(lambda: self.web.base)
        self.publisher = Publisher(broker_url)
        self.pool = ThreadPoolExecutor(4)
        self.faults = 0
        self.broker_faults = 0
        self.uncertain = 0
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()

    def start_worker(self) -> Worker:
        return self.workers.start(
            self.route(self.database_url),
            self.broker_url,
            concurrency=CONCURRENCY,
            KC_RETRY_BACKOFF_MAX="2",
            KC_EVENT_RELAY_INTERVAL="1",
        )

    def start_web(self) -> Web:
        return self.webs(
            self.route(self.database_url),
            self.broker_url,
            KC_RAZORPAY_WEBHOOK_SECRET=s.RAZORPAY_SECRET,
            KC_STRIPE_WEBHOOK_SECRET=s.STRIPE_SECRET,
        )

    def kill_web(self) -> None:
        os.killpg(self.web.process.pid, signal.SIGKILL)
        self.web.process.wait(10)

    # --- sending -------------------------------------------------------------------------------

    def send(self, n: int) -> list[Future[None]]:
        """Send slice `n`: its tasks in order, each confirmed (an uncertain publish is sent again
        until the broker takes it), then its webhooks, four at a time; their futures."""
        deliveries = self.traffic.slice(n)
        rivalled = {d.after for d in deliveries if d.after}
        assert wait_until(lambda: self.rows_of(rivalled) == len(rivalled), timeout=90), (
            f"{self.fault}: the payments rivals of slice {n} rival never made their purchases"
        )
        for d in deliveries:
            if d.task:
                self.publish(d)
        return [self.pool.submit(self.webhooks.deliver, d) for d in deliveries if d.provider]

    def publish(self, d: Delivery) -> None:
        history = self.publisher.history
        while True:
            before = history.accepted[d.payment_id]
            self.publisher.send([d.kwargs], d.task or CREATE)
            self.counts["task publishes"] += 1
            if history.accepted[d.payment_id] > before:
                self.counts["tasks confirmed"] += 1
                return
            self.uncertain += 1
            assert self.uncertain <= 100, f"{self.fault}: the broker never took {d.kwargs}"

    def rows_of(self, payments: set[str], where: str = "true") -> int:
        if not payments:
            return 0
        return run_sql(
            self.database_url,
            f"SELECT count(*) FROM student_course_purchases WHERE payment_id = ANY(%s) AND {where}",
            (list(payments),),
        )[0][0]

    def reconcile(self) -> None:
        env = dict(
            os.environ,
            DATABASE_URL=self.database_url,
            CELERY_BROKER_URL=self.broker_url,
            KC_RAZORPAY_KEY_ID=api.RAZORPAY_KEY_ID,
            KC_RAZORPAY_KEY_SECRET=api.RAZORPAY_KEY_SECRET,
            KC_RAZORPAY_API_URL=self.provider.url,
            KC_STRIPE_API_KEY=api.STRIPE_API_KEY,
            KC_STRIPE_API_URL=self.provider.url,
        )
        done = subprocess.run(
            [KC_TASKS, "reconcile", "--since", "1h"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        assert done.returncode == 0, done.stdout + done.stderr
        self.counts["reconciliation runs"] += 1

    # --- states reached by construction --------------------------------------------------------

    @contextmanager
    def held_purchase(self, n: int) -> Iterator[None]:
        """Send slice `n` with one of its direct purchases held mid-task by a row lock on its
        pair; inside the block a worker is provably running it. Then the rest of the slice."""
        earlier = {d.payment_id for d in self.traffic.deliveries if d.slice < n}
        by_id = {p.payment_id: p for p in self.traffic.payments}
        held = next(
            by_id[d.payment_id]
            for d in self.traffic.slice(n)
            if d.task == CREATE
            and d.payment_id not in earlier
            and not by_id[d.payment_id].revoked
            and not by_id[d.payment_id].rival_of
        )
        holder = hold_pairs(self.database_url, [{"student_id": held.student, "course_id": held.course}])
        futures: list[Future[None]] = []
        try:
            futures = self.send(n)
            pid = holder.info.backend_pid
            assert wait_until(lambda: blocked_by(self.database_url, pid) > 0, timeout=90, interval=0.05), (
                f"{self.fault}: no worker reached the held purchase {held.payment_id}"
            )
            yield
        finally:
            release(holder)
            for future in futures:
                future.result()

    @contextmanager
    def held_event(self, n: int) -> Iterator[None]:
        """Send slice `n` with one of its webhook events held: the test's uncommitted inbox row
        of that (provider, event id) makes the web's INSERT wait. Then the rest of the slice."""
        earlier = {d.event_id for d in self.traffic.deliveries if d.slice < n}
        # Not Stripe's: the mid-run reconciliation stores the events of Stripe's log ahead of their webhooks.
        held = next(d for d in self.traffic.slice(n) if d.provider in ("kc", "razorpay") and d.event_id not in earlier)
        holder = psycopg.connect(self.database_url)
        holder.execute(
            "INSERT INTO payment_events (provider, event_id, type, payment_id, status, body) "
            "VALUES (%s, %s, 'held by the test', NULL, 'ignored', '{}')",
            (held.provider, held.event_id),
        )
        futures: list[Future[None]] = []
        try:
            futures = self.send(n)
            pid = holder.info.backend_pid
            assert wait_until(lambda: blocked_by(self.database_url, pid) > 0, timeout=90, interval=0.05), (
                f"{self.fault}: the web never reached the held event {held.provider} {held.event_id}"
            )
            yield
        finally:
            release(holder)
            for future in futures:
                future.result()

    # --- the run -------------------------------------------------------------------------------

    def run(self, inject: Callable[[], int], hold: str = "purchase", broker_fault: bool = False) -> Judgement:
        """Send every slice, `inject` a fault (it returns how many things it struck) in each of
        the middle ones; wait for the outcome and judge it."""
        for n in range(SLICES):
            if n == 2:
                self.reconcile()
            if n in FAULTY_SLICES:
                with self.held_purchase(n) if hold == "purchase" else self.held_event(n):
                    self.faults += inject()
                    self.broker_faults += broker_fault
            else:
                for future in self.send(n):
                    future.result()
        # Refunded at Razorpay with no webhook: reconciliation revokes a purchase once it is made
        # (the mid-run reconciliation may have done it already). One never made is the
        # judgement's to report (lost), with the rest.
        refunded = set(self.traffic.refunded_at_provider)
        wait_until(lambda: self.rows_of(refunded) == len(refunded), timeout=60)
        self.reconcile()
        deadline = time.monotonic() + SETTLE_DEADLINE
        while time.monotonic() < deadline:
            if self.judge(Final.read(self.database_url)).clean and broker_idle(self.broker_url):
                break
            time.sleep(0.5)
        judgement = self.judge(Final.read(self.database_url, self.broker_url))
        print(judgement.line(), flush=True)
        return judgement

    def judge(self, final: Final) -> Judgement:
        return judge(
            self.traffic.payments,
            final,
            fault=self.fault,
            broker="redis" if self.broker_url.startswith("redis") else "rabbitmq",
            deliveries=dict(self.webhooks.counts + self.counts),
            faults_injected=self.faults,
            uncertain_publishes=self.uncertain,
            uncertain_bound=self.broker_faults * IN_FLIGHT_PUBLISHES,
            seconds=round(time.monotonic() - self.started, 1),
            traffic=self.traffic.figures(),
        )


def release(holder: psycopg.Connection) -> None:
    try:
        holder.rollback()
    except psycopg.Error:
        pass  # the fault took the holding connection (a restart), and its lock with it
    finally:
        holder.close()


def assert_model_holds(judgement: Judgement) -> None:
    assert judgement.faults_injected > 0
    assert judgement.clean, f"{judgement.failures()}: {judgement}"


@pytest.fixture
def mixed(
    database_url: str, workers: Workers, webs: Callable[..., Web], provider: api.StandIn
) -> Iterator[Callable[..., MixedRun]]:
    runs: list[MixedRun] = []

    def make(fault: str, broker_url: str, seed: int, route: Callable[[str], str] = str) -> MixedRun:
        runs.append(MixedRun(fault, database_url, broker_url, workers, webs, provider, seed, route))
        return runs[-1]

    yield make
    for run in runs:
        run.pool.shutdown(cancel_futures=True)


def test_worker_children_sigkilled(mixed: Callable[[str, str, int], MixedRun], broker_url: str) -> None:
    """Every pool process SIGKILLed in each of the middle slices, a purchase held mid-task."""
    run = mixed("mixed: worker children SIGKILLed", broker_url, 21)

    def kill_children() -> int:
        children = run.worker.child_pids()
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        return len(children)

    assert_model_holds(run.run(kill_children))
    assert run.worker.process.poll() is None, "the main process outlived its children"


def test_database_connections_terminated(mixed: Callable[[str, str, int], MixedRun], broker_url: str) -> None:
    """pg_terminate_backend of every kc_tasks connection of the test's database (the worker's,
    one of them waiting on the held purchase, and the web's), in each of the middle slices."""
    run = mixed("mixed: PostgreSQL connections terminated", broker_url, 22)

    def terminate() -> int:
        terminated = sum(1 for (ok,) in run_sql(run.database_url, TERMINATE_WORKER_BACKENDS) if ok)
        assert terminated >= 1, "at least the connection waiting on the held purchase"
        return terminated

    assert_model_holds(run.run(terminate))


def test_through_pgbouncer_its_server_connections_terminated(
    mixed: Callable[..., MixedRun], rabbitmq_url: str, pgbouncer: PgBouncer
) -> None:
    """The web process and the worker reach PostgreSQL through PgBouncer in transaction pooling
    mode, a few server connections shared by all their transactions; in each of the middle
    slices every one of those server connections is terminated. Nothing is dead-lettered."""
    run = mixed("mixed: through PgBouncer, its server connections terminated", rabbitmq_url, 26, pgbouncer.url)

    def terminate() -> int:
        return sum(1 for (ok,) in run_sql(run.database_url, TERMINATE_WORKER_BACKENDS) if ok)

    judgement = run.run(terminate)
    assert_model_holds(judgement)
    assert judgement.dead_letters == 0, judgement


def test_web_process_killed_mid_request(mixed: Callable[[str, str, int], MixedRun], broker_url: str) -> None:
    """The web process SIGKILLed while its INSERT of a held event waits, in each of the middle
    slices, and a new one started: the providers retry until answered 2xx, and the events the
    killed one stored are enqueued by the inbox relay."""
    run = mixed("mixed: web process SIGKILLed mid-request", broker_url, 23)

    def kill_web() -> int:
        run.kill_web()
        run.web = run.start_web()
        return 1

    judgement = run.run(kill_web, hold="event")
    assert_model_holds(judgement)
    assert judgement.deliveries.get("webhook connection errors", 0) >= 3, "each kill cut at least the held request"
    assert "inbox: enqueued" in run.worker.text(), "the killed web's stored events went out through the relay"


def close_vhost_connections() -> int:
    """`rabbitmqctl close_connection` of every connection of this run's vhost (and no other)."""
    pids = vhost_connections()
    for pid in pids:
        rabbitmqctl("close_connection", pid, "kc_tasks mixed fault suite", check=False)
    return len(pids)


def states(vhost: str) -> list[str]:
    """The states of RabbitMQ's connections to `vhost` (a closed one is listed until its client
    answers the close)."""
    return vhost_connections(vhost, "state")


def test_closing_the_run_s_connections_leaves_other_vhosts_alone() -> None:
    """The fault closes this run's connections and no other: another test process (its own
    vhost) runs beside it, and a connection of its closed under it would fail that test."""
    other = f"kc_other_{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", other)
    rabbitmqctl("set_permissions", "-p", other, "guest", ".*", ".*", ".*")
    try:
        with Connection(AMQP) as ours, Connection(f"amqp://guest:guest@127.0.0.1:5672/{other}") as theirs:
            ours.ensure_connection(max_retries=1)
            theirs.ensure_connection(max_retries=1)
            assert "running" in states(AMQP_VHOST) and states(other) == ["running"]
            close_vhost_connections()
            assert wait_until(lambda: "running" not in states(AMQP_VHOST)), "this run's connections are closed"
            assert states(other) == ["running"], "the other vhost's connection is still open"
            Queue(f"kc_probe_{other}", auto_delete=True)(theirs.default_channel).declare()  # and it works
    finally:
        rabbitmqctl("delete_vhost", other, check=False)


def test_rabbitmq_connections_closed(mixed: Callable[[str, str, int], MixedRun], rabbitmq_url: str) -> None:
    """Every connection of the run's vhost (worker, web, publisher) closed in each of the middle
    slices. RabbitMQ only: on Redis, a connection killed between BRPOP and the unacked record
    loses the message in transit (docs/faults.md), a loss this model would not excuse."""
    run = mixed("mixed: RabbitMQ connections closed", rabbitmq_url, 24)
    assert_model_holds(run.run(close_vhost_connections, broker_fault=True))
    assert run.worker.process.poll() is None


@pytest.mark.disruptive
def test_postgresql_restarted(
    mixed: Callable[[str, str, int], MixedRun], rabbitmq_url: str, restart_postgresql: Callable[[], None]
) -> None:
    """PostgreSQL restarted in each of the middle slices, a purchase held mid-task each time."""
    run = mixed("mixed: PostgreSQL restarted", rabbitmq_url, 25)

    def restart() -> int:
        restart_postgresql()
        return 1

    assert_model_holds(run.run(restart))
    assert run.worker.process.poll() is None
