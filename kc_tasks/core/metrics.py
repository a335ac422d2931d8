"""Prometheus metrics: the series docs/reference.md names ("Metrics"), kept by every process of the
web (its uvicorn workers) and of a worker (its pool processes), and served together on a port
of their own (KC_WEB_METRICS_PORT, KC_WORKER_METRICS_PORT on KC_METRICS_ADDRESS).

prometheus_client's multiprocess mode: each process writes its counters to files of a private
folder, and a scrape adds up the files of every process, the ones that died included, so a
counter never goes backwards when a pool process is replaced. The folder is made empty when the
worker (or the web process) starts. The two gauges are not kept: they are asked of PostgreSQL
when Prometheus scrapes.

While a process's port is unset, `enable` is never called: every function below returns at
once, and nothing is kept.
"""

from __future__ import annotations

import glob
import logging
import multiprocessing
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from kc_tasks.core.errors import KcTasksError
from kc_tasks.core.names import (
    CONFLICT,
    ENQUEUED,
    EXHAUSTED,
    IGNORED,
    INVALID,
    PURCHASE_CREATED,
    PURCHASE_TASKS,
    PURCHASES,
    RECEIVED,
    REVOKE_PURCHASE,
    SEEN_AT,
    SEEN_BY,
    UNMAPPED,
    WORKER_LOST,
)

logger = logging.getLogger(__name__)

WEB, WORKER = "web", "worker"
# An event's inbox status, or what became of a request that stored nothing new.
WEBHOOK_OUTCOMES = (ENQUEUED, "duplicate", IGNORED, UNMAPPED, INVALID, "rejected", CONFLICT, "unavailable")
PURCHASE_OUTCOMES = ("created", "repeated", "duplicate_payment")
DEAD_LETTER_KINDS = ("permanent", "exhausted", "worker_lost")
TASKS = PURCHASE_TASKS
REVOCATION_REASONS = ("refund", "dispute", "manual")
FOUND_KINDS = ("payment", "refund", "dispute")
# POST /checkouts/confirm's answers: 200, 202, 409 not paid, any other 4xx, 503.
CONFIRM_OUTCOMES = ("granted", "pending", "not_paid", "refused", "unavailable")
# A task sent directly (not through the inbox) is first seen when it reaches the worker.
TASK = "task"
# Message headers that carry a payment's first sight to the worker: who saw it, and when (unix
# seconds). The inbox sets them when it enqueues; Celery keeps them across retries.
FIRST_SEEN_HEADERS = (SEEN_BY, SEEN_AT)
# The heartbeat beat sends through `purchases` (names.QUEUE_HEARTBEAT, every HEARTBEAT_INTERVAL
# seconds) and the header that says when it was sent (names.SENT_AT): the worker's consumer
# takes it like a purchase, in the queue's order, and notes its send time
# (kc_queue_heartbeat_timestamp_seconds), never running it. While no worker takes anything from
# the queue, or the queue is behind, that time stays in the past.
HEARTBEAT_INTERVAL = 30.0
# From a few tenths of a second (a webhook, at once) to an hour (a reconciliation, a retry).
ACCESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# prometheus_client's environment variable: where a process writes its values.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class Labels:
    """The providers whose label series are made from 0, given by the processes that start the
    metrics (kc_tasks.providers.registry.METRIC_LABELS: this module sits below the providers).
    `webhooks`: the providers the web takes webhooks of; `apis`: those whose API kc_tasks reads
    (checkouts confirmed, refund failures, reconciliation)."""

    webhooks: tuple[str, ...] = ()
    apis: tuple[str, ...] = ()


class Series:
    """The contract's counters, histogram and the gauges processes set (those read at scrape
    are ScrapeGauges). Made by `enable`, after the multiprocess mode is on."""

    def __init__(self, role: str, labels: Labels = Labels()) -> None:
        self.labels = labels
        self.webhook_events = Counter(
            "kc_webhook_events_total",
            "Webhook requests by what became of them",
            ["provider", "outcome"],
            registry=None,
        )
        self.purchases = Counter("kc_purchases_total", "create_purchase outcomes", ["outcome"], registry=None)
        self.revocations = Counter(
            "kc_revocations_total", "Purchases made inactive by revoke_purchase", ["reason"], registry=None
        )
        self.dead_letters = Counter("kc_dead_letters_total", "Messages dead-lettered", ["task", "kind"], registry=None)
        self.retries = Counter("kc_task_retries_total", "Retries scheduled", ["task"], registry=None)
        self.payment_to_access = Histogram(
            "kc_payment_to_access_seconds",
            "From kc_tasks' first sight of a payment to the commit of its purchase",
            ["provider"],
            buckets=ACCESS_BUCKETS,
            registry=None,
        )
        self.reconcile_found = Counter(
            "kc_reconcile_found_total",
            "What reconciliation found that no webhook had brought",
            ["provider", "kind"],
            registry=None,
        )
        # Counted where the inbox first stores the event: the web (webhooks), the worker (reconciliation).
        self.refund_failures = Counter(
            "kc_refund_failures_total", "Refunds that failed after they were processed", ["provider"], registry=None
        )
        for provider in labels.apis:
            self.refund_failures.labels(provider)
        # Set by whichever process ran the task (a pool process), or by the worker's main process
        # at start: the newest of them is the one that counts, also once its process is gone.
        self.periodic_success = Gauge(
            "kc_periodic_last_success_timestamp_seconds",
            "When each beat-scheduled task last succeeded (or this worker started), unix seconds",
            ["task"],
            registry=None,
            multiprocess_mode="max",
        )
        self.heartbeat = Gauge(
            "kc_queue_heartbeat_timestamp_seconds",
            "When the newest heartbeat a worker took from the queue was sent (or this worker started)",
            ["queue"],
            registry=None,
            multiprocess_mode="max",
        )
        self.confirms = Counter(
            "kc_confirms_total", "POST /checkouts/confirm answers", ["provider", "outcome"], registry=None
        )
        # Every known series from 0, so that a rate or an increase sees its first event.
        if role == WEB:
            for provider in labels.apis:
                for outcome in CONFIRM_OUTCOMES:
                    self.confirms.labels(provider, outcome)
            for provider in labels.webhooks:
                for outcome in WEBHOOK_OUTCOMES:
                    self.webhook_events.labels(provider, outcome)
        else:
            for outcome in PURCHASE_OUTCOMES:
                self.purchases.labels(outcome)
            for reason in REVOCATION_REASONS:
                self.revocations.labels(reason)
            for task in TASKS:
                self.retries.labels(task)
                for kind in DEAD_LETTER_KINDS:
                    self.dead_letters.labels(task, kind)
            for provider in labels.apis:
                for kind in FOUND_KINDS:
                    self.reconcile_found.labels(provider, kind)


_series: Series | None = None
_folder: Path | None = None
_server: WSGIServer | None = None
_lock = threading.Lock()


def enabled() -> bool:
    return _series is not None


def enable(role: str, owner_pid: int, fresh: bool, labels: Labels = Labels()) -> Path:
    """Turn the multiprocess mode on in this process (and the processes it forks) and make the
    series, those of `labels`' providers from 0; the folder is `role`'s of process `owner_pid`,
    emptied when `fresh`."""
    global _series, _folder
    folder = private_folder(role, owner_pid, fresh)
    os.environ[MULTIPROC_DIR] = str(folder)
    # prometheus_client picks its value class when it is imported; from here on it is the
    # multiprocess one, for the series made below.
    values.ValueClass = values.MultiProcessValue()
    _folder, _series = folder, Series(role, labels)
    return folder


def private_folder(role: str, owner_pid: int, fresh: bool) -> Path:
    """A folder of this user's only (mode 0700), named after its owner process and that
    process's start, so that a folder left by an earlier process of the same pid is never
    reused; those left by processes that are gone are removed."""
    base = Path(tempfile.gettempdir())
    prefix = f"kc-{role}-metrics-{os.getuid()}-"
    for old in base.glob(prefix + "*"):
        pid, _, started = old.name.removeprefix(prefix).partition("-")
        if pid.isdigit() and _start_time(int(pid)) != started:
            shutil.rmtree(old, ignore_errors=True)
    folder = base / f"{prefix}{owner_pid}-{_start_time(owner_pid)}"
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        info = folder.lstat()
        if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise RuntimeError(f"{folder} is not a private folder of this user") from None
    return folder


def _start_time(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, Linux), '' where unknown; 'gone' if
    there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


class FilesCollector(MultiProcessCollector):
    """prometheus_client's collector of every process's files, but for the files still empty.

    prometheus_client creates a process's file first and sizes it after: a scrape in between
    read no header, raised struct.error and failed whole (500), and a pool process killed in
    between left its empty file for good, failing every scrape until the worker restarted
    (prometheus/client_python#1199, not fixed in the pinned 0.26.0). An empty file holds no
    value yet, so it is left out; a file never shrinks, so one found with content is read whole.
    """

    def collect(self) -> Any:
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if os.path.getsize(f) > 0]
        return self.merge(files, accumulate=True)


def serve(port: int, address: str, gauges: Sequence[Any], share_port: bool) -> None:
    """GET /metrics on `address`:`port`, from a thread: the files of every process, and the
    gauges asked at scrape. `share_port`: each uvicorn worker listens on the port too
    (SO_REUSEPORT), and any of them answers for all."""
    global _server
    registry = CollectorRegistry(auto_describe=True)
    FilesCollector(registry, path=str(_folder))
    for collector in gauges:
        registry.register(collector)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        allow_reuse_port = share_port
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    with _lock:
        if _server is not None:
            return
        _server = make_server(address, port, make_wsgi_app(registry), Server, _Quiet)
    threading.Thread(target=_server.serve_forever, name="kc-metrics", daemon=True).start()
    logger.info("metrics on http://%s:%d/metrics", address, port)


def stop() -> None:
    """Stop serving and remove the folder (the worker's, when it shuts down)."""
    global _server, _series
    with _lock:
        server, _server = _server, None
    if server is not None:
        server.shutdown()
        server.server_close()
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
    _series = None


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
        pass


# --- what the processes count ---------------------------------------------------------------


def webhook(provider: str, outcome: str) -> None:
    if _series is not None:
        _series.webhook_events.labels(provider, outcome).inc()


def webhook_receipt(provider: str, status: str, new: bool) -> None:
    if _series is not None:
        _series.webhook_events.labels(provider, webhook_outcome(status, new)).inc()


def webhook_outcome(status: str, new: bool) -> str:
    """The outcome of a stored event: a repeat is a duplicate; `received` (the broker was down,
    the relay enqueues it) counts as enqueued; else its inbox status."""
    if not new:
        return "duplicate"
    return ENQUEUED if status in (RECEIVED, ENQUEUED) else status


def purchase_made(request: Any, outcome: Any) -> None:
    """create_purchase's outcome (a purchases.PurchaseOutcome) for the task `request`; for a new
    purchase, how long after its payment was first seen it was committed."""
    if _series is None:
        return
    _series.purchases.labels(purchase_outcome(outcome.created, outcome.duplicate_of)).inc()
    if not outcome.created:
        return
    seen_at = request.get(SEEN_AT)
    if not isinstance(seen_at, int | float):
        return
    provider = request.get(SEEN_BY) or TASK
    if provider == TASK:  # both on the worker's clock
        elapsed = time.time() - seen_at
    else:  # both on PostgreSQL's: the inbox's received_at, the purchase.created event's
        committed = next((e.occurred_at for e in outcome.events if e.type == PURCHASE_CREATED), None)
        elapsed = (committed.timestamp() if committed is not None else time.time()) - seen_at
    _series.payment_to_access.labels(provider).observe(max(elapsed, 0.0))


def purchase_outcome(created: bool, duplicate_of: str | None) -> str:
    """created; duplicate_payment (another payment holds the course: refund this one); repeated."""
    return "created" if created else "duplicate_payment" if duplicate_of else "repeated"


def dead_lettered(task: str | None, reason: str) -> None:
    if _series is not None:
        _series.dead_letters.labels(task if task in TASKS else "other", dead_letter_kind(reason)).inc()


def dead_letter_kind(reason: str) -> str:
    """A dead letter's kind by its reason (dead_letters.py): retries used up, a worker process that
    died under it too often, or anything a retry cannot fix (a bad message included)."""
    return {EXHAUSTED: "exhausted", WORKER_LOST: "worker_lost"}.get(reason, "permanent")


def reconcile_found(provider: str, found: Mapping[str, int]) -> None:
    if _series is not None:
        for kind, count in found.items():
            _series.reconcile_found.labels(provider, kind).inc(count)


def confirm(provider: str, outcome: str) -> None:
    """One answer of POST /checkouts/confirm (a provider it does not know counts as `other`)."""
    if _series is not None:
        _series.confirms.labels(provider if provider in _series.labels.apis else "other", outcome).inc()


def refund_failed(provider: str) -> None:
    if _series is not None:
        _series.refund_failures.labels(provider).inc()


def first_seen_headers(provider: str, received_at: float) -> dict[str, Any]:
    """The headers of a task enqueued for an event of `provider` stored at `received_at`."""
    return {SEEN_BY: provider, SEEN_AT: received_at}


# --- the gauges, read at scrape ---------------------------------------------------------------


class ScrapeGauge:
    """A gauge asked at each scrape: `read` gives its value; when it raises KcTasksError
    (PostgreSQL is down), the scrape goes without it."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterator[Metric]:
        try:
            value = self.read()
        except KcTasksError as exc:
            logger.debug("metrics: %s: %s", self.name, exc)
            return
        yield GaugeMetricFamily(self.name, self.documentation, value=value)


class DatabaseGauges:
    """kc_database_up, a write probe asked at each scrape, then the gauges asked of PostgreSQL
    (`others`), only while it is up: during an outage the scrape answers at once."""

    def __init__(self, writable: Callable[[], str | None], others: Sequence[ScrapeGauge]) -> None:
        self.writable, self.others = writable, others

    def collect(self) -> Iterator[Metric]:
        why = self.writable()
        yield GaugeMetricFamily(
            "kc_database_up", "1 while this process's probe of PostgreSQL takes a write, else 0", value=why is None
        )
        if why is not None:
            logger.debug("metrics: PostgreSQL cannot take writes: %s", why)
            return
        for gauge in self.others:
            yield from gauge.collect()


class WorkerGauges:
    """What the worker's main process knows at scrape: whether it consumes `purchases` (0 while it
    waits out a database outage), and the period of each beat-scheduled task."""

    def __init__(self, consuming: Callable[[], bool], periods: Mapping[str, float]) -> None:
        self.consuming, self.periods = consuming, periods

    def collect(self) -> Iterator[Metric]:
        consuming = GaugeMetricFamily(
            "kc_worker_consuming", "1 while this worker takes tasks from the queue, else 0", labels=["queue"]
        )
        consuming.add_metric([PURCHASES], 1.0 if self.consuming() else 0.0)
        yield consuming
        periods = GaugeMetricFamily(
            "kc_periodic_interval_seconds", "The beat period of each scheduled task, seconds", labels=["task"]
        )
        for task, seconds in sorted(self.periods.items()):
            periods.add_metric([task], seconds)
        yield periods


# --- starting ---------------------------------------------------------------------------------


def start_web(
    port: int, address: str, writable: Callable[[], str | None], stuck: Callable[[], float], labels: Labels
) -> None:
    """In each uvicorn worker: one folder for all the workers of one uvicorn (their parent's),
    and each listens on `port`. `writable`: a write probe of PostgreSQL (None: it takes writes);
    `stuck`: the inbox events still received (a query); `labels`: the providers."""
    if _series is not None:
        return
    parent = multiprocessing.parent_process()
    owner = parent.pid if parent is not None and parent.pid is not None else os.getpid()
    enable(WEB, owner, fresh=parent is None, labels=labels)
    gauge = ScrapeGauge("kc_inbox_stuck_events", "Inbox events still received after the relay's grace period", stuck)
    _start_serving(port, address, [DatabaseGauges(writable, [gauge])], share_port=True)


def start_worker(
    port: int,
    address: str,
    writable: Callable[[], str | None],
    index_usable: Callable[[], float],
    consuming: Callable[[], bool],
    periods: Mapping[str, float],
    labels: Labels,
) -> None:
    """In the worker's main process, before the pool forks: a fresh folder. `writable`: a write
    probe of PostgreSQL; `index_usable`: 1 while unique_active_purchase is usable, else 0 (a
    check); `consuming`: whether the worker takes tasks from `purchases`; `periods`: beat's
    tasks and their periods, seconds; `labels`: the providers."""
    if _series is not None:
        return
    from celery.signals import task_retry, task_success, worker_shutdown

    enable(WORKER, os.getpid(), fresh=True, labels=labels)
    assert _series is not None
    started = time.time()
    for task in periods:
        _series.periodic_success.labels(task).set(started)
    _series.heartbeat.labels(PURCHASES).set(started)
    task_retry.connect(_count_retry, weak=False)
    task_success.connect(_count_revocation, weak=False)
    task_success.connect(_note_periodic_success, weak=False)
    worker_shutdown.connect(_stop_worker, weak=False)
    _PERIODIC.update(periods)
    gauge = ScrapeGauge("kc_index_usable", "1 while unique_active_purchase is usable, else 0", index_usable)
    gauges = [DatabaseGauges(writable, [gauge]), WorkerGauges(consuming, periods)]
    _start_serving(port, address, gauges, share_port=False)


# beat's tasks, whose successes are noted (set by start_worker, inherited by the pool processes).
_PERIODIC: dict[str, float] = {}


def _note_periodic_success(sender: Any = None, **_: Any) -> None:
    if _series is not None and sender is not None and sender.name in _PERIODIC:
        _series.periodic_success.labels(sender.name).set(time.time())


def heartbeat_received(sent_at: Any) -> None:
    """The worker took a heartbeat from `purchases` that was sent at `sent_at` (unix seconds)."""
    if _series is not None and isinstance(sent_at, int | float):
        _series.heartbeat.labels(PURCHASES).set(sent_at)


def _start_serving(port: int, address: str, gauges: Any, share_port: bool) -> None:
    try:
        serve(port, address, gauges, share_port)
    except OSError as exc:  # the service works on; only its metrics are missing
        logger.error("metrics: cannot listen on %s:%d: %s; no metrics are served", address, port, exc)


def _count_retry(sender: Any = None, **_: Any) -> None:
    if _series is not None and sender is not None:
        _series.retries.labels(sender.name).inc()


def _count_revocation(sender: Any = None, result: Any = None, **_: Any) -> None:
    """A revoke_purchase that made its purchase inactive (its result names it, revoked)."""
    if _series is None or sender is None or sender.name != REVOKE_PURCHASE or not isinstance(result, dict):
        return
    if result.get("revoked") and result.get("purchase_id"):
        reason = (sender.request.kwargs or {}).get("reason", "")
        _series.revocations.labels(reason if reason in REVOCATION_REASONS else "other").inc()


def _stop_worker(**_: Any) -> None:
    stop()
