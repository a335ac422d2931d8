"""The metrics' pure parts: what each outcome is counted as, the private folders, and the
collector of the processes' files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from kc_tasks.core import metrics, names


@pytest.mark.parametrize(
    ("status", "new", "outcome"),
    [
        (names.ENQUEUED, True, "enqueued"),
        (names.RECEIVED, True, "enqueued"),  # the broker was down: the relay enqueues it
        (names.IGNORED, True, "ignored"),
        (names.UNMAPPED, True, "unmapped"),
        (names.INVALID, True, "invalid"),
        (names.ENQUEUED, False, "duplicate"),
        (names.IGNORED, False, "duplicate"),
    ],
)
def test_a_stored_webhook_is_counted_by_what_became_of_it(status: str, new: bool, outcome: str) -> None:
    assert metrics.webhook_outcome(status, new) == outcome
    assert outcome in metrics.WEBHOOK_OUTCOMES


@pytest.mark.parametrize(
    ("created", "duplicate_of", "outcome"),
    [(True, None, "created"), (False, None, "repeated"), (False, "a-purchase", "duplicate_payment")],
)
def test_a_purchase_is_counted_by_its_outcome(created: bool, duplicate_of: str | None, outcome: str) -> None:
    assert metrics.purchase_outcome(created, duplicate_of) == outcome


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (names.PERMANENT, "permanent"),
        (names.EXHAUSTED, "exhausted"),
        (names.WORKER_LOST, "worker_lost"),
        (names.UNDECODABLE, "permanent"),
        (names.UNKNOWN_TASK, "permanent"),
        (names.INVALID_MESSAGE, "permanent"),
    ],
)
def test_a_dead_letter_is_counted_by_its_kind(reason: str, kind: str) -> None:
    assert metrics.dead_letter_kind(reason) == kind


def test_each_process_gets_a_private_folder_and_the_folders_of_gone_processes_are_removed() -> None:
    base = Path(tempfile.gettempdir())
    gone = base / f"kc-test-metrics-{os.getuid()}-999999999-123"
    gone.mkdir(exist_ok=True)

    folder = metrics.private_folder("test", os.getpid(), fresh=True)
    try:
        (folder / "counter_1.db").write_bytes(b"left")
        assert folder.stat().st_mode & 0o777 == 0o700, "only this user reads or writes it"
        assert not gone.exists(), "a folder of a process that is gone is removed"
        assert metrics.private_folder("test", os.getpid(), fresh=False) == folder
        assert (folder / "counter_1.db").exists(), "a uvicorn worker joins its siblings' folder"
        assert not any(metrics.private_folder("test", os.getpid(), fresh=True).iterdir()), "fresh: emptied"
    finally:
        folder.rmdir()


def test_a_folder_another_user_could_write_is_refused() -> None:
    folder = metrics.private_folder("test", os.getpid(), fresh=True)
    try:
        folder.chmod(0o777)
        with pytest.raises(RuntimeError, match="not a private folder"):
            metrics.private_folder("test", os.getpid(), fresh=False)
    finally:
        folder.rmdir()


def test_a_process_file_still_empty_does_not_fail_the_scrape(tmp_path: Path) -> None:
    """A process's file as prometheus_client leaves it between creating and sizing it (for
    good, if the process was killed then), beside the file of a process that counted: the
    scrape answers with what was counted."""
    counted = MmapedDict(str(tmp_path / "counter_101.db"))
    key = mmap_key("kc_purchases", "kc_purchases_total", ["outcome"], ["created"], "purchases")
    counted.write_value(key, 3.0, 0.0)
    counted.close()
    (tmp_path / "counter_102.db").touch()
    (tmp_path / "histogram_103.db").touch()

    registry = CollectorRegistry()
    metrics.FilesCollector(registry, path=str(tmp_path))
    samples = [s for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples]

    assert [(s.name, s.labels, s.value) for s in samples] == [("kc_purchases_total", {"outcome": "created"}, 3.0)]


def scraped(*collectors: object) -> dict[str, list[tuple[dict[str, str], float]]]:
    """What a scrape of `collectors` shows: each series' samples."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_while_postgresql_takes_writes_its_gauges_are_asked_too() -> None:
    asked: list[str] = []

    def stuck() -> float:
        asked.append("stuck")
        return 3.0

    gauges = metrics.DatabaseGauges(lambda: None, [metrics.ScrapeGauge("kc_inbox_stuck_events", "stuck", stuck)])

    assert scraped(gauges) == {"kc_database_up": [({}, 1.0)], "kc_inbox_stuck_events": [({}, 3.0)]}
    assert asked == ["stuck"]


def test_while_postgresql_takes_no_write_the_scrape_says_so_and_asks_nothing_more() -> None:
    def stuck() -> float:
        raise AssertionError("asked while the database is down: the scrape would wait for its timeout")

    gauges = metrics.DatabaseGauges(lambda: "read-only", [metrics.ScrapeGauge("kc_inbox_stuck_events", "stuck", stuck)])

    assert scraped(gauges) == {"kc_database_up": [({}, 0.0)]}


@pytest.mark.parametrize("consuming", [True, False])
def test_the_worker_says_whether_it_consumes_and_each_periodic_tasks_period(consuming: bool) -> None:
    periods = {"kc_tasks.verify_purchase_index": 300.0, "kc_tasks.reconcile_payments": 900.0}

    shown = scraped(metrics.WorkerGauges(lambda: consuming, periods))

    assert shown["kc_worker_consuming"] == [({"queue": "purchases"}, 1.0 if consuming else 0.0)]
    assert sorted((labels["task"], value) for labels, value in shown["kc_periodic_interval_seconds"]) == [
        ("kc_tasks.reconcile_payments", 900.0),
        ("kc_tasks.verify_purchase_index", 300.0),
    ]
