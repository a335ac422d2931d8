"""docs/reference.md against the code, both ways: every name the code has is in the reference,
and every name the reference lists is in the code.

How the reference is read. Its tables name things in their first column: each `backticked`
span of a row's first cell is one name, and the table's first header cell says what kind of
name it is. Seven kinds are compared with the code, both ways:

    variable   an environment variable    every variable kc_tasks/core/settings.py reads (collected
                                          from its source, below); a listed one must be named in
                                          kc_tasks/, celeryconfig.py or the Procfile
    route      `METHOD /path`             every route of the web app, built with every optional
                                          route on
    task       a task name                every task the Celery app registers (Celery's own
                                          celery.* left out)
    event      an event type              the event types of kc_tasks/core/names.py
    metric     a metric name              every series kc_tasks/core/metrics.py makes
    command    `kc-tasks word...`         every command of kc-tasks' parser; the row's second
                                          cell holds its --options, compared with the parser's
    table      a table name               every table of kc_tasks/store/db.py; the row's second cell
                                          holds its `columns`, compared with the table's

Tables of any other kind (kwargs, statuses, reasons, fields...) are held to the code one way
only: each name they list must be written somewhere in the code.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from celery import Celery
from fastapi.routing import iter_route_contexts
from prometheus_client.metrics import MetricWrapperBase

from kc_tasks.celery import app as celery_app
from kc_tasks.core import logs, metrics, names, settings
from kc_tasks.core.settings import Settings
from kc_tasks.ops import cli
from kc_tasks.store import db

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
# Where the code names what it reads or serves: the package, Celery's configuration, the Procfile.
CODE_FILES = [*sorted((ROOT / "kc_tasks").rglob("*.py")), ROOT / "celeryconfig.py", ROOT / "Procfile"]
CODE_TEXT = "\n".join(path.read_text() for path in CODE_FILES)
CHECKED_KINDS = ("variable", "route", "task", "event", "metric", "command", "table")

# --- the reference ---------------------------------------------------------------------------

CODE_SPAN = re.compile(r"`([^`]+)`")
SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")


def _cells(line: str) -> list[str]:
    """A table row's cells; `\\|` is a bar inside a cell."""
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def reference_tables(text: str) -> Iterator[tuple[str, list[list[str]]]]:
    """Each table of the page: (its first header cell, lower-cased; its rows' cells)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and SEPARATOR.match(lines[i + 1].strip()):
            kind = _cells(lines[i])[0].lower()
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            yield kind, rows
        else:
            i += 1


TABLES = list(reference_tables(REFERENCE.read_text()))


def rows(kind: str) -> list[list[str]]:
    return [row for table_kind, table_rows in TABLES if table_kind == kind for row in table_rows]


def listed(kind: str) -> set[str]:
    """The names the reference's tables of `kind` list."""
    return {name for row in rows(kind) for name in CODE_SPAN.findall(row[0])}


def test_the_reference_has_a_table_of_each_kind() -> None:
    assert {kind for kind, _ in TABLES} >= set(CHECKED_KINDS)


# --- environment ------------------------------------------------------------------------------


def settings_variables() -> set[str]:
    """Every variable kc_tasks/core/settings.py reads, from its source. The environment reaches it as
    a mapping named `env`: a variable is read where `env` is subscripted (`env[NAME]`), asked
    (`env.get(NAME)`, `NAME in env`) or handed to a helper with the name after it
    (`_int(env, NAME, ...)`). NAME is a string literal, or the variable of a `for` over a tuple of
    literals; a NAME that is a parameter of its function is its callers' to name."""
    tree = ast.parse(Path(settings.__file__).read_text())
    found: set[str] = set()
    for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
        parameters = {a.arg for a in (*function.args.args, *function.args.kwonlyargs)}
        loops = {
            node.target.id: [element.value for element in node.iter.elts if isinstance(element, ast.Constant)]
            for node in ast.walk(function)
            if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, ast.Tuple)
        }
        for node in ast.walk(function):
            key = _env_key(node)
            if key is None:
                continue
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                found.add(key.value)
            elif isinstance(key, ast.Name) and key.id in loops:
                found.update(loops[key.id])
            elif not (isinstance(key, ast.Name) and key.id in parameters):
                pytest.fail(f"settings.py:{node.lineno} reads a variable this test cannot name: update its rule")
    return found


def _env_key(node: ast.AST) -> ast.expr | None:
    """The key of a read of `env` at `node`, if it is one."""

    def is_env(expr: ast.expr) -> bool:
        return isinstance(expr, ast.Name) and expr.id == "env"

    if isinstance(node, ast.Subscript) and is_env(node.value):
        return node.slice
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.In):
        return node.left if is_env(node.comparators[0]) else None
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Attribute) and is_env(node.func.value) and node.func.attr == "get" and node.args:
        return node.args[0]
    if len(node.args) >= 2 and is_env(node.args[0]):
        return node.args[1]
    return None


SETTINGS_VARIABLES = settings_variables()


class RecordingEnv(Mapping[str, str]):
    """An environment that notes every variable asked of it."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.asked = values, set[str]()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self.values[name]

    def __contains__(self, name: object) -> bool:
        self.asked.add(str(name))
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


@pytest.mark.parametrize("values", [{}, {"POSTGRES_HOST": "db.example"}], ids=["defaults", "old-variables"])
def test_the_source_rule_sees_every_variable_settings_reads(values: dict[str, str]) -> None:
    env = RecordingEnv(values)
    Settings.from_env(env)
    assert env.asked - SETTINGS_VARIABLES == set()


def test_every_variable_the_settings_read_is_in_the_reference() -> None:
    assert SETTINGS_VARIABLES - listed("variable") == set()


def test_every_variable_in_the_reference_is_read_by_the_code() -> None:
    missing = {
        name
        for name in listed("variable")
        if name not in SETTINGS_VARIABLES and not re.search(rf"\b{name}\b", CODE_TEXT)
    }
    assert missing == set()


# --- routes -----------------------------------------------------------------------------------

# Every optional route on: each provider's webhook secret and API key, the admin pages.
FULL_ENVIRONMENT = {
    "KC_WEBHOOK_SECRET": "reference-webhook-secret-0123456789abcdef",
    "KC_RAZORPAY_WEBHOOK_SECRET": "reference-razorpay-secret-0123456789abcdef",
    "KC_STRIPE_WEBHOOK_SECRET": "whsec_reference0123456789abcdef",
    "KC_RAZORPAY_KEY_ID": "rzp_test_reference",
    "KC_RAZORPAY_KEY_SECRET": "reference-razorpay-key-secret",
    "KC_STRIPE_API_KEY": "rk_test_reference",
    "KC_JWT_SECRET": "reference-jwt-secret-0123456789abcdef0123",
    "KC_ADMIN_USER": "ops",
    "KC_ADMIN_PASSWORD": "reference-admin-password",
}
LOGGERS = ("", *logs.UVICORN_LOGGERS, "alembic.runtime.plugins")


@pytest.fixture(scope="module")
def served_routes() -> set[str]:
    """`METHOD /path` of each route of the web app (HEAD, which Starlette adds to GET, left out;
    `{name:converter}` written `{name}`). create_app sets up logging for the web process: the
    test run's is put back afterwards."""
    from kc_tasks.web.app import create_app

    kept = [(logger, logger.handlers[:], logger.level, logger.propagate) for logger in map(logging.getLogger, LOGGERS)]
    try:
        environment = {**os.environ, **FULL_ENVIRONMENT}
        environment.pop("KC_WEB_METRICS_PORT", None)
        api = create_app(Settings.from_env(environment), Celery(broker="memory://"))
    finally:
        for logger, handlers, level, propagate in kept:
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    found = set()
    # app.routes holds an included router (the admin pages) as one entry: iter_route_contexts,
    # with which FastAPI builds its OpenAPI document, gives each route of it.
    for route in iter_route_contexts(api.routes):
        assert route.path and route.methods, f"a route this test cannot name: {route!r}"
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        found.update(f"{method} {path}" for method in route.methods if method != "HEAD")
    return found


def test_every_route_the_app_serves_is_in_the_reference(served_routes: set[str]) -> None:
    assert served_routes - listed("route") == set()


def test_every_route_in_the_reference_is_served(served_routes: set[str]) -> None:
    assert listed("route") - served_routes == set()


# --- tasks, events ----------------------------------------------------------------------------


def registered_tasks() -> set[str]:
    return {name for name in celery_app.tasks if not name.startswith("celery.")}


def event_types() -> set[str]:
    """The string constants of kc_tasks/core/names.py shaped as an event type: `purchase.<verb>`."""
    return {
        value
        for name, value in vars(names).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"purchase\.[a-z_]+", value)
    }


def test_the_tasks_are_those_of_the_reference() -> None:
    tasks = registered_tasks()
    assert "kc_tasks.create_purchase" in tasks  # the app's tasks were found at all
    assert (tasks - listed("task"), listed("task") - tasks) == (set(), set())


def test_the_event_types_are_those_of_the_reference() -> None:
    types = event_types()
    assert "purchase.created" in types
    assert (types - listed("event"), listed("event") - types) == (set(), set())


# --- metrics ----------------------------------------------------------------------------------

# What makes a series in kc_tasks/core/metrics.py; counters are exposed with `_total`.
SERIES_MAKERS = {"Counter", "Gauge", "Histogram", "Summary", "ScrapeGauge", "GaugeMetricFamily", "CounterMetricFamily"}
COUNTERS = {"Counter", "CounterMetricFamily"}


def metric_names() -> set[str]:
    """The first argument of every call in kc_tasks/core/metrics.py that makes a series: a string
    literal, or `self.<attribute>`, the name a class (ScrapeGauge) was given by the call that
    made it, which names it; anything else, this test cannot name."""
    found = set()
    for node in ast.walk(ast.parse(Path(metrics.__file__).read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SERIES_MAKERS):
            continue
        first = node.args[0] if node.args else None
        if isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name) and first.value.id == "self":
            continue
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            pytest.fail(f"metrics.py:{node.lineno} names a series this test cannot read: update its rule")
        suffix = "_total" if node.func.id in COUNTERS and not first.value.endswith("_total") else ""
        found.add(first.value + suffix)
    return found


METRICS = metric_names()


@pytest.mark.parametrize("role", [metrics.WEB, metrics.WORKER])
def test_the_source_rule_sees_every_series_a_process_keeps(role: str) -> None:
    series = metrics.Series(role)
    kept = set()
    for value in vars(series).values():
        if isinstance(value, MetricWrapperBase):
            (described,) = value.describe()
            kept.add(described.name + ("_total" if described.type == "counter" else ""))
    assert kept and kept - METRICS == set()


def test_every_metric_is_in_the_reference() -> None:
    assert METRICS - listed("metric") == set()


def test_every_metric_in_the_reference_is_kept() -> None:
    assert listed("metric") - METRICS == set()


# --- commands ---------------------------------------------------------------------------------


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ("kc-tasks",)) -> dict[str, set[str]]:
    """Each command of the parser (`kc-tasks inbox list`), with its long options (--help left out)."""
    found: dict[str, set[str]] = {}
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        options = {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
        return {" ".join(words): options}
    for action in subcommands:
        for name, subparser in action.choices.items():
            found.update(commands(subparser, (*words, name)))
    return found


COMMANDS = commands(cli.parser())


def listed_commands() -> dict[str, set[str]]:
    return {
        name: set(re.findall(r"--[a-z][a-z-]*", row[1]))
        for row in rows("command")
        for name in CODE_SPAN.findall(row[0])
    }


def test_the_commands_are_those_of_the_reference() -> None:
    assert "kc-tasks dlq replay" in COMMANDS
    assert (set(COMMANDS) - set(listed_commands()), set(listed_commands()) - set(COMMANDS)) == (set(), set())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_the_options_of_the_reference(command: str) -> None:
    assert listed_commands().get(command) == COMMANDS[command]


# --- tables -----------------------------------------------------------------------------------


def listed_tables() -> dict[str, set[str]]:
    return {name: set(CODE_SPAN.findall(row[1])) for row in rows("table") for name in CODE_SPAN.findall(row[0])}


def test_the_tables_and_their_columns_are_those_of_the_reference() -> None:
    tables = {name: {column.name for column in table.columns} for name, table in db.metadata.tables.items()}
    assert "student_course_purchases" in tables
    assert listed_tables() == tables


# --- everything else the reference lists -------------------------------------------------------


def test_every_other_name_the_reference_lists_is_written_in_the_code() -> None:
    others = {
        (kind, name)
        for kind, table_rows in TABLES
        if kind not in CHECKED_KINDS
        for row in table_rows
        for name in CODE_SPAN.findall(row[0])
    }
    assert others, "the reference has tables of other kinds"
    assert {(kind, name) for kind, name in others if name not in CODE_TEXT} == set()
