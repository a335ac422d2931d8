"""Lines per module of kc_tasks/ and each module's largest function: `python scripts/shape.py [ROOT]`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def largest_function(tree: ast.AST) -> tuple[str, int]:
    best = ("-", 0)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > best[1]:
                best = (node.name, length)
    return best


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".") / "kc_tasks"
    rows = []
    for path in sorted(root.rglob("*.py")):
        if "migrations/versions" in path.as_posix():
            continue
        text = path.read_text()
        name, length = largest_function(ast.parse(text))
        rows.append((path.relative_to(root.parent).as_posix(), len(text.splitlines()), name, length))
    width = max(len(row[0]) for row in rows)
    for module, lines, name, length in rows:
        print(f"{module:<{width}}  {lines:>5}  {name} ({length})")
    print(
        f"{'modules: ' + str(len(rows)):<{width}}  {sum(r[1] for r in rows):>5}  largest: "
        + "{} ({})".format(*max(((r[2], r[3]) for r in rows), key=lambda x: x[1]))
    )


main()
