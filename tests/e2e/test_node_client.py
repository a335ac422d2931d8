"""The payment service in Node.js: examples/node/enqueue.js, run by real Node with celery-node
from npm, enqueues a purchase and its revocation that the real worker carries out."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from tests.e2e.conftest import ROOT, Workers, count, wait_until

EXAMPLE = ROOT / "examples" / "node"


def node(broker_url: str, *args: str) -> str:
    assert shutil.which("node"), "Node.js is required (make test installs the example with npm ci)"
    assert (EXAMPLE / "node_modules" / "celery-node").is_dir(), "run `npm ci` in examples/node (make test does)"
    done = subprocess.run(
        ["node", "enqueue.js", *args],
        cwd=EXAMPLE,
        env=dict(os.environ, CELERY_BROKER_URL=broker_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_node_example_enqueues_a_purchase_and_its_revocation(
    database_url: str, workers: Workers, broker_url: str
) -> None:
    workers.start(database_url, broker_url)
    student, course, payment = str(uuid.uuid4()), str(uuid.uuid4()), f"pay_node_{uuid.uuid4().hex[:12]}"
    task_id = node(broker_url, "purchase", payment, student, course, "49900", "INR")
    assert uuid.UUID(task_id)
    node(broker_url, "purchase", payment, student, course, "49900", "INR")
    assert wait_until(lambda: count(database_url, "payment_id = %s AND is_active", (payment,)) == 1, timeout=30)
    node(broker_url, "revoke", payment, "refund", "rfnd_node_1")
    assert wait_until(lambda: count(database_url, "payment_id = %s AND NOT is_active", (payment,)) == 1, timeout=30)
    assert count(database_url) == 1, "one payment, one purchase, whatever the deliveries"
