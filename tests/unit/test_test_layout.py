"""The tests' own layout: a test module imports its helpers from the helper modules
(tests/builders.py, tests/services.py, tests/harness.py, ...), never from another test module
nor from a conftest.py; a conftest's fixtures reach a test by pytest, not by import."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _is_test_module(dotted: str) -> bool:
    last = dotted.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def _absolute(module: str | None, level: int, package: str) -> str:
    """The dotted name `from <dots><module>` means inside `package`."""
    if level == 0:
        return module or ""
    base = package.split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of_test_modules(source: str, package: str = "tests") -> list[str]:
    """The test modules and conftests (dotted) that `source`, a module of `package`, imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, package)
            if _is_test_module(module):
                found.append(module)
            else:
                found += [f"{module}.{alias.name}" for alias in node.names if _is_test_module(alias.name)]
    return found


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    offenders = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        package = ".".join(path.relative_to(TESTS.parent).parent.parts)
        found = imports_of_test_modules(path.read_text(), package)
        if found:
            offenders[str(path.relative_to(TESTS.parent))] = found
    assert offenders == {}, "helpers belong in tests/builders.py, tests/services.py or tests/harness.py"


def test_the_check_sees_each_way_of_importing_a_test_module() -> None:
    assert imports_of_test_modules("from tests.e2e.test_webhook import signed") == ["tests.e2e.test_webhook"]
    assert imports_of_test_modules("from tests.e2e.conftest import Workers") == ["tests.e2e.conftest"]
    assert imports_of_test_modules("from tests.conftest import run_sql") == ["tests.conftest"]
    assert imports_of_test_modules("from tests.e2e import test_flower") == ["tests.e2e.test_flower"]
    assert imports_of_test_modules("import tests.integration.test_cli") == ["tests.integration.test_cli"]
    assert imports_of_test_modules("def f():\n    from tests.conftest import admin\n") == ["tests.conftest"]
    assert imports_of_test_modules("from .test_tasks import kwargs", "tests.integration") == [
        "tests.integration.test_tasks"
    ]
    assert imports_of_test_modules("from ..conftest import PG", "tests.e2e") == ["tests.conftest"]
    assert imports_of_test_modules("from . import conftest", "tests.e2e") == ["tests.e2e.conftest"]


def test_the_check_lets_helper_modules_through() -> None:
    source = (
        "from tests.builders import signed\nfrom tests.harness import Workers\n"
        "from tests import provider_samples as s\nfrom tests.e2e.proxy import Proxy\n"
        "import pytest\nfrom kc_tasks.web import create_app\n"
    )
    assert imports_of_test_modules(source) == []
