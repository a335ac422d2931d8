"""The package's modules import one another in one direction: no circle, however indirect.

Every import statement counts, at module level or inside a function: an import deferred
into a function to dodge a circle still joins two concerns that should live in one module."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import kc_tasks

PACKAGE = Path(kc_tasks.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["kc_tasks", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
MODULES["celeryconfig"] = PACKAGE.parent / "celeryconfig.py"  # installed beside the package


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from kc_tasks.store import db` and `from kc_tasks.store.db import x` both import kc_tasks.store.db.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in MODULES and target != name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as the path that closes it, or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target in on_stack:
                return [*stack[stack.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


# Alembic's environment script runs inside a migration's context (alembic.context set up by
# `kc-tasks migrate`), never imported on its own; tests/integration/test_migrations.py runs it.
RUN_BY_ALEMBIC = {"kc_tasks.store.migrations.env"}


@pytest.mark.parametrize("name", sorted(MODULES.keys() - RUN_BY_ALEMBIC))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_the_package_has_no_import_circle() -> None:
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_circle_finder_finds_one() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_celeryconfig_is_read_by_the_app_not_imported_by_the_package() -> None:
    assert not [name for name, imported in GRAPH.items() if "celeryconfig" in imported]


def test_batching_and_the_tasks_meet_only_through_the_seam() -> None:
    """A batch runs the tasks; what it made reaches them through kc_tasks.worker.seam, and
    neither imports the other (no doubling back)."""
    assert "kc_tasks.worker.batching" not in GRAPH["kc_tasks.worker.tasks"]
    assert "kc_tasks.worker.tasks" not in GRAPH["kc_tasks.worker.batching"]
    assert "kc_tasks.worker.seam" in GRAPH["kc_tasks.worker.tasks"] & GRAPH["kc_tasks.worker.batching"]
    assert "kc_tasks.worker.tasks" not in GRAPH["kc_tasks.worker.consumer"]


def test_the_names_sit_at_the_bottom() -> None:
    # Every module may import the names (kc_tasks/core/names.py): they import nothing of the package.
    assert GRAPH["kc_tasks.core.names"] == set()
    assert GRAPH["kc_tasks.core.sending"] == {"kc_tasks.core.names"}
    assert {name for name, imported in GRAPH.items() if "kc_tasks.core.names" in imported} >= {
        "kc_tasks.payments.inbox",
        "kc_tasks.core.metrics",
        "kc_tasks.store.dead_letters",
        "kc_tasks.worker.tasks",
        "kc_tasks.ops.cli.enqueue",
        "kc_tasks.worker.batching",
        "celeryconfig",
    }


# The folders, bottom first: a module imports from its own folder and the folders below it, never
# above (README, Layout). The Celery app (kc_tasks/celery.py, and celeryconfig.py it reads) sits
# on core alone, so that every part may import it.
LAYERS = ("core", "app", "providers", "store", "payments", "worker", "web", "ops")


def _layer(name: str) -> str:
    if name in {"kc_tasks", "kc_tasks.celery", "celeryconfig"}:
        return "app"
    return name.split(".")[1]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} -> {target}"
        for name, imported in graph.items()
        for target in imported
        if LAYERS.index(_layer(target)) > LAYERS.index(_layer(name))
    )


def test_every_module_lies_in_a_folder_of_a_part() -> None:
    assert {_layer(name) for name in MODULES} == set(LAYERS)


def test_each_folder_imports_only_its_own_and_the_folders_below() -> None:
    assert _upward(GRAPH) == []


def test_an_import_upward_is_found() -> None:
    assert _upward({"kc_tasks.core.names": {"kc_tasks.web.app"}, "kc_tasks.web.app": {"kc_tasks.core.names"}}) == [
        "kc_tasks.core.names -> kc_tasks.web.app"
    ]
