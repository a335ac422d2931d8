"""The Procfile's beat process, run as it is deployed: its schedule reaches the workers."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from tests.harness import CELERY, ROOT, Workers, stop_group, wait_until
from tests.services import run_sql


def test_beat_sends_the_index_check_and_the_event_relay_on_schedule(
    database_url: str, workers: Workers, broker_url: str, tmp_path: Path
) -> None:
    """`celery -A kc_tasks beat` with one-second intervals: the index check finds the dropped
    unique_active_purchase and says so, and the relay publishes an event left in the outbox."""
    # The workers' own sweep is kept out of the way (an hour): the event is the beat relay's.
    env = {"KC_INDEX_VERIFY_INTERVAL": "1", "KC_RELAY_SAFETY_INTERVAL": "1", "KC_EVENT_RELAY_INTERVAL": "3600"}
    worker = workers.start(database_url, broker_url, **env)
    run_sql(database_url, "DROP INDEX unique_active_purchase")
    left = str(uuid.uuid4())
    run_sql(
        database_url,
        "INSERT INTO event_outbox (id, type, occurred_at, data) VALUES (%s, 'purchase.created', "
        "now() - interval '1 minute', %s)",
        (left, json.dumps({"id": str(uuid.uuid4())})),
    )
    log = tmp_path / "beat.log"
    with log.open("w") as out:
        beat = subprocess.Popen(
            [CELERY, "-A", "kc_tasks", "beat", "--loglevel", "INFO", "--schedule", str(tmp_path / "beat-schedule")],
            cwd=ROOT,
            env=dict(os.environ, DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_until(
            lambda: (
                "unique_active_purchase index not usable: it does not exist - purchases use the fallback method"
                in worker.text()
            ),
            timeout=60,
        ), worker.text()[-2000:] + log.read_text()[-2000:]
        assert wait_until(
            lambda: (
                run_sql(database_url, "SELECT published_at IS NOT NULL FROM event_outbox WHERE id = %s", (left,))
                == [(True,)]
            ),
            timeout=60,
        ), "the relay published the event left in the outbox"
        sent = log.read_text()
        assert "Sending due task verify-purchase-index (kc_tasks.verify_purchase_index)" in sent
        assert "Sending due task relay-events (kc_tasks.relay_events)" in sent
        assert beat.poll() is None, "beat keeps running"
    finally:
        stop_group(beat)
