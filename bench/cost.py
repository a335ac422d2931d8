"""Cost per purchase: what one purchase asks of PostgreSQL.

The task run in-process (`create_purchase.apply`) against the bench database and vhost, with
libpq's protocol trace counting round trips (a simple Query or an extended-protocol Sync sent
by the client, each one waiting for the server) and a SQLAlchemy before_cursor_execute hook
counting statements and index-verification queries.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from typing import Any

from common import AMQP, DB_URL, LOGS, purchase_kwargs


def cost_per_purchase(count: int) -> dict[str, Any]:
    """Run the task body in this process, against the bench database and vhost, counting what
    reaches PostgreSQL. Round trips from libpq's own protocol trace: each simple Query or
    extended-protocol Sync the client sends waits for the server's answer."""
    os.environ.update(DATABASE_URL=DB_URL, CELERY_BROKER_URL=AMQP)
    import sqlalchemy as sa

    from kc_tasks.store import events
    from kc_tasks.worker import purchases
    from kc_tasks.worker.process import resources
    from kc_tasks.worker.tasks import create_purchase

    engine, _ = resources()
    trace = LOGS / "libpq-trace.txt"
    trace_file = trace.open("w")
    statements: list[str] = []

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        from psycopg import pq

        dbapi_connection.pgconn.trace(trace_file.fileno())
        dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    rnd = random.Random(7)
    create_purchase.apply(kwargs=purchase_kwargs(rnd)).get()  # warm: connections, index check, broker

    # Where the time goes, measured around the functions the task calls (summed over every
    # thread of this process: an event publisher thread, if kc_tasks has one, included).
    steps = [(purchases, "create_purchase"), (events.EventChannel, "publish"), (events, "mark_published")]
    steps = [(module, name) for module, name in steps if hasattr(module, name)]
    spent = dict.fromkeys((name for _, name in steps), 0.0)
    originals = [getattr(module, name) for module, name in steps]

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return wrapper

    for (module, name), original in zip(steps, originals, strict=True):
        setattr(module, name, timed(name, original))
    try:
        create_purchase.apply(kwargs=purchase_kwargs(rnd)).get()  # connect, with the trace on
        time.sleep(0.5)  # events published in the background, if they are, are out
        trace_file.flush()
        offset = trace.stat().st_size
        statements.clear()
        spent.update(dict.fromkeys(spent, 0.0))
        t0 = time.perf_counter()
        results = [create_purchase.apply(kwargs=purchase_kwargs(rnd)).get() for _ in range(count)]
        elapsed = time.perf_counter() - t0
        time.sleep(0.5)
    finally:
        for (module, name), original in zip(steps, originals, strict=True):
            setattr(module, name, original)
        trace_file.close()
    assert all(r["created"] for r in results), "every purchase is new"
    with trace.open() as f:
        f.seek(offset)
        sent = [line.rstrip("\n").split("\t") for line in f if line.startswith("F\t")]
    round_trips = sum(1 for parts in sent if parts[2] in ("Query", "Sync"))
    index_queries = [s for s in statements if re.search(r"pg_index|to_regclass|EXPLAIN", s)]
    simple = [parts[3].strip() for parts in sent if parts[2] == "Query"]
    return {
        "method": "in-process create_purchase.apply() x N; libpq trace (Query + Sync messages) and "
        "SQLAlchemy before_cursor_execute",
        "purchases": count,
        "round_trips_per_purchase": round_trips / count,
        "statements_per_purchase": len(statements) / count,
        "index_queries_per_task": len(index_queries) / count,
        "simple_queries_seen": sorted(set(simple)),
        "statements_seen": sorted({re.sub(r"\s+", " ", s)[:90] for s in statements}),
        "wall_ms_per_task": 1000 * elapsed / count,
        "wall_ms_per_task_by_step": {k: 1000 * v / count for k, v in spent.items()},
    }
