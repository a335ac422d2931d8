"""`celery -A kc_tasks worker` started outside the checkout, as a deployed process is: the
installed package finds its top-level celeryconfig.py (Celery's settings from the
environment) and the worker makes purchases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.builders import purchase
from tests.harness import CELERY, ROOT, Client, wait_until
from tests.services import count


def test_a_worker_started_in_another_directory_finds_celeryconfig_and_makes_purchases(
    tmp_path: Path, database_url: str, broker_url: str, client: Client
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = dict(os.environ, DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, PYTHONUNBUFFERED="1")
    environment.pop("PYTHONPATH", None)
    found = subprocess.run(
        [sys.executable, "-c", "import celeryconfig; print(celeryconfig.__file__)"],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(found.stdout.strip()) == ROOT / "celeryconfig.py", "the installed celeryconfig.py"

    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [CELERY, "-A", "kc_tasks", "worker", "-c", "1", "-l", "INFO", "--without-mingle", "--without-gossip"],
            cwd=elsewhere,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_until(lambda: "ready." in log.read_text(), timeout=60), log.read_text()
        banner = log.read_text()
        assert ".> purchases" in banner, "it consumes the purchase queue, as celeryconfig.py says"
        assert "kc_tasks.create_purchase" in banner
        client.send([purchase()])
        assert wait_until(lambda: count(database_url) == 1, timeout=30), log.read_text()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
