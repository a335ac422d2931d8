"""The package as pip builds it: the pages' templates and the migrations ship, and setuptools
has nothing to warn about, neither building the wheel nor installing the checkout editable (as
`make setup` does)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What pyproject.toml builds the package from.
SOURCES = ("pyproject.toml", "README.md", "celeryconfig.py", "kc_tasks")
# A warning of the build backend as pip shows it: `BuildBackendWarning: ...`,
# `SetuptoolsDeprecationWarning: ...` (pip's own notes are `WARNING: ...`).
PYTHON_WARNING = re.compile(r"\b\w+Warning: .*")


def copy_sources(source: Path) -> Path:
    """The sources pyproject.toml builds from, copied: a build leaves build/ and *.egg-info/
    beside them."""
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    return source


def test_the_wheel_holds_the_templates_and_the_build_warns_of_nothing(tmp_path: Path) -> None:
    source = copy_sources(tmp_path / "source")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    assert PYTHON_WARNING.findall(output) == []

    (wheel,) = (tmp_path / "dist").glob("kc_tasks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {path.name for path in (ROOT / "kc_tasks" / "web" / "templates").iterdir() if path.suffix == ".html"}
    assert {f"kc_tasks/web/templates/{name}" for name in templates} <= names
    assert "kc_tasks/store/migrations/script.py.mako" in names
    assert "kc_tasks/store/migrations/versions/002_add_idempotency_constraints.py" in names
    assert "kc_tasks/store/migrations/roles.sql" in names
    assert "celeryconfig.py" in names
    # Every module of the source tree ships: a folder missing from pyproject.toml's packages
    # is left out of the wheel without a word (the image's `kc-tasks` then fails to import).
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "kc_tasks").rglob("*.py")}
    assert sorted(modules - names) == []


def test_an_editable_install_warns_of_nothing(tmp_path: Path) -> None:
    """`make setup`'s `pip install -e`, with the pip it installs (this environment's), into a
    fresh environment: setuptools' meta path finder, which it picks when the packages do not lie
    as their names say (a package mapped to a folder elsewhere), warns on every install; a
    simple layout is a plain .pth file, and silent."""
    source = copy_sources(tmp_path / "source")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-e", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = installed.stdout + installed.stderr
    assert installed.returncode == 0, output
    assert PYTHON_WARNING.findall(output) == []

    # The environment imports the package and the Celery settings from the checkout.
    where = "import importlib.util as u; print(u.find_spec('kc_tasks').origin, u.find_spec('celeryconfig').origin)"
    found = subprocess.run(
        [str(python), "-c", where],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert found.stdout.split() == [str(source / "kc_tasks" / "__init__.py"), str(source / "celeryconfig.py")]
