"""The house rules of the package, checked rather than hoped for: modules under 500 lines, functions and methods
that fit on a screen (80 lines, docstring included), and no class defined inside a function (such a class cannot
be imported, named in a type hint or read alone; a class that needs a heavy base lives at module level in a module
its callers import lazily). docs/contributing.md ("House rules") names any exception with its reason; there is none
today."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tunebench"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
EXCEPTIONS: dict[str, str] = {}
"""``path`` or ``path:function`` -> the reason docs/contributing.md gives for it."""


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _walk(node: ast.AST, path: str, in_function: bool, found: dict[str, list[str]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = child.end_lineno - child.lineno + 1
            if lines > MAX_FUNCTION_LINES and f"{path}:{child.name}" not in EXCEPTIONS:
                found["functions"].append(f"{path}:{child.lineno} {child.name} ({lines} lines)")
            _walk(child, path, True, found)
        elif isinstance(child, ast.ClassDef):
            if in_function:
                found["classes"].append(f"{path}:{child.lineno} {child.name}")
            _walk(child, path, in_function, found)
        else:
            _walk(child, path, in_function, found)


def _offenders() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"modules": [], "functions": [], "classes": []}
    for p in _modules():
        rel = str(p.relative_to(PACKAGE.parent))
        text = p.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES and rel not in EXCEPTIONS:
            found["modules"].append(f"{rel} ({n} lines)")
        _walk(ast.parse(text), rel, False, found)
    return found


def test_no_module_over_500_lines():
    assert not _offenders()["modules"]


def test_no_function_over_80_lines():
    assert not _offenders()["functions"]


def test_no_class_defined_inside_a_function():
    assert not _offenders()["classes"]


def test_the_checks_see_the_whole_package():
    assert len(_modules()) > 100 and (PACKAGE / "evals" / "judge.py") in _modules()
