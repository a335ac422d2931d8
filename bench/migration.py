"""Migration 006 on a large table: how long it takes and what it locks, while writes go on.

A database of its own, migrated to 005, seeded with ROWS purchases (one in ten refunded, one in
a hundred with a duplicate payment), then migrated to 006 by `kc_tasks.store.migrate.migrate`, the
code `kc-tasks migrate` runs, while:

- a writer inserts purchases and revocations as the previous release's workers would, one
  row per statement, and records how long each took (a write that waits on the migration
  shows as a slow one);
- a sampler reads pg_locks every 20 ms: the locks the migration's backend holds on each
  table, and any lock another backend waits for.

    .venv/bin/python bench/migration.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from common import PG, log, percentile
from needs import check, postgresql

TABLES = ("student_course_purchases", "revocations", "duplicate_payments", "payments")


def seed(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency, "
            "is_active) SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'pay_seed_' || g, 4999, "
            "'INR', g %% 10 <> 0 FROM generate_series(1, %s) AS g",
            (rows,),
        )
        conn.execute(
            "INSERT INTO revocations (payment_id, reason, purchase_id, revoked_at) SELECT payment_id, 'refund', id, "
            "now() FROM student_course_purchases WHERE NOT is_active"
        )
        conn.execute(
            "INSERT INTO duplicate_payments (payment_id, purchase_id, held_payment_id, student_id, course_id, "
            "amount_cents, currency) SELECT 'dup_' || payment_id, id, payment_id, student_id, course_id, 4999, 'INR' "
            "FROM student_course_purchases WHERE payment_id LIKE '%%00'"
        )
        conn.execute("VACUUM ANALYZE")


def writer(url: str, stop: threading.Event, latencies: list[float]) -> None:
    """Purchases and refunds as the previous release writes them, one statement each."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            payment = f"pay_live_{uuid.uuid4().hex}"
            t0 = time.perf_counter()
            conn.execute(
                "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency) "
                "VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), %s, 4999, 'INR')",
                (payment,),
            )
            conn.execute("INSERT INTO revocations (payment_id, reason) VALUES (%s, 'refund')", (payment,))
            latencies.append((time.perf_counter() - t0) * 1000)


def sampler(url: str, stop: threading.Event, seen: dict[str, Any]) -> None:
    """The migration's locks on each table, and the longest any other backend waited for one."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            for relation, mode, granted, app, waited in conn.execute(
                "SELECT c.relname, l.mode, l.granted, a.application_name, "
                "extract(epoch FROM now() - a.query_start) * 1000 FROM pg_locks l "
                "JOIN pg_class c ON c.oid = l.relation JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'relation' AND c.relname = ANY(%s) "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (list(TABLES),),
            ).fetchall():
                if not granted:
                    seen["waits"].append((relation, mode, round(waited, 1)))
                elif app == "kc_tasks":  # the migration's connection; the writer's has no name
                    seen["held"].setdefault(relation, set()).add(mode)
            time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    check(__file__, postgresql(PG))

    from kc_tasks.core.settings import normalize_database_url
    from kc_tasks.store import db
    from kc_tasks.store.migrate import SCRIPT_LOCATION, migrate

    name = f"kc_bench_migration_{uuid.uuid4().hex[:8]}"
    url = f"{PG}/{name}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        config = Config()
        config.set_main_option("script_location", str(SCRIPT_LOCATION))
        engine = db.make_engine(normalize_database_url(url))
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "005_payment_events")
            conn.commit()
        engine.dispose()
        t0 = time.monotonic()
        seed(url, args.rows)
        log(f"seeded {args.rows:,} purchases in {time.monotonic() - t0:.0f} s")

        stop = threading.Event()
        latencies: list[float] = []
        seen: dict[str, Any] = {"held": {}, "waits": []}
        threads = [
            threading.Thread(target=writer, args=(url, stop, latencies)),
            threading.Thread(target=sampler, args=(url, stop, seen)),
        ]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        applied = migrate(normalize_database_url(url))
        seconds = time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join()
        with psycopg.connect(url) as conn:
            payments, revoked = conn.execute("SELECT count(*), count(revoked_at) FROM payments").fetchone()
        latencies.sort()
        result = {
            "rows": args.rows,
            "applied": applied,
            "seconds": round(seconds, 1),
            "payments_rows": payments,
            "revoked_rows": revoked,
            "writes_during": len(latencies),
            "write_ms_p50": round(percentile(latencies, 50), 2) if latencies else None,
            "write_ms_p99": round(percentile(latencies, 99), 2) if latencies else None,
            "write_ms_max": round(latencies[-1], 2) if latencies else None,
            "locks_held_by_the_migration": {k: sorted(v) for k, v in sorted(seen["held"].items())},
            "lock_waits_seen": seen["waits"][:20],
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    raise SystemExit(main())
