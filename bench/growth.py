"""Growth: does a table of many purchases slow the worker down?

A second database with 1,000,000 purchases (generate_series, VACUUM ANALYZE) and a worker of
its own; purchase drains on the empty and the grown table in turns, three each, best of each
compared.
"""

from __future__ import annotations

import time
from typing import Any

from common import GROWN_DB_URL, GROWTH_ROUNDS, QUEUE, TABLE, log, migrate, sql
from drains import drain
from workers import Bench, Settings, Stuck, Worker, start_worker


def seed_purchases(rows: int, db_url: str) -> float:
    t0 = time.monotonic()
    sql(
        f"INSERT INTO {TABLE} (id, student_id, course_id, payment_id, amount_cents, currency, is_active, "
        "created_at, updated_at) SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), "
        "'pay_seed_' || g, 4999, 'INR', g %% 10 <> 0, now() - interval '30 days', now() - interval '30 days' "
        "FROM generate_series(1, %s) AS g",
        (rows,),
        url=db_url,
    )
    sql(f"VACUUM ANALYZE {TABLE}", url=db_url)
    return time.monotonic() - t0


def growth(bench: Bench, empty: Worker, grown: Worker, n: int, rounds: int) -> dict[str, float | list[float]]:
    """Purchase drains on an empty table and on one with many rows, in turns (E G E G ...),
    each on a worker of its own database: both see the same moments of a machine whose
    speed drifts. The other worker's consumer is cancelled during each drain."""
    rates: dict[str, list[float]] = {"empty": [], "grown": []}
    for _ in range(rounds):
        for kind, worker, other in (("empty", empty, grown), ("grown", grown, empty)):
            if not bench.client.control.cancel_consumer(QUEUE, destination=[other.name], reply=True, timeout=10):
                raise Stuck(f"{other.name} did not answer cancel_consumer")
            rates[kind].append(drain(bench, worker, "purchase", n, truncate=kind == "empty").rate)
    best = {kind: max(values) for kind, values in rates.items()}
    return {
        "purchases_per_s": best["grown"],
        "empty_purchases_per_s": best["empty"],
        "change": best["grown"] / best["empty"] - 1,
        "all_rates": {kind: [round(r, 1) for r in values] for kind, values in rates.items()},
    }


def measure_growth(bench: Bench, empty: Worker, settings: Settings, seed_rows: int, n: int) -> dict[str, Any]:
    """Seed a second database with `seed_rows` purchases, start a worker on it, and compare
    its drains with those of `empty`, the worker of the empty table."""
    log(f"growth: a second database, {seed_rows:,} purchases")
    migrate(GROWN_DB_URL)
    seconds = seed_purchases(seed_rows, GROWN_DB_URL)
    log(f"  seeded in {seconds:.0f} s; drains in turns, empty and grown, best of {GROWTH_ROUNDS}")
    grown_worker = start_worker(settings, db_url=GROWN_DB_URL)
    try:
        return {
            "seeded_rows": seed_rows,
            "seed_seconds": seconds,
            **growth(bench, empty, grown_worker, n, rounds=GROWTH_ROUNDS),
            "table_size": sql(f"SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))", url=GROWN_DB_URL)[0][0],
        }
    finally:
        grown_worker.stop()
