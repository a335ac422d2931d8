"""What a benchmark needs from the machine, checked before it starts anything: a tool that is
missing, or a service that does not answer, ends it at once with one line that names what it
needs and how to get it, and exit status 2, never with a traceback half-way through a run.

    bench/webhooks.py needs wrk: apt-get install wrk

Each script calls `check(__file__, ...)` right after reading its arguments (so that --help
needs nothing). Imports nothing beyond the standard library until a check runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
# The virtualenv's programs (py-spy, kc-tasks, uvicorn, celery): beside the running Python.
BIN = Path(sys.executable).parent
EXIT_MISSING = 2
# The broker every benchmark makes its own vhost on (with rabbitmqctl); its default vhost answers first.
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
BENCH_EXTRA = ".venv/bin/pip install -e '.[bench]'"


@dataclass(frozen=True)
class Need:
    what: str  # what the script needs, as the line names it
    how: str  # how to get it
    met: Callable[[], bool]


def tool(name: str, how: str) -> Need:
    """A program on PATH."""
    return Need(name, how, lambda: shutil.which(name) is not None)


def program(name: str, how: str) -> Need:
    """A program of the virtualenv (an extra's)."""
    return Need(name, how, lambda: (BIN / name).is_file() and os.access(BIN / name, os.X_OK))


def module(name: str, how: str) -> Need:
    """A Python package the benchmark imports only at its end (an extra's)."""
    return Need(name, how, lambda: importlib.util.find_spec(name) is not None)


def file(path: str, what: str, how: str) -> Need:
    return Need(what, how, lambda: Path(path).is_file())


def postgresql(server: str) -> Need:
    """The PostgreSQL server the benchmark makes its databases on (KC_BENCH_PG)."""
    where = urlsplit(server)
    return Need(
        f"PostgreSQL at {where.hostname}:{where.port or 5432}",
        "start it (make services) or set KC_BENCH_PG to one",
        lambda: _answers_postgresql(f"{server}/postgres"),
    )


def rabbitmq(url: str = RABBITMQ_URL) -> Need:
    where = urlsplit(url)
    return Need(
        f"RabbitMQ at {where.hostname}:{where.port or 5672}", "start it: make services", lambda: _answers_amqp(url)
    )


def _answers_postgresql(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def _answers_amqp(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception:
        return False
    return True


WRK = tool("wrk", "apt-get install wrk")
CURL = tool("curl", "apt-get install curl")
PGREP = tool("pgrep", "apt-get install procps")
# Each benchmark's own vhost is made and removed with it (the server's own package ships it).
RABBITMQCTL = tool("rabbitmqctl", "apt-get install rabbitmq-server")
PROMETHEUS = tool("prometheus", "make prometheus")
CHROMIUM = file("/usr/bin/chromium", "Chromium at /usr/bin/chromium", "make browser")
PY_SPY = program("py-spy", BENCH_EXTRA)
MATPLOTLIB = module("matplotlib", BENCH_EXTRA)
PLAYWRIGHT = module("playwright", ".venv/bin/pip install -e '.[dev]'")


def check(script: str, *needs: Need) -> None:
    """Exit with status 2 and one line on stderr naming every need of `script` not met."""
    missing = [need for need in needs if not need.met()]
    if missing:
        name = Path(script).resolve()
        shown = name.relative_to(ROOT) if name.is_relative_to(ROOT) else name
        print(f"{shown} needs " + "; ".join(f"{need.what}: {need.how}" for need in missing), file=sys.stderr)
        raise SystemExit(EXIT_MISSING)
